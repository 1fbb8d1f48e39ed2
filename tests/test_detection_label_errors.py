"""Suspected label errors of object detection: cleanlab's ObjectLab scores on synthetic shapes
with exact ground truth, the edge cases, and the quality job on a detection project."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.core.detections import Detections, LabeledBoxes, xyxy_to_ls_rect
from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes
from ml_backend.jobs.kinds import QualityRequest, TrainRequest
from ml_backend.models.classifier.training import _holdout
from ml_backend.models.detector import training as detector_training
from ml_backend.models.detector.model import DetectorModel
from ml_backend.quality.detection_errors import (
    class_ids,
    cleanlab_prediction,
    detection_label_quality,
)
from ml_backend.quality.label_errors import quality_job
from ml_backend.quality.views import LABEL_ERRORS_VIEW, QUALITY_KEY
from ml_backend.runtime import Runtime

from conftest import png_bytes
from fakes import FakeLabelStudioAPI
from yolo_fixture import SHAPES_CONFIG, SIZE, train_tiny_yolo

N_CLASSES = len(SHAPE_CLASSES)
# Above cleanlab's high-probability threshold (0.95, strict): a confident detector.
CONFIDENT = 0.99


def _truth(count: int, seed: int = 0) -> list[LabeledBoxes]:
    return [LabeledBoxes(s.xyxy, tuple(s.labels)) for s in shape_scenes(count, seed)]


def _predicted(xyxy: np.ndarray, labels: Sequence[str], scores: np.ndarray) -> Detections:
    return Detections(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), tuple(labels),
                      np.asarray(scores, dtype=np.float64), 100, 100)


def _as_predictions(truth: list[LabeledBoxes]) -> list[Detections]:
    """The true boxes, predicted with high confidence."""
    return [_predicted(t.xyxy, t.labels, np.full(len(t), CONFIDENT)) for t in truth]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _corrupt(truth: list[LabeledBoxes]) -> tuple[list[LabeledBoxes], dict[str, int]]:
    """Three images with one wrong annotation each: a swapped class, a box shifted to
    IoU 0.11 with its object, a removed box (an overlooked object). cleanlab flags a badly
    located box at a box similarity of at most 0.2 (0.8 × 0.25 × the class's AP), so the shift
    goes well below IoU 0.5."""
    given = list(truth)
    swapped, shifted, removed = (next(i for i, t in enumerate(truth) if len(t) >= n
                                      and i > start) for n, start in ((2, 0), (2, 3), (2, 6)))
    labels = list(truth[swapped].labels)
    labels[0] = SHAPE_CLASSES[(SHAPE_CLASSES.index(labels[0]) + 1) % N_CLASSES]
    given[swapped] = LabeledBoxes(truth[swapped].xyxy, tuple(labels))
    boxes = truth[shifted].xyxy.copy()
    width = boxes[0, 2] - boxes[0, 0]
    boxes[0] += [0.8 * width, 0.0, 0.8 * width, 0.0]
    assert _iou(boxes[0], truth[shifted].xyxy[0]) < 0.2
    given[shifted] = LabeledBoxes(boxes, truth[shifted].labels)
    given[removed] = LabeledBoxes(truth[removed].xyxy[1:], truth[removed].labels[1:])
    return given, {"swapped": swapped, "shifted": shifted, "removed": removed}


def test_corrupted_annotations_score_lowest_and_are_flagged() -> None:
    truth = _truth(30)
    given, corrupted = _corrupt(truth)
    quality = detection_label_quality(given, _as_predictions(truth), SHAPE_CLASSES)
    assert quality.scores.shape == (30,) and quality.issues.shape == (30,)
    assert ((quality.scores >= 0) & (quality.scores <= 1)).all()
    bad = set(corrupted.values())
    assert set(np.argsort(quality.scores, kind="stable")[:3].tolist()) == bad, quality.scores
    assert set(np.flatnonzero(quality.issues).tolist()) == bad, corrupted
    clean = np.array([i not in bad for i in range(30)])
    assert quality.scores[clean].min() > 0.99
    assert quality.scores[sorted(bad)].max() < 0.6


def test_scoring_never_forks_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """cleanlab opens a process pool in find_label_issues; a fork of the multithreaded
    server can hang on a lock another thread held. The scores come without a fork, and are
    the same as the pool's (cleanlab asks for one process)."""
    import os

    truth = _truth(30)
    given, corrupted = _corrupt(truth)

    def no_fork() -> int:
        raise AssertionError("detection label quality forked a process")

    monkeypatch.setattr(os, "fork", no_fork)
    quality = detection_label_quality(given, _as_predictions(truth), SHAPE_CLASSES)
    assert set(np.flatnonzero(quality.issues).tolist()) == set(corrupted.values())


def test_clean_annotations_all_score_one() -> None:
    truth = _truth(12, seed=4)
    quality = detection_label_quality(truth, _as_predictions(truth), SHAPE_CLASSES)
    assert quality.scores.min() > 0.999
    assert not quality.issues.any()


def _empty_given() -> LabeledBoxes:
    return LabeledBoxes(np.zeros((0, 4)), ())


def _empty_predicted() -> Detections:
    return _predicted(np.zeros((0, 4)), (), np.zeros(0))


def test_edge_cases_are_explicit() -> None:
    truth = _truth(6, seed=2)
    predicted = _as_predictions(truth)
    given = [*truth, _empty_given(), _empty_given(), truth[0]]
    predicted = [*predicted, _empty_predicted(), predicted[1], _empty_predicted()]
    quality = detection_label_quality(given, predicted, SHAPE_CLASSES)
    # No box annotated, none predicted: nothing to disagree on.
    assert quality.scores[6] == 1.0 and not quality.issues[6]
    # No box annotated where the detector is sure of some: overlooked objects.
    assert quality.scores[7] < 0.5 and quality.issues[7]
    # Boxes annotated, nothing predicted: no evidence against them (a documented limit).
    assert quality.scores[8] == 1.0 and not quality.issues[8]
    # No images at all.
    empty = detection_label_quality([], [], SHAPE_CLASSES)
    assert empty.scores.shape == (0,) and empty.issues.shape == (0,)


def test_a_single_class_is_scored_on_overlooked_and_shifted_boxes() -> None:
    truth = [LabeledBoxes(t.xyxy, ("shape",) * len(t)) for t in _truth(10, seed=5)]
    given = list(truth)
    given[3] = LabeledBoxes(truth[3].xyxy[1:], truth[3].labels[1:]) if len(
        truth[3]) > 1 else _empty_given()
    quality = detection_label_quality(given, _as_predictions(truth), ["shape"])
    assert int(np.argmin(quality.scores)) == 3 and quality.issues[3]
    assert quality.issues.sum() == 1


def test_predictions_are_split_per_class_as_cleanlab_expects() -> None:
    predicted = _predicted(np.array([[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 9, 9.0]]),
                           ("c", "a", "c"), np.array([0.9, 0.2, 0.4]))
    per_class = cleanlab_prediction(predicted, ["a", "b", "c", "d"])
    assert [a.shape for a in per_class] == [(1, 5), (0, 5), (2, 5), (0, 5)]
    np.testing.assert_allclose(per_class[2][:, 4], [0.9, 0.4])


def test_labels_become_class_ids_in_the_classes_order() -> None:
    ids = class_ids(("c", "a", "c"), ["a", "b", "c"])
    assert ids.dtype == np.int64 and ids.tolist() == [2, 0, 2]
    assert class_ids((), ["a"]).shape == (0,)


@pytest.mark.parametrize("make, error", [
    (lambda: LabeledBoxes(np.zeros((2, 3)), ("a", "b")), "must be \\(N, 4\\)"),
    (lambda: LabeledBoxes(np.zeros((2, 4)), ("a", "b", "c")), "3 labels need xyxy \\(3, 4\\)"),
    (lambda: _predicted(np.zeros((1, 4)), ("a",), np.zeros(2)), "scores \\(N,\\)"),
    (lambda: detection_label_quality([_empty_given()],
                                     [_predicted(np.zeros((1, 4)), ("a",), np.array([1.5]))],
                                     ["a"]), "must lie in \\[0, 1\\]"),
    (lambda: detection_label_quality([_empty_given()], [], ["a"]), "one prediction per image"),
    (lambda: detection_label_quality([_empty_given()], [_empty_predicted()], []),
     "at least 1"),
    (lambda: detection_label_quality([_empty_given()], [_empty_predicted()], ["a", "a"]),
     "distinct"),
    (lambda: detection_label_quality([LabeledBoxes(np.zeros((1, 4)), ("d",))],
                                     [_empty_predicted()], ["a", "b", "c"]),
     "image 0: labels \\['d'\\] are not among the classes"),
    (lambda: detection_label_quality([_empty_given()],
                                     [_predicted(np.zeros((1, 4)), ("d",), np.array([0.5]))],
                                     ["a"]), "image 0: labels \\['d'\\]"),
])
def test_bad_input_is_refused(make, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        make()


# --- the quality job on a detection project --------------------------------------------------
def _pixels_key(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


class TrueBoxesDetector:
    """A stand-in for ``YoloDetector``: every image's true boxes at confidence 0.99, plus a
    weak stray box (cleanlab's thresholds must leave it out)."""

    classes = SHAPE_CLASSES

    def __init__(self, scenes: Sequence[Any], confidence: float = CONFIDENT) -> None:
        self.boxes = {_pixels_key(s.pixels): s for s in scenes}
        self.confidence = confidence
        self.floors: list[float] = []

    def detect(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        self.floors.append(min_score)
        out = []
        for image in images:
            scene = self.boxes[_pixels_key(image)]
            stray = np.array([[0.0, 0.0, 8.0, 8.0]])
            out.append(Detections(np.concatenate([scene.xyxy, stray]),
                                  (*scene.labels, "circle"),
                                  np.r_[np.full(len(scene.labels), self.confidence),
                                        0.02],
                                  image.shape[1], image.shape[0]))
        return out


def _box_task(task_id: int, path: str, xyxy: np.ndarray, labels: Sequence[str], width: int,
              height: int) -> dict[str, Any]:
    result = [{"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
               "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [label]}}
              for box, label in zip(xyxy, labels, strict=True)]
    return {"id": task_id, "data": {"image": path}, "annotations": [{
        "id": task_id, "updated_at": "2026-01-01T00:00:00Z", "result": result}]}


def _shape_project(image_host: Any, count: int, corrupt: dict[int, str], project: int = 9
                   ) -> tuple[list[dict[str, Any]], list[Any]]:
    """``count`` tasks (ids from 1) annotated with their true boxes, except: ``"swap"``
    (the first box gets the next class), ``"shift"`` (the first box moves by 0.8 of its
    width) and ``"remove"`` (the first box is left out) on the task ids in ``corrupt``."""
    scenes = [s for s in shape_scenes(3 * count, seed=21) if len(s.labels) >= 2][:count]
    tasks = []
    for task_id, scene in enumerate(scenes, start=1):
        path = f"/data/upload/{project}/shape{task_id}.png"
        image_host.files[path] = png_bytes(scene.pixels)
        xyxy, labels = scene.xyxy.copy(), list(scene.labels)
        how = corrupt.get(task_id)
        if how == "swap":
            labels[0] = SHAPE_CLASSES[(SHAPE_CLASSES.index(labels[0]) + 1) % N_CLASSES]
        elif how == "shift":
            xyxy[0] += [0.8 * (xyxy[0, 2] - xyxy[0, 0]), 0.0, 0.8 * (xyxy[0, 2] - xyxy[0, 0]),
                        0.0]
        elif how == "remove":
            xyxy, labels = xyxy[1:], labels[1:]
        height, width = scene.pixels.shape[:2]
        tasks.append(_box_task(task_id, path, xyxy, labels, width, height))
    return tasks, scenes


def _save_detector(runtime: Runtime, project: int, trained_on: list[int],
                   **extra: Any) -> str:
    """A detector version that trained on ``trained_on`` (``extra``: more meta); its name."""
    meta = {**extra, "file": "detector.pt", "digest": "true-boxes", "classes": list(SHAPE_CLASSES),
            "control": "shape", "n_labeled": 0, "map50": 1.0, "map50_95": 1.0, "epochs": 1,
            "n_train": len(trained_on), "n_val": 0, "val_source": "held-out tasks",
            "start": "architecture", "trained_on": trained_on}
    return runtime.store.save(project, "fake_yolo", {"detector.pt": b"not used"},
                              {"family": "detector", "detector": meta}).name


def test_quality_job_scores_the_tasks_the_detector_did_not_train_on(
        backend: Any, image_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, runtime, _ = backend
    ids = list(range(1, 41))
    # The detector trained on tasks 1-30 outside the held-out split; 31-40 came later.
    trained = [t for t, held in zip(ids[:30], _holdout(ids[:30]), strict=True) if not held]
    unseen = [t for t in ids if t not in trained]
    held_out = [t for t in unseen if t <= 30]
    assert len(held_out) >= 2
    corrupt = {held_out[0]: "swap", 33: "shift", 37: "remove", trained[0]: "swap"}
    tasks, scenes = _shape_project(image_host, 40, corrupt)
    fake = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)
    runtime.ls_api = fake  # type: ignore[assignment]
    detector = TrueBoxesDetector(scenes)
    model = DetectorModel(_save_detector(runtime, 9, trained), detector,  # type: ignore[arg-type]
                          "true-boxes")
    monkeypatch.setattr(runtime.detector, "model", lambda project: model)

    result = quality_job(runtime, QualityRequest(9))
    assert result["status"] == "scored", result
    assert result["classification"]["status"] == "skipped"
    detection = result["detection"]
    assert detection["status"] == "scored" and detection["n_labeled"] == len(unseen)
    split = dict(zip(unseen, _holdout(unseen), strict=True))
    assert detection["scored_on"] == {"held_out_split": sum(split.values()),
                                      "not_yet_trained": len(unseen) - sum(split.values())}
    assert set(detector.floors) == {0.01}  # weak boxes reach cleanlab
    scores = {int(t["id"]): t["data"].get(QUALITY_KEY) for t in fake.tasks}
    # Only the tasks it did not train on are scored; a wrong box it trained on is not.
    assert {t for t, s in scores.items() if s is not None} == set(unseen)
    worst = sorted(unseen, key=lambda t: scores[t])[:3]
    assert set(worst) == {held_out[0], 33, 37}, {t: scores[t] for t in worst}
    assert [w["task"] for w in result["worst"] if w["issue"]] == worst
    assert min(scores[t] for t in unseen if t not in worst) > 0.99
    assert result["worst"][0]["detection"]["boxes"] >= 1
    assert LABEL_ERRORS_VIEW in fake.views
    state = runtime.store.read_state(9, "label-quality")
    assert state["status"] == "scored" and len(state["tasks"]) == len(unseen)
    # Nothing changed: nothing is written again.
    again = quality_job(runtime, QualityRequest(9))
    assert again["written"] == 0 and again["cleared"] == 0

    # A newer detector trained on task 33 too: its score, now stale, is removed.
    model = DetectorModel(_save_detector(runtime, 9, sorted([*trained, 33])),
                          detector, "true-boxes")  # type: ignore[arg-type]
    third = quality_job(runtime, QualityRequest(9))
    assert third["cleared"] == 1 and QUALITY_KEY not in fake.tasks[32]["data"]
    assert third["detection"]["n_labeled"] == len(unseen) - 1


# A held-out fit of a detector whose right boxes score 0.6 (and its strays 0.02).
UNDERCONFIDENT_FIT = {"confidence": [0.02, 0.6], "precision": [0.0, 0.99], "n_boxes": 80,
                      "n_right": 40, "n_images": 20}


@pytest.mark.parametrize("fit, found", [
    (None, False),  # raw: no box reaches cleanlab's 0.95 (only its 0.5 finds the shift)
    (UNDERCONFIDENT_FIT, True),  # calibrated: a 0.6 box is right 99 % of the time
    ({"confidence": [0.6], "precision": []}, False),  # unreadable: raw, logged
])
def test_the_quality_job_reads_confidences_through_the_versions_calibration(
        fit: dict[str, Any] | None, found: bool, backend: Any, image_host: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _, runtime, _ = backend
    ids = list(range(1, 21))
    corrupt = {2: "swap", 5: "shift", 9: "remove"}
    tasks, scenes = _shape_project(image_host, 20, corrupt)
    fake = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)
    runtime.ls_api = fake  # type: ignore[assignment]
    extra = {} if fit is None else {"confidence_calibration": fit}
    model = DetectorModel(_save_detector(runtime, 9, [], **extra),
                          TrueBoxesDetector(scenes, confidence=0.6),  # type: ignore[arg-type]
                          "true-boxes")
    monkeypatch.setattr(runtime.detector, "model", lambda project: model)

    detection = quality_job(runtime, QualityRequest(9))["detection"]
    assert detection["status"] == "scored" and detection["n_labeled"] == len(ids)
    scores = {int(t["id"]): t["data"][QUALITY_KEY] for t in fake.tasks}
    suspected = {t for t, score in scores.items() if score < 0.99}
    if found:
        assert detection["confidence"] == "calibrated on 80 held-out boxes (40 right)"
        assert suspected == set(corrupt), scores
    else:
        assert detection["confidence"].startswith("raw (")
        assert suspected == {5}, scores  # the swap and the missing box go unseen
    assert ("unreadable confidence calibration" in caplog.text) == (
        fit is not None and not found)


def test_quality_job_with_few_unseen_tasks_says_so(backend: Any, image_host: Any) -> None:
    _, runtime, _ = backend
    tasks, _ = _shape_project(image_host, 12, {})
    fake = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)
    runtime.ls_api = fake  # type: ignore[assignment]
    _save_detector(runtime, 9, list(range(1, 10)))  # 3 tasks left unseen
    result = quality_job(runtime, QualityRequest(9))
    assert result["status"] == "not-enough-labels", result
    assert sum(result["detection"]["scored_on"].values()) == 3
    assert "did not train on" in result["detail"] and fake.data_updates == 0


def test_a_detector_without_its_training_record_is_skipped(backend: Any, image_host: Any
                                                           ) -> None:
    _, runtime, _ = backend
    tasks, _ = _shape_project(image_host, 6, {})
    runtime.ls_api = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)  # type: ignore[assignment]
    runtime.store.save(9, "fake_yolo", {"detector.pt": b"x"}, {"family": "detector", "detector": {
        "file": "detector.pt", "digest": "d", "control": "shape"}})
    result = quality_job(runtime, QualityRequest(9))
    assert result["status"] == "skipped" and "predates the record" in result["detail"]


def test_an_unavailable_detector_costs_only_its_part(
        backend: Any, image_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, runtime, _ = backend
    tasks, _ = _shape_project(image_host, 8, {})
    fake = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)
    runtime.ls_api = fake  # type: ignore[assignment]
    _save_detector(runtime, 9, [])

    def broken(project: int) -> DetectorModel:
        raise ModelUnavailable("cannot load YOLO weights detector.pt: truncated")

    monkeypatch.setattr(runtime.detector, "model", broken)
    result = quality_job(runtime, QualityRequest(9))
    assert result["status"] == "skipped" and fake.data_updates == 0
    assert "detection: detector unavailable: cannot load" in result["detail"]


def test_detector_training_records_its_tasks_and_chains_the_quality_job(
        backend: Any, image_host: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, runtime, _ = backend
    tasks, _ = _shape_project(image_host, 12, {})
    fake = FakeLabelStudioAPI(SHAPES_CONFIG, tasks[:10])
    runtime.ls_api = fake  # type: ignore[assignment]

    def fake_fine_tune(spec: Any, work_dir: Path, *args: Any) -> dict[str, Any]:
        weights = tmp_path / "weights.pt"
        weights.write_bytes(spec.start.encode())
        return {"weights": str(weights), "map50": 0.5, "map50_95": 0.3, "epochs": 1,
                "digest": "w"}

    monkeypatch.setattr(detector_training, "fine_tune", fake_fine_tune)
    outcome = detector_training.train_detector_job(runtime, TrainRequest(9, mode="full"))
    assert outcome["status"] == "trained", outcome
    assert {"name": "quality", "payload": {"project": 9}, "key": "quality:9"} \
        in outcome["next_jobs"]
    first = runtime.store.latest(9).manifest["detector"]
    held = _holdout(list(range(1, 11)))
    expected = [t for t, h in zip(range(1, 11), held, strict=True) if not h]
    if held.all() or not held.any():  # a split too small: every task trained on
        expected = list(range(1, 11))
    assert first["trained_on"] == expected

    # The next round warm-starts from it and keeps its record.
    fake.tasks = tasks
    detector_training.train_detector_job(runtime, TrainRequest(9, mode="full"))
    second = runtime.store.latest(9).manifest["detector"]
    assert second["start"].startswith("version ")
    held = _holdout(list(range(1, 13)))
    assert set(second["trained_on"]) == set(expected) | {
        t for t, h in zip(range(1, 13), held, strict=True) if not h}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_yolo(tmp_path_factory.mktemp("tiny-yolo"))


def test_quality_job_through_a_real_detector(make_settings: Any, image_host: Any,
                                             tiny_checkpoint: Path) -> None:
    """The real predict path (decode, YOLO, class mapping) into cleanlab: a tiny detector
    (one epoch at 64 px) says little, so only the shape of the result is checked."""
    settings: Settings = make_settings(label_studio_url=image_host.url,
                                       detector_image_size=SIZE)
    runtime = Runtime(settings)
    tasks, _ = _shape_project(image_host, 12, {3: "swap"})
    fake = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)
    runtime.ls_api = fake  # type: ignore[assignment]
    weights = tiny_checkpoint.read_bytes()
    runtime.store.save(9, "tiny", {"detector.pt": weights}, {"family": "detector", "detector": {
        "file": "detector.pt", "digest": hashlib.sha256(weights).hexdigest()[:16],
        "classes": list(SHAPE_CLASSES), "control": "shape", "trained_on": [1, 2]}})
    result = quality_job(runtime, QualityRequest(9))
    assert result["status"] == "scored", result
    assert result["detection"]["n_labeled"] == 10
    scores = [t["data"][QUALITY_KEY] for t in fake.tasks[2:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(QUALITY_KEY not in t["data"] for t in fake.tasks[:2])
