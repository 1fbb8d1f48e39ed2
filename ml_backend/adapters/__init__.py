"""One adapter per model family. Each turns HWC uint8 RGB images into typed containers."""
