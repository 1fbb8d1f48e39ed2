#!/usr/bin/env python3
"""Learning-efficiency benchmark: does labeling in the backend's order save labels?

A simulated annotator with ground truth labels ``load_digits`` (1797 images) in rounds: 20
random labels, then rounds of 10 chosen by the strategy under test. After each round the
model retrains through the production code path (``train_classifier`` with an incremental
update, exactly what an annotation webhook runs; only Label Studio's API is replaced by the
annotator's in-memory answers) and is scored on a fixed held-out split. Tasks are ranked
with ``ml_backend.reranking.rank_tasks``, the function the re-ranking job uses.

Prints JSON (saved with a PNG plot): accuracy-vs-labels curves per strategy (mean and spread
over seeds), area under each curve, and labels needed to reach 95 % of the full-data
accuracy with their ratio to random order.

    .venv/bin/python scripts/bench_active_learning.py [--seeds 5] [--max-labels 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.ls_api import LabeledTask, labeled_tasks_from_export
from ml_backend.ranking import Strategy
from ml_backend.reranking import rank_tasks
from ml_backend.runtime import Runtime
from ml_backend.settings import Settings
from ml_backend.training import embed_images, fetch_images, train_classifier

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "labeling_configs" / "digit_classification.xml").read_text()


class SimulatedAnnotator:
    """Stands in for Label Studio's API: the labels given so far, as its export returns them."""

    def __init__(self) -> None:
        self.done: dict[int, dict[str, Any]] = {}

    def label(self, task: dict[str, Any], truth: int) -> None:
        self.done[task["id"]] = {**task, "annotations": [{
            "id": task["id"], "updated_at": f"{time.time():.6f}", "result": [{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [str(truth)]}}]}]}

    def label_config(self, project: int) -> str:
        return CONFIG

    def labeled_tasks(self, project: int) -> list[LabeledTask]:
        return labeled_tasks_from_export(list(self.done.values()))

    def set_model_version(self, project: int, version: str, is_ours: Any) -> None:
        return None


