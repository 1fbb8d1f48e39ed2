"""The real YOLO adapter on a tiny model this test trains itself (YOLOv8n architecture, a few
synthetic shapes, 64 px, one epoch): predictions through the Flask app, the fine-tune job,
and a missing checkpoint that costs only the boxes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.app import create_app
from ml_backend.core.errors import BackendError
from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.jobs.queues import InProcessQueue
from ml_backend.jobs.registry import job_registry
from ml_backend.learning.selection import Strategy
from ml_backend.models.classifier.training import train_classifier
from ml_backend.models.detector.model import DetectionSample, YoloDetector
from ml_backend.models.detector.training import (
    REPEAT_MARK,
    FineTuneSpec,
    fine_tune,
    min_epoch_images,
    move_to_idle_class,
    repeat_training_images,
    train_detector_job,
)
from ml_backend.pipeline.ranking import rank_tasks
from ml_backend.runtime import Runtime

from fakes import FakeLabelStudioAPI
from yolo_fixture import MIXED_CONFIG, SHAPES_CONFIG, SIZE, hosted_shape_tasks, train_tiny_yolo


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_yolo(tmp_path_factory.mktemp("tiny-yolo"))


def _shape_tasks(image_host: Any, count: int, project: int = 5) -> list[dict[str, Any]]:
    """Tasks 1..count annotated with their exact boxes and the "busy" choice."""
    return hosted_shape_tasks(image_host, range(1, count + 1), project, busy_choice=True)


@pytest.fixture
def detection_backend(make_settings: Any, image_host: Any, tiny_checkpoint: Path
                      ) -> Iterator[tuple[Any, Runtime, InProcessQueue]]:
    settings = make_settings(label_studio_url=image_host.url, yolo_checkpoint=str(tiny_checkpoint),
                             detector_image_size=SIZE, detector_epochs=1, detector_batch=4,
                             detector_min_epoch_images=0,
                             detector_min_labels=4, detector_train_every=3,
                             detector_train_nice=0)
    runtime = Runtime(settings)
    jobs = InProcessQueue(runtime, job_registry())
    app = create_app(settings, runtime=runtime, jobs=jobs, warm_up=False)
    yield app.test_client(), runtime, jobs
    jobs.close()


def _assert_valid_boxes(prediction: dict[str, Any], width: int, height: int) -> None:
    for region in prediction["result"]:
        assert region["type"] == "rectanglelabels" and region["from_name"] == "shape"
        assert region["value"]["rectanglelabels"][0] in SHAPE_CLASSES
        assert (region["original_width"], region["original_height"]) == (width, height)
        value = region["value"]
        assert 0 <= value["x"] <= value["x"] + value["width"] <= 100 + 1e-9
        assert 0 <= value["y"] <= value["y"] + value["height"] <= 100 + 1e-9
        assert 0.0 <= region["score"] <= 1.0


def test_predict_returns_boxes_per_task_and_survives_a_bad_image(detection_backend,
                                                                 image_host) -> None:
    client, runtime, _ = detection_backend
    tasks = _shape_tasks(image_host, 3)
    body = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks]
            + [{"id": 99, "data": {"image": "/data/upload/5/missing.png"}}],
            "label_config": SHAPES_CONFIG, "project": "5.1700000000"}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == 4
    boxes = 0
    for prediction, scene in zip(results[:3], shape_scenes(3, seed=11), strict=True):
        _assert_valid_boxes(prediction, scene.pixels.shape[1], scene.pixels.shape[0])
        assert 0.0 <= prediction["score"] <= 1.0
        boxes += len(prediction["result"])
    assert boxes > 0, "threshold 0 shows every box the tiny model finds"
    assert results[3]["result"] == [] and results[3]["score"] == 1.0
    health = client.get("/health").get_json()["models"]["detector"]
    assert health["status"] == "ready" and health["weights"] == "checkpoint"


def test_the_queue_holds_the_boxes_predict_answers(detection_backend, image_host) -> None:
    client, runtime, _ = detection_backend
    tasks = [{"id": t["id"], "data": t["data"]} for t in _shape_tasks(image_host, 10)]
    tasks.append({"id": 99, "data": {"image": "/data/upload/5/missing.png"}})
    # A batch of 0: every written score is the model's confidence, as /predict gives it.
    ranked = rank_tasks(runtime, 5, SHAPES_CONFIG, tasks, [], Strategy.MARGIN, 0, 0.0,
                        np.random.default_rng(0))
    served = client.post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG,
                                           "project": 5}).get_json()["results"]
    assert ranked.failed == [99] and served[-1]["result"] == []
    assert any(p["result"] for p in served), "threshold 0 shows every box the model finds"
    for task, prediction in zip(tasks[:-1], served[:-1], strict=True):
        queued = ranked.predictions[task["id"]]
        assert queued["model_version"] == prediction["model_version"]
        # Two forward passes: box corners agree to float noise (torch's thread count may
        # differ between them), everything else exactly.
        assert len(queued["result"]) == len(prediction["result"])
        for mine, theirs in zip(queued["result"], prediction["result"], strict=True):
            assert {k: v for k, v in mine.items() if k != "value"} == \
                {k: v for k, v in theirs.items() if k != "value"}
            assert mine["value"]["rectanglelabels"] == theirs["value"]["rectanglelabels"]
            for key in ("x", "y", "width", "height"):
                assert mine["value"][key] == pytest.approx(theirs["value"][key], abs=1e-3)
        assert queued["score"] == pytest.approx(prediction["score"], abs=1e-6)
        assert ranked.uncertainty[task["id"]] == {
            "detection": pytest.approx(1 - prediction["score"], abs=1e-6)}


def test_missing_checkpoint_costs_only_the_boxes(make_settings, image_host, tmp_path) -> None:
    settings = make_settings(label_studio_url=image_host.url,
                             yolo_checkpoint=str(tmp_path / "yolov8n.pt"))
    runtime = Runtime(settings)
    tasks = _shape_tasks(image_host, 12)
    runtime.ls_api = FakeLabelStudioAPI(MIXED_CONFIG, tasks)  # type: ignore[assignment]
    assert train_classifier(runtime, TrainRequest(project=5, mode="full")).status == "trained"
    app = create_app(settings, runtime=runtime, jobs=InProcessQueue(runtime, job_registry()),
                     warm_up=False)
    client = app.test_client()
    health = client.get("/health").get_json()["models"]["detector"]
    assert health["status"] == "error" and "does not exist" in health["error"]
    response = client.post("/predict", json={
        "tasks": [{"id": t["id"], "data": t["data"]} for t in tasks[:2]],
        "label_config": MIXED_CONFIG, "project": 5})
    assert response.status_code == 200
    for prediction in response.get_json()["results"]:
        assert [r["type"] for r in prediction["result"]] == ["choices"]


def test_untrained_detector_reports_itself_and_predicts_no_boxes(backend, image_host) -> None:
    client, _, _ = backend
    health = client.get("/health").get_json()["models"]["detector"]
    assert health["status"] == "untrained" and "YOLO_CHECKPOINT" in health["warning"]
    tasks = _shape_tasks(image_host, 2)
    response = client.post("/predict", json={
        "tasks": [{"id": t["id"], "data": t["data"]} for t in tasks],
        "label_config": SHAPES_CONFIG, "project": 5})
    assert [p["result"] for p in response.get_json()["results"]] == [[], []]


def test_fine_tune_job_saves_a_version_with_val_map_and_keeps_the_classifier(
        detection_backend, image_host) -> None:
    client, runtime, _ = detection_backend
    tasks = _shape_tasks(image_host, 10)
    fake = FakeLabelStudioAPI(MIXED_CONFIG, tasks[:2])
    runtime.ls_api = fake  # type: ignore[assignment]
    assert train_classifier(runtime, TrainRequest(project=5, mode="full")).status == "trained"
    too_few = train_detector_job(runtime, TrainRequest(project=5, mode="full"))
    assert too_few["status"] == "no-labels" and "DETECTOR_MIN_LABELS" in too_few["detail"]

    fake.tasks = tasks[:8]
    before = runtime.store.latest(5)
    outcome = train_detector_job(runtime, TrainRequest(project=5, mode="incremental"))
    assert outcome["status"] == "trained", outcome
    # A new version re-ranks the queue and re-scores the labels (on their own lanes).
    assert outcome["next_jobs"] == [{"name": "rerank", "payload": {"project": 5, "force": False},
                                     "key": "rerank:5"},
                                    {"name": "quality", "payload": {"project": 5},
                                     "key": "quality:5"}]
    version = runtime.store.latest(5)
    assert version is not None and version.name != before.name
    assert version.name.startswith("tiny_yolov8n-v")  # named after the checkpoint
    meta = version.manifest["detector"]
    assert meta["start"] == "checkpoint" and meta["classes"] == list(SHAPE_CLASSES)
    assert meta["n_train"] + meta["n_val"] >= 8 and 0.0 <= meta["map50"] <= 1.0
    # The classifier's heads travel with the new version.
    assert version.manifest["heads"] == before.manifest["heads"]
    assert runtime.classifier.model(5) is not None
    assert runtime.detector.model(5).version == version.name

    # Below DETECTOR_TRAIN_EVERY new annotations an event does not retrain …
    fake.tasks = tasks[:9]
    waiting = train_detector_job(runtime, TrainRequest(project=5, mode="incremental"))
    assert waiting["status"] == "skipped" and "1 new annotated tasks" in waiting["detail"]
    # … and the next round warm-starts from the version just saved.
    fake.tasks = tasks
    again = train_detector_job(runtime, TrainRequest(project=5, mode="full"))
    assert again["status"] == "trained"
    assert runtime.store.latest(5).manifest["detector"]["start"] == f"version {version.name}"

    response = client.post("/predict", json={
        "tasks": [{"id": 1, "data": tasks[0]["data"]}], "label_config": MIXED_CONFIG,
        "project": 5})
    (prediction,) = response.get_json()["results"]
    assert prediction["model_version"] == runtime.store.latest(5).name
    assert "choices" in [r["type"] for r in prediction["result"]]


def test_a_damaged_detector_file_costs_only_the_boxes(detection_backend, image_host,
                                                      caplog) -> None:
    client, runtime, _ = detection_backend
    tasks = _shape_tasks(image_host, 8)
    runtime.ls_api = FakeLabelStudioAPI(MIXED_CONFIG, tasks)  # type: ignore[assignment]
    assert train_detector_job(runtime, TrainRequest(project=5, mode="full"))["status"] == "trained"
    version = runtime.store.latest(5)
    weights = version.file(version.manifest["detector"]["file"])
    weights.write_bytes(weights.read_bytes()[:-10] + b"corrupted!")
    body = {"tasks": [{"id": 1, "data": tasks[0]["data"]}], "label_config": SHAPES_CONFIG,
            "project": 5}
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.get_json()["results"][0]["result"] == []
    assert f"detector of {version.name}: checksum mismatch" in caplog.text


def test_a_fine_tune_past_its_time_limit_is_killed_and_the_store_is_untouched(
        detection_backend, image_host, tmp_path) -> None:
    spec = FineTuneSpec(start="yolov8n.yaml", data_yaml=str(tmp_path / "none.yaml"),
                        out_dir=str(tmp_path), config_dir=str(tmp_path / "cfg"), epochs=1,
                        image_size=SIZE, batch=2, device="cpu", warm=False)
    with pytest.raises(BackendError, match="killed after"):
        fine_tune(spec, tmp_path, timeout_s=0.5, idle_class=True)
    _, runtime, _ = detection_backend
    assert runtime.store.latest(5) is None


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
def test_the_training_process_can_be_moved_to_the_idle_class() -> None:
    """DETECTOR_TRAIN_IDLE (default on): serving's threads take a core from the training
    child at once (bench_detection_latency.py measures what that buys)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert os.sched_getscheduler(child.pid) != os.SCHED_IDLE
        move_to_idle_class(child.pid)
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
    finally:
        child.kill()
        child.wait()
    assert Settings.from_env({}).detector_train_idle
    assert not Settings.from_env({"DETECTOR_TRAIN_IDLE": "false"}).detector_train_idle


