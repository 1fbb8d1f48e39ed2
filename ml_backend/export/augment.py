"""Offline augmentation of the train split with albumentations: flips, a small rotation,
brightness/contrast, noise and blur, applied to the image, its boxes and its masks together.

A box that came from a mask (a brush or polygon region) is taken again from the transformed
mask, so it stays tight around the object after a rotation; a box drawn as a rectangle is
rotated as a box (albumentations' ``largest_box``: it still encloses the object, a little
looser). Boxes are clipped to the image and dropped when less than :data:`MIN_VISIBLE` of
them is left. Every copy is seeded from (seed, task, copy), so an export is reproducible.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.export.dataset import ExportItem, Instances, mask_box

MIN_VISIBLE = 0.3  # a box clipped to under this share of its area is dropped
MAX_ROTATION_DEG = 15.0


@dataclass(frozen=True)
class AugmentedImage:
    """``pixels (H, W, 3) uint8 RGB`` and its instances after one random transform."""

    pixels: np.ndarray
    instances: Instances


def train_transform() -> Any:
    """The albumentations pipeline (``A.Compose``) with boxes in pixel corners."""
    # albumentations asks PyPI for a newer version when imported unless told not to.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.2),
        A.Rotate(limit=MAX_ROTATION_DEG, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                 p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    ], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["rows"], clip=True,
                                min_visibility=MIN_VISIBLE, filter_invalid_bboxes=True))


def copy_seed(seed: int, task_id: int, copy: int) -> int:
    """The seed of one augmented copy: independent of the order images are processed in."""
    return int(np.random.SeedSequence([seed, task_id, copy]).generate_state(1)[0])


def augment(pixels: np.ndarray, instances: Instances, transform: Any, seed: int
            ) -> AugmentedImage:
    """One augmented copy of ``pixels`` and ``instances`` under ``transform`` (see
    :func:`train_transform`) seeded with ``seed``."""
    transform.set_random_seed(seed)
    masks = [m.astype(np.uint8) for m in instances.masks]
    result = transform(image=pixels, masks=masks or [np.zeros(pixels.shape[:2], np.uint8)],
                       bboxes=instances.xyxy.tolist(), rows=list(range(len(instances))))
    height, width = result["image"].shape[:2]
    boxes, ids, out_masks, has_mask = [], [], [], []
    for box, row in zip(result["bboxes"], result["rows"], strict=True):
        row = int(row)
        mask = np.asarray(result["masks"][row], dtype=bool)
        if instances.has_mask[row]:
            box = mask_box(mask)  # tight around the transformed object
        box = np.asarray(box, dtype=np.float64)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        boxes.append(box)
        ids.append(int(instances.class_ids[row]))
        out_masks.append(mask)
        has_mask.append(bool(instances.has_mask[row]))
    if not ids:
        return AugmentedImage(result["image"], Instances.empty(height, width))
    return AugmentedImage(result["image"], Instances(
        np.array(boxes), np.array(ids, dtype=np.int64), np.array(out_masks, dtype=bool),
        np.array(has_mask, dtype=bool)))


def encode_like(pixels: np.ndarray, suffix: str) -> bytes:
    """``pixels`` as a file of ``suffix``'s format (JPEG for .jpg/.jpeg, else PNG)."""
    from PIL import Image

    buffer = io.BytesIO()
    if suffix.lower() in {".jpg", ".jpeg"}:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def augmented_copies(item: ExportItem, pixels: np.ndarray, copies: int, seed: int,
                     transform: Any) -> list[ExportItem]:
    """``copies`` augmented versions of a train ``item`` (decoded as ``pixels``), named
    ``task_<id>_aug<k>``; a PNG stays PNG, a JPEG JPEG, any other format becomes PNG."""
    suffix = item.suffix if item.suffix.lower() in {".jpg", ".jpeg", ".png"} else ".png"
    out = []
    for k in range(1, copies + 1):
        copy = augment(pixels, item.instances, transform, copy_seed(seed, item.task_id, k))
        height, width = copy.pixels.shape[:2]
        out.append(ExportItem(item.task_id, encode_like(copy.pixels, suffix), suffix, width,
                              height, copy.instances, item.class_id, copy=k))
    return out
