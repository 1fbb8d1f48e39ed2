"""Project labels as training-ready data sets: YOLO, COCO, ImageFolder, PNG masks."""
