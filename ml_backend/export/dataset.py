"""What an export is made of: the formats, which label-config controls feed each, and one
exported image as a typed value (pure functions over Label Studio's JSON export).

A task's labels are read from its human annotations only (Label Studio's ``annotations``;
``predictions`` are never read). An annotation that started from a pre-label and was
submitted is the annotator's: it counts. Per task the ground-truth annotation wins, else the
most recently updated one that was not skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ml_backend.core.detections import ls_rect_to_xyxy
from ml_backend.core.errors import BackendError, UnsupportedConfig
from ml_backend.labelstudio.label_config import IMAGE_OBJECT_TAGS, ControlSpec, ParsedConfig
from ml_backend.labelstudio.masks import polygon_mask
from ml_backend.reporting.regions import Region, RegionKind, parse_regions


class ExportFormat(str, Enum):
    YOLO = "yolo"  # Ultralytics: images/<split>, labels/<split>, data.yaml
    COCO = "coco"  # one instances JSON per split
    IMAGEFOLDER = "imagefolder"  # <split>/<class>/<file> (torchvision's ImageFolder)
    MASKS = "masks"  # one PNG per image, pixel value = class index + 1

    @classmethod
    def parse(cls, value: Any) -> ExportFormat:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown export format {value!r}; one of: {allowed}") from None


class Split(str, Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


SPLITS: tuple[Split, ...] = (Split.TRAIN, Split.VAL, Split.TEST)
BOX_TAGS = frozenset({"RectangleLabels"})
MASK_TAGS = frozenset({"BrushLabels", "PolygonLabels"})
CLASS_TAGS = frozenset({"Choices"})


class NothingToExport(UnsupportedConfig):
    """The label config has no control the chosen format can be written from (422)."""


class OutputNotEmpty(BackendError):
    """The export folder exists with files in it and overwriting was not asked for (409)."""

    http_status = 409


@dataclass(frozen=True)
class ExportSpec:
    """The controls one format is written from and its class names, in config order (the
    class index of a name is its position here)."""

    format: ExportFormat
    image_key: str  # task data key of the image URL
    box_controls: tuple[str, ...]
    mask_controls: tuple[str, ...]
    class_control: str | None
    classes: tuple[str, ...]


def export_spec(parsed: ParsedConfig, fmt: ExportFormat) -> ExportSpec:
    """Which controls ``fmt`` exports, or :class:`NothingToExport` saying what it needs."""
    prompts = {(c.name, c.to_name) for c in parsed.prompts}
    on_image = [c for c in parsed.controls if c.object_tag in IMAGE_OBJECT_TAGS and c.labels
                and (c.name, c.to_name) not in prompts]
    boxes = [c for c in on_image if c.tag in BOX_TAGS]
    masks = [c for c in on_image if c.tag in MASK_TAGS]
    choices = [c for c in on_image if c.tag in CLASS_TAGS]
    chosen: list[ControlSpec]
    if fmt is ExportFormat.IMAGEFOLDER:
        chosen, needs = choices[:1], "Choices"  # one class per image: the first Choices
    elif fmt is ExportFormat.MASKS:
        chosen, needs = masks, "BrushLabels or PolygonLabels"
    elif fmt is ExportFormat.YOLO:
        # Boxes as drawn; a config with masks only gives each mask's bounding box.
        chosen, needs = boxes or masks, "RectangleLabels, BrushLabels or PolygonLabels"
    else:
        chosen, needs = boxes + masks, "RectangleLabels, BrushLabels or PolygonLabels"
    if not chosen:
        found = ", ".join(f"{c.tag} '{c.name}'" for c in on_image) or "no labeled control"
        raise NothingToExport(f"nothing to export as {fmt.value}: it needs {needs} on an "
                              f"Image; this label config has {found}")
    if len({c.to_name for c in chosen}) > 1:
        raise NothingToExport(f"{fmt.value} export needs its controls on one Image; these "
                              f"are on {sorted({c.to_name for c in chosen})}")
    classes: list[str] = []
    for control in chosen:
        classes += [label for label in control.labels if label not in classes]
    return ExportSpec(
        format=fmt, image_key=chosen[0].value_key,
        box_controls=tuple(c.name for c in chosen if c.tag in BOX_TAGS),
        mask_controls=tuple(c.name for c in chosen if c.tag in MASK_TAGS),
        class_control=chosen[0].name if fmt is ExportFormat.IMAGEFOLDER else None,
        classes=tuple(classes))


# --- tasks → labels --------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskLabels:
    """One annotated task's image URL and the regions of the exported controls, still in
    Label Studio's frame (percent, RLE); :func:`instances_of` turns them into pixels once
    the image's size is known."""

    task_id: int
    image_url: str
    regions: tuple[Region, ...]
    class_name: str | None  # the image's class (Choices), when one was chosen

    def class_names(self) -> list[str]:
        """Every labeled class of the task, instances and image class alike."""
        names = [r.labels[0] for r in self.regions if r.labels]
        return names + ([self.class_name] if self.class_name else [])


@dataclass(frozen=True)
class TaskCounts:
    """How the project's tasks divide before any image is read."""

    labeled: list[TaskLabels]
    skipped: int  # every annotation of the task was skipped (``was_cancelled``)
    unannotated: int  # no annotation at all
    unusable: dict[int, str] = field(default_factory=dict)  # task → why it is left out


