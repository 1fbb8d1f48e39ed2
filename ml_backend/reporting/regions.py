"""Label Studio result lists → typed regions, and one pre-label compared with the annotation
made from it (pure functions; :mod:`ml_backend.reporting.effort` holds the costs).

A result list is grouped by control (``from_name``). Per control:

- ``choices``: the chosen set. Same set → accepted; both non-empty but different → edited
  (class changed); only in the annotation → added by hand; only in the pre-label → deleted.
- ``rectanglelabels``: boxes matched one-to-one (Hungarian, IoU ≥ 0.5). A match with IoU ≥
  0.9 and the same label is accepted, any other match edited (with its IoU, and whether the
  label changed); unmatched pre-boxes were deleted, unmatched annotation boxes added by hand.
- ``brushlabels`` / ``polygonlabels``: the same with mask IoU, where every mask of the
  control decodes to one frame; else by region ``id`` (Label Studio keeps a pre-label's id
  when the annotator edits it): same id and value → accepted, same id → edited (IoU unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ml_backend.core.detections import ls_rect_to_xyxy
from ml_backend.labelstudio.masks import polygon_mask
from ml_backend.reporting.effort import (
    ACCEPT_IOU,
    DEFAULT_COSTS,
    MATCH_IOU,
    CostModel,
    box_effort,
    class_effort,
    mask_iou,
    match_boxes,
    match_iou,
)

POLYGON_GRID = 512  # a polygon without the image's size is drawn on this grid (percent frame)


class RegionKind(str, Enum):
    CLASS = "class"
    BOX = "box"
    MASK = "mask"


_KINDS = {"choices": RegionKind.CLASS, "rectanglelabels": RegionKind.BOX,
          "rectangle": RegionKind.BOX, "brushlabels": RegionKind.MASK,
          "brush": RegionKind.MASK, "polygonlabels": RegionKind.MASK,
          "polygon": RegionKind.MASK}


@dataclass(frozen=True)
class Region:
    """One result item of a control we count: its id, labels and the raw ``value``."""

    control: str
    kind: RegionKind
    type: str
    id: str
    labels: tuple[str, ...]
    value: Mapping[str, Any]
    width: int | None
    height: int | None


def parse_regions(result: Iterable[Any]) -> dict[str, list[Region]]:
    """A Label Studio result list → the regions of each counted control, by ``from_name``.
    Items of other types (keypoints, text, relations) and malformed items are left out."""
    out: dict[str, list[Region]] = {}
    for item in result or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("value"), Mapping):
            continue
        kind = _KINDS.get(str(item.get("type", "")).lower())
        if kind is None:
            continue
        value = item["value"]
        labels = value.get(item["type"]) or value.get("choices") or ()
        if not isinstance(labels, list | tuple):
            labels = ()
        out.setdefault(str(item.get("from_name", "")), []).append(Region(
            control=str(item.get("from_name", "")), kind=kind, type=str(item["type"]).lower(),
            id=str(item.get("id", "")), labels=tuple(str(x) for x in labels), value=value,
            width=_positive_int(item.get("original_width")),
            height=_positive_int(item.get("original_height"))))
    return out


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


@dataclass
class Comparison:
    """What the annotator did to one pre-label (or drew without one), and what it cost.

    ``manual_s`` is what the annotation would have cost drawn from nothing, ``fixing_s`` what
    it cost from the pre-label; quality tallies count pre-label regions that were right
    (class equal; box or mask matched with IoU ≥ 0.5 and the same label).
    """

    accepted: int = 0
    edited: int = 0
    class_changed: int = 0
    deleted: int = 0
    added: int = 0
    edited_ious: list[float] = field(default_factory=list)
    manual_s: float = 0.0
    fixing_s: float = 0.0
    classes_right: int = 0
    classes_predicted: int = 0
    regions_right: int = 0
    regions_predicted: int = 0
    regions_true: int = 0

    @property
    def untouched(self) -> bool:
        return not (self.edited or self.deleted or self.added) and self.accepted > 0

    def __iadd__(self, other: Comparison) -> Comparison:
        for name in ("accepted", "edited", "class_changed", "deleted", "added",
                     "classes_right", "classes_predicted", "regions_right",
                     "regions_predicted", "regions_true"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.manual_s += other.manual_s
        self.fixing_s += other.fixing_s
        self.edited_ious.extend(other.edited_ious)
        return self


def compare_results(predicted: Iterable[Any] | None, annotated: Iterable[Any],
                    costs: CostModel = DEFAULT_COSTS) -> Comparison:
    """One annotation's result list against the pre-label it started from (``None``: there
    was none, so everything in the annotation was added by hand)."""
    before = parse_regions(predicted or ())
    after = parse_regions(annotated)
    total = Comparison()
    for control in sorted(set(before) | set(after)):
        pred, truth = before.get(control, []), after.get(control, [])
        kind = (pred or truth)[0].kind
        if kind is RegionKind.CLASS:
            total += compare_choices(pred, truth, costs)
        elif kind is RegionKind.BOX:
            total += compare_boxes(pred, truth, costs)
        else:
            total += compare_masks(pred, truth, costs)
    if predicted is None:  # no pre-label: nothing was accepted, deleted or fixed
        total.fixing_s = total.manual_s
    return total


def compare_choices(pred: Sequence[Region], truth: Sequence[Region],
                    costs: CostModel = DEFAULT_COSTS) -> Comparison:
    before = {label for r in pred for label in r.labels}
    after = {label for r in truth for label in r.labels}
    out = Comparison()
    if not before and not after:
        return out
    key_before, key_after = "|".join(sorted(before)), "|".join(sorted(after))
    if after:
        out.manual_s = class_effort(None, key_after, costs).seconds
    if before:
        out.classes_predicted = 1
    if not after:
        out.deleted = 1
        out.fixing_s = costs.delete_box_s
        return out
    out.fixing_s = class_effort(key_before or None, key_after, costs).seconds
    if not before:
        out.added = 1
    elif before == after:
        out.accepted = 1
        out.classes_right = 1
    else:
        out.edited = 1
        out.class_changed = 1
    return out


def _label(region: Region) -> str:
    return "|".join(sorted(region.labels))


def compare_boxes(pred: Sequence[Region], truth: Sequence[Region],
                  costs: CostModel = DEFAULT_COSTS) -> Comparison:
    p_xyxy, t_xyxy = _boxes(pred), _boxes(truth)
    p_labels, t_labels = [_label(r) for r in pred], [_label(r) for r in truth]
    out = Comparison(manual_s=costs.draw_box_s * len(truth),
                     regions_predicted=len(pred), regions_true=len(truth))
    out.fixing_s = box_effort(p_xyxy, p_labels, t_xyxy, t_labels, costs).seconds
    _count_matches(out, match_boxes(p_xyxy, t_xyxy, MATCH_IOU), p_labels, t_labels,
                   len(pred), len(truth))
    return out


def _boxes(regions: Sequence[Region]) -> np.ndarray:
    """Pixel corners ``(N, 4)``; without the image's size, in percent (IoU is the same:
    it does not change when the axes are scaled)."""
    rows = [ls_rect_to_xyxy(r.value, r.width or 100, r.height or 100) for r in regions]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _count_matches(out: Comparison, matches: Sequence[tuple[int, int, float]],
                   p_labels: Sequence[str], t_labels: Sequence[str], n_pred: int,
                   n_truth: int) -> None:
    for p, t, iou in matches:
        same = p_labels[p] == t_labels[t]
        out.regions_right += int(same)
        if same and iou >= ACCEPT_IOU:
            out.accepted += 1
        else:
            out.edited += 1
            out.class_changed += int(not same)
            out.edited_ious.append(iou)
    out.deleted += n_pred - len(matches)
    out.added += n_truth - len(matches)


def compare_masks(pred: Sequence[Region], truth: Sequence[Region],
                  costs: CostModel = DEFAULT_COSTS) -> Comparison:
    """Masks (brush or polygon). The cost model has no price for fixing a mask, so an edited
    one is counted as redrawn by hand (a polygon, conservative) and an accepted one at the
    accept cost of a box."""
    out = Comparison(manual_s=costs.polygon_s * len(truth),
                     regions_predicted=len(pred), regions_true=len(truth))
    p_labels, t_labels = [_label(r) for r in pred], [_label(r) for r in truth]
    masks = decode_masks([*pred, *truth])
    if masks is not None:
        iou = np.array([[mask_iou(a, b) for b in masks[len(pred):]] for a in masks[:len(pred)]]
                       ).reshape(len(pred), len(truth))
        _count_matches(out, match_iou(iou, MATCH_IOU), p_labels, t_labels, len(pred),
                       len(truth))
    else:
        by_id = {r.id: i for i, r in enumerate(truth) if r.id}
        for i, region in enumerate(pred):
            j = by_id.get(region.id) if region.id else None
            if j is None:
                out.deleted += 1
                continue
            same = p_labels[i] == t_labels[j]
            out.regions_right += int(same)
            if same and dict(region.value) == dict(truth[j].value):
                out.accepted += 1
            else:
                out.edited += 1
                out.class_changed += int(not same)
            del by_id[truth[j].id]
        out.added += len(by_id) + sum(1 for r in truth if not r.id)
    out.fixing_s = (costs.accept_box_s * out.accepted + costs.polygon_s * (out.edited + out.added)
                    + costs.delete_box_s * out.deleted)
    return out


def decode_masks(regions: Sequence[Region]) -> list[np.ndarray] | None:
    """Every region's binary mask in one frame, or None when one cannot be decoded (no image
    size for a brush, a malformed value) or the frames differ."""
    from ml_backend.labelstudio.rle import rle_to_mask

    masks = []
    for region in regions:
        try:
            if "rle" in region.value:
                if not (region.width and region.height):
                    return None
                mask = rle_to_mask(region.value["rle"], region.height, region.width) > 0
            else:
                mask = _polygon_mask(region.value.get("points"), region.width, region.height)
        except (TypeError, ValueError, KeyError):
            return None
        masks.append(mask)
    if len({m.shape for m in masks}) > 1:
        return None
    return masks


def _polygon_mask(points: Any, width: int | None, height: int | None) -> np.ndarray:
    w, h = (width, height) if width and height else (POLYGON_GRID, POLYGON_GRID)
    return polygon_mask(points, w, h)

