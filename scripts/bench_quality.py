#!/usr/bin/env python3
"""Data quality: suspected label errors, near-duplicates and find-similar latency.

All in process on the product's code paths, no Label Studio:

- **Label errors** (digits, ``load_digits`` at 32 px as the demo renders them): a known
  share of labels (5 %) is flipped to another class; the production learner (``fit_head``
  chooses its regularisation on the noisy labels, as training does) gives out-of-fold
  probabilities (``out_of_fold_proba``) and cleanlab scores every label
  (``label_quality_scores``; ``label_issues`` for cleanlab's own flagged set). Reported:
  precision and recall of the lowest-scored 5 % (the flip rate), of cleanlab's set, the
  best precision at recall ≥ 0.7 and the PR-AUC (average precision).
- **Near-duplicates**, on two pools: the digits (8×8 scans: distinct samples can differ by
  a few grey levels) and 1000 shape scenes (``shape_scenes``). 10 % of a pool's images get a
  copy, one transform each in turn (resized to 1.5×, JPEG re-encoded at quality 75, a 5 %
  crop scaled back, brightness +15), all JPEG-encoded. Pairs are found as ``ml-backend
  dedupe`` finds them: ``duplicate_pairs`` on the product embedder's centred embeddings and
  the pixel fingerprints, with the shipped thresholds. Reported: recall of the injected
  pairs (per transform), false pairs (found pairs that are not an injected one: share of
  the found pairs, per million pairs, share of images in one; and which signal found
  them), and the time per 10k images (fingerprints; the pair search on 10k random rows, its
  full cost; embedding separately, as it is usually cached from training).
- **Find similar**: exact search (``nearest``) over random 512-d embeddings at 10k and
  100k rows; median and p95 latency of one query.

    .venv/bin/python scripts/bench_quality.py [--count 1797] [--shapes 1000] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ml_backend.devtools.datasets import shape_scenes
from ml_backend.learning.heads import fit_head, out_of_fold_proba
from ml_backend.models.classifier.embeddings import EmbeddingCache
from ml_backend.models.classifier.model import ResNetEmbedder, load_backbone, locate_weights
from ml_backend.quality.fingerprints import (
    MAX_LOG_ASPECT,
    MIN_COLOUR,
    MIN_DETAIL,
    SIDE,
    Fingerprints,
    crop_boxes,
    fingerprint_pairs,
    fingerprints,
)
from ml_backend.quality.scoring import (
    DUPLICATE_SURE_COSINE,
    centre,
    duplicate_pairs,
    embedding_pairs,
    groups_from_pairs,
    label_issues,
    label_quality_scores,
    nearest,
    normalise,
)

from bench_common import digits_images, write_report

REPO = Path(__file__).resolve().parent.parent
FLIP_SHARE = 0.05
DUPLICATE_SHARE = 0.10


def _jpeg(pixels: np.ndarray, quality: int = 75) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _resize(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    return np.asarray(Image.fromarray(pixels).resize((w * 3 // 2, h * 3 // 2),
                                                     Image.BILINEAR))


def _crop(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    dy, dx = max(1, round(0.05 * h)), max(1, round(0.05 * w))
    return np.asarray(Image.fromarray(pixels[dy:, dx:]).resize((w, h), Image.BILINEAR))


def _brighter(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels.astype(np.int16) + 15, 0, 255).astype(np.uint8)


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "resize": _resize, "jpeg": lambda p: p, "crop_5pct": _crop, "brightness": _brighter}


def _embedder(work: Path) -> tuple[ResNetEmbedder, bool]:
    """The product's embedder, and whether its weights are a random init (offline)."""
    weights = locate_weights("resnet18", None, work / "models")
    return ResNetEmbedder(load_backbone(weights, torch.device("cpu")), weights.digest, None,
                          torch.device("cpu"), EmbeddingCache(work / "cache")), weights.degraded


