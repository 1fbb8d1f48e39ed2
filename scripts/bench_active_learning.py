#!/usr/bin/env python3
"""Learning-efficiency benchmark: does labeling in the backend's order save labels, and is the
production head ever worse than the simple baseline?

A simulated annotator with ground truth labels a data set in rounds: ``--start`` (20) random
labels, then rounds of ``--round`` (10) chosen by the strategy under test. After each round
the model retrains through the production code path (``train_classifier`` with an
incremental update, exactly what an annotation webhook runs; only Label Studio's API is
replaced by the annotator's in-memory answers) and is scored on a fixed held-out split. Tasks
are ranked with ``ml_backend.pipeline.ranking.rank_tasks``, the function the re-ranking job
uses.

Data sets (``--datasets``, comma-separated; one JSON + PNG each, named
``bench_active_learning_<dataset>``):

- ``digits``: scikit-learn's ``load_digits`` (1797 images, 8x8 upscaled to 32 px).
- ``glyphs``: the harder set ``ml_backend.devtools.datasets.render_glyphs`` draws (ten
  confusable characters in ten fonts, rotated, blurred, noisy, cluttered, classes uneven
  3:1), ``--pool`` images (1000) at 64 px.

``--pool`` caps either set (digits: a seeded subset; default all); ``--heldout`` (30 %) of
it is the fixed held-out split. ``--image-size auto`` (the product default) embeds each image
at its own size.

For every seed, strategy and label count the report holds, next to the production head's
held-out accuracy, the baseline's: scikit-learn's ``LogisticRegression()`` with default
arguments fitted on the same embeddings (the runtime's embedder) of the same labeled tasks,
scored on the same held-out set; and whether the head's mean is at least the baseline's mean
minus one standard deviation over seeds. Also: the full-data accuracy of both (every pool
task labeled: the curve's ceiling), area under each curve and labels needed to reach 95 %
of the head's full-data accuracy, with their ratio to random order.

Cold-start arm: the first ``--start`` labels in the product's cold-start order (TypiClust
coverage over the base backbone's embeddings of the pool, as ``rank_tasks(...,
cold_start=True)`` orders the queue before the first head) instead of at random, both
continuing with margin to ``--cold-start-labels`` (50); accuracies after 20 and 50 labels.

Prints JSON (saved with a PNG plot).

With ``--via-label-studio`` (digits only) the first strategy is run through the production
path instead: a real Label Studio and a backend process, annotations created through the
API, training and re-ranking driven by Label Studio's webhooks, each round's tasks taken from
the top of the "Most informative first" view. Its per-round accuracies are reported next to
the in-process runs of the same strategy (mean and seed spread).

    .venv/bin/python scripts/bench_active_learning.py --datasets digits,glyphs [--seeds 3]
    .venv/bin/python scripts/bench_active_learning.py --datasets glyphs --pool 400 \\
        --seeds 1 --max-labels 60
    .venv/bin/python scripts/bench_active_learning.py --via-label-studio --strategies margin
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from ml_backend.core.settings import Settings
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.labelstudio.api import LabeledTask
from ml_backend.learning.cold_start import cold_start_clusters, coverage_order
from ml_backend.learning.selection import Strategy
from ml_backend.models.classifier.model import ResNetEmbedder
from ml_backend.models.classifier.training import embed_images, fetch_images, train_classifier
from ml_backend.pipeline.ranking import rank_tasks
from ml_backend.runtime import Runtime

from bench_common import SimulatedAnnotator, write_report

REPO = Path(__file__).resolve().parent.parent
DIGITS_CONFIG = (REPO / "labeling_configs" / "digit_classification.xml").read_text()
DEFAULT_STRATEGIES = "margin,ranked_batch,random"
DATASETS = ("digits", "glyphs")
SPLIT_SEED = 12345  # the held-out split (and a capped pool's subset) never change with --seeds


@dataclass(frozen=True)
class Dataset:
    """A labeled image set as PNG tasks: a pool to label and a fixed held-out split.
    ``truth_of`` maps task ids to class indices; ``choices`` are the label config's choice
    values by class index."""

    name: str
    description: str
    config: str
    control: str
    choices: tuple[str, ...]
    docroot: Path
    pool: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    truth_of: dict[int, int]

    @property
    def heldout_truth(self) -> np.ndarray:
        return np.array([self.truth_of[t["id"]] for t in self.heldout])

    def class_counts(self, tasks: list[dict[str, Any]]) -> list[int]:
        labels = [self.truth_of[t["id"]] for t in tasks]
        return np.bincount(labels, minlength=len(self.choices)).tolist()


def _label(annotator: SimulatedAnnotator, data: Dataset, task: dict[str, Any]) -> None:
    choice = data.choices[data.truth_of[task["id"]]]
    annotator.annotate(task, [{"from_name": data.control, "to_name": "image",
                               "type": "choices", "value": {"choices": [choice]}}])


def _digit_images(root: Path, size: int) -> tuple[list[dict[str, Any]], np.ndarray]:
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


def _glyph_images(root: Path, count: int, size: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    from ml_backend.devtools.datasets import write_glyph_pngs

    written = write_glyph_pngs(root / "glyphs", count, size=size, seed=0)
    tasks = [{"id": i + 1, "data": {"image": f"/data/local-files/?d=glyphs/{path.name}"}}
             for i, (path, _) in enumerate(written)]
    return tasks, np.array([label for _, label in written])


def glyph_config() -> str:
    """A single-choice label config over the glyph classes."""
    from ml_backend.devtools.datasets import GLYPH_CLASSES

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in GLYPH_CLASSES)
    return ('<View>\n  <Image name="image" value="$image"/>\n'
            '  <Choices name="glyph" toName="image" choice="single-radio">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def _dataset(name: str, work: Path, heldout_share: float, pool_size: int | None) -> Dataset:
    docroot = work / "docroot"
    if name == "digits":
        tasks, truth = _digit_images(docroot, 32)
        description = "sklearn load_digits (8x8 upscaled to 32 px)"
        config, control = DIGITS_CONFIG, "digit"
        choices = tuple(str(d) for d in range(10))
    elif name == "glyphs":
        from ml_backend.devtools.datasets import GLYPH_CLASSES

        tasks, truth = _glyph_images(docroot, pool_size or 1000, 64)
        description = ("ml_backend.devtools.datasets.render_glyphs (seed 0, 64 px): "
                       f"{', '.join(GLYPH_CLASSES)} in 10 fonts, rotation, blur, noise, "
                       "clutter, classes 3:1")
        config, control, choices = glyph_config(), "glyph", GLYPH_CLASSES
    else:
        raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    rng = np.random.default_rng(SPLIT_SEED)
    split = rng.permutation(len(tasks))
    if pool_size is not None and pool_size < len(split):
        split = split[:pool_size]
    n_heldout = int(len(split) * heldout_share)
    return Dataset(name, description, config, control, choices, docroot,
                   pool=[tasks[i] for i in split[n_heldout:]],
                   heldout=[tasks[i] for i in split[:n_heldout]],
                   truth_of={t["id"]: int(truth[t["id"] - 1]) for t in tasks})


def _embeddings(runtime: Runtime, embedder: ResNetEmbedder, tasks: list[dict[str, Any]]
                ) -> tuple[list[int], np.ndarray]:
    """Rows of ``tasks`` whose image embedded, and their embeddings (the runtime's cache)."""
    as_tasks = [LabeledTask(t["id"], t["data"], 0, "", []) for t in tasks]
    return embed_images(runtime, embedder, fetch_images(runtime, as_tasks, "image"))


def _accuracy(runtime: Runtime, project: int, data: Dataset) -> float:
    """The production head's held-out accuracy."""
    return _evaluate(runtime, project, data, [])[0]


def _evaluate(runtime: Runtime, project: int, data: Dataset, labeled: list[dict[str, Any]]
              ) -> tuple[float, float | None]:
    """Held-out accuracy of the project's head and of the baseline, a default
    ``LogisticRegression()`` fitted on the same embeddings of the ``labeled`` tasks (None
    without labeled tasks, or with one class only)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = runtime.classifier.model(project)
    assert model is not None
    rows, x = _embeddings(runtime, model.embedder, data.heldout)
    truth = data.heldout_truth[rows]
    head = model.heads[data.control]
    index_of = {choice: k for k, choice in enumerate(data.choices)}
    classes = np.array([index_of[label] for label in head.labels])
    head_accuracy = float((classes[head.predict_proba(x).argmax(axis=1)] == truth).mean())
    if not labeled:
        return head_accuracy, None
    train_rows, x_train = _embeddings(runtime, model.embedder, labeled)
    y_train = np.array([data.truth_of[labeled[r]["id"]] for r in train_rows])
    if len(np.unique(y_train)) < 2:
        return head_accuracy, None
    with warnings.catch_warnings():
        # Defaults on purpose (lbfgs, 100 iterations): the baseline a user would try first.
        warnings.simplefilter("ignore", ConvergenceWarning)
        baseline = LogisticRegression().fit(x_train, y_train)
    return head_accuracy, float((baseline.predict(x) == truth).mean())


def _labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


@dataclass
class Run:
    """One simulated labeling run: per round, labels so far and held-out accuracies."""

    sizes: list[int] = field(default_factory=list)
    head: list[float] = field(default_factory=list)
    baseline: list[float | None] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)


def _simulate(runtime: Runtime, data: Dataset, project: int, strategy: Strategy, seed: int,
              args: argparse.Namespace, first: list[int] | None = None,
              max_labels: int | None = None, baseline: bool = True) -> Run:
    """One labeling run in process. The first ``args.start`` labels are random pool tasks, or
    the pool rows ``first`` (the random draw is made anyway, so the rest of the run sees the
    same random stream either way)."""
    rng = np.random.default_rng(seed)
    annotator = SimulatedAnnotator(data.config)
    runtime.ls_api = annotator  # type: ignore[assignment]
    drawn = rng.choice(len(data.pool), size=args.start, replace=False)
    for i in (first if first is not None else drawn):
        _label(annotator, data, data.pool[int(i)])
    limit = args.max_labels if max_labels is None else max_labels
    run = Run()
    while True:
        started = time.perf_counter()
        train_classifier(runtime, TrainRequest(project=project, mode="incremental"))
        head, base = _evaluate(runtime, project, data,
                               list(annotator.done.values()) if baseline else [])
        run.sizes.append(len(annotator.done))
        run.head.append(head)
        run.baseline.append(base)
        if len(annotator.done) >= limit:
            run.round_seconds.append(time.perf_counter() - started)
            return run
        candidates = [t for t in data.pool if t["id"] not in annotator.done]
        ranked = rank_tasks(runtime, project, data.config, candidates,
                            list(annotator.done.values()), strategy, args.round,
                            args.random_share, rng)
        by_id = {t["id"]: t for t in candidates}
        for task_id in ranked.order[:args.round]:
            _label(annotator, data, by_id[task_id])
        run.round_seconds.append(time.perf_counter() - started)


def _runtime(work: Path, data: Dataset, args: argparse.Namespace, name: str) -> Runtime:
    return Runtime(Settings(model_dir=work / name / "models", cache_dir=work / "cache",
                            local_files_document_root=data.docroot,
                            classifier_image_size=args.image_size,
                            update_project_model_version=False,
                            rerank_after_training=False))


def _size_name(image_size: int | None) -> str | int:
    return "auto" if image_size is None else image_size


def _rounded(values: np.ndarray) -> list[float | None]:
    """Four decimals; None where undefined (JSON has no NaN)."""
    return [None if np.isnan(a) else round(float(a), 4) for a in values]


def _stats(runs: list[list[float]]) -> dict[str, Any]:
    """Mean, std and per-seed values of equally long curves (NaN: undefined)."""
    matrix = np.array(runs, dtype=np.float64)
    return {"mean": _rounded(matrix.mean(axis=0)), "std": _rounded(matrix.std(axis=0)),
            "per_seed": [_rounded(run) for run in matrix]}


def _area(sizes: list[int], mean: list[float | None]) -> float | None:
    """Area under the mean curve over the label range, per label (a mean accuracy); None
    where the curve has an undefined point."""
    if any(a is None for a in mean):
        return None
    if len(sizes) < 2:
        return mean[0]
    return round(float(np.trapezoid(mean, sizes) / (sizes[-1] - sizes[0])), 4)


def _cold_start_rows(runtime: Runtime, data: Dataset, n: int, seed: int) -> list[int]:
    """The first ``n`` pool rows in the product's cold-start order: TypiClust coverage over
    the base backbone's embeddings, with the clusters ``rank_tasks(..., cold_start=True)``
    uses for this many classes and a batch of ``n``."""
    rows, x = _embeddings(runtime, runtime.classifier.embedder(None), data.pool)
    order, _ = coverage_order(x, cold_start_clusters(len(rows), len(data.choices), n), seed)
    return [rows[int(i)] for i in order[:n]]


def run_in_process(args: argparse.Namespace, work: Path, data: Dataset) -> dict[str, Any]:
    """Every strategy for every seed, the full-data ceiling and the cold-start arm on
    ``data``: the report for one data set (see the module docstring)."""
    strategies = [Strategy.parse(s) for s in args.strategies.split(",")]
    runtime = _runtime(work, data, args, f"in-process-{data.name}")
    started = time.perf_counter()

    # Full-data reference: every pool task labeled, trained the same way.
    full = SimulatedAnnotator(data.config)
    runtime.ls_api = full  # type: ignore[assignment]
    for task in data.pool:
        _label(full, data, task)
    train_classifier(runtime, TrainRequest(project=1, mode="incremental"))
    full_head, full_baseline = _evaluate(runtime, 1, data, list(full.done.values()))
    target = 0.95 * full_head
    print(f"{data.name}: full-data accuracy head {full_head:.3f}, baseline "
          f"{full_baseline:.3f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    runs: dict[str, list[Run]] = {s.value: [] for s in strategies}
    cold: list[Run] = []
    warm: list[Run] = []  # the random-start margin runs the cold-start arm compares with
    project = 1
    for seed in range(args.seeds):
        for strategy in strategies:
            project += 1
            run = _simulate(runtime, data, project, strategy, seed, args)
            runs[strategy.value].append(run)
            print(f"{data.name} seed {seed} {strategy.value}: final accuracy "
                  f"{run.head[-1]:.3f} (baseline {run.baseline[-1]}), "
                  f"{np.mean(run.round_seconds):.1f} s/round "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        if args.cold_start_labels > 0:
            project += 1
            arm_end = min(args.cold_start_labels, args.max_labels)
            cold.append(_simulate(runtime, data, project, Strategy.MARGIN, seed, args,
                                  first=_cold_start_rows(runtime, data, args.start, seed),
                                  max_labels=arm_end, baseline=False))
            if "margin" in runs:
                warm.append(runs["margin"][-1])
            else:
                project += 1
                warm.append(_simulate(runtime, data, project, Strategy.MARGIN, seed, args,
                                      max_labels=arm_end, baseline=False))
            print(f"{data.name} seed {seed} cold start: after {cold[-1].sizes[-1]} labels "
                  f"{cold[-1].head[-1]:.3f} (coverage) vs "
                  f"{warm[-1].head[len(cold[-1].sizes) - 1]:.3f} (random first batch)",
                  file=sys.stderr)

    sizes = next(iter(runs.values()))[0].sizes
    report: dict[str, Any] = {
        "dataset": data.name, "description": data.description,
        "pool": len(data.pool), "heldout": len(data.heldout),
        "pool_class_counts": data.class_counts(data.pool),
        "heldout_class_counts": data.class_counts(data.heldout),
        "seeds": args.seeds, "start": args.start, "round": args.round,
        "image_size": _size_name(args.image_size), "random_share": args.random_share,
        "backbone_weights": runtime.classifier.base_weights().source,
        "baseline": "sklearn.linear_model.LogisticRegression() (default arguments) on the "
                    "same embeddings of the same labeled tasks",
        "head_vs_baseline_rule": "head mean >= baseline mean - baseline std over seeds",
        "full_data_accuracy": round(full_head, 4),
        "full_data_accuracy_baseline": round(float(full_baseline or 0.0), 4),
        "target_accuracy": round(target, 4),
        "labels": sizes, "strategies": {},
    }
    for name, strategy_runs in runs.items():
        head = _stats([r.head for r in strategy_runs])
        base = _stats([[float(np.nan if b is None else b) for b in r.baseline]
                       for r in strategy_runs])
        difference = _stats([np.subtract(r.head, [np.nan if b is None else b
                                                  for b in r.baseline]).tolist()
                             for r in strategy_runs])
        curve = list(zip(sizes, head["mean"], strict=True))
        # None where the baseline is undefined (one class labeled in some seed).
        at_least = [None if h is None or b is None or s is None else bool(h >= b - s)
                    for h, b, s in zip(head["mean"], base["mean"], base["std"], strict=True)]
        report["strategies"][name] = {
            "mean_accuracy": head["mean"], "std_accuracy": head["std"],
            "per_seed_accuracy": head["per_seed"],
            "baseline_mean_accuracy": base["mean"], "baseline_std_accuracy": base["std"],
            "baseline_per_seed_accuracy": base["per_seed"],
            "head_minus_baseline_mean": difference["mean"],
            "head_minus_baseline_std": difference["std"],
            "head_at_least_baseline_minus_1std": at_least,
            "area_under_curve": _area(sizes, head["mean"]),
            "baseline_area_under_curve": _area(sizes, base["mean"]),
            "labels_to_95pct_full": _labels_to_reach(curve, target),
            "labels_to_95pct_full_per_seed": [
                _labels_to_reach(list(zip(sizes, r.head, strict=True)), target)
                for r in strategy_runs],
            "seconds_per_round": round(float(np.mean(
                [s for r in strategy_runs for s in r.round_seconds])), 2),
        }
    random_labels = report["strategies"].get("random", {}).get("labels_to_95pct_full")
    for entry in report["strategies"].values():
        needed = entry["labels_to_95pct_full"]
        entry["ratio_random_to_this"] = (round(random_labels / needed, 3)
                                         if random_labels and needed else None)
    report["head_below_baseline_minus_1std"] = [
        {"strategy": k, "labels": n, "head": v["mean_accuracy"][i],
         "baseline": v["baseline_mean_accuracy"][i], "baseline_std": v["baseline_std_accuracy"][i]}
        for k, v in report["strategies"].items() for i, n in enumerate(sizes)
        if v["head_at_least_baseline_minus_1std"][i] is False]
    report["head_at_least_baseline_everywhere"] = not report["head_below_baseline_minus_1std"]
    ranked = [(v["labels_to_95pct_full"] or 10**9, -v["area_under_curve"], k)
              for k, v in report["strategies"].items() if k != "random"]
    report["best_strategy"] = min(ranked)[2] if ranked else None
    if "random" in runs:
        rnd = report["strategies"]["random"]
        for name, entry in report["strategies"].items():
            if name != "random":
                entry["vs_random"] = _versus_random(entry, rnd, sizes)
        if "ranked_batch" in runs:  # the name earlier result files used
            report["ranked_batch_vs_random"] = report["strategies"]["ranked_batch"]["vs_random"]
    if cold:
        report["cold_start"] = _cold_start_report(cold, warm, args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _versus_random(entry: dict[str, Any], rnd: dict[str, Any], sizes: list[int]
                   ) -> dict[str, Any]:
    """A strategy's mean curve against random order's, label count by label count."""
    below = [n for n, a, b, s in zip(sizes, entry["mean_accuracy"], rnd["mean_accuracy"],
                                     rnd["std_accuracy"], strict=True) if a < b - s]
    return {
        "area_under_curve_difference": round(entry["area_under_curve"]
                                             - rnd["area_under_curve"], 4),
        "mean_difference_per_label_count": [round(a - b, 4) for a, b in zip(
            entry["mean_accuracy"], rnd["mean_accuracy"], strict=True)],
        # Not below random: at every label count within one std (over seeds) of it.
        "below_random_minus_1std_at_labels": below,
        "not_below_random_minus_1std": not below,
    }


def _cold_start_report(cold: list[Run], warm: list[Run], args: argparse.Namespace
                       ) -> dict[str, Any]:
    """Margin after a coverage first batch vs after a random one, up to the arm's end."""
    sizes = cold[0].sizes
    coverage = _stats([r.head for r in cold])
    random_start = _stats([r.head[:len(sizes)] for r in warm])
    points = {}
    for n in sorted({args.start, args.cold_start_labels}):
        if n in sizes:
            k = sizes.index(n)
            points[str(n)] = {
                "coverage_mean": coverage["mean"][k], "coverage_std": coverage["std"][k],
                "coverage_per_seed": [run[k] for run in coverage["per_seed"]],
                "random_mean": random_start["mean"][k], "random_std": random_start["std"][k],
                "random_per_seed": [run[k] for run in random_start["per_seed"]],
            }
    return {"first_batch": "coverage_order (TypiClust) over the base backbone's embeddings "
                           "of the pool vs random; then margin",
            "labels": sizes,
            "coverage": {"mean_accuracy": coverage["mean"], "std_accuracy": coverage["std"],
                         "per_seed_accuracy": coverage["per_seed"]},
            "random": {"mean_accuracy": random_start["mean"],
                       "std_accuracy": random_start["std"],
                       "per_seed_accuracy": random_start["per_seed"]},
            "after": points}


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
    reference = [_simulate(runtime, data, 1000 + seed, strategy, seed, in_process_args,
                           baseline=False) for seed in range(args.seeds)]
    in_process_s = time.perf_counter() - started
    sizes = reference[0].sizes
    matrix = np.array([run.head for run in reference])

    runs = []
    with LocalLabelStudio(work / "label-studio") as ls:
        client = LabelStudio(base_url=ls.url, api_key=ls.api_key, timeout=300)
        for seed in range(args.ls_seeds):
            models = work / f"ls-seed{seed}" / "models"
            backend = BackendProcess({
                "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.api_key,
                "MODEL_DIR": str(models), "CACHE_DIR": str(work / f"ls-seed{seed}" / "cache"),
                "CLASSIFIER_IMAGE_SIZE": str(_size_name(args.image_size)), "REDIS_URL": "",
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
        "image_size": _size_name(args.image_size), "pool": len(data.pool),
        "heldout": len(data.heldout),
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
        accuracies.append(_accuracy(eval_runtime, project, data))
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
    parser.add_argument("--datasets", default="digits",
                        help=f"comma-separated, from {', '.join(DATASETS)}; one report each")
    parser.add_argument("--pool", type=int, default=None,
                        help="images per data set, held-out split included (glyphs: 1000; "
                             "digits: all 1797)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--round", type=int, default=10)
    parser.add_argument("--max-labels", type=int, default=300)
    parser.add_argument("--cold-start-labels", type=int, default=50,
                        help="end of the cold-start arm (0: no arm)")
    parser.add_argument("--heldout", type=float, default=0.3)
    parser.add_argument("--image-size", type=_image_size, default=None,
                        help="CLASSIFIER_IMAGE_SIZE: pixels, or auto (the default: each "
                             "image at its own size)")
    parser.add_argument("--random-share", type=float, default=0.1,
                        help="RANKING_RANDOM_SHARE (the shipped default)")
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                        help="comma-separated, from "
                             f"{', '.join(s.value for s in Strategy)}; "
                             "--via-label-studio uses the first")
    parser.add_argument("--via-label-studio", action="store_true",
                        help="label through the real Label Studio + backend (see docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="--via-label-studio rounds")
    parser.add_argument("--ls-seeds", type=int, default=1, help="--via-label-studio runs")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-al-"))
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if args.via_label_studio:
        if names != ["digits"]:
            raise SystemExit("--via-label-studio runs the digits only")
        data = _dataset("digits", work, args.heldout, args.pool)
        write_report(run_via_label_studio(args, work, data),
                     args.out / "bench_active_learning_via_label_studio", _plot_via_label_studio)
        return 0
    for name in names:
        data = _dataset(name, work / name, args.heldout, args.pool)
        write_report(run_in_process(args, work, data),
                     args.out / f"bench_active_learning_{name}", _plot)
    return 0


def _image_size(value: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    size = int(value)
    if size < 16:
        raise argparse.ArgumentTypeError("at least 16 pixels, or auto")
    return size


def _plot(report: dict[str, Any], path: Path) -> None:
    """Left: accuracy vs labels per strategy, the head solid and the baseline dashed in the
    same colour. Right: the cold-start arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["labels"]
    cold = report.get("cold_start")
    fig, axes = plt.subplots(1, 2 if cold else 1, figsize=(14 if cold else 8, 5),
                             squeeze=False, gridspec_kw={"width_ratios": [2, 1]} if cold
                             else None)
    ax = axes[0][0]
    for name, entry in report["strategies"].items():
        mean, std = np.array(entry["mean_accuracy"]), np.array(entry["std_accuracy"])
        line, = ax.plot(sizes, mean, label=f"{name}: head (AUC {entry['area_under_curve']:.3f})")
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.15, color=line.get_color())
        base = np.array([np.nan if v is None else v for v in entry["baseline_mean_accuracy"]])
        ax.plot(sizes, base, linestyle="--", color=line.get_color(),
                label=f"{name}: LogisticRegression() "
                      f"(AUC {entry['baseline_area_under_curve']:.3f})")
    ax.axhline(report["full_data_accuracy"], color="grey", linewidth=1,
               label=f"full data, head ({report['full_data_accuracy']:.3f})")
    ax.axhline(report["full_data_accuracy_baseline"], color="grey", linestyle="--",
               linewidth=1,
               label=f"full data, baseline ({report['full_data_accuracy_baseline']:.3f})")
    ax.axhline(report["target_accuracy"], color="black", linestyle=":", linewidth=1,
               label="95% of the head's full-data accuracy")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{report['dataset']}: {report['pool']} pool / {report['heldout']} held out, "
                 f"{report['seeds']} seeds (mean ± std)")
    ax.legend(fontsize=8)
    if cold:
        ax = axes[0][1]
        for key, label in (("coverage", "coverage (TypiClust) first batch"),
                           ("random", "random first batch")):
            mean = np.array(cold[key]["mean_accuracy"])
            std = np.array(cold[key]["std_accuracy"])
            ax.errorbar(cold["labels"], mean, yerr=std, marker="o", capsize=3,
                        label=f"{label}, then margin")
        ax.set_xlabel("labeled images")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("cold start")
        ax.legend(fontsize=8)
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
