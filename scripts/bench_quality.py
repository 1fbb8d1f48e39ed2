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
- **Label errors in detection** (shape scenes, exact boxes): a detector is trained from the
  architecture config (no weights) on clean scenes through the fine-tune job's child process
  (``write_yolo_dataset``, ``fine_tune``), validated on other clean scenes. On a separate
  scored set, 5 % of the images get one corruption each, in turn: a box's class swapped, a
  box shifted to IoU < 0.5 with its object, a box removed. The scored set is predicted as
  the quality job predicts (``predicted_boxes``: the serving detector down to confidence
  0.01) and scored by ``detection_label_quality`` (cleanlab's ObjectLab). Reported as for
  the digits, plus recall per corruption kind and the detector's mAP50.

    .venv/bin/python scripts/bench_quality.py [--count 1797] [--shapes 1000] [--out PATH]
        [--det-train 160] [--det-val 20] [--det-scored 200] [--det-epochs 30]
        [--det-image-size 160]
"""

from __future__ import annotations

import argparse
import contextlib
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

from ml_backend.core.detections import LabeledBoxes
from ml_backend.devtools.datasets import SHAPE_CLASSES, ShapeScene, shape_scenes
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.learning.heads import fit_head, out_of_fold_proba
from ml_backend.models.classifier.embeddings import EmbeddingCache
from ml_backend.models.classifier.model import ResNetEmbedder, load_backbone, locate_weights
from ml_backend.models.detector.model import (
    DetectorModel,
    YoloDetector,
    ultralytics_module,
    write_yolo_dataset,
)
from ml_backend.models.detector.thresholds import DEFAULT_GRID
from ml_backend.models.detector.training import FineTuneSpec, fine_tune, held_out_meta
from ml_backend.quality.detection_errors import detection_label_quality
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
from ml_backend.quality.label_errors import PREDICTION_FLOOR, calibrated, predicted_boxes
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

from bench_common import DETECTOR_BATCH, digits_images, scene_sample, write_report

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


def best_view_residual(prints: Fingerprints, i: int, j: int) -> float:
    """The largest difference between the colour thumbnail of one image of a pair and the
    best-matching view of the other (either way round), in units of the thumbnails'
    standard deviation: what a second, residual-based check of a pair would threshold."""
    best = (-np.inf, 0.0)
    for a, b in ((i, j), (j, i)):
        whole = prints.colour[a, 0].astype(np.float32)
        views = prints.colour[b].astype(np.float32)
        v = int(np.argmax(views @ whole))
        residual = float(np.abs(whole - views[v]).max() * np.sqrt(whole.size))
        best = max(best, (float(views[v] @ whole), residual))
    return best[1]


def _ranges(values: dict[str, list[float]]) -> dict[str, list[float] | None]:
    return {name: [round(min(v), 2), round(max(v), 2)] if v else None
            for name, v in values.items()}


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
    kind_of = {(int(s), n + i): kind for i, (s, kind) in enumerate(zip(sources, kinds,
                                                                        strict=True))}
    residuals: dict[str, list[float]] = {name: [] for name in [*names, "false_pairs"]}
    for i, j in pairs:
        residuals[kind_of.get((int(i), int(j)), "false_pairs")].append(
            best_view_residual(prints, int(i), int(j)))
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
        # Would a check on the residual after the best view separate copies from false
        # pairs? The range of each found pair's largest residual, by transform.
        "best_view_residual_range": _ranges(residuals),
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


# --- label errors in detection ------------------------------------------------------------
DETECTION_CONFIG = (REPO / "labeling_configs" / "shapes_detection.xml").read_text()
CORRUPTIONS = ("swap", "shift", "remove")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area) if area > 0 else 0.0


def _shifted(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """``box`` moved by 40 % of its size on both axes, towards the side with more room (IoU
    with the original about 0.22, less where the image edge does not clip it)."""
    w, h = box[2] - box[0], box[3] - box[1]
    dx = 0.4 * w if width - box[2] >= box[0] else -0.4 * w
    dy = 0.4 * h if height - box[3] >= box[1] else -0.4 * h
    moved = box + np.array([dx, dy, dx, dy])
    return np.clip(moved, 0, [width, height, width, height])


def corrupt(scene: ShapeScene, kind: str, rng: np.random.Generator) -> LabeledBoxes:
    """One corruption of ``scene``'s exact boxes: a box's class ``swap``ped to another class,
    a box ``shift``ed to IoU < 0.5 with its object, or a box ``remove``d."""
    xyxy, labels = scene.xyxy.copy(), list(scene.labels)
    i = int(rng.integers(len(labels)))
    if kind == "swap":
        others = [c for c in SHAPE_CLASSES if c != labels[i]]
        labels[i] = others[int(rng.integers(len(others)))]
    elif kind == "shift":
        height, width = scene.pixels.shape[:2]
        xyxy[i] = _shifted(xyxy[i], width, height)
        if _iou(xyxy[i], scene.xyxy[i]) >= 0.5:
            raise AssertionError(f"shifted box keeps IoU {_iou(xyxy[i], scene.xyxy[i]):.2f}")
    elif kind == "remove":
        xyxy, labels = np.delete(xyxy, i, axis=0), labels[:i] + labels[i + 1:]
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return LabeledBoxes(xyxy, tuple(labels))


def _train_shapes_detector(work: Path, train: list[ShapeScene], val: list[ShapeScene],
                           epochs: int, image_size: int) -> dict[str, Any]:
    """The fine-tune job's child process on clean scenes, from the architecture config."""
    samples = ([scene_sample(f"t{i}", s) for i, s in enumerate(train)]
               + [scene_sample(f"v{i}", s) for i, s in enumerate(val)])
    data = write_yolo_dataset(work / "dataset", samples, SHAPE_CLASSES,
                              [i >= len(train) for i in range(len(samples))])
    spec = FineTuneSpec(start="yolov8n.yaml", data_yaml=str(data), out_dir=str(work / "runs"),
                        config_dir=str(work / "cfg"), epochs=epochs, image_size=image_size,
                        batch=DETECTOR_BATCH, device="cpu", warm=False)
    return fine_tune(spec, work)


def _scored_map50(weights: Path, config_dir: Path, root: Path, scenes: list[ShapeScene],
                  image_size: int) -> float:
    """mAP50 of ``weights`` on ``scenes`` with their true boxes (Ultralytics' validator)."""
    data = write_yolo_dataset(root, [scene_sample(f"s{i}", s) for i, s in enumerate(scenes)],
                              SHAPE_CLASSES, [True] * len(scenes))
    yolo = ultralytics_module(config_dir).YOLO
    metrics = yolo(str(weights), task="detect").val(
        data=str(data), imgsz=image_size, batch=DETECTOR_BATCH, device="cpu", workers=0,
        plots=False, verbose=False, project=str(root / "val"), name="run", exist_ok=True)
    return float(metrics.box.map50)


def _precision_recall(flagged: np.ndarray, is_error: np.ndarray) -> dict[str, Any]:
    return {"size": int(flagged.sum()),
            "precision": round(float(is_error[flagged].mean()), 4) if flagged.any() else None,
            "recall": round(float(flagged[is_error].mean()), 4)}


def detection_label_errors(train_count: int, val_count: int, scored_count: int, epochs: int,
                           image_size: int, seed: int) -> dict[str, Any]:
    """Corrupt 5 % of a scored set of shape scenes (one corruption each, in turn), predict it
    with a detector trained on other, clean scenes, and see how well the quality job's
    scores find the corrupted images."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    rng = np.random.default_rng(seed)
    train = shape_scenes(train_count, seed=21)
    val = shape_scenes(val_count, seed=22)
    scored = shape_scenes(scored_count, seed=23)
    chosen = rng.choice(scored_count, size=max(len(CORRUPTIONS),
                                               round(FLIP_SHARE * scored_count)),
                        replace=False)
    kinds = {int(i): CORRUPTIONS[k % len(CORRUPTIONS)] for k, i in enumerate(chosen)}
    given = [corrupt(s, kinds[i], rng) if i in kinds else LabeledBoxes(s.xyxy, s.labels)
             for i, s in enumerate(scored)]
    is_error = np.zeros(scored_count, dtype=bool)
    is_error[chosen] = True
    control = parse_label_config(DETECTION_CONFIG).for_family(ModelFamily.DETECTOR)[0]
    with tempfile.TemporaryDirectory(prefix="bench-quality-det-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        trained = _train_shapes_detector(work, train, val, epochs, image_size)
        train_s = time.perf_counter() - started
        weights = Path(trained["weights"])
        started = time.perf_counter()
        detector = YoloDetector(weights, work / "cfg", "cpu", image_size)
        model = DetectorModel("bench", detector, trained["digest"])
        # As the fine-tune job does: the new weights predict the held-out (val) scenes once
        # for the version's meta, and the quality job calibrates its boxes with it.
        meta = held_out_meta(detector.detect([s.pixels for s in val], min(DEFAULT_GRID)),
                             [LabeledBoxes(s.xyxy, s.labels) for s in val])
        samples = [scene_sample(f"s{i}", s) for i, s in enumerate(scored)]
        raw = predicted_boxes(model, control, samples, 40_000_000)
        raw_quality = detection_label_quality(given, raw, control.labels)
        _, predicted = calibrated(meta, raw)
        quality = detection_label_quality(given, predicted, control.labels)
        score_s = time.perf_counter() - started
        scored_map50 = _scored_map50(weights, work / "cfg", work / "scored", scored,
                                     image_size)
    def per_kind(flagged: np.ndarray) -> dict[str, float]:
        return {kind: round(float(np.mean([flagged[i] for i, k in kinds.items() if k == kind])),
                            4) for kind in CORRUPTIONS}

    def lowest(scores: np.ndarray) -> np.ndarray:
        cut = np.zeros(scored_count, dtype=bool)
        cut[np.argsort(scores, kind="stable")[:len(chosen)]] = True
        return cut

    scores, issues = quality.scores, quality.issues
    cut = lowest(scores)
    precision, recall, _ = precision_recall_curve(is_error, -scores)
    confidences = np.concatenate([p.scores for p in raw]) if raw else np.zeros(0)
    raw_cut = lowest(raw_quality.scores)

    step = max(1, len(precision) // 200)
    return {
        "train_images": train_count, "val_images": val_count, "scored_images": scored_count,
        "corrupted": len(chosen), "corrupted_by_kind": {k: list(kinds.values()).count(k)
                                                        for k in CORRUPTIONS},
        "seed": seed, "epochs": epochs, "image_size": image_size, "batch": DETECTOR_BATCH,
        "start": "yolov8n.yaml (architecture config, no weights)",
        "prediction_floor": PREDICTION_FLOOR,
        "val_map50": round(float(trained["map50"]), 4),
        "val_map50_95": round(float(trained["map50_95"]), 4),
        "scored_map50": round(scored_map50, 4),
        "predicted_boxes": int(confidences.size),
        "predicted_boxes_over_0.95": int((confidences > 0.95).sum()),
        "confidence_calibration": meta.get("confidence_calibration"),
        "calibrated_boxes_over_0.95": int(sum((p.scores > 0.95).sum() for p in predicted)),
        "raw_confidences": {"top_cut": _precision_recall(raw_cut, is_error),
                            "top_cut_recall_by_kind": per_kind(raw_cut),
                            "cleanlab_issues": _precision_recall(raw_quality.issues, is_error),
                            "pr_auc": round(float(average_precision_score(
                                is_error, -raw_quality.scores)), 4)},
        "clean_images_scoring_1": int((scores[~is_error] >= 1.0).sum()),
        "top_cut": _precision_recall(cut, is_error),
        "top_cut_recall_by_kind": per_kind(cut),
        "cleanlab_issues": _precision_recall(issues, is_error),
        "cleanlab_issues_recall_by_kind": per_kind(issues),
        "pr_auc": round(float(average_precision_score(is_error, -scores)), 4),
        "score_median": {"clean": round(float(np.median(scores[~is_error])), 4),
                         **{kind: round(float(np.median([scores[i] for i, k in kinds.items()
                                                         if k == kind])), 4)
                            for kind in CORRUPTIONS}},
        "seconds": {"train": round(train_s, 1), "predict_and_score": round(score_s, 2)},
        "pr_curve": {"precision": [round(float(p), 4) for p in precision[::step]],
                     "recall": [round(float(r), 4) for r in recall[::step]]},
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

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
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
    _plot_detection(axes[3], report["detection_label_errors"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_detection(ax: Any, det: dict[str, Any]) -> None:
    curve = det["pr_curve"]
    ax.plot(curve["recall"], curve["precision"], "-")
    ax.scatter([det["top_cut"]["recall"]], [det["top_cut"]["precision"]], color="C1",
               zorder=3, label="lowest 5 %")
    ax.axhline(0.7, color="grey", ls=":")
    ax.axvline(0.7, color="grey", ls=":")
    ax.set(title=f"detection label errors: {det['corrupted']} of {det['scored_images']} "
                 f"scenes\n(PR-AUC {det['pr_auc']:.2f}; detector mAP50 "
                 f"{det['scored_map50']:.2f} on them)",
           xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1797, help="digits images (max 1797)")
    parser.add_argument("--shapes", type=int, default=1000,
                        help="shape scenes in the near-duplicate pool")
    parser.add_argument("--seeds", type=int, default=1, help="label-error runs (flip sets)")
    parser.add_argument("--similar-sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pair-timing-rows", type=int, default=10_000)
    parser.add_argument("--det-train", type=int, default=160,
                        help="clean shape scenes the detector trains on")
    parser.add_argument("--det-val", type=int, default=40,
                        help="clean shape scenes it validates on (val mAP50) and calibrates "
                             "its confidences on")
    parser.add_argument("--det-scored", type=int, default=1000,
                        help="shape scenes scored, 5 %% of them corrupted")
    parser.add_argument("--det-epochs", type=int, default=30)
    parser.add_argument("--det-image-size", type=int, default=160)
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
    started_det = time.perf_counter()
    # Ultralytics logs to stdout (its handler takes the stream it finds when first imported,
    # here): to stderr, so stdout stays the report.
    with contextlib.redirect_stdout(sys.stderr):
        report["detection_label_errors"] = detection_label_errors(
            args.det_train, args.det_val, args.det_scored, args.det_epochs,
            args.det_image_size, 0)
    print(f"detection label errors: {report['detection_label_errors']['top_cut']} in "
          f"{time.perf_counter() - started_det:.0f} s", file=sys.stderr)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, args.out, plot)


if __name__ == "__main__":
    main()
