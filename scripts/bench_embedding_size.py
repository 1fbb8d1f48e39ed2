#!/usr/bin/env python3
"""Embedding resolution: at what side should the classifier embed a project's images?

For each image set, every image is embedded with the product's backbone (``ResNetEmbedder``
on the located weights: the shared random init offline, as every offline user has) at
several sides: ``auto`` (the image's own longer side rounded up to a multiple of 32, within
32–224 px: ``CLASSIFIER_IMAGE_SIZE=auto``), fixed sides, and 224 px (the earlier default).
Then, for several label counts and seeds, a default ``LogisticRegression()`` and the
production head (``fit_head``) are fitted on the same random labeled subset and scored on a
fixed held-out split. All sides run in one process, side by side; embedding time is given as
a ratio to ``auto``.

Image sets: ``glyphs`` (the project's hard synthetic characters, 64 px) and ``digits``
(``load_digits``, 8 px upscaled to 32 px, as the demo and the learning benchmark use).

    .venv/bin/python scripts/bench_embedding_size.py [--seeds 3] [--out artifacts/bench/...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ml_backend.learning.heads import fit_head
from ml_backend.models.classifier.embeddings import EmbeddingCache
from ml_backend.models.classifier.model import (
    ResNetEmbedder,
    load_backbone,
    locate_weights,
    native_side,
)

from bench_common import digits_images, write_report

REPO = Path(__file__).resolve().parent.parent


def glyph_images(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    from ml_backend.devtools.datasets import render_glyphs

    images, labels = render_glyphs(count, size=64, seed=0)
    return list(images), np.asarray(labels)


DATASETS: dict[str, Callable[[int], tuple[list[np.ndarray], np.ndarray]]] = {
    "glyphs": glyph_images, "digits": digits_images}


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted == truth).mean())


def measure(name: str, count: int, sides: list[int | None], labels: list[int], seeds: int,
            work: Path) -> dict[str, Any]:
    images, y = DATASETS[name](count)
    weights = locate_weights("resnet18", None, work / "models")
    backbone = load_backbone(weights, torch.device("cpu"))
    split = np.random.default_rng(12345).permutation(len(images))
    n_test = int(0.3 * len(images))
    test, pool = split[:n_test], split[n_test:]
    n_classes = len(np.unique(y))
    result: dict[str, Any] = {"images": len(images), "heldout": int(n_test),
                              "native_sides": sorted({native_side(i.shape) for i in images}),
                              "sides": {}}
    for side in sides:
        # A fresh cache per side: every side embeds every image (timed alike).
        embedder = ResNetEmbedder(backbone, weights.digest, side, torch.device("cpu"),
                                  EmbeddingCache(work / f"cache-{name}-{side}"))
        started = time.perf_counter()
        x = embedder.embed_pixels(images)
        seconds = time.perf_counter() - started
        rows: dict[str, Any] = {"embed_s": round(seconds, 2), "labels": {}}
        for n in labels:
            base, head = [], []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                chosen = rng.choice(pool, size=min(n, len(pool)), replace=False)
                if len(np.unique(y[chosen])) < 2:
                    continue
                lr = LogisticRegression().fit(x[chosen], y[chosen])
                base.append(_accuracy(lr.predict(x[test]), y[test]))
                labels_ = tuple(str(c) for c in range(n_classes))
                fitted = fit_head(x[chosen], y[chosen], labels_, multiple=False, seed=seed)
                head.append(_accuracy(fitted.predict_proba(x[test]).argmax(axis=1), y[test]))
            rows["labels"][str(n)] = {
                "baseline_mean": round(float(np.mean(base)), 4),
                "baseline_std": round(float(np.std(base)), 4),
                "head_mean": round(float(np.mean(head)), 4),
                "head_std": round(float(np.std(head)), 4)}
        result["sides"]["auto" if side is None else str(side)] = rows
        print(f"{name} side={side}: {seconds:.1f} s, "
              f"{ {k: v['baseline_mean'] for k, v in rows['labels'].items()} }", file=sys.stderr)
    auto = result["sides"]["auto"]["embed_s"]
    for rows in result["sides"].values():
        rows["embed_time_ratio_to_auto"] = round(rows["embed_s"] / auto, 2) if auto else None
    return result


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        data = report["datasets"][name]
        for side, rows in data["sides"].items():
            counts = [int(n) for n in rows["labels"]]
            ax.plot(counts, [rows["labels"][str(n)]["baseline_mean"] for n in counts], "--o",
                    label=f"{side} (LogisticRegression)")
            ax.plot(counts, [rows["labels"][str(n)]["head_mean"] for n in counts], "-s",
                    label=f"{side} (production head)")
        ax.set_title(f"{name}: held-out accuracy by embedding side")
        ax.set_xlabel("labels")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="glyphs,digits")
    parser.add_argument("--count", type=int, default=800, help="images per set")
    parser.add_argument("--sides", default="auto,64,128,224",
                        help="embedding sides: auto or pixels")
    parser.add_argument("--labels", default="40,80,160")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "artifacts" / "bench" / "bench_embedding_size")
    args = parser.parse_args()
    # The baseline keeps scikit-learn's defaults (100 iterations) on purpose.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    sides = [None if s == "auto" else int(s) for s in args.sides.split(",")]
    labels = [int(n) for n in args.labels.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-embedding-size-") as tmp:
        report: dict[str, Any] = {
            "backbone": "resnet18 random init (offline)", "seeds": args.seeds,
            "datasets": {name: measure(name, args.count, sides, labels, args.seeds,
                                       Path(tmp))
                         for name in args.datasets.split(",")}}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, args.out, plot)


if __name__ == "__main__":
    main()