def label_errors(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    rng = np.random.default_rng(seed)
    n_classes = int(y.max()) + 1
    flipped = rng.choice(len(y), size=max(1, round(FLIP_SHARE * len(y))), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    is_error = np.zeros(len(y), dtype=bool)
    is_error[flipped] = True
    started = time.perf_counter()
    labels = tuple(str(c) for c in range(n_classes))
    regularisation = fit_head(x, noisy, labels, multiple=False, seed=seed).regularisation()
    proba = out_of_fold_proba(x, noisy, n_classes, regularisation, k=5, seed=seed)
    scores = label_quality_scores(proba, noisy)
    issues = label_issues(proba, noisy)
    seconds = time.perf_counter() - started
    cut = np.argsort(scores, kind="stable")[:len(flipped)]
    hit = is_error[cut].sum()
    precision, recall, _ = precision_recall_curve(is_error, -scores)
    at_recall = precision[recall >= 0.7]
    return {
        "images": len(y), "flipped": len(flipped), "seed": seed,
        "regularisation": {"standardise": regularisation.standardise,
                           "l2": regularisation.l2},
        "oof_accuracy_on_noisy_labels": round(float((proba.argmax(1) == noisy).mean()), 4),
        "oof_accuracy_on_true_labels": round(float((proba.argmax(1) == y).mean()), 4),
        "top_cut": {"size": len(cut), "precision": round(float(hit / len(cut)), 4),
                    "recall": round(float(hit / len(flipped)), 4)},
        "cleanlab_issues": {"size": int(issues.sum()),
                            "precision": round(float(is_error[issues].mean()), 4)
                            if issues.any() else None,
                            "recall": round(float(issues[is_error].mean()), 4)},
        "best_precision_at_recall_0.7": round(float(at_recall.max()), 4),
        "pr_auc": round(float(average_precision_score(is_error, -scores)), 4),
        "seconds": round(seconds, 2),
        "pr_curve": {"precision": [round(float(p), 4) for p in precision[::max(
            1, len(precision) // 200)]],
            "recall": [round(float(r), 4) for r in recall[::max(1, len(recall) // 200)]]},
    }


def _random_fingerprints(rows: int, seed: int) -> Fingerprints:
    """Unit-row random fingerprints: no pairs, so the search pays its full cost."""
    rng = np.random.default_rng(seed)
    views = len(crop_boxes(1, 1))

    def unit(d: int) -> np.ndarray:
        x = rng.normal(size=(rows, views, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=2, keepdims=True)

    return Fingerprints(unit(3 * SIDE * SIDE).astype(np.float16), unit(SIDE * SIDE),
                        np.zeros(rows))


def near_duplicates(embedder: ResNetEmbedder, embedder_degraded: bool,
                    images: list[np.ndarray], seed: int, timing_rows: int) -> dict[str, Any]:
    """Inject copies of 10 % of ``images``, one transform each in turn, and find them as
    ``ml-backend dedupe`` does (``duplicate_pairs`` on centred embeddings and fingerprints)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    sources = rng.choice(n, size=max(len(TRANSFORMS), round(DUPLICATE_SHARE * n)),
                         replace=False)
    names = list(TRANSFORMS)
    kinds = [names[i % len(names)] for i in range(len(sources))]
    copies = [_jpeg(TRANSFORMS[kind](images[s])) for s, kind in zip(sources, kinds,
                                                                   strict=True)]
    pool = images + copies
    started = time.perf_counter()
    x = embedder.embed_pixels(pool)
    embed_s = (time.perf_counter() - started) / len(pool)
    started = time.perf_counter()
    prints = fingerprints(pool)
    print_s = (time.perf_counter() - started) / len(pool)
    started = time.perf_counter()
    # As dedupe runs offline: the random-init backbone's embeddings are not trusted.
    pairs = duplicate_pairs(prints, None if embedder_degraded else centre(x))
    pair_s = time.perf_counter() - started
    by_signal = {"fingerprints": fingerprint_pairs(prints),
                 "embedding": embedding_pairs(centre(x))}
    groups = groups_from_pairs(len(pool), pairs)
    injected = {(int(s), n + i) for i, s in enumerate(sources)}

    def false_in(found: np.ndarray) -> int:
        return len({(int(i), int(j)) for i, j in found} - injected)

    recall = {kind: round(float(np.mean([groups[s] == groups[n + i]
                                         for i, (s, k) in enumerate(zip(sources, kinds,
                                                                        strict=True))
                                         if k == kind])), 4) for kind in names}
    same_group = [groups[s] == groups[n + i] for i, s in enumerate(sources)]
    false = {(int(i), int(j)) for i, j in pairs} - injected
    total_pairs = len(pool) * (len(pool) - 1) // 2
    started = time.perf_counter()
    fingerprint_pairs(_random_fingerprints(timing_rows, seed))
    search_s = time.perf_counter() - started
    per_10k = 10_000 / timing_rows
    return {
        "images": n, "injected": len(sources),
        "thresholds": {"fingerprint_min_colour": MIN_COLOUR,
                       "fingerprint_min_detail": MIN_DETAIL,
                       "fingerprint_max_log_aspect": MAX_LOG_ASPECT,
                       "embedding_sure_cosine_centred": DUPLICATE_SURE_COSINE},
        "signals": ["fingerprints"] + ([] if embedder_degraded else ["embeddings"]),
        "recall": round(float(np.mean(same_group)), 4), "recall_by_transform": recall,
        "found_pairs": len(pairs), "false_pairs": len(false),
        "false_pairs_share_of_found": round(len(false) / max(1, len(pairs)), 4),
        "false_pairs_per_million_pairs": round(len(false) / total_pairs * 1e6, 2),
        "images_in_a_false_pair_share": round(len({i for p in false for i in p}) / len(pool),
                                              4),
        "false_pairs_by_signal": {name: false_in(found) for name, found in by_signal.items()},
        "injected_found_by_signal": {
            name: len(injected & {(int(i), int(j)) for i, j in found})
            for name, found in by_signal.items()},
        "pair_search_s_at_this_size": round(pair_s, 3),
        "per_10k_images_s": {
            "fingerprints": round(print_s * 10_000, 1),
            "pair_search": round(search_s * (per_10k ** 2 if timing_rows < 10_000 else 1), 1),
            "embedding_if_not_cached": round(embed_s * 10_000, 1)},
        "pair_search_timed_at_rows": timing_rows,
    }


def similar_latency(sizes: list[int], dim: int, queries: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for size in sizes:
        unit = normalise(rng.normal(size=(size, dim)).astype(np.float32))
        times = []
        for q in rng.choice(size, size=queries, replace=True):
            started = time.perf_counter()
            nearest(unit, unit[q], 10, exclude=int(q))
            times.append((time.perf_counter() - started) * 1000)
        out[str(size)] = {"median_ms": round(float(np.median(times)), 3),
                          "p95_ms": round(float(np.percentile(times, 95)), 3),
                          "index_mb": round(unit.nbytes / 2**20, 1)}
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    errors = report["label_errors"][0]
    curve = errors["pr_curve"]
    axes[0].plot(curve["recall"], curve["precision"], "-")
    axes[0].scatter([errors["top_cut"]["recall"]], [errors["top_cut"]["precision"]],
                    color="C1", zorder=3, label="lowest 5 %")
    axes[0].axhline(0.7, color="grey", ls=":")
    axes[0].axvline(0.7, color="grey", ls=":")
    axes[0].set(title=f"label errors: {errors['flipped']} of {errors['images']} flipped "
                      f"(PR-AUC {errors['pr_auc']:.2f})", xlabel="recall", ylabel="precision",
                xlim=(0, 1.02), ylim=(0, 1.02))
    axes[0].legend()
    pools = report["near_duplicates"]
    kinds = list(next(iter(pools.values()))["recall_by_transform"])
    width = 0.8 / len(pools)
    for i, (name, dup) in enumerate(pools.items()):
        axes[1].bar(np.arange(len(kinds)) + i * width,
                    [dup["recall_by_transform"][k] for k in kinds], width,
                    label=f"{name} ({dup['false_pairs']} false of {dup['found_pairs']} pairs)")
    axes[1].set_xticks(np.arange(len(kinds)) + width * (len(pools) - 1) / 2, kinds)
    axes[1].set(title="near-duplicates: recall by transform", ylabel="recall",
                ylim=(0, 1.15))
    axes[1].legend(loc="lower right", fontsize=8)
    sizes = list(report["similar"])
    axes[2].bar(sizes, [report["similar"][s]["median_ms"] for s in sizes])
    axes[2].set(title="find similar: exact search, one query", xlabel="indexed tasks",
                ylabel="median ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1797, help="digits images (max 1797)")
    parser.add_argument("--shapes", type=int, default=1000,
                        help="shape scenes in the near-duplicate pool")
    parser.add_argument("--seeds", type=int, default=1, help="label-error runs (flip sets)")
    parser.add_argument("--similar-sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pair-timing-rows", type=int, default=10_000)
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "benchmarks" / "bench_quality")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        embedder, degraded = _embedder(Path(tmp))
        images, y = digits_images(args.count)
        t0 = time.perf_counter()
        x = embedder.embed_pixels(images)
        print(f"embedded {len(images)} images in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        errors = [label_errors(x, y, seed) for seed in range(args.seeds)]
        print(f"label errors: {[e['top_cut'] for e in errors]}", file=sys.stderr)
        pools = {"digits": images,
                 "shapes": [s.pixels for s in shape_scenes(args.shapes, seed=5)]}
        duplicates = {name: near_duplicates(embedder, degraded, pool, 0,
                                            args.pair_timing_rows)
                      for name, pool in pools.items()}
        print(f"near-duplicates: recall { {k: d['recall'] for k, d in duplicates.items()} }",
              file=sys.stderr)
    report: dict[str, Any] = {
        "backbone": f"resnet18 {'random init (offline)' if degraded else 'pretrained'}, "
                    "CLASSIFIER_IMAGE_SIZE=auto",
        "label_errors": errors, "near_duplicates": duplicates,
        "similar": similar_latency([int(s) for s in args.similar_sizes.split(",")], 512,
                                   args.queries, 0),
        "threads": torch.get_num_threads(),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, args.out, plot)


if __name__ == "__main__":
    main()
