#!/usr/bin/env python3
"""Annotator effort to a finished dataset: the shipped loop against manual labeling.

A simulated annotator labels a whole pool through the production path: a real Label Studio
started locally, the backend as its own process (``ml-backend serve``), Label Studio's
training webhooks, and the "Most informative first" view. Before labeling a batch it runs the
Data Manager's "Retrieve predictions" on it (Label Studio calls the backend's ``/predict``,
as opening a task in the editor does), reads each task's pre-label of the project's current
model version, pays for what turns that pre-label into the truth, and submits the truth. The
final labels are always the truth, so every arm ends with the same dataset; only the time
differs. The accounting is the live report's (``ml_backend.reporting.regions.compare_results``
over Label Studio result JSON, with ``ml_backend.reporting.effort.CostModel``: its docstring
cites the sources; every cost is an option here).

Arms, per pool:
- ``manual_random``: no model, random order. It needs no model and hence no run: it is the
  manual cost of the same random order that ``prelabels_random`` labels, and the labeled sets
  (so the model quality after n tasks) are identical to that arm's.
- ``prelabels_random``: the backend connected, tasks in random order.
- ``prelabels_ranked``: the product as shipped: each batch is the top of the ranked view.

Pools: ``digits`` (scikit-learn's digits, image classification; target held-out accuracy
0.9), ``shapes`` (synthetic scenes with exact boxes, detection; target held-out mAP50 0.8;
YOLO from its architecture config, no downloaded weights), ``masks`` (the same scenes with
exact masks, interactive segmentation: a polygon by hand against SAM clicks). SAM's arm needs
real weights (``--sam-checkpoint``): a clicker puts its next click at the centre of the
largest error region (positive when it is missed object, negative otherwise) until the mask
reaches IoU 0.9 or 20 clicks, as in the interactive segmentation literature. Without
weights the row says it is not measurable offline (random weights make meaningless masks);
``--sam-random-init`` runs the clicker on a random tiny SAM to exercise the path (CI smoke).

Prints one JSON document and saves it with a PNG (cumulative effort against tasks done):

    .venv/bin/python scripts/bench_effort.py --pools digits --pool-size 300
    .venv/bin/python scripts/bench_effort.py --pools shapes --pool-size 200
    .venv/bin/python scripts/bench_effort.py --pools digits,shapes,masks --pool-size 8 \\
        --heldout 8 --batch 4 --detector-epochs 1 --sam-random-init     # smoke run (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml_backend.core.detections import xyxy_to_ls_rect
from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import ShapeScene, shape_scenes
from ml_backend.labelstudio.rle import mask_to_rle, rle_to_mask
from ml_backend.models.detector.training import min_epoch_images
from ml_backend.reporting.effort import DEFAULT_COSTS, CostModel, mask_effort, mask_iou
from ml_backend.reporting.regions import compare_results
from ml_backend.runtime import Runtime

from bench_common import (
    classifier_accuracy,
    detector_map,
    heldout_yolo_dataset,
    save_random_sam,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
POOLS = ("digits", "shapes", "masks")
PRELABEL_ARMS = ("prelabels_random", "prelabels_ranked")
ARMS = ("manual_random", "prelabels_random", "prelabels_ranked")
TARGETS = {"digits": ("accuracy", 0.9), "shapes": ("mAP50", 0.8)}
GOALS = {"digits": 1 / 2, "shapes": 1 / 3}  # the shipped loop's effort over manual, at most
TARGET_IOU = 0.9  # the clicker stops once the mask is this close to the truth
TINY_SAM_TYPE = "vit:64/2/2"


@dataclass(frozen=True)
class RunningLabelStudio:
    """A Label Studio already running on loopback (``--label-studio-url``)."""

    url: str
    api_key: str


@dataclass
class PoolTask:
    """One image of a pool: its file, the truth as Label Studio result JSON, and the truth
    for scoring (a class index or a scene)."""

    path: Path
    truth_result: list[dict[str, Any]]
    truth: Any


@dataclass
class Pool:
    name: str
    config_path: Path
    tasks: list[PoolTask]
    heldout: list[PoolTask]
    docroot: Path


@dataclass
class ArmRun:
    """One arm over a pool: per task in labeling order, what it cost and whether the
    pre-label was accepted untouched; per batch, the model's held-out quality after it."""

    order: list[int] = field(default_factory=list)  # pool indices in labeling order
    seconds: list[float] = field(default_factory=list)
    manual_seconds: list[float] = field(default_factory=list)
    untouched: list[bool] = field(default_factory=list)
    had_prelabel: list[bool] = field(default_factory=list)
    quality: list[tuple[int, float | None]] = field(default_factory=list)  # (tasks, quality)
    versions: list[str | None] = field(default_factory=list)
    clicks: list[int | None] = field(default_factory=list)
    wall_s: float = 0.0


