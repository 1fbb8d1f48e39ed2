"""One writer per format: exported items, each with its split, into a folder that the
format's own reader loads (Ultralytics, pycocotools, torchvision's ImageFolder, a PNG
reader). Writers stream: an item's image is written when it arrives, never held.

Layouts (``<split>`` is train, val or test; every split's folders exist, empty or not):

- yolo: ``images/<split>/task_<id>.<ext>``, ``labels/<split>/task_<id>.txt`` (``class cx cy
  w h``, normalised), ``data.yaml`` with the class names in config order and no ``path:``
  key, so Ultralytics resolves the splits next to the YAML and the folder can move.
- coco: ``images/<split>/…`` and ``annotations/instances_<split>.json``; bbox ``[x, y, w,
  h]`` in pixels, category ids 1… in config order, ``segmentation`` polygons where the
  region was a brush or polygon.
- imagefolder: ``<split>/<class>/task_<id>.<ext>``; every class folder in every split.
- masks: ``images/<split>/…`` and ``masks/<split>/task_<id>.png`` (pixel = class index + 1,
  0 background; 8-bit, 16-bit past 255 classes); ``classes.json`` and ``classes.txt``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ml_backend.core.detections import xyxy_to_yolo
from ml_backend.export.dataset import SPLITS, ExportFormat, ExportItem, Split

SplitItems = Iterable[tuple[Split, ExportItem]]
Written = dict[str, int]  # split → images written
POLYGON_TOLERANCE_PX = 1.0  # COCO polygons traced from masks stay within a pixel of them


def safe_name(name: str) -> str:
    """A class name as one folder name: path separators and control characters become _."""
    cleaned = re.sub(r"[\x00-\x1f/\\\\]", "_", name).strip()
    return "_" if cleaned in {"", ".", ".."} else cleaned


def _yaml_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _image_path(out: Path, split: Split, item: ExportItem) -> Path:
    return out / "images" / split.value / f"{item.stem}{item.suffix}"


def _make_split_dirs(out: Path, *parts: str) -> None:
    for split in SPLITS:
        for part in parts:
            (out / part / split.value).mkdir(parents=True, exist_ok=True)


def write_yolo(out: Path, items: SplitItems, classes: Sequence[str]) -> Written:
    _make_split_dirs(out, "images", "labels")
    written = dict.fromkeys((s.value for s in SPLITS), 0)
    for split, item in items:
        _image_path(out, split, item).write_bytes(item.image)
        rows = xyxy_to_yolo(item.instances.xyxy, item.width, item.height)
        lines = [f"{int(c)} {r[0]:.6f} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f}"
                 for c, r in zip(item.instances.class_ids, rows, strict=True)
                 if r[2] > 0 and r[3] > 0]
        (out / "labels" / split.value / f"{item.stem}.txt").write_text(
            "\n".join(lines) + ("\n" if lines else ""))
        written[split.value] += 1
    names = "\n".join(f"  {i}: {_yaml_str(name)}" for i, name in enumerate(classes))
    (out / "data.yaml").write_text(
        "# Ultralytics dataset: splits resolve next to this file (no 'path:' key)\n"
        "train: images/train\nval: images/val\ntest: images/test\n"
        f"nc: {len(classes)}\nnames:\n{names}\n")
    return written


def coco_polygons(mask: np.ndarray) -> list[list[float]]:
    """A mask's outer contours as COCO polygons ``[x1, y1, x2, y2, …]`` in pixels."""
    from ml_backend.labelstudio.masks import mask_to_polygons

    return [[round(float(v), 2) for v in points.reshape(-1)]
            for points in mask_to_polygons(mask, POLYGON_TOLERANCE_PX) if len(points) >= 3]


