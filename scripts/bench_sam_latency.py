#!/usr/bin/env python3
"""SAM click latency: what an annotator waits for after a smart-tool click, next to the time
the model alone needs. Everything is measured in one run.

An interactive click runs SAM's prompt encoder and mask decoder on the image's embedding. The
embedding comes from the image encoder, which is the slow part. The backend caches
embeddings, so after the first click on an image the server should add little to the
decoder's own time. This script checks that, for several SAM generations side by side in one
run: by default ViT-B (SAM 1) and the four SAM 2.1 image models, each the full-size
architecture with random weights, which are fine for timing; no weights are downloaded. The
weights are saved as a checkpoint and loaded by the backend the way a released one is. The
backend runs as in production, ``ml-backend serve`` (gunicorn, one worker) in its own process
on 127.0.0.1, so the client never shares its interpreter; the raw timings load the same
checkpoint in this process, so raw and server numbers come from identical weights (and run
while the server is idle). The models run one after the other, each with its own server.
The picture is 1920×1080. It measures, per model:

1. encoder: ``Segmenter.embed`` (median of ``--encode-repeats``);
2. decoder: ``Segmenter.segment`` (the model alone, in this process) for one click
   (median of ``--clicks`` click positions), each timed right before the server click at
   the same position (paired samples);
3. warm server click: ``POST /predict`` over HTTP on 127.0.0.1 with a smart keypoint in
   ``params.context``, with the image's embedding already cached, and the same click
   positions as 2. It reports the median and p90. The target is
   median ≤ 1.3 × decoder median + 20 ms;
4. cold server click: the same request on an image whose embedding is not cached (the first
   request on the picture, then copies of it that each have one different pixel: new bytes,
   so a new cache key). It reports the median of ``--cold-clicks`` requests, and the first
   request counts as one of them.

The report also breaks the server's overhead down where that is simple: reading and hashing
the image file, brush RLE encoding of the mask, and JSON encoding of the response (with the
backend's JSON provider). It also gives the response size and the server's embedding store
hit counts (from its ``/health``). Across models it gives each one's encoder and cold click
as a ratio of the first model's (ViT-B by default); the goal for ``sam2.1_hiera_tiny`` is a
cold click at most 1/4 of ViT-B's.

    .venv/bin/python scripts/bench_sam_latency.py [--archs vit_b,sam2.1_hiera_tiny] [--clicks 30]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from flask import Flask
from PIL import Image

from ml_backend.core.jsonio import ArrayJSONProvider
from ml_backend.core.settings import Settings
from ml_backend.labelstudio.rle import mask_to_rle_array
from ml_backend.models.sam.model import SamEmbedding, SamMask, SamPrompt, Segmenter
from ml_backend.runtime import Runtime

from bench_common import (
    measure_in_workdir,
    sample_photo,
    save_random_sam,
    serve_backend,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "labeling_configs" / "interactive_segmentation.xml").read_text()
WIDTH, HEIGHT = 1920, 1080
PROJECT = "1.1700000000"
SEED = 0
TARGET_FACTOR, TARGET_SLACK_MS = 1.3, 20.0
DEFAULT_ARCHS = ("vit_b", "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
                 "sam2.1_hiera_large")
# Cold click of a model ÷ the first model's (ViT-B) at most this: SAM 2.1 tiny's point on a CPU.
COLD_RATIO_GOALS = {"sam2.1_hiera_tiny": 0.25}
IDLE_BEFORE_CLICK_S = 0.5


def _picture() -> np.ndarray:
    """A real photo as 1920×1080 RGB: Ultralytics' ``zidane.jpg`` (1280×720, 16:9 already)."""
    image = Image.fromarray(sample_photo("zidane.jpg"))
    return np.asarray(image.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)).copy()


def _click_positions(count: int) -> list[tuple[float, float]]:
    """``count`` click positions in percent of the image, spread over its middle 80 %."""
    rng = np.random.default_rng(SEED)
    return [(float(x), float(y)) for x, y in rng.uniform(10.0, 90.0, size=(count, 2))]


