#!/usr/bin/env python3
"""Does a detector fine-tune slow down serving? ``/predict`` latency while the backend
fine-tunes vs idle, side by side in one run.

A real backend process (``ml-backend serve``: gunicorn, in-process jobs, images read from a
local-files root) receives annotated shapes through ``POST /train``, so its own fine-tune job
trains the first detector version from the architecture config. Then one client sends
single-task ``/predict`` requests (the request Label Studio sends when an annotator opens a
task) while idle, and again while a second fine-tune job runs in its child process. Arms
(``--arms``): ``shipped`` (the defaults: the child at ``DETECTOR_TRAIN_NICE=10`` in the
``SCHED_IDLE`` class), ``nice-only`` (niceness 10, ``DETECTOR_TRAIN_IDLE=false``) and
``normal`` (niceness 0, no idle class), one after the other in one run.

Prints JSON (saved with a PNG plot): median and p95 latency idle and during training, and
their ratio (target ≤ 2).

    .venv/bin/python scripts/bench_detection_latency.py [--image-size 640] \
        [--arms shipped,nice-only,normal]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the backend-process helper used by the tests

from integration.backend_process import BackendProcess  # noqa: E402

from ml_backend.core.detections import xyxy_to_ls_rect  # noqa: E402
from ml_backend.devtools.datasets import shape_scenes  # noqa: E402

from bench_common import write_report  # noqa: E402

CONFIG = (REPO / "labeling_configs" / "shapes_detection.xml").read_text()
PROJECT = 1


def _tasks(docroot: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """Shapes images on disk as tasks annotated with their exact boxes."""
    (docroot / "shapes").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, scene in enumerate(shape_scenes(count, seed=seed)):
        name = f"shapes/{seed}-{i}.png"
        Image.fromarray(scene.pixels).save(docroot / name)
        height, width = scene.pixels.shape[:2]
        result = [{"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
                   "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [lab]}}
                  for box, lab in zip(scene.xyxy, scene.labels, strict=True)]
        tasks.append({"id": seed * 10_000 + i + 1,
                      "data": {"image": f"/data/local-files/?d={name}"},
                      "annotations": [{"id": seed * 10_000 + i + 1,
                                       "updated_at": "2026-01-01T00:00:00Z",
                                       "result": result}]})
    return tasks


def _train(backend: BackendProcess, export: list[dict[str, Any]]) -> None:
    response = requests.post(f"{backend.url}/train", timeout=30, json={
        "annotations": export, "project": PROJECT, "label_config": CONFIG})
    response.raise_for_status()


def _detector_job(backend: BackendProcess) -> dict[str, Any] | None:
    jobs = [j for j in backend.jobs() if j["name"] == "train_detector"]
    return max(jobs, key=lambda j: j["enqueued_at"]) if jobs else None


def _predict(backend: BackendProcess, task: dict[str, Any]) -> tuple[float, int]:
    body = {"tasks": [{"id": task["id"], "data": task["data"]}], "label_config": CONFIG,
            "project": f"{PROJECT}.1700000000"}
    started = time.perf_counter()
    response = requests.post(f"{backend.url}/predict", json=body, timeout=120)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, len(response.json()["results"][0]["result"])


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(samples), "median_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1)}


# Arm name -> the training-priority settings it sets; shipped sets none (the defaults).
ARMS: dict[str, dict[str, str]] = {
    "shipped": {},
    "nice-only": {"DETECTOR_TRAIN_NICE": "10", "DETECTOR_TRAIN_IDLE": "false"},
    "normal": {"DETECTOR_TRAIN_NICE": "0", "DETECTOR_TRAIN_IDLE": "false"},
}


def measure(work: Path, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    docroot = work / "docroot"
    first = _tasks(docroot, args.train_images, seed=1)
    more = _tasks(docroot, args.train_images // 2, seed=2)
    probes = _tasks(docroot, 20, seed=3)
    env = {"MODEL_DIR": str(work / f"models-{arm}"), "CACHE_DIR": str(work / f"cache-{arm}"),
           "LOCAL_FILES_DOCUMENT_ROOT": str(docroot), "REDIS_URL": "",
           "DETECTOR_IMAGE_SIZE": str(args.image_size), "DETECTOR_EPOCHS": str(args.epochs),
           "DETECTOR_MIN_LABELS": "1", "LOG_LEVEL": "WARNING", "CLASSIFIER_IMAGE_SIZE": "32",
           **ARMS[arm]}
    backend = BackendProcess(env, work / f"backend-{arm}.log")
    try:
        backend.wait_ready()
        _train(backend, first)  # the first version, from the architecture config
        backend.wait_idle(timeout_s=1800)
        job = _detector_job(backend)
        if job is None or job["status"] != "finished" or job["result"]["status"] != "trained":
            raise RuntimeError(f"first fine-tune did not train: {job}")
        for task in probes[:3]:  # load the model and warm the image cache
            _predict(backend, task)
        idle, boxes = [], 0
        for i in range(args.requests):
            elapsed, n = _predict(backend, probes[i % len(probes)])
            idle.append(elapsed)
            boxes += n
        _train(backend, first + more)  # the second fine-tune runs while we measure
        during: list[float] = []
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            job = _detector_job(backend)
            if job is not None and job["status"] == "running":
                break
            time.sleep(0.05)
        training_started = time.monotonic()
        i = 0
        while True:
            job = _detector_job(backend)
            if job is None or job["status"] != "running":
                break
            elapsed, _ = _predict(backend, probes[i % len(probes)])
            during.append(elapsed)
            i += 1
        training_s = time.monotonic() - training_started
        if job is None or job["status"] != "finished":
            raise RuntimeError(f"second fine-tune failed: {job}")
        # Requests in the job's last moments (saving) may have run after training ended.
        idle_stats, during_stats = _stats(idle), _stats(during)
        return {"arm": arm, "settings": ARMS[arm] or "defaults",
                "idle": idle_stats, "during_fine_tune": during_stats,
                "median_ratio": round(during_stats["median_ms"] / idle_stats["median_ms"], 3),
                "p95_ratio": round(during_stats["p95_ms"] / idle_stats["p95_ms"], 3),
                "fine_tune_s": round(training_s, 1),
                "mean_boxes_per_image": round(boxes / max(len(idle), 1), 2),
                "second_version": job["result"]["version"]}
    finally:
        backend.stop()


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    labels = [f"idle\n({a['arm']} run)" for a in arms] + \
        [f"during fine-tune\n({a['arm']})" for a in arms]
    medians = [a["idle"]["median_ms"] for a in arms] + \
        [a["during_fine_tune"]["median_ms"] for a in arms]
    p95 = [a["idle"]["p95_ms"] for a in arms] + [a["during_fine_tune"]["p95_ms"] for a in arms]
    fig, ax = plt.subplots(figsize=(2.2 * len(labels) + 2, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], medians, width=0.4, label="median")
    ax.bar([x + 0.2 for x in xs], p95, width=0.4, label="p95")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("/predict latency, 1 task (ms)")
    ax.set_title(f"/predict while the detector fine-tunes ({report['image_size']} px)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=640, help="DETECTOR_IMAGE_SIZE")
    parser.add_argument("--epochs", type=int, default=2, help="DETECTOR_EPOCHS")
    parser.add_argument("--train-images", type=int, default=60)
    parser.add_argument("--requests", type=int, default=40, help="idle requests")
    parser.add_argument("--arms", default="shipped",
                        help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "benchmarks" / "bench_detection_latency")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.arms.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ARMS))
    if unknown or not names:
        parser.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-det-latency-") as tmp:
        arms = [measure(Path(tmp), name, args) for name in names]
    report = {"image_size": args.image_size, "epochs": args.epochs,
              "train_images": args.train_images, "arms": arms,
              "target": "median during fine-tune <= 2 x idle",
              "seconds": round(time.perf_counter() - started, 1)}
    write_report(report, args.out, _plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
