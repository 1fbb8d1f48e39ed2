#!/usr/bin/env python3
"""Load test: many concurrent clients against ``ml-backend serve`` (gunicorn) on 127.0.0.1,
next to one client alone, in one run.

Every request is what Label Studio sends when an annotator opens a task without a prediction:
``POST /predict`` with one task, here a handwritten digit the server has not seen yet (a new
image per request, so each one is read, decoded, embedded and classified; nothing comes from
the embedding cache). The classifier is trained first, in this process, on 40 labeled digits
and saved where the server finds it. Images are read from a local-files root, as with a disk
shared with Label Studio.

It prints one JSON document (and saves it with a latency plot): for ``--clients`` x
``--requests`` requests and for one client x ``--requests``: throughput, p50/p90/p99 latency
and the error count (non-200 answers, wrong result counts, exceptions; target 0), and the
throughput ratio of the two.

    .venv/bin/python scripts/bench_load.py [--clients 16] [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import write_digit_pngs
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.models.classifier.training import train_classifier
from ml_backend.runtime import Runtime

from bench_common import SimulatedAnnotator, measure_in_workdir, serve_backend, write_report

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "labeling_configs" / "digit_classification.xml").read_text()
PROJECT = 1
TRAINING_LABELS = 40


def _images(root: Path, count: int) -> list[str]:
    """``count`` distinct digit images under ``root`` as local-files URLs: the data set's
    digits, then copies with one pixel changed (new bytes, so nothing is cached)."""
    base = write_digit_pngs(root / "digits", min(count, 1797), size=64, seed=2)
    urls = []
    for i in range(count):
        path, _ = base[i % len(base)]
        if i >= len(base):
            pixels = np.array(Image.open(path))
            pixels.flat[i // len(base)] ^= 0xFF
            path = root / "copies" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(pixels).save(path)
        urls.append(f"/data/local-files/?d={path.relative_to(root)}")
    return urls


def _train(settings: Settings, root: Path) -> str:
    labeled = write_digit_pngs(root / "train", TRAINING_LABELS, size=64, seed=3)
    annotator = SimulatedAnnotator(CONFIG)
    for i, (path, label) in enumerate(labeled):
        annotator.annotate({"id": 100_000 + i, "data": {
            "image": f"/data/local-files/?d={path.relative_to(root)}"}},
            [{"from_name": "digit", "to_name": "image", "type": "choices",
              "value": {"choices": [str(label)]}}])
    runtime = Runtime(settings)
    runtime.ls_api = annotator  # type: ignore[assignment]
    outcome = train_classifier(runtime, TrainRequest(project=PROJECT, mode="full"))
    if outcome.status != "trained":
        raise RuntimeError(f"training failed: {outcome.as_dict()}")
    return runtime.model_version(PROJECT)


def _run(base: str, urls: list[str], clients: int, version: str) -> dict[str, Any]:
    """``clients`` threads, each with its own connection, sending its share of ``urls``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [urls[i::clients] for i in range(clients)]

    def client(share: list[str]) -> None:
        with requests.Session() as session:
            for n, url in enumerate(share):
                body = {"tasks": [{"id": n + 1, "data": {"image": url}}],
                        "project": f"{PROJECT}.1700000000", "label_config": CONFIG}
                started = time.perf_counter()
                try:
                    response = session.post(f"{base}/predict", json=body, timeout=120)
                    elapsed = time.perf_counter() - started
                    results = response.json().get("results") if response.ok else None
                    good = (response.status_code == 200 and isinstance(results, list)
                            and len(results) == 1 and results[0]["model_version"] == version
                            and results[0]["result"])
                    problem = None if good else f"HTTP {response.status_code}: " \
                                                f"{response.text[:200]}"
                except (requests.RequestException, ValueError, KeyError) as exc:
                    elapsed, problem = time.perf_counter() - started, repr(exc)[:200]
                with lock:
                    latencies.append(elapsed)
                    if problem is not None:
                        errors.append(problem)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "error_examples": errors[:5], "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1),
            "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
                           "mean": round(1000 * statistics.mean(latencies), 1),
                           "max": round(1000 * ordered[-1], 1)},
            "samples_ms": [round(1000 * s, 1) for s in latencies]}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {"MODEL_DIR": str(work / "models"), "CACHE_DIR": str(work / "cache"),
           "LOCAL_FILES_DOCUMENT_ROOT": str(work / "files"),
           "CLASSIFIER_IMAGE_SIZE": str(args.image_size), "LOG_LEVEL": "WARNING",
           "UPDATE_PROJECT_MODEL_VERSION": "false", "RERANK_AFTER_TRAINING": "false"}
    version = _train(Settings.from_env(env), work / "files")
    warm_up = 10
    urls = _images(work / "files", args.clients * args.requests + args.requests + warm_up)
    loaded = urls[:args.clients * args.requests]
    alone = urls[args.clients * args.requests:-warm_up]
    serve_args = ["--workers", str(args.workers), "--threads", str(args.threads)]

    def ready(health: dict[str, Any]) -> bool:
        return bool(health["models"]["classifier"]["status"] in {"ready", "degraded"})

    with serve_backend(env, work / "server.log", serve_args, ready) as base:
        _run(base, urls[-warm_up:], 1, version)  # warm-up: the first requests load models
        single = _run(base, alone, 1, version)
        concurrent = _run(base, loaded, args.clients, version)
        metrics = requests.get(f"{base}/metrics", timeout=10).text
    return {
        "server": f"ml-backend serve {' '.join(serve_args)} (gunicorn) on 127.0.0.1",
        "request": "POST /predict, 1 task, a digit image never seen before (local files)",
        "classifier_image_size": args.image_size, "model_version": version,
        "concurrent": concurrent, "single_client": single,
        "throughput_ratio_concurrent_over_single": round(
            concurrent["throughput_rps"] / single["throughput_rps"], 2),
        "target": "0 errors", "target_met": concurrent["errors"] == 0 and single["errors"] == 0,
        "metrics_predictions_line": next((line for line in metrics.splitlines()
                                          if line.startswith("mlb_predictions_total")), None),
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for key, color in (("single_client", "#7f7f7f"), ("concurrent", "#1f77b4")):
        run = report[key]
        samples = np.sort(run["samples_ms"])
        ax.plot(samples, np.linspace(0, 1, len(samples)), color=color,
                label=f"{run['clients']} client(s): {run['throughput_rps']} req/s, "
                      f"p99 {run['latency_ms']['p99']} ms, {run['errors']} errors")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"/predict under load: {report['concurrent']['requests']} requests, "
                 f"throughput x{report['throughput_ratio_concurrent_over_single']} vs one "
                 "client")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker")
    parser.add_argument("--image-size", type=int, default=64, help="CLASSIFIER_IMAGE_SIZE")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "benchmarks" / "bench_load.json")
    args = parser.parse_args(argv)
    if min(args.clients, args.requests) < 1:
        parser.error("--clients and --requests must be at least 1")
    report = measure_in_workdir(args.workdir, "bench-load-",
                                lambda work: measure(args, work))
    write_report(report, args.out, _plot)
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