def test_detecting_boxes_leaves_torch_threads_alone(tiny_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    """Ultralytics' CPU device selection sets torch's intra-op threads to CPUs - 1 for the
    whole process (1 on a 2-core machine); the detector puts them back, so SAM and the
    classifier keep every core."""
    import torch

    threads = torch.get_num_threads()
    detector = YoloDetector(tiny_checkpoint, tmp_path / "cfg", "cpu", SIZE)
    detector.detect([np.zeros((48, 64, 3), np.uint8)], 0.0)
    assert torch.get_num_threads() == threads


def test_a_small_training_split_is_repeated_up_to_an_epoch_and_validation_never() -> None:
    def sample(name: str) -> DetectionSample:
        return DetectionSample(name, b"png", ".png", np.zeros((1, 4)), np.zeros(1, int), 8, 8)

    samples = [sample(f"task-{i}") for i in range(5)]
    is_val = np.array([False, True, False, False, False])
    repeated, repeated_val = repeat_training_images(samples, is_val, 10)
    assert repeated[:5] == samples and list(repeated_val[:5]) == list(is_val)
    train = [s.name for s, v in zip(repeated, repeated_val, strict=True) if not v]
    assert len(train) == 10 and len(set(train)) == 10  # unique files in the dataset
    assert {n.split(REPEAT_MARK)[0] for n in train} == {"task-0", "task-2", "task-3", "task-4"}
    assert int(repeated_val.sum()) == 1  # the validation image is never copied
    assert repeat_training_images(samples, is_val, 4)[0] == samples
    assert repeat_training_images(samples, is_val, 0)[0] == samples
    assert Settings.from_env({"DETECTOR_MIN_EPOCH_IMAGES": "0"}).detector_min_epoch_images == 0


def test_the_auto_epoch_floor_keeps_a_cpu_round_at_the_pixels_of_160_images_at_256px() -> None:
    auto = Settings.from_env({}).detector_min_epoch_images
    assert auto is None and Settings.from_env(
        {"DETECTOR_MIN_EPOCH_IMAGES": "auto"}).detector_min_epoch_images is None
    assert min_epoch_images(auto, 640, "cuda") == 160
    assert min_epoch_images(auto, 256, "cpu") == 160
    assert min_epoch_images(auto, 640, "cpu") == 26  # 160 * (256/640)**2
    assert min_epoch_images(auto, 64, "cpu") == 160  # never above the GPU floor
    assert min_epoch_images(40, 640, "cpu") == 40 and min_epoch_images(0, 256, "cuda") == 0
    with pytest.raises(ValueError, match="DETECTOR_MIN_EPOCH_IMAGES"):
        Settings.from_env({"DETECTOR_MIN_EPOCH_IMAGES": "-1"})
