"""Does an annotator find a ready SAM embedding when they first click on a task?

A simulated annotator walks a project's tasks in the queue's order through the backend's
HTTP API, as Label Studio drives it:
1. tasks are imported: ``TASKS_CREATED`` webhook (the backend queues their encodes);
2. the queue is ranked: the job a re-rank queues for the head of the new order is
   submitted (:func:`ml_backend.models.sam.precompute.queue_head_job`, what ``rerank_project``
   returns). The order itself is a seeded shuffle standing in for the active-learning
   order, so it differs from the import order the first encodes follow;
3. per task: open it (non-interactive ``/predict``, which Label Studio sends for a task
   without predictions), wait ``--pause-s`` (finding the object), click (interactive
   ``/predict``), then work on it for ``--work-s`` (more clicks, corrections, submit).
Pauses vary by +-``--jitter``. At each first click the benchmark checks whether the image's
embedding was already in the store; that share is the hit rate (target >= 0.98 at the default
15 s per task).

The models walk the same tasks in the same order one after the other, side by side in one
run: by default the full-size ViT-B (SAM 1) and SAM 2.1 hiera-tiny, with random weights
(encode time is what matters here), each served on 127.0.0.1 with the in-process job queue,
all on this machine's CPU.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from ml_backend.app import create_app
from ml_backend.core.settings import Settings
from ml_backend.jobs.queues import InProcessQueue
from ml_backend.jobs.registry import job_registry
from ml_backend.models.sam.precompute import queue_head_job
from ml_backend.runtime import Runtime

from bench_common import sample_photo, save_random_sam, serve_loopback, write_report

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "labeling_configs" / "interactive_segmentation.xml").read_text()
PROJECT = 1
TARGET_HIT_RATE = 0.98
DEFAULT_ARCHS = ("vit_b", "sam2.1_hiera_tiny")


def pictures(count: int, seed: int) -> list[np.ndarray]:
    """``count`` distinct photos: random crops (and mirror images) of the two pictures
    ultralytics ships (``bus.jpg``, ``zidane.jpg``), resized to 1024 x 768."""
    bases = [sample_photo(name) for name in ("bus.jpg", "zidane.jpg")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        base = bases[i % len(bases)]
        h, w = base.shape[:2]
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = base[top:top + h * 3 // 4, left:left + w * 3 // 4]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((1024, 768))))
    return out


def click_body(task: dict[str, Any], x: float, y: float) -> dict[str, Any]:
    return {"tasks": [task], "project": f"{PROJECT}.1700000000", "label_config": CONFIG,
            "params": {"context": {"result": [{
                "from_name": "kp", "to_name": "image", "type": "keypointlabels",
                "is_positive": True, "origin": "manual",
                "value": {"x": x, "y": y, "width": 0.25, "keypointlabels": ["Object"]}}]}}}


def walk(arch: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One model's walk over the project; its hit rate and per-task rows."""
    work = work / arch.replace(":", "_").replace("/", "_")
    docs = work / "docs"
    (docs / "walk").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, pixels in enumerate(pictures(args.tasks, args.seed), start=1):
        Image.fromarray(pixels).save(docs / "walk" / f"{i}.png")
        tasks.append({"id": i, "data": {"image": f"/data/local-files/?d=walk/{i}.png"}})
    checkpoint = save_random_sam(arch, work / "sam_random.pth")
    settings = Settings(model_dir=work / "models", cache_dir=work / "cache",
                        sam_checkpoint=checkpoint, sam_model_type=arch,
                        local_files_document_root=docs,
                        sam_precompute_ahead=args.ahead)
    runtime = Runtime(settings)
    jobs = InProcessQueue(runtime, job_registry())
    app = create_app(settings, runtime=runtime, jobs=jobs, warm_up=True)
    rng = np.random.default_rng(args.seed)
    order = [int(i) for i in rng.permutation([t["id"] for t in tasks])]
    by_id = {t["id"]: t for t in tasks}

    def jittered(seconds: float) -> float:
        return float(seconds * rng.uniform(1 - args.jitter, 1 + args.jitter))

    rows = []
    started = time.monotonic()
    with serve_loopback(app) as base, requests.Session() as http:
        created = {"action": "TASKS_CREATED", "tasks": tasks,
                   "project": {"id": PROJECT, "label_config": CONFIG}}
        http.post(f"{base}/webhook", json=created, timeout=10).raise_for_status()
        head = queue_head_job(runtime, PROJECT, CONFIG, order, tasks)
        if head is None:
            raise SystemExit("no precompute job: is SAM configured?")
        jobs.submit(head["name"], head["payload"], head["key"])
        model_id = runtime.sam.segmenter().model_id
        for position, task_id in enumerate(order):
            task = by_id[task_id]
            opened = time.monotonic() - started
            http.post(f"{base}/predict", json={**click_body(task, 0, 0), "params": {}},
                      timeout=600).raise_for_status()
            time.sleep(jittered(args.pause_s))
            _, sha = runtime.images.load_bytes(task["data"]["image"])
            ready = runtime.sam.embeddings.is_ready(model_id, sha)
            t0 = time.perf_counter()
            response = http.post(f"{base}/predict", timeout=600, json=click_body(
                task, float(rng.uniform(30, 70)), float(rng.uniform(30, 70))))
            latency = time.perf_counter() - t0
            response.raise_for_status()
            regions = response.json()["results"][0]["result"]
            rows.append({"position": position, "task": task_id, "opened_at_s": round(opened, 1),
                         "ready_at_first_click": ready, "click_s": round(latency, 3),
                         "regions": len(regions)})
            print(f"{arch} task {position + 1}/{len(order)} (id {task_id}): "
                  f"{'ready' if ready else 'MISS '} click {latency:.2f} s", file=sys.stderr)
            time.sleep(jittered(args.work_s))
        jobs.wait_idle(5)
    jobs.close()
    hits = [r for r in rows if r["ready_at_first_click"]]
    misses = [r for r in rows if not r["ready_at_first_click"]]
    encodes = [j for j in jobs.recent() if j["name"] == "sam_embed" and j["status"] == "finished"
               and any(e.get("source") == "computed" for e in (j["result"] or {}).get(
                   "encoded", []))]
    encode_s = [j["ended_at"] - j["started_at"] for j in encodes]
    hit_rate = len(hits) / len(rows)
    return {
        "arch": arch, "tasks": len(rows),
        "encode_s": {"n": len(encode_s),
                     "median": round(float(np.median(encode_s)), 2) if encode_s else None},
        "hit_rate": round(hit_rate, 3), "ready": f"{len(hits)}/{len(rows)}",
        "target_met": hit_rate >= args.target,
        "click_s": {"ready_median": _median([r["click_s"] for r in hits]),
                    "miss_median": _median([r["click_s"] for r in misses])},
        "misses": [r["position"] for r in misses],
        "store": runtime.sam.embeddings.stats(),
        "walk_s": round(time.monotonic() - started, 1),
        "rows": rows,
    }


