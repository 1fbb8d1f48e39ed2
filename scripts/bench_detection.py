#!/usr/bin/env python3
"""Detection labeling-loop benchmark: synthetic shapes with exact boxes, random order vs the
backend's uncertainty order.

A simulated annotator boxes images by ground truth in rounds. After each round the detector
fine-tunes through the production job (``train_detector_job``: YOLO dataset export with the
split fixed by task id, warm start from the previous version, bounded epochs in a child
process; only Label Studio's API is replaced by the annotator's answers), starting from the
architecture config (no pretrained weights). The new version is scored on a fixed held-out
set (Ultralytics' validator: mAP50 and mAP50-95), and the next round's images are taken
either at random or from the top of ``rank_tasks`` (what the re-ranking job writes as the
queue: per-image detection uncertainty, with the usual random share).

Prints JSON (saved with a PNG plot): held-out mAP per round for both orders.

    .venv/bin/python scripts/bench_detection.py            # full run (about an hour)
    .venv/bin/python scripts/bench_detection.py --pool 24 --holdout 8 --start 8 --step 8 \
        --max-labels 16 --epochs 1 --image-size 64        # smoke run (CI)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml_backend.core.detections import xyxy_to_ls_rect
from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import SHAPE_CLASSES, ShapeScene, shape_scenes
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.learning.selection import Strategy
from ml_backend.models.detector.training import train_detector_job
from ml_backend.pipeline.ranking import rank_tasks
from ml_backend.runtime import Runtime

from bench_common import SimulatedAnnotator, detector_map, heldout_yolo_dataset, write_report

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "labeling_configs" / "shapes_detection.xml").read_text()
ORDERS = ("random", "uncertainty")


def _annotate(annotator: SimulatedAnnotator, task: dict[str, Any], scene: ShapeScene) -> None:
    """Box every object of ``scene`` exactly, as an annotator's corrected result."""
    height, width = scene.pixels.shape[:2]
    annotator.annotate(task, [
        {"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
         "original_width": width, "original_height": height,
         "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [label]}}
        for box, label in zip(scene.xyxy, scene.labels, strict=True)])


def _write_scenes(root: Path, scenes: list[ShapeScene]) -> list[dict[str, Any]]:
    (root / "shapes").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.pixels).save(root / f"shapes/{i}.png")
        tasks.append({"id": i + 1, "data": {"image": f"/data/local-files/?d=shapes/{i}.png"}})
    return tasks


