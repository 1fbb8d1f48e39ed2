#!/usr/bin/env python3
"""Learning-efficiency benchmark: does labeling in the backend's order save labels?

A simulated annotator with ground truth labels ``load_digits`` (1797 images) in rounds: 20
random labels, then rounds of 10 chosen by the strategy under test. After each round the
model retrains through the production code path (``train_classifier`` with an incremental
update, exactly what an annotation webhook runs; only Label Studio's API is replaced by the
annotator's in-memory answers) and is scored on a fixed held-out split. Tasks are ranked
with ``ml_backend.pipeline.ranking.rank_tasks``, the function the re-ranking job uses.

Prints JSON (saved with a PNG plot): accuracy-vs-labels curves per strategy (mean and spread
over seeds), area under each curve, and labels needed to reach 95 % of the full-data
accuracy with their ratio to random order.

With ``--via-label-studio`` the first strategy is run through the production path instead:
a real Label Studio and a backend process, annotations created through the API, training
and re-ranking driven by Label Studio's webhooks, each round's tasks taken from the top of
the "Most informative first" view. Its per-round accuracies are reported next to the
in-process runs of the same strategy (mean and seed spread).

    .venv/bin/python scripts/bench_active_learning.py [--seeds 5] [--max-labels 300]
    .venv/bin/python scripts/bench_active_learning.py --via-label-studio --strategies margin
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.core.settings import Settings
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.labelstudio.api import LabeledTask
from ml_backend.learning.selection import Strategy
from ml_backend.models.classifier.training import embed_images, fetch_images, train_classifier
from ml_backend.pipeline.ranking import rank_tasks
from ml_backend.runtime import Runtime

from bench_common import SimulatedAnnotator, write_report

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "labeling_configs" / "digit_classification.xml").read_text()


def _label(annotator: SimulatedAnnotator, task: dict[str, Any], truth: int) -> None:
    annotator.annotate(task, [{"from_name": "digit", "to_name": "image", "type": "choices",
                               "value": {"choices": [str(truth)]}}])


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
    model = runtime.classifier.model(project)
    assert model is not None
    as_tasks = [LabeledTask(t["id"], t["data"], 0, "", []) for t in heldout]
    rows, x = embed_images(runtime, model.embedder, fetch_images(runtime, as_tasks, "image"))
    head = model.heads["digit"]
    predicted = np.array([int(head.labels[k]) for k in head.predict_proba(x).argmax(axis=1)])
    return float((predicted == truth[rows]).mean())


def _labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


@dataclass(frozen=True)
class Dataset:
    """``load_digits`` as PNG tasks: a pool to label and a fixed held-out split."""

    docroot: Path
    pool: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    truth_of: dict[int, int]

    @property
    def heldout_truth(self) -> np.ndarray:
        return np.array([self.truth_of[t["id"]] for t in self.heldout])


def _dataset(work: Path, heldout_share: float) -> Dataset:
    tasks, truth = _write_images(work / "docroot", 32)
    split = np.random.default_rng(12345).permutation(len(tasks))
    n_heldout = int(len(tasks) * heldout_share)
    return Dataset(work / "docroot", pool=[tasks[i] for i in split[n_heldout:]],
                   heldout=[tasks[i] for i in split[:n_heldout]],
                   truth_of={t["id"]: int(truth[t["id"] - 1]) for t in tasks})


def _simulate(runtime: Runtime, data: Dataset, project: int, strategy: Strategy, seed: int,
              args: argparse.Namespace) -> tuple[list[int], list[float]]:
    """One labeling run in process: accuracies after each round, by labels so far."""
    rng = np.random.default_rng(seed)
    annotator = SimulatedAnnotator(CONFIG)
    runtime.ls_api = annotator  # type: ignore[assignment]
    for i in rng.choice(len(data.pool), size=args.start, replace=False):
        _label(annotator, data.pool[i], data.truth_of[data.pool[i]["id"]])
    sizes, accuracies = [], []
    while True:
        train_classifier(runtime, TrainRequest(project=project, mode="incremental"))
        sizes.append(len(annotator.done))
        accuracies.append(_accuracy(runtime, project, data.heldout, data.heldout_truth))
        if len(annotator.done) >= args.max_labels:
            return sizes, accuracies
        candidates = [t for t in data.pool if t["id"] not in annotator.done]
        ranked = rank_tasks(runtime, project, CONFIG, candidates,
                            list(annotator.done.values()), strategy, args.round,
                            args.random_share, rng)
        by_id = {t["id"]: t for t in candidates}
        for task_id in ranked.order[:args.round]:
            _label(annotator, by_id[task_id], data.truth_of[task_id])


def _runtime(work: Path, data: Dataset, args: argparse.Namespace, name: str) -> Runtime:
    return Runtime(Settings(model_dir=work / name / "models", cache_dir=work / "cache",
                            local_files_document_root=data.docroot,
                            classifier_image_size=args.image_size,
                            update_project_model_version=False,
                            rerank_after_training=False))


def run_in_process(args: argparse.Namespace, work: Path, data: Dataset) -> dict[str, Any]:
    strategies = [Strategy.parse(s) for s in args.strategies.split(",")]
    runtime = _runtime(work, data, args, "in-process")
    started = time.perf_counter()

    # Full-data reference: every pool task labeled, trained the same way.
    full = SimulatedAnnotator(CONFIG)
    runtime.ls_api = full  # type: ignore[assignment]
    for task in data.pool:
        _label(full, task, data.truth_of[task["id"]])
    train_classifier(runtime, TrainRequest(project=1, mode="incremental"))
    full_accuracy = _accuracy(runtime, 1, data.heldout, data.heldout_truth)
    target = 0.95 * full_accuracy

    curves: dict[str, list[list[float]]] = {s.value: [] for s in strategies}
    sizes: list[int] = []
    project = 1
    for seed in range(args.seeds):
        for strategy in strategies:
            project += 1
            sizes, accuracies = _simulate(runtime, data, project, strategy, seed, args)
            curves[strategy.value].append(accuracies)
            print(f"seed {seed} {strategy.value}: final accuracy {accuracies[-1]:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    report: dict[str, Any] = {
        "dataset": "sklearn load_digits", "pool": len(data.pool), "heldout": len(data.heldout),
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
    return report


def run_via_label_studio(args: argparse.Namespace, work: Path, data: Dataset
                         ) -> dict[str, Any]:
    """The same rounds through the real Label Studio and a backend process: annotations are
    created through the API, training and re-ranking run from its webhooks, and each round's
    tasks are the top of the "Most informative first" view. Accuracy is measured on the
    held-out split with the version the backend saved, next to the in-process run of the
    same strategy and seeds."""
    from label_studio_sdk import LabelStudio

    from ml_backend.devtools.local_label_studio import LocalLabelStudio
    from ml_backend.devtools.project_setup import (
        connect_backend,
        create_informative_view,
        create_project,
        upload_images,
    )

    sys.path.insert(0, str(REPO / "tests"))
    from integration.backend_process import BackendProcess

    strategy = Strategy.parse(args.strategies.split(",")[0])
    max_labels = args.start + args.rounds * args.round
    in_process_args = argparse.Namespace(**{**vars(args), "max_labels": max_labels})
    runtime = _runtime(work, data, args, "in-process")
    started = time.perf_counter()
    reference = [_simulate(runtime, data, 1000 + seed, strategy, seed, in_process_args)
                 for seed in range(args.seeds)]
    in_process_s = time.perf_counter() - started
    sizes = reference[0][0]
    matrix = np.array([acc for _, acc in reference])

    runs = []
    with LocalLabelStudio(work / "label-studio") as ls:
        client = LabelStudio(base_url=ls.url, api_key=ls.api_key, timeout=300)
        for seed in range(args.ls_seeds):
            models = work / f"ls-seed{seed}" / "models"
            backend = BackendProcess({
                "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.api_key,
                "MODEL_DIR": str(models), "CACHE_DIR": str(work / f"ls-seed{seed}" / "cache"),
                "CLASSIFIER_IMAGE_SIZE": str(args.image_size), "REDIS_URL": "",
                "RANKING_STRATEGY": strategy.value, "RANKING_BATCH_SIZE": str(args.round),
                "RANKING_RANDOM_SHARE": str(args.random_share), "LOG_LEVEL": "WARNING",
            }, work / f"backend-seed{seed}.log")
            try:
                backend.wait_ready()
                runs.append(_label_through_label_studio(
                    client, ls, backend, data, strategy, seed, args, models,
                    connect_backend, create_informative_view, create_project, upload_images))
            finally:
                backend.stop()
    via_ls_s = time.perf_counter() - started - in_process_s

    mean, std = matrix.mean(axis=0), matrix.std(axis=0)
    rounds = []
    for k, n in enumerate(sizes):
        via = [run["accuracy"][k] for run in runs]
        diff = float(np.mean(via)) - float(mean[k])
        # Noise: the spread between seeds of the in-process run (at least one held-out
        # image in a hundred, for rounds where the seeds happen to agree).
        noise = max(2.0 * float(std[k]), 0.01)
        rounds.append({"labels": n, "via_label_studio": [round(a, 4) for a in via],
                       "in_process_per_seed": [round(float(a), 4) for a in matrix[:, k]],
                       "in_process_mean": round(float(mean[k]), 4),
                       "in_process_std": round(float(std[k]), 4),
                       "difference": round(diff, 4), "noise_2std": round(noise, 4),
                       "within_noise": abs(diff) <= noise})
    return {
        "mode": "via_label_studio", "strategy": strategy.value, "seeds_in_process": args.seeds,
        "seeds_via_label_studio": args.ls_seeds, "start": args.start, "round": args.round,
        "rounds": args.rounds, "random_share": args.random_share,
        "image_size": args.image_size, "pool": len(data.pool), "heldout": len(data.heldout),
        "labels": sizes, "per_round": rounds,
        "all_within_noise": all(r["within_noise"] for r in rounds),
        "runs": runs,
        # Whole run per seed (Label Studio start and upload included) vs in process.
        "seconds_per_run_ratio_label_studio_to_in_process": round(
            (via_ls_s / max(args.ls_seeds, 1)) / (in_process_s / max(args.seeds, 1)), 2),
    }


def _label_through_label_studio(client: Any, ls: Any, backend: Any, data: Dataset,
                                strategy: Strategy, seed: int, args: argparse.Namespace,
                                models: Path, connect_backend: Any,
                                create_informative_view: Any, create_project: Any,
                                upload_images: Any) -> dict[str, Any]:
    project = create_project(client, f"digits {strategy.value} seed {seed}",
                             REPO / "labeling_configs" / "digit_classification.xml")
    files = [data.docroot / t["data"]["image"].split("?d=", 1)[1] for t in data.pool]
    task_ids = upload_images(ls.url, ls.api_key, project, files)
    # Label Studio renames uploads to "<random>-<name>": map its tasks back to the pool.
    pool_id_of_name = {Path(t["data"]["image"]).name: t["id"] for t in data.pool}
    ls_id_of_pool_id: dict[int, int] = {}
    for task in client.tasks.list(project=project, fields="all", page_size=500):
        name = Path(str(task.data["image"])).name.split("-", 1)[1]
        ls_id_of_pool_id[pool_id_of_name[name]] = int(task.id)
    if not len(ls_id_of_pool_id) == len(task_ids) == len(data.pool):
        raise RuntimeError("uploaded tasks do not match the pool one to one")
    truth_of = {ls_id: data.truth_of[pool_id] for pool_id, ls_id in ls_id_of_pool_id.items()}
    connect_backend(client, project, backend.url)
    view = create_informative_view(client, project)
    # The same first labels as the in-process run with this seed.
    rng = np.random.default_rng(seed)
    first = [ls_id_of_pool_id[data.pool[i]["id"]]
             for i in rng.choice(len(data.pool), size=args.start, replace=False)]
    eval_runtime = Runtime(Settings(model_dir=models, cache_dir=models.parent / "eval-cache",
                                    local_files_document_root=data.docroot,
                                    classifier_image_size=args.image_size))
    accuracies, versions, round_s, picked = [], [], [], []
    batch = first
    for round_index in range(args.rounds + 1):
        t0 = time.perf_counter()
        for task_id in batch:
            client.annotations.create(id=task_id, result=[{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [str(truth_of[task_id])]}}])
        backend.wait_idle(1800)
        round_s.append(round(time.perf_counter() - t0, 2))
        failed = backend.failed_jobs()
        if failed:
            raise RuntimeError(f"backend jobs failed: {failed}")
        version = client.projects.get(id=project).model_version
        latest = eval_runtime.store.latest(project)
        if latest is None or version != latest.name:
            raise RuntimeError(f"project shows {version}, backend saved {latest}")
        versions.append(version)
        accuracies.append(_accuracy(eval_runtime, project, data.heldout, data.heldout_truth))
        print(f"via Label Studio, seed {seed}, round {round_index}: {len(truth_of)} tasks, "
              f"accuracy {accuracies[-1]:.3f}, {round_s[-1]} s", file=sys.stderr)
        if round_index == args.rounds:
            break
        # The annotator takes the top of the queue, as the view lists it.
        batch = []
        for task in client.tasks.list(project=project, view=view, page_size=args.round):
            batch.append(int(task.id))
            if len(batch) == args.round:
                break
        picked.append(batch)
    reranks = [j for j in backend.jobs() if j["name"] == "rerank" and j.get("result")]
    return {"seed": seed, "project": project, "accuracy": accuracies, "versions": versions,
            "round_seconds": round_s, "picked": picked,
            "rerank_seconds": [j["result"].get("seconds") for j in reranks]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--round", type=int, default=10)
    parser.add_argument("--max-labels", type=int, default=300)
    parser.add_argument("--heldout", type=float, default=0.3)
    parser.add_argument("--image-size", type=int, default=224, help="CLASSIFIER_IMAGE_SIZE")
    parser.add_argument("--random-share", type=float, default=0.1,
                        help="RANKING_RANDOM_SHARE (the shipped default)")
    parser.add_argument("--strategies", default=",".join(s.value for s in Strategy),
                        help="comma-separated; --via-label-studio uses the first")
    parser.add_argument("--via-label-studio", action="store_true",
                        help="label through the real Label Studio + backend (see docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="--via-label-studio rounds")
    parser.add_argument("--ls-seeds", type=int, default=1, help="--via-label-studio runs")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-al-"))
    data = _dataset(work, args.heldout)
    if args.via_label_studio:
        report = run_via_label_studio(args, work, data)
        name = "bench_active_learning_via_label_studio"
        plot = _plot_via_label_studio
    else:
        report = run_in_process(args, work, data)
        name = "bench_active_learning"
        plot = _plot
    write_report(report, args.out / name, plot)
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



def _plot_via_label_studio(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["labels"]
    rounds = report["per_round"]
    mean = np.array([r["in_process_mean"] for r in rounds])
    std = np.array([r["in_process_std"] for r in rounds])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(sizes, mean, marker="o",
            label=f"in process ({report['seeds_in_process']} seeds, mean ± 2 std)")
    ax.fill_between(sizes, mean - 2 * std, mean + 2 * std, alpha=0.2)
    for run in report["runs"]:
        ax.plot(sizes, run["accuracy"], marker="s", linestyle="--",
                label=f"via Label Studio (seed {run['seed']})")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{report['strategy']}: production path vs in-process simulation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