def walks(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Each model of ``--archs`` walks the same tasks in the same order, one after the other."""
    results = []
    for arch in args.archs:
        results.append(walk(arch, args, work))
        gc.collect()  # the last model and its embeddings
    return {
        "image_size": "1024x768",
        "annotator": {"pause_s": args.pause_s, "work_s": args.work_s, "jitter": args.jitter,
                      "seconds_per_task": round(args.pause_s + args.work_s, 1)},
        "sam_precompute_ahead": args.ahead, "target": args.target,
        "walks": results,
    }


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["walks"]
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.6 * len(results) + 0.6),
                             sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        rows = result["rows"]
        colors = ["tab:green" if r["ready_at_first_click"] else "tab:red" for r in rows]
        ax.bar([r["position"] + 1 for r in rows], [r["click_s"] for r in rows], color=colors)
        ax.set_yscale("log")
        ax.set_ylabel("first click (s, log)")
        ax.set_title(f"SAM {result['arch']}: ready at first click on {result['ready']} tasks "
                     f"(green), encoder {result['encode_s']['median']} s", fontsize=10)
    axes[-1, 0].set_xlabel("task, in queue order")
    fig.suptitle(f"annotator at {report['annotator']['seconds_per_task']} s per task, "
                 f"target {report['target']:.0%} ready")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--pause-s", type=float, default=3.0,
                        help="from opening a task to the first click")
    parser.add_argument("--work-s", type=float, default=12.0,
                        help="from the first click to opening the next task")
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument("--ahead", type=int, default=20, help="SAM_PRECOMPUTE_AHEAD")
    parser.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                        type=lambda text: [a for a in text.split(",") if a],
                        help="SAM_MODEL_TYPE values, comma-separated, walked one after another")
    parser.add_argument("--target", type=float, default=TARGET_HIT_RATE,
                        help="share of first clicks that should find the embedding ready")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "benchmarks" / "bench_sam_walk.json")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sam-walk-") as tmp:
        report = walks(args, args.workdir or Path(tmp))
    write_report(report, args.out, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
