"""The balance report of an export (pure functions): images and instances per class per
split, box sizes, images without labels, what was left out, and a warning for each class
under a share of the data, with how many more tasks would lift it there and which tasks of
the ranked queue the model thinks show it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ml_backend.export.dataset import SPLITS, Split

MIN_CLASS_SHARE = 0.05  # a class under this share of the instances (or images) is warned of


@dataclass(frozen=True)
class ItemStats:
    """What the report needs of one exported image (augmented copies are counted apart)."""

    task_id: int
    split: Split
    width: int
    height: int
    class_ids: tuple[int, ...]  # one per instance (box or mask)
    box_sizes: tuple[tuple[float, float], ...]  # (width, height) px per instance
    class_id: int | None = None  # the image's class (Choices)


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2)}


def tasks_needed(count: int, total: int, per_task: float, total_per_task: float,
                 share: float) -> int:
    """How many more tasks, each adding ``per_task`` instances of a class and
    ``total_per_task`` instances in all, lift ``count`` of ``total`` to ``share``."""
    missing = share * total - count
    if missing <= 0:
        return 0
    gain = per_task - share * total_per_task
    if gain <= 0:  # such images hold so much else that they never lift it: one per task
        gain = 1.0 - share
    return math.ceil(missing / gain)


def queue_suggestions(needed: Mapping[str, int], queue: Sequence[int],
                      predicted: Mapping[int, set[str]]) -> dict[str, list[int]]:
    """For each class, the first ``needed[class]`` tasks of ``queue`` (most informative
    first) whose prediction shows that class."""
    out: dict[str, list[int]] = {name: [] for name in needed}
    for task in queue:
        for name in predicted.get(task, ()):
            if name in out and len(out[name]) < needed[name]:
                out[name].append(task)
    return out


@dataclass(frozen=True)
class QueueView:
    """The unlabeled tasks in queue order and each one's predicted classes; ``source`` says
    where the order came from (the ranked queue, or task order when it was never ranked)."""

    order: list[int]
    predicted: dict[int, set[str]]
    source: str


def balance_report(stats: Sequence[ItemStats], classes: Sequence[str], *, by_instances: bool,
                   augmented: Mapping[str, int], left_out: Mapping[str, Any],
                   queue: QueueView | None = None, min_share: float = MIN_CLASS_SHARE
                   ) -> dict[str, Any]:
    """The report as a JSON-able dict. ``by_instances``: shares count boxes/masks (detection,
    segmentation), else images (classification)."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        rows = [s for s in stats if s.split is split]
        per_class = {}
        for i, name in enumerate(classes):
            per_class[name] = {
                "images": sum(1 for s in rows if i in s.class_ids or s.class_id == i),
                "instances": sum(s.class_ids.count(i) for s in rows)}
        splits[split.value] = {
            "images": len(rows), "augmented_copies": int(augmented.get(split.value, 0)),
            "images_without_labels": sum(1 for s in rows
                                         if not s.class_ids and s.class_id is None),
            "per_class": per_class}
    totals: dict[str, Any] = {}
    unit = "instances" if by_instances else "images"
    grand = sum(splits[s.value]["per_class"][name][unit] for s in SPLITS for name in classes)
    for i, name in enumerate(classes):
        images = sum(splits[s.value]["per_class"][name]["images"] for s in SPLITS)
        instances = sum(splits[s.value]["per_class"][name]["instances"] for s in SPLITS)
        widths = [w for s in stats for c, (w, _) in zip(s.class_ids, s.box_sizes, strict=True)
                  if c == i]
        heights = [h for s in stats for c, (_, h) in zip(s.class_ids, s.box_sizes, strict=True)
                   if c == i]
        areas = [w * h / (s.width * s.height) for s in stats
                 for c, (w, h) in zip(s.class_ids, s.box_sizes, strict=True) if c == i]
        count = instances if by_instances else images
        totals[name] = {"images": images, "instances": instances,
                        "share": round(count / grand, 4) if grand else None,
                        "box_width_px": _stats(widths), "box_height_px": _stats(heights),
                        "box_area_share": _stats(areas)}
    warnings = _warnings(stats, classes, totals, by_instances, grand, min_share, queue)
    return {"classes": list(classes), "share_of": unit, "splits": splits, "per_class": totals,
            "images": len(stats),
            "images_without_labels": sum(splits[s.value]["images_without_labels"]
                                         for s in SPLITS),
            **left_out, "min_class_share": min_share, "warnings": warnings}


def _warnings(stats: Sequence[ItemStats], classes: Sequence[str], totals: Mapping[str, Any],
              by_instances: bool, grand: int, min_share: float, queue: QueueView | None
              ) -> list[dict[str, Any]]:
    needed: dict[str, int] = {}
    for i, name in enumerate(classes):
        share = totals[name]["share"]
        if share is None or share >= min_share:
            continue
        with_class = [s for s in stats if i in s.class_ids or s.class_id == i]
        if by_instances and with_class:
            per_task = statistics.fmean(s.class_ids.count(i) for s in with_class)
            total_per_task = statistics.fmean(len(s.class_ids) for s in with_class)
        else:
            per_task = total_per_task = 1.0
        count = totals[name]["instances" if by_instances else "images"]
        needed[name] = tasks_needed(count, grand, per_task, total_per_task, min_share)
    suggestions = queue_suggestions(needed, queue.order, queue.predicted) if queue else {}
    out = []
    for name, n in needed.items():
        found = suggestions.get(name, [])
        if queue is None:
            where = "no queue was read"
        elif not queue.predicted:
            where = "the unlabeled tasks carry no predictions to pick by"
        else:
            where = f"from the {queue.source} by predicted class"
        out.append({"class": name, "share": totals[name]["share"], "threshold": min_share,
                    "tasks_needed": n, "next_tasks": found, "next_tasks_source": where,
                    "message": f"'{name}' is {100 * (totals[name]['share'] or 0):.1f} % of the "
                               f"{'instances' if by_instances else 'images'} (under "
                               f"{100 * min_share:.0f} %): label about {n} more tasks that "
                               f"show it" + (f", e.g. tasks {found[:10]}" if found else "")})
    return out


def plot_balance(report: Mapping[str, Any], path: str, title: str) -> None:
    """A PNG: per class, instances (left) and images (right) stacked by split, and the
    warning threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(report["classes"])
    colours = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(classes) + 5), 4.2))
    for axis, unit in zip(axes, ("instances", "images"), strict=True):
        bottom = [0] * len(classes)
        for split, colour in colours.items():
            values = [report["splits"][split]["per_class"][c][unit] for c in classes]
            axis.bar(classes, values, bottom=bottom, color=colour, label=split)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if unit == report["share_of"] and sum(bottom):
            axis.axhline(report["min_class_share"] * sum(bottom), color="tab:red",
                         linestyle="--", linewidth=1,
                         label=f"{100 * report['min_class_share']:.0f} % of all")
        axis.set_title(f"{unit} per class and split")
        axis.tick_params(axis="x", labelrotation=20)
        axis.legend()
    warned = [w["class"] for w in report["warnings"]]
    fig.suptitle(title + (f" (under-represented: {', '.join(warned)})" if warned else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