def write_coco(out: Path, items: SplitItems, classes: Sequence[str]) -> Written:
    _make_split_dirs(out, "images")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": ""}
                  for i, name in enumerate(classes)]
    docs = {s: {"info": {"description": f"{s.value} split"}, "licenses": [], "images": [],
                "annotations": [], "categories": categories} for s in SPLITS}
    next_image = dict.fromkeys(SPLITS, 1)
    next_annotation = dict.fromkeys(SPLITS, 1)
    for split, item in items:
        _image_path(out, split, item).write_bytes(item.image)
        doc, image_id = docs[split], next_image[split]
        next_image[split] += 1
        doc["images"].append({"id": image_id, "file_name": f"{item.stem}{item.suffix}",
                              "width": item.width, "height": item.height,
                              "task_id": item.task_id})
        inst = item.instances
        for k in range(len(inst)):
            x1, y1, x2, y2 = (float(v) for v in inst.xyxy[k])
            record = {"id": next_annotation[split], "image_id": image_id,
                      "category_id": int(inst.class_ids[k]) + 1,
                      "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2),
                               round(y2 - y1, 2)],
                      "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0}
            if inst.has_mask[k]:
                polygons = coco_polygons(inst.masks[k])
                if polygons:
                    record["segmentation"] = polygons
                    record["area"] = float(inst.masks[k].sum())
            next_annotation[split] += 1
            doc["annotations"].append(record)
    for split, doc in docs.items():
        (out / "annotations" / f"instances_{split.value}.json").write_text(json.dumps(doc))
    return {s.value: len(docs[s]["images"]) for s in SPLITS}


def write_imagefolder(out: Path, items: SplitItems, classes: Sequence[str]) -> Written:
    """Items without an image class are not written (the report counts them)."""
    folders = [safe_name(name) for name in classes]
    for split in SPLITS:
        for folder in folders:
            (out / split.value / folder).mkdir(parents=True, exist_ok=True)
    written = dict.fromkeys((s.value for s in SPLITS), 0)
    for split, item in items:
        if item.class_id is None:
            continue
        folder = out / split.value / folders[item.class_id]
        (folder / f"{item.stem}{item.suffix}").write_bytes(item.image)
        written[split.value] += 1
    _write_classes(out, classes)
    return written


def class_index_mask(item: ExportItem) -> np.ndarray:
    """``(H, W)`` class index + 1 of the item's mask instances (0: background); where masks
    overlap, the later region is on top (as Label Studio draws them)."""
    dtype = np.uint8 if int(item.instances.class_ids.max(initial=0)) < 255 else np.uint16
    out = np.zeros((item.height, item.width), dtype=dtype)
    inst = item.instances
    for k in np.flatnonzero(inst.has_mask):
        out[inst.masks[k]] = int(inst.class_ids[k]) + 1
    return out


def write_masks(out: Path, items: SplitItems, classes: Sequence[str]) -> Written:
    from PIL import Image

    _make_split_dirs(out, "images", "masks")
    written = dict.fromkeys((s.value for s in SPLITS), 0)
    for split, item in items:
        _image_path(out, split, item).write_bytes(item.image)
        buffer = io.BytesIO()
        Image.fromarray(class_index_mask(item)).save(buffer, format="PNG")
        (out / "masks" / split.value / f"{item.stem}.png").write_bytes(buffer.getvalue())
        written[split.value] += 1
    _write_classes(out, classes, background=True)
    return written


def _write_classes(out: Path, classes: Sequence[str], background: bool = False) -> None:
    """``classes.txt`` (one name a line, config order) and ``classes.json`` (value → name;
    with ``background`` 0 is the background and classes start at 1)."""
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    offset = 1 if background else 0
    mapping = {**({"0": "background"} if background else {}),
               **{str(i + offset): name for i, name in enumerate(classes)}}
    (out / "classes.json").write_text(json.dumps(mapping, indent=1))


WRITERS: dict[ExportFormat, Callable[[Path, SplitItems, Sequence[str]], Written]] = {
    ExportFormat.YOLO: write_yolo,
    ExportFormat.COCO: write_coco,
    ExportFormat.IMAGEFOLDER: write_imagefolder,
    ExportFormat.MASKS: write_masks,
}
