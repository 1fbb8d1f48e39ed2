"""The box threshold for the least annotator fix-up time (issue 18): the pure choice on
hand-computed cases, DETECTOR_MIN_SCORE=auto, the predict path's threshold, and the choice a
fine-tune stores in the version's meta."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.core.detections import Detections, LabeledBoxes
from ml_backend.core.settings import DEFAULT_DETECTOR_MIN_SCORE, Settings
from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.models.classifier.training import _holdout
from ml_backend.models.detector import family as detector_family
from ml_backend.models.detector import training as detector_training
from ml_backend.models.detector.boxes import default_min_score
from ml_backend.models.detector.calibration import ConfidenceCalibration
from ml_backend.models.detector.model import DetectionSample
from ml_backend.models.detector.thresholds import (
    DEFAULT_GRID,
    fixup_threshold,
    tuned_threshold,
)
from ml_backend.reporting.effort import CostModel

from conftest import png_bytes
from fakes import FakeLabelStudioAPI
from yolo_fixture import SHAPES_CONFIG, SIZE, hosted_shape_tasks, train_tiny_yolo

TRUE_BOX = [10.0, 10.0, 50.0, 50.0]


def _predicted(boxes: Sequence[Sequence[float]], labels: Sequence[str],
               scores: Sequence[float]) -> Detections:
    return Detections(np.array(boxes, dtype=float).reshape(-1, 4), tuple(labels),
                      np.array(scores, dtype=float), 100, 100)


def _truth(boxes: Sequence[Sequence[float]], labels: Sequence[str]) -> LabeledBoxes:
    return LabeledBoxes(np.array(boxes, dtype=float).reshape(-1, 4), tuple(labels))


def _grid_seconds(*spans: tuple[float, float, float]) -> dict[float, float]:
    """Seconds per image over DEFAULT_GRID from ``(lowest, highest threshold, seconds)``."""
    out = {t: seconds for lo, hi, seconds in spans for t in DEFAULT_GRID if lo <= t <= hi}
    assert sorted(out) == list(DEFAULT_GRID)
    return out


# --- the choice, by hand --------------------------------------------------------------------
def test_a_correct_box_at_0_3_and_a_false_one_at_0_1() -> None:
    # 0.05-0.10: both shown, accept 1 s + delete 1 s; 0.15-0.30: the correct one, 1 s;
    # 0.35-0.50: none shown, the true box drawn, 7 s. Cheapest 1 s: the highest of the tie.
    predictions = [_predicted([TRUE_BOX, [60, 60, 90, 90]], ["circle", "circle"], [0.3, 0.1])]
    choice = fixup_threshold(predictions, [_truth([TRUE_BOX], ["circle"])])
    assert choice.value == 0.3 and choice.n_images == 1
    assert choice.seconds_per_image == _grid_seconds((0.05, 0.1, 2.0), (0.15, 0.3, 1.0),
                                                       (0.35, 0.5, 7.0))


def test_a_weak_correct_box_makes_the_lowest_threshold_cheapest() -> None:
    predictions = [_predicted([TRUE_BOX], ["circle"], [0.08])]
    choice = fixup_threshold(predictions, [_truth([TRUE_BOX], ["circle"])])
    assert choice.value == 0.05
    assert choice.seconds_per_image == _grid_seconds((0.05, 0.05, 1.0), (0.1, 0.5, 7.0))


def test_seconds_are_per_image_and_count_adjusting_relabelling_and_deleting() -> None:
    # Image 1: a square at 0.45 over a true circle, IoU 0.8: adjust 3 s + relabel 3 s (at 0.5
    # it is hidden: draw 7 s). Image 2: no object, a false box at 0.2: delete 1 s up to 0.2.
    predictions = [_predicted([[0, 0, 40, 32]], ["square"], [0.45]),
                   _predicted([[5, 5, 20, 20]], ["circle"], [0.2])]
    truths = [_truth([[0, 0, 40, 40]], ["circle"]), _truth([], [])]
    choice = fixup_threshold(predictions, truths)
    assert choice.value == 0.45 and choice.n_images == 2
    assert choice.seconds_per_image == _grid_seconds((0.05, 0.2, 3.5), (0.25, 0.45, 3.0),
                                                       (0.5, 0.5, 3.5))


def test_ties_choose_the_higher_threshold() -> None:
    # Drawing as cheap as accepting: a weak correct box saves nothing, every threshold ties.
    predictions = [_predicted([TRUE_BOX], ["circle"], [0.08])]
    choice = fixup_threshold(predictions, [_truth([TRUE_BOX], ["circle"])],
                             CostModel(draw_box_s=1.0))
    assert choice.value == 0.5 and set(choice.seconds_per_image.values()) == {1.0}
    # Images without objects or boxes cost nothing at any threshold.
    empty = fixup_threshold([_predicted([], [], [])] * 3, [_truth([], [])] * 3)
    assert empty.value == 0.5 and set(empty.seconds_per_image.values()) == {0.0}


def test_a_custom_grid_is_sorted_and_deduplicated() -> None:
    predictions = [_predicted([TRUE_BOX, [60, 60, 90, 90]], ["circle", "circle"], [0.3, 0.1])]
    choice = fixup_threshold(predictions, [_truth([TRUE_BOX], ["circle"])],
                             grid=[0.4, 0.1, 0.1, 0.3])
    assert choice.seconds_per_image == {0.1: 2.0, 0.3: 1.0, 0.4: 7.0} and choice.value == 0.3


def test_the_meta_record_is_json() -> None:
    predictions = [_predicted([TRUE_BOX], ["circle"], [0.08])]
    meta = fixup_threshold(predictions, [_truth([TRUE_BOX], ["circle"])]).as_meta()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["value"] == 0.05 and meta["n_images"] == 1
    assert list(meta["seconds_per_image"]) == [f"{t:.2f}" for t in DEFAULT_GRID]
    assert tuned_threshold({"box_threshold": meta}) == 0.05


@pytest.mark.parametrize("predictions, truths, grid, error", [
    ([], [], DEFAULT_GRID, "no images"),
    ([_predicted([], [], [])], [], DEFAULT_GRID, "1 images of predictions but 0"),
    ([_predicted([], [], [])], [_truth([], [])], [], "grid"),
    ([_predicted([], [], [])], [_truth([], [])], [0.2, 1.5], "grid"),
])
def test_bad_input_is_refused(predictions, truths, grid, error) -> None:
    with pytest.raises(ValueError, match=error):
        fixup_threshold(predictions, truths, grid=grid)


def test_true_boxes_need_a_label_per_box() -> None:
    with pytest.raises(ValueError, match=r"2 labels need xyxy \(2, 4\)"):
        LabeledBoxes(np.zeros((1, 4)), ("circle", "square"))


@pytest.mark.parametrize("meta, expected", [
    (None, None), ({}, None), ({"box_threshold": None}, None),
    ({"box_threshold": {"value": 0.1}}, 0.1), ({"box_threshold": {"value": 0}}, 0.0),
    ({"box_threshold": {"value": "0.1"}}, None), ({"box_threshold": {"value": 1.5}}, None),
    ({"box_threshold": {"value": True}}, None), ({"box_threshold": 0.1}, None),
])
def test_a_versions_tuned_threshold(meta, expected) -> None:
    assert tuned_threshold(meta) == expected


# --- DETECTOR_MIN_SCORE -----------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    (None, DEFAULT_DETECTOR_MIN_SCORE), ("", DEFAULT_DETECTOR_MIN_SCORE), ("auto", None),
    (" Auto ", None), ("0.1", 0.1), ("0", 0.0), ("1", 1.0),
])
def test_detector_min_score_is_a_share_or_auto(raw, expected) -> None:
    env = {} if raw is None else {"DETECTOR_MIN_SCORE": raw}
    assert Settings.from_env(env).detector_min_score == expected


@pytest.mark.parametrize("raw, message", [
    ("1.5", r"DETECTOR_MIN_SCORE=1.5 must be a share between 0 and 1 \(or auto\)"),
    ("-0.1", r"DETECTOR_MIN_SCORE=-0.1 must be >= 0.0 \(or auto\)"),
    ("automatic", r"DETECTOR_MIN_SCORE='automatic' is not a number \(or auto\)"),
])
def test_a_bad_detector_min_score_names_the_variable(raw, message) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({"DETECTOR_MIN_SCORE": raw})


@pytest.mark.parametrize("setting, tuned, expected", [
    (0.25, 0.1, 0.25), (0.4, None, 0.4), (0.0, 0.1, 0.0),  # a number wins
    (None, 0.1, 0.1), (None, 0.0, 0.0), (None, None, DEFAULT_DETECTOR_MIN_SCORE),  # auto
])
def test_the_default_threshold_of_a_control(setting, tuned, expected) -> None:
    assert default_min_score(setting, tuned) == expected


# --- the predict path -------------------------------------------------------------------------
SCORES = (0.9, 0.3, 0.12, 0.06)
PLAIN_CONFIG = SHAPES_CONFIG.replace(' model_score_threshold="0.0"', "")
STRICT_CONFIG = SHAPES_CONFIG.replace('model_score_threshold="0.0"', 'model_score_threshold="0.5"')


class FixedScoresDetector:
    """A stand-in for ``YoloDetector``: four circles at :data:`SCORES` on every image."""

    classes = tuple(SHAPE_CLASSES)

    def detect(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        out = []
        for image in images:
            scores = np.array([s for s in SCORES if s >= min_score])
            boxes = np.array([[4.0 * k, 4.0 * k, 4.0 * k + 10, 4.0 * k + 10]
                              for k in range(len(scores))]).reshape(-1, 4)
            out.append(Detections(boxes, ("circle",) * len(scores), scores, image.shape[1],
                                  image.shape[0]))
        return out


def _save_version(runtime: Any, project: int, box_threshold: dict[str, Any] | None) -> str:
    meta: dict[str, Any] = {"file": "detector.pt", "digest": f"fixed-{box_threshold}",
                            "classes": list(SHAPE_CLASSES), "control": "shape"}
    if box_threshold is not None:
        meta["box_threshold"] = box_threshold
    return runtime.store.save(project, "fake_yolo", {"detector.pt": b"not read"},
                              {"family": "detector", "detector": meta}).name


def _shown_scores(client: Any, image_host: Any, config: str, project: int) -> list[float]:
    image_host.files[f"/data/upload/{project}/a.png"] = png_bytes(
        np.zeros((SIZE, SIZE, 3), dtype=np.uint8))
    response = client.post("/predict", json={
        "tasks": [{"id": 1, "data": {"image": f"/data/upload/{project}/a.png"}}],
        "label_config": config, "project": project})
    assert response.status_code == 200, response.get_data(as_text=True)
    (prediction,) = response.get_json()["results"]
    return sorted((r["score"] for r in prediction["result"]), reverse=True)


@pytest.fixture
def fixed_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detector_family, "YoloDetector",
                        lambda *args, **kwargs: FixedScoresDetector())


@pytest.mark.parametrize("setting, box_threshold, config, shown", [
    (None, {"value": 0.1}, PLAIN_CONFIG, [0.9, 0.3, 0.12]),  # auto: the version's choice
    (None, None, PLAIN_CONFIG, [0.9, 0.3]),  # auto, no choice: 0.25
    (0.25, {"value": 0.1}, PLAIN_CONFIG, [0.9, 0.3]),  # a number wins over the choice
    (None, {"value": 0.1}, STRICT_CONFIG, [0.9]),  # the control's attribute wins over both
    (0.05, None, STRICT_CONFIG, [0.9]),
])
def test_predict_shows_boxes_from_the_resolved_threshold(
        fixed_scores: None, make_settings: Any, image_host: Any, setting: float | None,
        box_threshold: dict[str, Any] | None, config: str, shown: list[float]) -> None:
    from app_fixture import backend_app

    settings = make_settings(label_studio_url=image_host.url, detector_min_score=setting,
                             detector_image_size=SIZE)
    with backend_app(settings) as (client, runtime, _):
        _save_version(runtime, 7, box_threshold)
        assert _shown_scores(client, image_host, config, 7) == pytest.approx(shown)


# --- the fine-tune stores its choice ----------------------------------------------------------
HELD_OUT_IDS = [t for t in range(1, 40) if _holdout([t])[0]][:4]
TRAIN_IDS = [t for t in range(1, 40) if not _holdout([t])[0]][:4]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_yolo(tmp_path_factory.mktemp("tiny-yolo"))


@pytest.fixture
def detector_runtime(make_settings: Any, image_host: Any, tiny_checkpoint: Path
                     ) -> Iterator[Any]:
    from app_fixture import backend_app

    settings = make_settings(label_studio_url=image_host.url, yolo_checkpoint=str(tiny_checkpoint),
                             detector_image_size=SIZE, detector_epochs=1, detector_batch=4,
                             detector_min_epoch_images=0, detector_min_labels=4,
                             detector_train_nice=0, detector_min_score=None)
    with backend_app(settings) as (_, runtime, _):
        yield runtime


def test_a_fine_tune_on_held_out_tasks_stores_its_box_threshold(
        detector_runtime: Any, image_host: Any) -> None:
    assert len(HELD_OUT_IDS) == detector_training.MIN_THRESHOLD_IMAGES
    tasks = hosted_shape_tasks(image_host, HELD_OUT_IDS + TRAIN_IDS, 6)
    detector_runtime.ls_api = FakeLabelStudioAPI(SHAPES_CONFIG, tasks)
    outcome = detector_training.train_detector_job(detector_runtime,
                                                   TrainRequest(project=6, mode="full"))
    assert outcome["status"] == "trained", outcome
    meta = detector_runtime.store.latest(6).manifest["detector"]
    assert meta["val_source"] == "held-out tasks" and meta["n_val"] == 4
    choice = meta["box_threshold"]
    assert choice["n_images"] == 4 and choice["value"] in DEFAULT_GRID
    assert list(choice["seconds_per_image"]) == [f"{t:.2f}" for t in DEFAULT_GRID]
    assert choice["seconds_per_image"][f"{choice['value']:.2f}"] == min(
        choice["seconds_per_image"].values())
    assert f"box threshold {choice['value']:.2f} (least fix-up time)" in outcome["detail"]
    # A calibration needs 10 right boxes, which a one-epoch detector may not have.
    if "confidence_calibration" in meta:
        assert ConfidenceCalibration.from_meta(meta["confidence_calibration"]).n_images == 4
    model, tuned = detector_runtime.detector.model_and_threshold(6)
    assert tuned == choice["value"] and model.version == detector_runtime.store.latest(6).name


@pytest.mark.parametrize("ids, chosen_on", [
    (HELD_OUT_IDS + TRAIN_IDS, 4),  # held-out tasks, enough of them
    (HELD_OUT_IDS[:3] + TRAIN_IDS, None),  # too few held-out tasks
    (TRAIN_IDS, None),  # no split: validated on the training images
])
def test_only_enough_held_out_tasks_fit_a_threshold_and_a_calibration(
        ids: list[int], chosen_on: int | None, make_settings: Any, image_host: Any,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ml_backend.runtime import Runtime

    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    monkeypatch.setattr(detector_training, "fine_tune", lambda *args: {
        "weights": str(weights), "map50": 0.5, "map50_95": 0.3, "epochs": 1, "digest": "d"})
    calls = []

    def fits(runtime: Any, path: Path, val: Sequence[DetectionSample],
             labels: Sequence[str]) -> dict[str, Any]:
        calls.append((path, [s.name for s in val], tuple(labels)))
        return {"box_threshold": {"value": 0.1, "seconds_per_image": {},
                                  "n_images": len(val)},
                "confidence_calibration": {"n_images": len(val)}}

    monkeypatch.setattr(detector_training, "held_out_fits", fits)
    runtime = Runtime(make_settings(label_studio_url=image_host.url, detector_min_labels=3))
    runtime.ls_api = FakeLabelStudioAPI(SHAPES_CONFIG, hosted_shape_tasks(image_host, ids, 4))
    outcome = detector_training.train_detector_job(runtime, TrainRequest(project=4,
                                                                         mode="full"))
    assert outcome["status"] == "trained", outcome
    meta = runtime.store.latest(4).manifest["detector"]
    if chosen_on is None:
        assert calls == [] and "box_threshold" not in meta
        assert "confidence_calibration" not in meta
    else:
        assert calls == [(weights, [f"task-{t}" for t in HELD_OUT_IDS], tuple(SHAPE_CLASSES))]
        assert meta["box_threshold"]["n_images"] == chosen_on
        assert meta["confidence_calibration"]["n_images"] == chosen_on


def _val_samples(count: int) -> list[DetectionSample]:
    return [DetectionSample(f"task-{i}", png_bytes(s.pixels), ".png", s.xyxy,
                            np.array([SHAPE_CLASSES.index(lab) for lab in s.labels]),
                            s.pixels.shape[1], s.pixels.shape[0])
            for i, s in enumerate(shape_scenes(count, seed=5))]


def test_a_failed_held_out_prediction_is_logged_and_fits_nothing(
        make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from ml_backend.runtime import Runtime

    runtime = Runtime(make_settings())
    caplog.set_level(logging.ERROR, logger=detector_training.__name__)
    # An unreadable weights file …
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert detector_training.held_out_fits(
        runtime, broken, _val_samples(4), SHAPE_CLASSES) == {}
    assert "predicting the 4 held-out images for the box threshold failed" in caplog.text

    # … or any error from the model: logged with its traceback, no choice.
    class Exploding:
        def __init__(self, *args: Any) -> None:
            raise RuntimeError("CUDA out of memory")

    caplog.clear()
    monkeypatch.setattr(detector_training, "YoloDetector", Exploding)
    assert detector_training.held_out_fits(
        runtime, tmp_path / "any.pt", _val_samples(4), SHAPE_CLASSES) == {}
    assert "CUDA out of memory" in caplog.text and "Traceback" in caplog.text


# --- the effort benchmark passes DETECTOR_MIN_SCORE on -----------------------------------------
def _bench_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *options: str
                ) -> tuple[Any, Any]:
    """The bench_effort module and the options its main() parsed (nothing is run)."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    bench = importlib.import_module("bench_effort")
    parsed = []

    def run(args: Any, work: Path) -> dict[str, Any]:
        parsed.append(args)
        return {}

    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench, "write_report", lambda *args: None)
    assert bench.main(["--pools", "shapes", "--workdir", str(tmp_path), *options]) == 0
    return bench, parsed[0]


def test_bench_effort_passes_detector_min_score_to_the_backend(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    ls = SimpleNamespace(url="http://127.0.0.1:1", api_key="k")
    pool = SimpleNamespace(name="shapes")
    bench, args = _bench_args(monkeypatch, tmp_path, "--detector-min-score", "AUTO")
    assert bench._backend_env(ls, tmp_path, args, pool)["DETECTOR_MIN_SCORE"] == "auto"
    bench, args = _bench_args(monkeypatch, tmp_path, "--detector-min-score", "0.1")
    assert bench._backend_env(ls, tmp_path, args, pool)["DETECTOR_MIN_SCORE"] == "0.1"
    bench, args = _bench_args(monkeypatch, tmp_path)  # the shipped default: not set
    assert "DETECTOR_MIN_SCORE" not in bench._backend_env(ls, tmp_path, args, pool)
    with pytest.raises(SystemExit):
        _bench_args(monkeypatch, tmp_path, "--detector-min-score", "1.5")