def _simulate(runtime: Runtime, tasks: list[dict[str, Any]], scenes: list[ShapeScene],
              heldout_yaml: Path, project: int, order: str, seed: int,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    annotator = SimulatedAnnotator(CONFIG)
    runtime.ls_api = annotator  # type: ignore[assignment]
    pool = tasks[:args.pool]
    for i in rng.choice(len(pool), size=args.start, replace=False):
        _annotate(annotator, pool[i], scenes[i])
    rounds = []
    while True:
        started = time.perf_counter()
        outcome = train_detector_job(runtime, TrainRequest(project=project, mode="full"))
        if outcome["status"] != "trained":
            raise RuntimeError(f"round did not train: {outcome}")
        trained_s = time.perf_counter() - started
        measured = detector_map(runtime, project, heldout_yaml, args.image_size)
        assert measured is not None
        map50, map50_95 = measured
        meta = runtime.store.latest(project).manifest["detector"]  # type: ignore[union-attr]
        rounds.append({"labels": len(annotator.done), "heldout_map50": round(map50, 4),
                       "heldout_map50_95": round(map50_95, 4),
                       "val_map50": round(meta["map50"], 4), "n_val": meta["n_val"],
                       "train_s": round(trained_s, 1)})
        print(f"{order} seed {seed}: {rounds[-1]}", file=sys.stderr, flush=True)
        if len(annotator.done) >= args.max_labels:
            return rounds
        candidates = [t for t in pool if t["id"] not in annotator.done]
        step = min(args.step, args.max_labels - len(annotator.done))
        if order == "random":
            picked = [candidates[i]["id"] for i in rng.choice(len(candidates), step,
                                                                replace=False)]
        else:
            ranked = rank_tasks(runtime, project, CONFIG, candidates,
                                list(annotator.done.values()), Strategy.MARGIN, step,
                                args.random_share, rng)
            picked = ranked.order[:step]
        for task_id in picked:
            _annotate(annotator, tasks[task_id - 1], scenes[task_id - 1])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    scenes = shape_scenes(args.pool + args.holdout, seed=args.data_seed)
    docroot = work / "docroot"
    tasks = _write_scenes(docroot, scenes)
    heldout_yaml = heldout_yolo_dataset(work / "heldout", [
        (docroot / f"shapes/{args.pool + i}.png", scene)
        for i, scene in enumerate(scenes[args.pool:])])
    runtime = Runtime(Settings(
        model_dir=work / "models", cache_dir=work / "cache", local_files_document_root=docroot,
        detector_image_size=args.image_size, detector_epochs=args.epochs,
        detector_batch=args.batch, detector_min_labels=1, detector_train_every=1,
        detector_train_nice=0, update_project_model_version=False,
        rerank_after_training=False))
    runs: dict[str, list[list[dict[str, Any]]]] = {order: [] for order in args.orders}
    project = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for order in args.orders:
            project += 1
            runs[order].append(_simulate(runtime, tasks, scenes, heldout_yaml, project, order,
                                         seed, args))
    n_objects = [len(s.labels) for s in scenes]
    report: dict[str, Any] = {
        "dataset": "synthetic shapes (ml_backend.devtools.datasets.shape_scenes)",
        "classes": list(SHAPE_CLASSES), "pool": args.pool, "heldout": args.holdout,
        "objects_per_image": [min(n_objects), max(n_objects)],
        "objects_total": int(sum(n_objects)),
        "image_sizes": sorted({f"{s.pixels.shape[1]}x{s.pixels.shape[0]}" for s in scenes}),
        "start_weights": f"architecture config {runtime.settings.yolo_arch} (no pretrained "
                         "weights)",
        "start": args.start, "step": args.step, "max_labels": args.max_labels,
        "epochs_per_round": args.epochs, "image_size": args.image_size, "batch": args.batch,
        "random_share": args.random_share,
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)), "orders": {},
    }
    for order, seeds in runs.items():
        labels = [r["labels"] for r in seeds[0]]
        map50 = np.array([[r["heldout_map50"] for r in rounds] for rounds in seeds])
        map50_95 = np.array([[r["heldout_map50_95"] for r in rounds] for rounds in seeds])
        report["orders"][order] = {
            "labels": labels,
            "heldout_map50": [round(v, 4) for v in map50.mean(axis=0)],
            "heldout_map50_95": [round(v, 4) for v in map50_95.mean(axis=0)],
            "rounds": seeds,
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "heldout_map50", "held-out mAP50"),
                           (axes[1], "heldout_map50_95", "held-out mAP50-95")):
        for order, data in report["orders"].items():
            ax.plot(data["labels"], data[key], marker="o", label=order)
        if key == "heldout_map50":
            ax.axhline(0.8, color="grey", linestyle=":", label="target 0.8")
        ax.set_xlabel("labeled images")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"YOLO from {report['start_weights'].split(' (')[0]}, "
                 f"{report['epochs_per_round']} epochs per round, {report['image_size']} px")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=400, help="images to label from")
    parser.add_argument("--holdout", type=int, default=100, help="held-out test images")
    parser.add_argument("--start", type=int, default=50, help="random labels before round 1")
    parser.add_argument("--step", type=int, default=50, help="labels per round")
    parser.add_argument("--max-labels", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tune epochs per round")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--random-share", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run: first-seed … first-seed + seeds - 1")
    parser.add_argument("--data-seed", type=int, default=2026)
    parser.add_argument("--orders", type=lambda s: s.split(","), default=list(ORDERS))
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "benchmarks" / "bench_detection")
    args = parser.parse_args(argv)
    unknown = set(args.orders) - set(ORDERS)
    if unknown:
        parser.error(f"unknown orders {sorted(unknown)}; known: {list(ORDERS)}")
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp:
        report = run(args, Path(tmp))
    write_report(report, args.out, _plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
