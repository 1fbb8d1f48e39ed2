"""SAM interactive segmentation (smart keypoints and boxes to masks)."""