def _write_images(root: Path, size: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (root / "digits").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, image in enumerate(digits.images):
        grey = 255 - (image / 16.0 * 255).astype(np.uint8)
        Image.fromarray(grey).resize((size, size), Image.NEAREST).save(root / f"digits/{i}.png")
        tasks.append({"id": i + 1, "data": {"image": f"/data/local-files/?d=digits/{i}.png"}})
    return tasks, digits.target


def _accuracy(runtime: Runtime, project: int, heldout: list[dict[str, Any]],
              truth: np.ndarray) -> float:
    model = runtime.classifier(project)
    assert model is not None
    as_tasks = [LabeledTask(t["id"], t["data"], 0, "", []) for t in heldout]
    rows, x = embed_images(runtime, model.embedder, fetch_images(runtime, as_tasks, "image"))
    head = model.heads["digit"]
    predicted = np.array([int(head.labels[k]) for k in head.predict_proba(x).argmax(axis=1)])
    return float((predicted == truth[rows]).mean())


def _labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--round", type=int, default=10)
    parser.add_argument("--max-labels", type=int, default=300)
    parser.add_argument("--heldout", type=float, default=0.3)
    parser.add_argument("--image-size", type=int, default=224, help="CLASSIFIER_IMAGE_SIZE")
    parser.add_argument("--random-share", type=float, default=0.0)
    parser.add_argument("--strategies", default=",".join(s.value for s in Strategy))
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    strategies = [Strategy.parse(s) for s in args.strategies.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-al-"))
    tasks, truth = _write_images(work / "docroot", 32)
    split = np.random.default_rng(12345).permutation(len(tasks))
    n_heldout = int(len(tasks) * args.heldout)
    heldout = [tasks[i] for i in split[:n_heldout]]
    pool = [tasks[i] for i in split[n_heldout:]]
    truth_of = {t["id"]: int(truth[t["id"] - 1]) for t in tasks}
    heldout_truth = np.array([truth_of[t["id"]] for t in heldout])

    settings = Settings(model_dir=work / "models", cache_dir=work / "cache",
                        local_files_document_root=work / "docroot",
                        classifier_image_size=args.image_size,
                        update_project_model_version=False)
    runtime = Runtime(settings)
    started = time.perf_counter()

    # Full-data reference: every pool task labeled, trained the same way.
    full = SimulatedAnnotator()
    runtime.ls_api = full  # type: ignore[assignment]
    for task in pool:
        full.label(task, truth_of[task["id"]])
    train_classifier(runtime, {"project": 1, "mode": "incremental"})
    full_accuracy = _accuracy(runtime, 1, heldout, heldout_truth)
    target = 0.95 * full_accuracy

    curves: dict[str, list[list[float]]] = {s.value: [] for s in strategies}
    sizes: list[int] = []
    project = 1
    for seed in range(args.seeds):
        for strategy in strategies:
            project += 1
            rng = np.random.default_rng(seed)
            annotator = SimulatedAnnotator()
            runtime.ls_api = annotator  # type: ignore[assignment]
            for i in rng.choice(len(pool), size=args.start, replace=False):
                annotator.label(pool[i], truth_of[pool[i]["id"]])
            accuracies, sizes = [], []
            while True:
                train_classifier(runtime, {"project": project, "mode": "incremental"})
                sizes.append(len(annotator.done))
                accuracies.append(_accuracy(runtime, project, heldout, heldout_truth))
                if len(annotator.done) >= args.max_labels:
                    break
                candidates = [t for t in pool if t["id"] not in annotator.done]
                ranked = rank_tasks(runtime, project, CONFIG, candidates,
                                    list(annotator.done.values()), strategy, args.round,
                                    args.random_share, rng)
                by_id = {t["id"]: t for t in candidates}
                for task_id in ranked.order[:args.round]:
                    annotator.label(by_id[task_id], truth_of[task_id])
            curves[strategy.value].append(accuracies)
            print(f"seed {seed} {strategy.value}: final accuracy {accuracies[-1]:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    report: dict[str, Any] = {
        "dataset": "sklearn load_digits", "pool": len(pool), "heldout": len(heldout),
        "seeds": args.seeds, "start": args.start, "round": args.round,
        "image_size": args.image_size, "random_share": args.random_share,
        "full_data_accuracy": round(full_accuracy, 4), "target_accuracy": round(target, 4),
        "labels": sizes, "strategies": {}, "seconds": round(time.perf_counter() - started, 1),
    }
    for name, runs in curves.items():
        matrix = np.array(runs)
        mean = matrix.mean(axis=0)
        curve = list(zip(sizes, mean.tolist(), strict=True))
        per_seed = [_labels_to_reach(list(zip(sizes, r, strict=True)), target) for r in runs]
        report["strategies"][name] = {
            "mean_accuracy": [round(a, 4) for a in mean],
            "std_accuracy": [round(a, 4) for a in matrix.std(axis=0)],
            "area_under_curve": round(float(np.trapezoid(mean, sizes)
                                             / (sizes[-1] - sizes[0])), 4),
            "labels_to_95pct_full": _labels_to_reach(curve, target),
            "labels_to_95pct_full_per_seed": per_seed,
        }
    random_labels = report["strategies"].get("random", {}).get("labels_to_95pct_full")
    for entry in report["strategies"].values():
        needed = entry["labels_to_95pct_full"]
        entry["ratio_random_to_this"] = (round(random_labels / needed, 3)
                                         if random_labels and needed else None)
    ranked = [(v["labels_to_95pct_full"] or 10**9, -v["area_under_curve"], k)
              for k, v in report["strategies"].items() if k != "random"]
    report["best_strategy"] = min(ranked)[2] if ranked else None
    text = json.dumps(report, indent=1)
    print(text)
    (args.out / "bench_active_learning.json").write_text(text)
    _plot(report, args.out / "bench_active_learning.png")
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["labels"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, entry in report["strategies"].items():
        mean, std = np.array(entry["mean_accuracy"]), np.array(entry["std_accuracy"])
        ax.plot(sizes, mean, label=f"{name} (AUC {entry['area_under_curve']:.3f})")
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.15)
    ax.axhline(report["target_accuracy"], color="black", linestyle="--", linewidth=1,
               label="95% of full-data accuracy")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"load_digits, {report['seeds']} seeds (mean ± std)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