# --- pools -----------------------------------------------------------------------------------

def _choice_result(value: str) -> list[dict[str, Any]]:
    return [{"from_name": "digit", "to_name": "image", "type": "choices",
             "value": {"choices": [value]}}]


def _digits_pool(root: Path, size: int, heldout: int, seed: int) -> Pool:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(digits.images))[:size + heldout]
    (root / "digits").mkdir(parents=True, exist_ok=True)
    tasks = []
    for row in rows:
        path = root / "digits" / f"digit_{row:04d}.png"
        grey = 255 - (digits.images[row] / 16.0 * 255).astype(np.uint8)
        Image.fromarray(grey).resize((32, 32), Image.NEAREST).save(path)
        label = int(digits.target[row])
        tasks.append(PoolTask(path, _choice_result(str(label)), label))
    return Pool("digits", REPO / "labeling_configs" / "digit_classification.xml",
                tasks[:size], tasks[size:], root)


def _box_result(scene: ShapeScene) -> list[dict[str, Any]]:
    height, width = scene.pixels.shape[:2]
    return [{"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
             "original_width": width, "original_height": height,
             "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [label]}}
            for box, label in zip(scene.xyxy, scene.labels, strict=True)]


def _mask_result(scene: ShapeScene) -> list[dict[str, Any]]:
    height, width = scene.pixels.shape[:2]
    return [{"from_name": "mask", "to_name": "image", "type": "brushlabels",
             "original_width": width, "original_height": height,
             "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Object"]}}
            for mask in scene.masks]