def _body(url: str, x: float, y: float) -> dict[str, Any]:
    """The body Label Studio sends for one positive click with the smart keypoint tool."""
    return {"tasks": [{"id": 1, "data": {"image": url}}], "project": PROJECT,
            "label_config": CONFIG,
            "params": {"context": {"result": [{
                "from_name": "kp", "to_name": "image", "type": "keypointlabels",
                "is_positive": True, "origin": "manual",
                "original_width": WIDTH, "original_height": HEIGHT,
                "value": {"x": x, "y": y, "width": 0.25, "keypointlabels": ["Object"]}}]}}}


def _sam_ready(health: dict[str, Any]) -> bool:
    sam = health["models"]["sam"]
    if sam["status"] == "error":
        raise RuntimeError(f"SAM did not load: {sam['error']}")
    return bool(sam["status"] == "ready")


def _server_seconds(session: requests.Session, base: str) -> tuple[float, int]:
    """Total seconds and count of /predict requests as the server timed them (its own
    latency histogram in /metrics: from the request's arrival to the response built)."""
    total, count = 0.0, 0
    for line in session.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith('mlb_http_request_seconds_sum{endpoint="/predict"}'):
            total = float(line.split()[-1])
        elif line.startswith('mlb_http_request_seconds_count{endpoint="/predict"}'):
            count = int(float(line.split()[-1]))
    return total, count


def _server_counts(session: requests.Session, base: str) -> dict[str, int]:
    """The server's embedding lookups so far, by source (its /health)."""
    stats = session.get(f"{base}/health", timeout=10).json()["models"]["sam"]["embeddings"]
    return {k: int(stats[k]) for k in ("memory", "disk", "computed", "waited")}


def _click(session: requests.Session, base: str, url: str, x: float, y: float
           ) -> tuple[float, dict[str, Any], int]:
    """One interactive /predict. Returns seconds, the response JSON and the body's size. It
    fails unless the answer is one brush mask."""
    started = time.perf_counter()
    response = session.post(f"{base}/predict", json=_body(url, x, y), timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"/predict ({x:.1f}%, {y:.1f}%) on {url}: HTTP "
                           f"{response.status_code}: {response.text[:500]}")
    payload = response.json()
    regions = payload["results"][0]["result"]
    if not any(r.get("type") == "brushlabels" for r in regions):
        raise RuntimeError(f"/predict ({x:.1f}%, {y:.1f}%) on {url}: no brushlabels region "
                           f"in {json.dumps(payload)[:500]}")
    return elapsed, payload, len(response.content)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def _p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(0.9 * (len(ordered) - 1))]


def _counts_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _encode(segmenter: Segmenter, pixels: np.ndarray, repeats: int
            ) -> tuple[list[float], SamEmbedding]:
    """Encoder seconds and the embedding."""
    encode, embedding = [], None
    for _ in range(repeats):
        elapsed, embedding = _timed(lambda: segmenter.embed(pixels))
        encode.append(elapsed)
    assert embedding is not None
    return encode, embedding


def _decode(segmenter: Segmenter, embedding: SamEmbedding, x: float, y: float
            ) -> tuple[float, SamMask]:
    """Decoder seconds for one click at (x, y) percent, and its mask."""
    prompt = SamPrompt(np.array([[x * WIDTH / 100, y * HEIGHT / 100]]), np.array([True]))
    return _timed(lambda: segmenter.segment(embedding, prompt))


