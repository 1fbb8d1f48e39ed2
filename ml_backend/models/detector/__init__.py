"""YOLO object detection (RectangleLabels)."""