def _scene_pool(name: str, root: Path, size: int, heldout: int, seed: int) -> Pool:
    scenes = shape_scenes(size + heldout, seed=seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, scene in enumerate(scenes):
        path = root / name / f"{name}_{i:04d}.png"
        Image.fromarray(scene.pixels).save(path)
        result = _box_result(scene) if name == "shapes" else _mask_result(scene)
        tasks.append(PoolTask(path, result, scene))
    config = "shapes_detection.xml" if name == "shapes" else "interactive_segmentation.xml"
    return Pool(name, REPO / "labeling_configs" / config, tasks[:size], tasks[size:], root)


def make_pool(name: str, root: Path, size: int, heldout: int, seed: int) -> Pool:
    if name == "digits":
        return _digits_pool(root, size, heldout, seed)
    return _scene_pool(name, root, size, heldout, seed)


# --- the annotator in Label Studio -----------------------------------------------------------

class LabelStudioProject:
    """A pool uploaded as a Label Studio project, with the map from its tasks to the pool."""

    def __init__(self, client: Any, pool: Pool, title: str) -> None:
        from ml_backend.devtools.project_setup import create_project

        self.client, self.pool = client, pool
        self.id = create_project(client, title, pool.config_path)
        self.index_of: dict[int, int] = {}
        self.task_id_of: dict[int, int] = {}

    def upload(self, ls: Any) -> None:
        """The pool's images as tasks (after the backend is connected, as the demo does, so
        Label Studio's TASKS_CREATED reaches it)."""
        from ml_backend.devtools.project_setup import upload_images

        task_ids = upload_images(ls.url, ls.api_key, self.id, [t.path for t in self.pool.tasks])
        if len(task_ids) != len(self.pool.tasks):
            raise RuntimeError("Label Studio created a different number of tasks")
        self.index_of = {task_id: i for i, task_id in enumerate(task_ids)}  # upload order
        self.task_id_of = dict(enumerate(task_ids))

    def model_version(self) -> str | None:
        return self.client.projects.get(id=self.id).model_version or None

    def prelabels(self, indices: Sequence[int]) -> dict[int, list[dict[str, Any]] | None]:
        """The pre-label each task shows now: its newest prediction of the project's model
        version after "Retrieve predictions" (None: none of that version)."""
        from ml_backend.devtools.project_setup import retrieve_predictions

        ids = [self.task_id_of[i] for i in indices]
        retrieve_predictions(self.client, self.id, ids)
        version = self.model_version()
        shown: dict[int, list[dict[str, Any]] | None] = {}
        for index, task_id in zip(indices, ids, strict=True):
            predictions = self.client.predictions.list(task=task_id)
            current = [p for p in predictions if version and p.model_version == version]
            newest = max(current, key=lambda p: p.id or 0) if current else None
            shown[index] = None if newest is None else list(newest.result or [])
        return shown

    def submit(self, index: int) -> None:
        self.client.annotations.create(id=self.task_id_of[index],
                                       result=self.pool.tasks[index].truth_result)

    def top_of_view(self, view: int, n: int, done: set[int]) -> list[int]:
        batch = []
        for task in self.client.tasks.list(project=self.id, view=view, page_size=max(n, 10)):
            index = self.index_of[int(task.id)]
            if index not in done:
                batch.append(index)
            if len(batch) == n:
                break
        return batch


def _backend_env(ls: Any, work: Path, args: argparse.Namespace, pool: Pool) -> dict[str, str]:
    """The shipped defaults, with this arm's model and cache folders, no Redis, and the
    detector sized for a CPU (``--detector-*``); SAM only for the mask pool."""
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.api_key,
           "MODEL_DIR": str(work / "models"), "CACHE_DIR": str(work / "cache"),
           "REDIS_URL": "", "LOG_LEVEL": "WARNING",
           "DETECTOR_EPOCHS": str(args.detector_epochs),
           "DETECTOR_IMAGE_SIZE": str(args.detector_image_size)}
    if args.batch != Settings().ranking_batch_size:  # the shipped value stays a default
        env["RANKING_BATCH_SIZE"] = str(args.batch)
    if args.detector_min_epoch_images is not None:
        env["DETECTOR_MIN_EPOCH_IMAGES"] = str(args.detector_min_epoch_images)
    if args.detector_min_score is not None:
        env["DETECTOR_MIN_SCORE"] = args.detector_min_score
    if pool.name == "masks":
        env["SAM_CHECKPOINT"] = str(args.sam_checkpoint)
        env["SAM_MODEL_TYPE"] = args.sam_model_type
    return env


@contextlib.contextmanager
def connected_project(client: Any, ls: Any, pool: Pool, args: argparse.Namespace, work: Path
                      ) -> Iterator[tuple[Any, LabelStudioProject, int]]:
    """A backend process for one arm, and the pool as a project connected to it (connected
    before the upload, as the demo does); yields (backend, project, ML backend id)."""
    from integration.backend_process import BackendProcess

    from ml_backend.devtools.project_setup import connect_backend

    work.mkdir(parents=True, exist_ok=True)
    backend = BackendProcess(_backend_env(ls, work, args, pool), work / "backend.log")
    try:
        backend.wait_ready(600)
        project = LabelStudioProject(client, pool, f"{pool.name} {work.name}")
        ml_id = connect_backend(client, project.id, backend.url)
        yield backend, project, ml_id
    finally:
        backend.stop()


def run_prelabel_arm(client: Any, ls: Any, pool: Pool, ranked: bool, args: argparse.Namespace,
                     work: Path, measure: Callable[[Path, int], float | None]) -> ArmRun:
    from ml_backend.devtools.project_setup import create_informative_view

    run = ArmRun()
    started = time.perf_counter()
    with connected_project(client, ls, pool, args, work) as (backend, project, _):
        view = create_informative_view(client, project.id)
        project.upload(ls)
        backend.wait_idle(1800)  # the import's cold-start ranking
        random_order = list(np.random.default_rng(args.seed).permutation(len(pool.tasks)))
        done: set[int] = set()
        while len(done) < len(pool.tasks):
            batch = project.top_of_view(view, args.batch, done) if ranked else []
            # Random order, or what the view did not list (it lists every unlabeled task).
            batch += [i for i in random_order if i not in done and i not in batch
                      ][:args.batch - len(batch)]
            shown = project.prelabels(batch)
            for index in batch:
                truth = pool.tasks[index].truth_result
                comparison = compare_results(shown[index], truth, args.costs)
                run.order.append(index)
                run.seconds.append(comparison.fixing_s)
                run.manual_seconds.append(comparison.manual_s)
                run.untouched.append(shown[index] is not None and comparison.untouched)
                run.had_prelabel.append(bool(shown[index]))
                project.submit(index)
                done.add(index)
            backend.wait_idle(7200)
            failed = backend.failed_jobs()
            if failed:
                raise RuntimeError(f"backend jobs failed: {failed}: {backend.log_tail()}")
            run.versions.append(project.model_version())
            run.quality.append((len(done), measure(work / "models", project.id)))
            print(f"{pool.name} {'ranked' if ranked else 'random'}: {len(done)} tasks, "
                  f"{sum(run.seconds) / 3600:.3f} h, quality {run.quality[-1][1]}",
                  file=sys.stderr)
    run.wall_s = time.perf_counter() - started
    return run


