"""ResNet image classification (Choices)."""
