"""A tiny random-init SAM, built with segment-anything's own builder and saved as a
checkpoint the way the released ones are (a plain state dict). No weights are downloaded."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_backend.core.settings import Settings
from ml_backend.models.sam.loading import build_sam_model

from app_fixture import AppParts, backend_app

TINY_SAM_TYPE = "vit:32/2/2"  # embed dim 32, 2 blocks, 2 heads
TINY_SAM2_1_TYPE = "sam2.1_hiera:16/1-1-2-1"  # Hiera with embed dim 16, 5 blocks
REPO = Path(__file__).resolve().parent.parent
SEGMENTATION_CONFIG = (REPO / "labeling_configs" / "interactive_segmentation.xml").read_text()
WIDTH, HEIGHT = 112, 72  # the size the captured click reports


def save_tiny_sam(directory: Path, seed: int = 0, model_type: str = TINY_SAM_TYPE) -> Path:
    """A random-init SAM of ``model_type`` saved as the released checkpoints are: a plain
    state dict for SAM 1, ``{"model": state dict}`` for SAM 2.1."""
    name = re.sub(r"[^0-9a-z]", "-", model_type)
    path = directory / f"tiny-sam-{name}-{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        directory.mkdir(parents=True, exist_ok=True)
        state = build_sam_model(model_type).state_dict()
        torch.save({"model": state} if model_type.startswith("sam2.1") else state, path)
    return path


def square_scene(width: int = 112, height: int = 72) -> np.ndarray:
    """A grey image with one bright square (for a mask with a known place)."""
    pixels = np.full((height, width, 3), 40, dtype=np.uint8)
    pixels[height // 4: height // 4 + height // 2, width // 2: width // 2 + height // 2] = 220
    return pixels


def distinct_scenes(folder: Path, count: int) -> list[Path]:
    """``count`` PNG files of :func:`square_scene` (112 x 72), each one pixel apart: distinct
    bytes, so each gets its own cache entries."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = square_scene(112, 72)
        pixels[0, i] = 255
        paths.append(folder / f"scene{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("sam"))


@pytest.fixture(scope="session")
def tiny_sam2_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("sam2.1"), model_type=TINY_SAM2_1_TYPE)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """Label Studio's local-files root, holding the images the captures point at."""
    from conftest import png_bytes

    root = tmp_path / "docs"
    (root / "set1").mkdir(parents=True)
    for name in ("img_1.png", "img_3.png", "img_4.png"):
        (root / "set1" / name).write_bytes(png_bytes(square_scene(WIDTH, HEIGHT)))
    return root


def _sam_app(make_settings: Callable[..., Settings], checkpoint: Path, model_type: str,
             docs: Path) -> Iterator[AppParts]:
    settings = make_settings(sam_checkpoint=checkpoint, sam_model_type=model_type,
                             local_files_document_root=docs)
    with backend_app(settings) as parts:
        yield parts


@pytest.fixture
def sam_app(make_settings: Callable[..., Settings], tiny_sam: Path, docs: Path
            ) -> Iterator[AppParts]:
    yield from _sam_app(make_settings, tiny_sam, TINY_SAM_TYPE, docs)


@pytest.fixture
def sam2_1_app(make_settings: Callable[..., Settings], tiny_sam2_1: Path, docs: Path
               ) -> Iterator[AppParts]:
    yield from _sam_app(make_settings, tiny_sam2_1, TINY_SAM2_1_TYPE, docs)


@pytest.fixture(params=["sam1", "sam2.1"])
def any_sam_app(request: pytest.FixtureRequest) -> AppParts:
    """``sam_app`` and then ``sam2_1_app``: for what both generations must do alike."""
    return request.getfixturevalue("sam_app" if request.param == "sam1" else "sam2_1_app")
