#!/usr/bin/env python3
"""Where a young detector's fix-up time goes, and whether predicting differently helps.

Issue 18's shipped loop costs 0.350 of manual labeling on the shapes pool (goal: 1/3); tasks
41-100 cost about 9 s each although the detector then scores mAP50 0.93-0.99. This bench
breaks that time down. For each count of labeled scenes (``--labels``), a detector is trained
from the architecture config (no weights) through the fine-tune job's child process
(``fine_tune``, the training images repeated to ``--min-epoch-images`` a epoch as the job
does), and its boxes on held-out scenes are costed with the annotator cost model of
``bench_effort`` (``box_effort``: accept a box with IoU ≥ 0.9 to the truth 1 s, adjust one
with IoU 0.5-0.9 3 s, relabel 3 s, delete a false one 1 s, draw a missed one 7 s). Side by
side in one run, per detector and threshold:

- prediction variants: at the training size, with Ultralytics' test-time augmentation
  (flips and scales), and at 1.25x and 1.5x the training size;
- the seconds each action takes, and the ratio to drawing every box by hand;
- ``if_tight``: the same boxes, had every adjusted one been within IoU 0.9 (computed, not
  measured): how much better localization alone could give.

Prints one JSON document and saves ``--out``.json/.png.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.devtools.datasets import SHAPE_CLASSES, ShapeScene, shape_scenes
from ml_backend.models.detector.model import YoloDetector, write_yolo_dataset
from ml_backend.models.detector.training import (
    FineTuneSpec,
    fine_tune,
    repeat_training_images,
)
from ml_backend.reporting.effort import DEFAULT_COSTS, Effort, box_effort, match_boxes

from bench_common import DETECTOR_BATCH, scene_sample, write_report

REPO = Path(__file__).resolve().parent.parent
SECONDS_OF = {"accepted": DEFAULT_COSTS.accept_box_s, "adjusted": DEFAULT_COSTS.adjust_box_s,
              "changed": DEFAULT_COSTS.change_class_s, "deleted": DEFAULT_COSTS.delete_box_s,
              "drawn": DEFAULT_COSTS.draw_box_s}


def train(work: Path, scenes: list[ShapeScene], val: list[ShapeScene], epochs: int,
          image_size: int, min_epoch_images: int) -> dict[str, Any]:
    samples = ([scene_sample(f"t{i}", s) for i, s in enumerate(scenes)]
               + [scene_sample(f"v{i}", s) for i, s in enumerate(val)])
    is_val = np.array([i >= len(scenes) for i in range(len(samples))])
    samples, is_val = repeat_training_images(samples, is_val, min_epoch_images)
    data = write_yolo_dataset(work / "dataset", samples, SHAPE_CLASSES, list(is_val))
    spec = FineTuneSpec(start="yolov8n.yaml", data_yaml=str(data), out_dir=str(work / "runs"),
                        config_dir=str(work / "cfg"), epochs=epochs, image_size=image_size,
                        batch=DETECTOR_BATCH, device="cpu", warm=False)
    return fine_tune(spec, work)


def predict(detector: YoloDetector, scenes: list[ShapeScene], size: int, augment: bool
            ) -> list[tuple[np.ndarray, list[str], np.ndarray]]:
    """``(xyxy, labels, confidences)`` of each scene down to 0.05, as the serving detector
    reads images (BGR to Ultralytics)."""
    batch = [np.ascontiguousarray(s.pixels[..., ::-1]) for s in scenes]
    results = detector.model.predict(batch, imgsz=size, conf=0.05, device="cpu",
                                     max_det=300, verbose=False, augment=augment)
    return [(r.boxes.xyxy.cpu().numpy().astype(np.float64),
             [detector.classes[int(c)] for c in r.boxes.cls.cpu().numpy()],
             r.boxes.conf.cpu().numpy()) for r in results]


def cost(scenes: list[ShapeScene], boxes: list[tuple[np.ndarray, list[str], np.ndarray]],
         threshold: float) -> dict[str, Any]:
    total, ious = Effort(), []
    for scene, (xyxy, labels, conf) in zip(scenes, boxes, strict=True):
        keep = conf >= threshold
        kept = xyxy[keep]
        names = [label for label, k in zip(labels, keep, strict=True) if k]
        total += box_effort(kept, names, scene.xyxy, list(scene.labels))
        ious += [iou for _, _, iou in match_boxes(kept, scene.xyxy)]
    manual = sum(len(s.labels) for s in scenes) * DEFAULT_COSTS.draw_box_s
    adjusted = total.counts.get("adjusted", 0)
    tight = total.seconds - adjusted * (DEFAULT_COSTS.adjust_box_s - DEFAULT_COSTS.accept_box_s)
    return {"seconds_per_task": round(total.seconds / len(scenes), 2),
            "ratio_to_manual": round(total.seconds / manual, 3),
            "counts": dict(sorted(total.counts.items())),
            "seconds_by_action": {k: round(n * SECONDS_OF[k] / len(scenes), 2)
                                  for k, n in sorted(total.counts.items())},
            "matched_iou_median": round(float(np.median(ious)), 3) if ious else None,
            "if_tight_ratio_to_manual": round(tight / manual, 3)}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threshold = str(report["thresholds"][len(report["thresholds"]) // 2])
    bars = [(f"{n} labels\n{variant}", row["thresholds"][threshold])
            for n, run in report["detectors"].items() for variant, row in run["variants"].items()]
    fig, ax = plt.subplots(figsize=(max(8, len(bars) * 0.9), 4.5))
    bottom = np.zeros(len(bars))
    for action in SECONDS_OF:
        heights = np.array([b[1]["seconds_by_action"].get(action, 0.0) for b in bars])
        ax.bar(range(len(bars)), heights, bottom=bottom, label=action)
        bottom += heights
    ax.axhline(report["manual_seconds_per_task"] / 3, color="k", ls="--", lw=1,
               label="1/3 of manual")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel("annotator seconds per held-out task")
    ax.set_title(f"Fix-up time by action, threshold {threshold} "
                 f"(manual: {report['manual_seconds_per_task']:.1f} s a task)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="20,40,80",
                        help="labeled scenes each detector trains on")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256,
                        help="training size (bench_effort's --detector-image-size)")
    parser.add_argument("--min-epoch-images", type=int, default=160)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--val", type=int, default=20, help="scenes training validates on")
    parser.add_argument("--thresholds", default="0.1,0.25,0.5")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "bench_fixup")
    args = parser.parse_args()
    started = time.perf_counter()
    held = shape_scenes(args.held_out, seed=32)
    val = shape_scenes(args.val, seed=33)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    size = args.image_size
    variants = {f"{size} px": (size, False), f"{size} px + TTA": (size, True),
                f"{round(size * 1.25)} px": (round(size * 1.25), False),
                f"{round(size * 1.5)} px": (round(size * 1.5), False)}
    detectors: dict[str, Any] = {}
    for n in [int(v) for v in args.labels.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"bench-fixup-{n}-") as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            # Ultralytics logs to stdout: to stderr, so stdout stays the report.
            with contextlib.redirect_stdout(sys.stderr):
                trained = train(work, shape_scenes(n, seed=31), val, args.epochs, size,
                                args.min_epoch_images)
            train_s = time.perf_counter() - t0
            detector = YoloDetector(Path(trained["weights"]), work / "cfg", "cpu", size)
            runs = {}
            for name, (imgsz, augment) in variants.items():
                boxes = predict(detector, held, imgsz, augment)
                runs[name] = {"thresholds": {str(t): cost(held, boxes, t) for t in thresholds}}
            detectors[str(n)] = {"val_map50": round(float(trained["map50"]), 3),
                                 "val_map50_95": round(float(trained["map50_95"]), 3),
                                 "train_s": round(train_s), "variants": runs}
            print(f"{n} labels: {runs[f'{size} px']['thresholds']}", file=sys.stderr)
    manual = sum(len(s.labels) for s in held) * DEFAULT_COSTS.draw_box_s / len(held)
    report = {"held_out_scenes": len(held), "boxes": sum(len(s.labels) for s in held),
              "manual_seconds_per_task": round(manual, 2), "epochs": args.epochs,
              "image_size": size, "min_epoch_images": args.min_epoch_images,
              "start": "yolov8n.yaml (architecture config, no weights)",
              "costs_seconds": SECONDS_OF, "thresholds": thresholds,
              "detectors": detectors, "seconds": round(time.perf_counter() - started, 1)}
    write_report(report, args.out, plot)


if __name__ == "__main__":
    main()