def manual_arm(pool: Pool, seed: int, costs: CostModel, like: ArmRun | None) -> ArmRun:
    """Every task drawn from nothing, in the random order (``like``'s quality curve, when
    given, is that of the same labeled sets)."""
    run = ArmRun()
    for index in np.random.default_rng(seed).permutation(len(pool.tasks)):
        comparison = compare_results(None, pool.tasks[int(index)].truth_result, costs)
        run.order.append(int(index))
        run.seconds.append(comparison.manual_s)
        run.manual_seconds.append(comparison.manual_s)
        run.untouched.append(False)
        run.had_prelabel.append(False)
    if like is not None:
        run.quality = list(like.quality)
    return run


# --- SAM clicks ------------------------------------------------------------------------------

def next_click(truth: np.ndarray, predicted: np.ndarray | None) -> tuple[int, int, bool]:
    """``(x, y, positive)``: the centre (farthest from its border) of the largest error region,
    positive where the object was missed, negative where the mask spills over."""
    from scipy import ndimage

    error = truth if predicted is None else np.logical_xor(truth, predicted)
    labels, n = ndimage.label(error)
    if n == 0:
        raise ValueError("no error region: the mask is already exact")
    sizes = ndimage.sum(error, labels, range(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    distance = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(distance == distance.max())
    # Of the points deepest inside (a ridge in a long region), the one nearest its centroid.
    cy, cx = np.argwhere(largest).mean(axis=0)
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[k]), int(ys[k]), bool(truth[ys[k], xs[k]])


def _answer_masks(body: Any, height: int, width: int) -> list[np.ndarray]:
    found: list[np.ndarray] = []
    if isinstance(body, dict):
        if body.get("type") == "brushlabels" and isinstance(body.get("value"), dict):
            found.append(rle_to_mask(body["value"]["rle"], height, width) > 0)
        else:
            for value in body.values():
                found.extend(_answer_masks(value, height, width))
    elif isinstance(body, list):
        for value in body:
            found.extend(_answer_masks(value, height, width))
    return found


def clicks_to_target(click: Callable[[list[dict[str, Any]]], list[np.ndarray]],
                     truth: np.ndarray, max_clicks: int) -> int | None:
    """Clicks the clicker needs until SAM's mask reaches IoU 0.9 (None: not within
    ``max_clicks``); ``click(context_result)`` returns the masks of the answer."""
    height, width = truth.shape
    points: list[dict[str, Any]] = []
    predicted: np.ndarray | None = None
    for n in range(1, max_clicks + 1):
        x, y, positive = next_click(truth, predicted)
        points.append({"from_name": "kp", "to_name": "image", "type": "keypointlabels",
                       "is_positive": positive, "origin": "manual",
                       "original_width": width, "original_height": height,
                       "value": {"x": 100 * (x + 0.5) / width, "y": 100 * (y + 0.5) / height,
                                 "width": 0.25, "keypointlabels": ["Object"]}})
        masks = click(points)
        predicted = masks[0] if masks else np.zeros_like(truth)
        if mask_iou(predicted, truth) >= TARGET_IOU:
            return n
    return None


def run_sam_arm(client: Any, ls: Any, pool: Pool, args: argparse.Namespace, work: Path
                ) -> ArmRun:
    """Every object of every image segmented with SAM clicks through Label Studio's
    interactive endpoint; an object the clicker cannot bring to IoU 0.9 is drawn by hand."""
    import requests

    from ml_backend.devtools.project_setup import label_studio_auth_header

    run = ArmRun()
    started = time.perf_counter()
    with connected_project(client, ls, pool, args, work) as (backend, project, ml_id):
        project.upload(ls)
        backend.wait_idle(1800)  # SAM embeddings of the import, computed ahead
        headers = label_studio_auth_header(ls.url, ls.api_key)
        for index in np.random.default_rng(args.seed).permutation(len(pool.tasks)):
            task = pool.tasks[int(index)]
            height, width = task.truth.pixels.shape[:2]

            def click(points: list[dict[str, Any]], task_id: int = project.task_id_of[
                    int(index)], height: int = height, width: int = width) -> list[np.ndarray]:
                response = requests.post(
                    f"{ls.url}/api/ml/{ml_id}/interactive-annotating", headers=headers,
                    json={"task": task_id, "context": {"result": points}}, timeout=300)
                response.raise_for_status()
                return _answer_masks(response.json(), height, width)

            seconds, clicks_used = 0.0, []
            for truth in task.truth.masks:
                clicks = clicks_to_target(click, truth, args.costs.max_clicks)
                seconds += mask_effort(clicks, args.costs).seconds
                clicks_used.append(clicks)
            run.order.append(int(index))
            run.seconds.append(seconds)
            run.manual_seconds.append(args.costs.polygon_s * len(task.truth.masks))
            run.untouched.append(False)
            run.had_prelabel.append(False)
            run.clicks.extend(clicks_used)
            project.submit(int(index))
    run.wall_s = time.perf_counter() - started
    return run


# --- quality ---------------------------------------------------------------------------------

def quality_measure(pool: Pool, work: Path, args: argparse.Namespace
                    ) -> Callable[[Path, int], float | None]:
    """Held-out quality of the version the backend saved last (None before it has one)."""
    if pool.name == "digits":
        heldout = [(t.path, str(t.truth)) for t in pool.heldout]

        def accuracy(models: Path, project: int) -> float | None:
            runtime = Runtime(Settings(model_dir=models, cache_dir=models.parent / "eval-cache",
                                       local_files_document_root=pool.docroot))
            return classifier_accuracy(runtime, project, "digit", heldout)
        return accuracy
    data_yaml = heldout_yolo_dataset(work / "heldout-yolo",
                                     [(t.path, t.truth) for t in pool.heldout])

    def map50(models: Path, project: int) -> float | None:
        runtime = Runtime(Settings(model_dir=models, cache_dir=models.parent / "eval-cache"))
        measured = detector_map(runtime, project, data_yaml, args.detector_image_size)
        return None if measured is None else measured[0]
    return map50


# --- report ----------------------------------------------------------------------------------

def _hours(seconds: float) -> float:
    return round(seconds / 3600.0, 4)


def arm_summary(run: ArmRun, target: float | None) -> dict[str, Any]:
    cumulative = np.cumsum(run.seconds) if run.seconds else np.zeros(0)
    reached = next((n for n, q in run.quality if q is not None and target is not None
                    and q >= target), None)
    with_prelabel = sum(run.had_prelabel)
    summary: dict[str, Any] = {
        "tasks": len(run.order),
        "hours_total": _hours(float(cumulative[-1]) if len(cumulative) else 0.0),
        "seconds_per_task": round(float(np.mean(run.seconds)), 3) if run.seconds else None,
        # What /report calls saved_s: each task's manual cost minus what it cost here.
        "hours_saved": _hours(float(np.sum(run.manual_seconds)) - float(np.sum(run.seconds))),
        "tasks_to_target": reached,
        "hours_to_target": None if reached is None else _hours(float(cumulative[reached - 1])),
        "accepted_without_edit_share": round(float(np.mean(run.untouched)), 4)
        if run.untouched else None,
        "tasks_with_prelabel": with_prelabel,
        "quality": [[n, None if q is None else round(q, 4)] for n, q in run.quality],
        "cumulative_hours": [_hours(float(s)) for s in cumulative],
        "task_seconds": [round(s, 3) for s in run.seconds],
        "wall_seconds": round(run.wall_s, 1),
    }
    if run.versions:
        summary["model_versions"] = len({v for v in run.versions if v})
    if run.clicks:
        reached_clicks = [c for c in run.clicks if c is not None]
        summary["objects"] = len(run.clicks)
        summary["objects_reaching_iou_0.9"] = len(reached_clicks)
        summary["mean_clicks_when_reached"] = round(float(np.mean(reached_clicks)), 2) \
            if reached_clicks else None
    return summary


def pool_report(pool: Pool, runs: dict[str, ArmRun], args: argparse.Namespace,
                notes: dict[str, str]) -> dict[str, Any]:
    metric, target = TARGETS.get(pool.name, (None, None))
    arms = {name: arm_summary(run, target) for name, run in runs.items()}
    manual = arms.get("manual_random")
    ratios = {}
    if manual and manual["hours_total"]:
        ratios = {name: round(arm["hours_total"] / manual["hours_total"], 3)
                  for name, arm in arms.items() if name != "manual_random"}
    report: dict[str, Any] = {
        "pool": len(pool.tasks), "heldout": len(pool.heldout),
        "objects": sum(len(t.truth_result) for t in pool.tasks),
        "target": None if metric is None else {"metric": metric, "value": target},
        "arms": arms, "effort_ratio_to_manual": ratios, "notes": notes,
    }
    goal = GOALS.get(pool.name)
    shipped = ratios.get("prelabels_ranked")
    if goal is not None and shipped is not None:
        report["goal"] = {"shipped_over_manual_at_most": round(goal, 3),
                          "shipped_over_manual": shipped, "met": shipped <= goal}
    return report


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from label_studio_sdk import LabelStudio

    from ml_backend.devtools.local_label_studio import LocalLabelStudio

    started = time.perf_counter()
    report: dict[str, Any] = {
        "costs_seconds": dataclasses.asdict(args.costs), "seed": args.seed, "batch": args.batch,
        "detector": {"epochs": args.detector_epochs, "image_size": args.detector_image_size,
                     "min_epoch_images": min_epoch_images(
                         args.detector_min_epoch_images, args.detector_image_size, "cpu"),
                     "min_score": args.detector_min_score or Settings().detector_min_score,
                     "weights": "none (YOLO architecture config, trained from scratch)"},
        "pools": {}}
    with contextlib.ExitStack() as stack:
        ls: Any = RunningLabelStudio(args.label_studio_url, args.label_studio_api_key)
        if not args.label_studio_url:
            ls = stack.enter_context(LocalLabelStudio(work / "label-studio"))
        client = LabelStudio(base_url=ls.url, api_key=ls.api_key, timeout=600)
        for name in args.pools:
            size = args.pool_size or {"digits": 300, "shapes": 200, "masks": 40}[name]
            pool = make_pool(name, work / "images", size, args.heldout, args.seed)
            runs: dict[str, ArmRun] = {}
            notes: dict[str, str] = {}
            if name == "masks":
                runs["manual_random"] = manual_arm(pool, args.seed, args.costs, None)
                if args.sam_checkpoint is None:
                    notes["sam_clicks"] = ("not measurable offline: no SAM weights "
                                           "(pass --sam-checkpoint; random weights give "
                                           "meaningless masks)")
                else:
                    runs["sam_clicks"] = run_sam_arm(client, ls, pool, args, work / "masks-sam")
                    if args.sam_random_init:
                        notes["sam_clicks"] = ("a random-init tiny SAM: exercises the clicker "
                                               "through Label Studio; its figures mean nothing")
            else:
                measure = quality_measure(pool, work / name, args)
                for arm in args.arms:
                    runs[arm] = run_prelabel_arm(client, ls, pool, arm.endswith("ranked"), args,
                                                 work / f"{name}-{arm}", measure)
                runs = {"manual_random": manual_arm(pool, args.seed, args.costs,
                                                    runs.get("prelabels_random")), **runs}
                notes["manual_random"] = ("no model, so no run: the manual cost of the random "
                                          "order prelabels_random labels" + (
                                              "; its quality curve is that arm's (the same "
                                              "labeled sets)" if "prelabels_random" in runs
                                              else ""))
            report["pools"][name] = pool_report(pool, runs, args, notes)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = report["pools"]
    fig, axes = plt.subplots(1, len(pools), figsize=(5.5 * len(pools), 4.2), squeeze=False)
    styles = {"manual_random": ("#555555", "--"), "prelabels_random": ("#4D96FF", "-"),
              "prelabels_ranked": ("#D62728", "-"), "sam_clicks": ("#2CA02C", "-")}
    for ax, (name, pool) in zip(axes[0], pools.items(), strict=True):
        for arm, summary in pool["arms"].items():
            hours = summary["cumulative_hours"]
            colour, line = styles.get(arm, ("black", ":"))
            label = arm
            if summary.get("tasks_to_target"):
                label += f" (target at {summary['hours_to_target']:.2f} h)"
            ax.plot(range(1, len(hours) + 1), hours, line, color=colour, label=label)
        ratio = pool["effort_ratio_to_manual"].get("prelabels_ranked")
        title = f"{name}: {pool['pool']} images"
        if ratio is not None:
            title += f", shipped/manual {ratio:.2f}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tasks labeled")
        ax.set_ylabel("annotator hours (cumulative)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _min_score_option(value: str) -> str:
    """``--detector-min-score``: what DETECTOR_MIN_SCORE accepts (a number in [0, 1] or
    ``auto``), checked by the backend's own parser before anything starts."""
    try:
        Settings.from_env({"DETECTOR_MIN_SCORE": value})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value.strip().lower()


def _cost_options(parser: argparse.ArgumentParser) -> None:
    for item in dataclasses.fields(CostModel):
        default = getattr(DEFAULT_COSTS, item.name)
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=type(default),
                            default=default, help=f"cost model: {item.name} (default {default})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pools", default="digits,shapes,masks",
                        help=f"comma-separated, of {', '.join(POOLS)}")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="images per pool (default: digits 300, shapes 200, masks 40)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out images per pool")
    parser.add_argument("--batch", type=int, default=Settings().ranking_batch_size,
                        help="tasks labeled between two looks at the queue; also the "
                             "backend's RANKING_BATCH_SIZE (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(PRELABEL_ARMS),
                        help="the pre-label arms to run (the manual arm costs nothing to run)")
    parser.add_argument("--detector-epochs", type=int, default=20)
    parser.add_argument("--detector-image-size", type=int, default=256)
    parser.add_argument("--detector-min-epoch-images", type=int, default=None,
                        help="DETECTOR_MIN_EPOCH_IMAGES (default: the shipped value)")
    parser.add_argument("--detector-min-score", type=_min_score_option, default=None,
                        help="DETECTOR_MIN_SCORE: a number in [0, 1], or auto (the threshold "
                             "each version chose for the least fix-up time; default: the "
                             "shipped value)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None)
    parser.add_argument("--sam-model-type", default="vit_b")
    parser.add_argument("--sam-random-init", action="store_true",
                        help="a random tiny SAM for the clicker (smoke runs only)")
    parser.add_argument("--label-studio-url", default=os.environ.get("BENCH_LABEL_STUDIO_URL"),
                        help="a running Label Studio on loopback (default: start one here)")
    parser.add_argument("--label-studio-api-key",
                        default=os.environ.get("BENCH_LABEL_STUDIO_API_KEY"))
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "bench_effort")
    _cost_options(parser)
    args = parser.parse_args(argv)
    args.pools = [p for p in args.pools.split(",") if p]
    unknown = set(args.pools) - set(POOLS)
    if unknown:
        parser.error(f"unknown pools: {sorted(unknown)}")
    args.arms = [a for a in args.arms.split(",") if a]
    if not args.arms or set(args.arms) - set(PRELABEL_ARMS):
        parser.error(f"--arms takes some of {', '.join(PRELABEL_ARMS)}")
    args.costs = CostModel(**{f.name: getattr(args, f.name) for f in dataclasses.fields(
        CostModel)})
    with tempfile.TemporaryDirectory(prefix="bench-effort-") as tmp:
        work = args.workdir or Path(tmp)
        if args.sam_random_init:
            args.sam_model_type = TINY_SAM_TYPE
            args.sam_checkpoint = save_random_sam(TINY_SAM_TYPE, work / "sam" / "tiny.pth")
        with contextlib.redirect_stdout(sys.stderr):  # Ultralytics prints: stdout is the JSON
            report = run(args, work)
        write_report(report, args.out, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
