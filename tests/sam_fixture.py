"""A tiny random-init SAM, built with segment-anything's own builder and saved as a
checkpoint the way the released ones are (a plain state dict). No weights are downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ml_backend.adapters.sam import build_sam_model, sam_architecture

TINY_SAM_TYPE = "vit:32/2/2"  # embed dim 32, 2 blocks, 2 heads


def save_tiny_sam(directory: Path, seed: int = 0) -> Path:
    path = directory / f"tiny-sam-{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(build_sam_model(sam_architecture(TINY_SAM_TYPE)).state_dict(), path)
    return path


def square_scene(width: int = 112, height: int = 72) -> np.ndarray:
    """A grey image with one bright square (for a mask with a known place)."""
    pixels = np.full((height, width, 3), 40, dtype=np.uint8)
    pixels[height // 4: height // 4 + height // 2, width // 2: width // 2 + height // 2] = 220
    return pixels