def human_annotation(annotations: Sequence[Any]) -> Mapping[str, Any] | None:
    """The annotation that counts: ground truth first, then the latest update; skipped ones
    never. An accepted pre-label is a submitted annotation like any other."""
    usable = [a for a in annotations if isinstance(a, Mapping) and not a.get("was_cancelled")]
    if not usable:
        return None
    return max(usable, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at")),
                                      int(a.get("id") or 0)))


def task_labels(tasks: Sequence[Any], spec: ExportSpec) -> TaskCounts:
    """Label Studio's JSON export of every task → the labeled tasks of ``spec``'s controls,
    with the skipped and unannotated ones counted."""
    labeled: list[TaskLabels] = []
    skipped = unannotated = 0
    unusable: dict[int, str] = {}
    controls = set(spec.box_controls) | set(spec.mask_controls)
    for task in tasks:
        if not isinstance(task, Mapping) or not isinstance(task.get("id"), int):
            continue
        annotations = task.get("annotations") or []
        annotation = human_annotation(annotations)
        if annotation is None:
            skipped += bool(annotations)
            unannotated += not annotations
            continue
        data = task.get("data") if isinstance(task.get("data"), Mapping) else {}
        url = data.get(spec.image_key)
        if not isinstance(url, str) or not url:
            unusable[int(task["id"])] = f"no image URL under '{spec.image_key}'"
            continue
        by_control = parse_regions(annotation.get("result") or [])
        regions = tuple(r for name in sorted(controls) for r in by_control.get(name, [])
                        if r.labels and r.labels[0] in spec.classes)
        class_name = None
        if spec.class_control is not None:
            chosen = [label for r in by_control.get(spec.class_control, []) for label in r.labels
                      if label in spec.classes]
            if len(chosen) > 1:
                unusable[int(task["id"])] = f"{len(chosen)} classes chosen; a folder needs one"
                continue
            class_name = chosen[0] if chosen else None
        labeled.append(TaskLabels(int(task["id"]), url, regions, class_name))
    return TaskCounts(labeled, skipped, unannotated, unusable)


# --- one exported image ----------------------------------------------------------------------

@dataclass(frozen=True)
class Instances:
    """``xyxy (N, 4)`` pixel corners, ``class_ids (N,)`` indices into the spec's classes,
    ``masks (N, H, W) bool`` where the region was a mask (``has_mask (N,)``; rows of boxes
    drawn as rectangles are all False)."""

    xyxy: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.class_ids)
        if self.xyxy.shape != (n, 4) or self.has_mask.shape != (n,) or \
                self.masks.ndim != 3 or len(self.masks) != n:
            raise ValueError(f"{n} class ids need xyxy (N, 4), masks (N, H, W) and has_mask "
                             f"(N,), got {self.xyxy.shape}, {self.masks.shape} and "
                             f"{self.has_mask.shape}")

    def __len__(self) -> int:
        return len(self.class_ids)

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros((0, height, width), bool),
                   np.zeros(0, bool))


@dataclass(frozen=True)
class ExportItem:
    """One image as written: its file ``image`` bytes (``suffix`` like ``.png``), decoded
    size, instances and image class (index into the spec's classes, or None)."""

    task_id: int
    image: bytes
    suffix: str
    width: int
    height: int
    instances: Instances
    class_id: int | None
    copy: int = 0  # 0: the image as labeled; k > 0: its k-th augmented copy (train only)

    @property
    def stem(self) -> str:
        """The file name without suffix: ``task_<id>`` (``task_<id>_aug<k>`` for a copy)."""
        return f"task_{self.task_id}" + (f"_aug{self.copy}" if self.copy else "")


def region_mask(region: Region, width: int, height: int) -> np.ndarray:
    """A brush or polygon region as a ``(height, width)`` bool mask of the image. A brush
    drawn at another size (``original_width``/``_height``) is scaled to the image."""
    from PIL import Image

    from ml_backend.labelstudio.rle import rle_to_mask

    if "rle" not in region.value:
        return polygon_mask(region.value.get("points") or [], width, height)
    w, h = region.width or width, region.height or height
    mask = rle_to_mask(region.value["rle"], h, w) > 0
    if (w, h) != (width, height):
        scaled = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
        mask = np.asarray(scaled, dtype=bool)
    return mask


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight pixel box ``(4,)`` of a bool mask (corners of its outermost pixels' edges),
    zeros for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros(4)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def instances_of(labels: TaskLabels, classes: Sequence[str], width: int, height: int
                 ) -> Instances:
    """A task's regions in pixels of its ``width × height`` image. Regions that cannot be
    decoded (a malformed value) or have no area are left out."""
    index = {name: i for i, name in enumerate(classes)}
    boxes, ids, masks, has_mask = [], [], [], []
    for region in labels.regions:
        try:
            if region.kind is RegionKind.BOX:
                box, mask = ls_rect_to_xyxy(region.value, width, height), None
            else:
                mask = region_mask(region, width, height)
                box = mask_box(mask)
        except (KeyError, TypeError, ValueError):
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        boxes.append(box)
        ids.append(index[region.labels[0]])
        has_mask.append(mask is not None)
        masks.append(mask if mask is not None else np.zeros((height, width), bool))
    if not ids:
        return Instances.empty(height, width)
    return Instances(np.array(boxes, dtype=np.float64), np.array(ids, dtype=np.int64),
                     np.array(masks, dtype=bool), np.array(has_mask, dtype=bool))
