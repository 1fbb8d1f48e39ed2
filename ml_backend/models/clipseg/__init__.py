"""CLIPSeg text-prompted boxes and masks."""