def _overheads(runtime: Runtime, url: str, masks: list[SamMask],
               response: dict[str, Any]) -> dict[str, Any]:
    """Medians of parts of the server's work besides the decoder, timed on their own."""
    read = [_timed(lambda: runtime.images.load_bytes(url, task_id=1))[0] for _ in range(5)]
    rle = [_timed(lambda m=m: mask_to_rle_array(m.mask.view(np.uint8) * np.uint8(255)))[0]
           for m in masks]
    provider = ArrayJSONProvider(Flask("bench"))
    as_served = {"results": [{**response["results"][0], "result": [
        {**r, "value": {**r["value"], "rle": np.array(r["value"]["rle"], dtype=np.uint8)}}
        for r in response["results"][0]["result"]]}]}
    encode = [_timed(lambda: provider.dumps(as_served))[0] for _ in range(5)]
    return {"image_read_sha256_ms": _ms(statistics.median(read)),
            "rle_encode_ms": _ms(statistics.median(rle)),
            "json_encode_ms": _ms(statistics.median(encode)),
            "mask_foreground_share_median": round(float(statistics.median(
                float(m.mask.mean()) for m in masks)), 3)}


def measure_arch(arch: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One model's timings: raw encoder and decoder, warm and cold server clicks."""
    work = work / arch.replace(":", "_").replace("/", "_")
    docs = work / "docs"
    (docs / "set1").mkdir(parents=True, exist_ok=True)
    pixels = _picture()
    Image.fromarray(pixels).save(docs / "set1" / "img.png")
    url = "/data/local-files/?d=set1/img.png"
    checkpoint = save_random_sam(arch, work / "sam_random.pth", seed=SEED)
    checkpoint_mb = round(checkpoint.stat().st_size / 2**20, 1)
    env = {"MODEL_DIR": str(work / "models"), "CACHE_DIR": str(work / "cache"),
           "SAM_CHECKPOINT": str(checkpoint), "SAM_MODEL_TYPE": arch,
           "LOCAL_FILES_DOCUMENT_ROOT": str(docs), "UPDATE_PROJECT_MODEL_VERSION": "false",
           "RERANK_AFTER_TRAINING": "false", "LOG_LEVEL": args.server_log_level}
    settings = Settings.from_env(env)
    runtime = Runtime(settings)  # this process's copy, for the raw timings
    load_s, segmenter = _timed(runtime.sam.segmenter)
    positions = _click_positions(args.clicks)
    serve_args = args.serve_args.split()
    with serve_backend(env, work / "server.log", serve_args, _sam_ready) as base, \
            requests.Session() as session:
        # Raw model timings while the server idles (same checkpoint, same weights).
        encode, embedding = _encode(segmenter, pixels, args.encode_repeats)
        before = _server_counts(session, base)
        first_s, _, _ = _click(session, base, url, *positions[0])  # computes and caches
        cold = [first_s]
        cold_counts = _counts_delta(before, _server_counts(session, base))
        before = _server_counts(session, base)
        handled_before = _server_seconds(session, base)
        warm, sizes, response = [], [], {}
        decode, masks = [], []
        for x, y in positions:
            # Raw decoder and server click in pairs: both see the same machine conditions.
            elapsed, found = _decode(segmenter, embedding, x, y)
            decode.append(elapsed)
            masks.append(found)
            # This process's OpenMP threads keep spinning for a while after a parallel
            # region; let them go idle so the server gets the cores, as it would in use.
            time.sleep(IDLE_BEFORE_CLICK_S)
            elapsed, response, size = _click(session, base, url, x, y)
            warm.append(elapsed)
            sizes.append(size)
        warm_counts = _counts_delta(before, _server_counts(session, base))
        handled_after = _server_seconds(session, base)
        in_server_ms = _ms((handled_after[0] - handled_before[0])
                           / max(handled_after[1] - handled_before[1], 1))
        before = _server_counts(session, base)
        for i in range(1, args.cold_clicks):
            changed = pixels.copy()
            changed[i // WIDTH, i % WIDTH] ^= 0xFF  # new bytes: a new embedding key
            Image.fromarray(changed).save(docs / "set1" / f"img-{i}.png")
            elapsed, _, _ = _click(session, base, f"/data/local-files/?d=set1/img-{i}.png",
                                   *positions[i % len(positions)])
            cold.append(elapsed)
        total = _server_counts(session, base)
        for key, value in _counts_delta(before, total).items():
            cold_counts[key] += value
    if warm_counts["memory"] != len(warm) or warm_counts["computed"]:
        raise RuntimeError(f"warm clicks did not all find the embedding in memory: "
                           f"{warm_counts}")
    if cold_counts["computed"] != len(cold):
        raise RuntimeError(f"cold clicks did not all compute an embedding: {cold_counts}")

    decoder_ms = _ms(statistics.median(decode))
    warm_ms = _ms(statistics.median(warm))
    target_ms = round(TARGET_FACTOR * decoder_ms + TARGET_SLACK_MS, 1)
    parts = _overheads(runtime, url, masks, response)
    accounted = decoder_ms + parts["image_read_sha256_ms"] + parts["rle_encode_ms"] \
        + parts["json_encode_ms"]
    return {
        "arch": arch, "checkpoint_mb": checkpoint_mb, "model_load_s": round(load_s, 2),
        "image_png_bytes": (docs / "set1" / "img.png").stat().st_size,
        "encoder_s": round(statistics.median(encode), 2),
        "encoder_samples_s": [round(s, 2) for s in encode],
        "decoder_ms": decoder_ms, "decoder_p90_ms": _ms(_p90(decode)),
        "server_warm_ms": {"n": len(warm), "median": warm_ms, "p90": _ms(_p90(warm)),
                           "min": _ms(min(warm)), "max": _ms(max(warm))},
        "target_ms": target_ms, "target_met": warm_ms <= target_ms,
        "server_over_decoder": round(warm_ms / decoder_ms, 3),
        "server_over_decoder_paired_median": round(statistics.median(
            w / d for w, d in zip(warm, decode, strict=True)), 3),
        "cold_click_s": round(statistics.median(cold), 2),
        "cold_click_samples_s": [round(s, 2) for s in cold],
        "overhead": {**parts, "http_and_other_ms": round(warm_ms - accounted, 1)},
        # Mean time inside the server per warm click (its own clock), and what the client
        # saw beyond that: sending the request, receiving and reading the response.
        "server_side_mean_ms": in_server_ms,
        "transport_mean_ms": round(_ms(statistics.mean(warm)) - in_server_ms, 1),
        "response_bytes": int(statistics.median(sizes)),
        "counts": {"total": total, "cold_clicks": cold_counts, "warm_clicks": warm_counts},
        "device": str(runtime.device),
    }


def compare(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Each model's encoder and cold click as a ratio of the first model's, with the cold-click
    goals of :data:`COLD_RATIO_GOALS` where the first model is ViT-B."""
    baseline = models[0]
    out: dict[str, Any] = {"baseline": baseline["arch"]}
    for model in models[1:]:
        row: dict[str, Any] = {
            "encoder_ratio": round(model["encoder_s"] / baseline["encoder_s"], 3),
            "cold_click_ratio": round(model["cold_click_s"] / baseline["cold_click_s"], 3),
            "decoder_ratio": round(model["decoder_ms"] / baseline["decoder_ms"], 3)}
        goal = COLD_RATIO_GOALS.get(model["arch"])
        if goal is not None and baseline["arch"] == "vit_b":
            row["cold_click_goal"] = f"<= {goal:g} x vit_b"
            row["cold_click_goal_met"] = row["cold_click_ratio"] <= goal
        out[model["arch"]] = row
    return out


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    models = []
    for arch in args.archs:
        models.append(measure_arch(arch, args, work))
        print(f"{arch}: encoder {models[-1]['encoder_s']} s, cold click "
              f"{models[-1]['cold_click_s']} s, decoder {models[-1]['decoder_ms']} ms, warm "
              f"click {models[-1]['server_warm_ms']['median']} ms", file=sys.stderr)
        gc.collect()  # the model this process loaded for the raw timings
    comparison = compare(models)
    return {
        "weights": "random init (seeded), saved as a checkpoint",
        "server": f"ml-backend serve {args.serve_args} in its own process, one model at a time",
        "note": "random weights draw noisy masks (see mask_foreground_share_median), so "
                "the RLE, JSON and response size are larger than a trained SAM's smooth "
                "masks give; encoder and decoder times do not depend on the weights",
        "image_size": f"{WIDTH}x{HEIGHT}",
        "target": f"server warm median <= {TARGET_FACTOR} x decoder median + "
                  f"{TARGET_SLACK_MS:g} ms",
        "models": models,
        "comparison": comparison,
        "all_targets_met": all(m["target_met"] for m in models) and all(
            row.get("cold_click_goal_met", True)
            for key, row in comparison.items() if key != "baseline"),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    names = [m["arch"].replace("sam2.1_hiera_", "2.1 ") for m in models]
    x = np.arange(len(models))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.38
    bars = left.bar(x - width / 2, [m["decoder_ms"] for m in models], width,
                    color="#7f7f7f", label="raw decoder (median)")
    left.bar_label(bars, fmt="%.0f", fontsize=8)
    bars = left.bar(x + width / 2, [m["server_warm_ms"]["median"] for m in models], width,
                    color="#1f77b4", label="server click (median)")
    left.bar_label(bars, fmt="%.0f", fontsize=8)
    left.scatter(x + width / 2, [m["target_ms"] for m in models], marker="_", s=400,
                 color="#d62728", zorder=3, label="target 1.3 x decoder + 20 ms")
    left.set_xticks(x, names)
    left.margins(y=0.2)
    left.set_ylabel("ms")
    left.set_title("click with the embedding cached")
    left.legend(loc="upper left", fontsize=8)
    bars = right.bar(x - width / 2, [m["encoder_s"] for m in models], width,
                     color="#7f7f7f", label="raw encoder (median)")
    right.bar_label(bars, fmt="%.1f", fontsize=8)
    bars = right.bar(x + width / 2, [m["cold_click_s"] for m in models], width,
                     color="#ff7f0e", label="cold server click (median)")
    right.bar_label(bars, fmt="%.1f", fontsize=8)
    right.set_xticks(x, names)
    right.margins(y=0.2)  # room for the legend above the bars
    right.set_ylabel("s")
    right.set_title("first click on an image")
    right.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"SAM on {report['image_size']}, CPU, {report['torch_threads']} torch "
                 f"threads, random weights")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                        type=lambda text: [a for a in text.split(",") if a],
                        help="SAM_MODEL_TYPE values, comma-separated, the baseline first: "
                             "vit_b / vit_l / vit_h, vit:<dim>/<depth>/<heads>, "
                             "sam2.1_hiera_tiny / _small / _base_plus / _large, "
                             "sam2.1_hiera:<dim>/<stages>")
    parser.add_argument("--clicks", type=int, default=30,
                        help="click positions, timed raw and over HTTP")
    parser.add_argument("--cold-clicks", type=int, default=2,
                        help="requests on uncached images, the first (cache-warming) included")
    parser.add_argument("--serve-args", default="--workers 1 --threads 4",
                        help="arguments of `ml-backend serve` (e.g. --dev for Flask's server)")
    parser.add_argument("--server-log-level", default="WARNING",
                        help="DEBUG logs each click's phases to <workdir>/server.log")
    parser.add_argument("--encode-repeats", type=int, default=2, help="timed raw encodes")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="for the checkpoint, images and caches (default: a temp dir)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "benchmarks" / "bench_sam_latency.json")
    args = parser.parse_args(argv)
    if not args.archs:
        parser.error("--archs names no model")
    if min(args.clicks, args.cold_clicks, args.encode_repeats) < 1:
        parser.error("--clicks, --cold-clicks and --encode-repeats must be at least 1")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    report = measure_in_workdir(args.workdir, "bench-sam-latency-",
                                lambda work: measure(args, work))
    write_report(report, args.out, _plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
