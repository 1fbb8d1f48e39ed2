"""Truthful model loading, family by family, on checkpoints in each family's released format
built here from the real architectures (nothing downloaded): ResNet-18 as torchvision saves
its state dicts, YOLOv8n as Ultralytics saves ``.pt`` files (an untrained one from
``yolov8n.yaml`` and one its trainer wrote), CLIPSeg through ``save_pretrained``.

Each loads strictly (the served tensors are the file's); the same file with ONE renamed key is
refused with both names in /health; a truncated file is an ``error`` in /health with the
reason, loaded once rather than on every request, loaded again once the file is replaced,
and the other families keep serving meanwhile."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ml_backend.models.classifier.family as classifier_family
import ml_backend.models.clipseg.family as clipseg_family
import ml_backend.models.detector.family as detector_family
from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.models.classifier.model import BackboneWeights, load_backbone
from ml_backend.models.classifier.training import train_classifier
from ml_backend.models.clipseg.model import load_clipseg, locate_clipseg
from ml_backend.models.detector.model import YoloDetector, ultralytics_module
from ml_backend.runtime import Runtime

from app_fixture import backend_app
from conftest import png_bytes
from fakes import FakeLabelStudioAPI, choice_task
from yolo_fixture import MIXED_CONFIG as MIXED
from yolo_fixture import SHAPES_CONFIG as SHAPES
from yolo_fixture import SIZE, train_tiny_yolo


# --- checkpoints in each family's released format ---------------------------------------
def save_resnet18(path: Path, rename: tuple[str, str] | None = None,
                  counters: bool = True) -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict with torchvision's key names (as ``resnet18-f37072fd.pth``),
    random values; ``counters=False`` leaves out BatchNorm's num_batches_tracked, as
    torchvision's older releases do. Returns what was saved."""
    import torchvision

    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    if not counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if rename is not None:
        state = {(rename[1] if k == rename[0] else k): v for k, v in state.items()}
    torch.save(state, path)
    return dict(state)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def yolo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``untrained``: YOLOv8n built from ``yolov8n.yaml`` and written by ``YOLO.save``;
    ``trained``: the tiny YOLOv8n its trainer wrote (``ema``, ``train_args`` …)."""
    work = tmp_path_factory.mktemp("yolo")
    yolo = ultralytics_module(work / "cfg").YOLO
    untrained = work / "yolov8n-untrained.pt"
    yolo("yolov8n.yaml").save(untrained)
    return {"untrained": untrained, "trained": train_tiny_yolo(work / "tiny")}


def rename_yolo_key(source: Path, target: Path, config_dir: Path) -> tuple[str, str]:
    """``source`` saved again by Ultralytics with one tensor renamed (the first conv's weight):
    the pickled module then carries a key its architecture does not have."""
    model = ultralytics_module(config_dir).YOLO(str(source))
    conv = model.model.model[0].conv
    conv._parameters["kernel"] = conv._parameters.pop("weight")
    model.save(target)
    return "model.0.conv.weight", "model.0.conv.kernel"


def shape_tasks(image_host: Any, count: int) -> list[dict[str, Any]]:
    """Shape images served by the host, annotated for the ``busy`` choices control."""
    tasks = []
    for i, scene in enumerate(shape_scenes(count, seed=11)):
        path = f"/data/upload/5/shape{i}.png"
        image_host.files[path] = png_bytes(scene.pixels)
        tasks.append(choice_task(i + 1, path, "busy", ["many" if len(scene.labels) > 2
                                                       else "one"]))
    return tasks


def predict(client: Any, tasks: list[dict[str, Any]], config: str) -> list[dict[str, Any]]:
    response = client.post("/predict", json={
        "tasks": [{"id": t["id"], "data": t["data"]} for t in tasks], "label_config": config,
        "project": 5})
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.get_json()["results"])


def types(prediction: dict[str, Any]) -> set[str]:
    return {region["type"] for region in prediction["result"]}


class CountingLoads:
    """Wraps a loader and counts its calls (how often a file is really read)."""

    def __init__(self, load: Callable[..., Any]) -> None:
        self.load = load
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.load(*args, **kwargs)


# --- ResNet-18 (RESNET_CHECKPOINT) ----------------------------------------------------------
@pytest.mark.parametrize("counters", [True, False], ids=["current", "without-bn-counters"])
def test_resnet18_in_torchvision_format_loads_its_own_values(make_settings, tmp_path: Path,
                                                             counters: bool) -> None:
    saved = save_resnet18(tmp_path / "resnet18.pth", counters=counters)
    runtime = Runtime(make_settings(resnet_checkpoint=tmp_path / "resnet18.pth"))
    assert runtime.classifier.status()["status"] == "not-loaded"
    runtime.warm_up()
    status = runtime.classifier.status()
    assert (status["status"], status["weights"]) == ("ready", "checkpoint"), status
    loaded = runtime.classifier.embedder(None).backbone.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):  # the ImageNet classifier is replaced by the identity
            assert torch.equal(loaded[key], value), key


def test_resnet_checkpoint_with_one_renamed_key_is_an_error_naming_it(make_settings,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    save_resnet18(path, rename=("layer1.0.conv1.weight", "layer1.0.conv_1.weight"))
    runtime = Runtime(make_settings(resnet_checkpoint=path))
    runtime.warm_up()
    status = runtime.classifier.status()
    assert status["status"] == "error", status
    assert "1 missing from the checkpoint (layer1.0.conv1.weight)" in status["error"]
    assert "1 not in the architecture (layer1.0.conv_1.weight)" in status["error"]
    with pytest.raises(ModelUnavailable, match=r"1 missing .*layer1\.0\.conv1\.weight"):
        load_backbone(BackboneWeights("resnet18", "checkpoint", path, "x"),
                      torch.device("cpu"))


def test_a_truncated_resnet_checkpoint_is_an_error_read_once_until_replaced(
        make_settings, image_host, yolo_files, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "resnet18.pth"
    save_resnet18(path)
    truncate(path)
    loads = CountingLoads(classifier_family.load_backbone)
    monkeypatch.setattr(classifier_family, "load_backbone", loads)
    settings = make_settings(label_studio_url=image_host.url, resnet_checkpoint=path,
                             yolo_checkpoint=yolo_files["trained"], detector_image_size=SIZE)
    with backend_app(settings) as (client, runtime, _):
        runtime.warm_up()  # logs the failure; must not die on it
        status = client.get("/health").get_json()["models"]["classifier"]
        assert status["status"] == "error", status
        assert "could not be read as a resnet18 state dict" in status["error"]
        assert "RuntimeError" in status["error"]
        for _ in range(3):
            with pytest.raises(ModelUnavailable, match="could not be read"):
                runtime.classifier.embedder(None)
        assert loads.calls == 1
        # The detector keeps serving meanwhile.
        assert client.get("/health").get_json()["models"]["detector"]["status"] == "ready"
        boxes = predict(client, shape_tasks(image_host, 2), SHAPES)
        assert all(types(p) == {"rectanglelabels"} for p in boxes)

        save_resnet18(path)  # replaced with an intact file: loaded again
        runtime.classifier.embedder(None)
        assert loads.calls == 2
        assert client.get("/health").get_json()["models"]["classifier"]["status"] == "ready"


# --- YOLOv8n (YOLO_CHECKPOINT) --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["untrained", "trained"])
def test_yolov8n_in_ultralytics_format_loads_strictly(make_settings, yolo_files, kind: str
                                                      ) -> None:
    settings = make_settings(yolo_checkpoint=yolo_files[kind], detector_image_size=SIZE)
    runtime = Runtime(settings)
    status = runtime.detector.status()
    assert status["status"] == "not-loaded" and status["path"] == str(yolo_files[kind])
    runtime.warm_up()
    status = runtime.detector.status()
    assert (status["status"], status["weights"]) == ("ready", "checkpoint"), status
    detector = runtime.detector.model(None)
    assert detector is not None
    classes = detector.detector.classes
    assert classes == tuple(SHAPE_CLASSES) if kind == "trained" else len(classes) == 80


def test_yolo_checkpoint_with_one_renamed_key_is_an_error_naming_it(make_settings, image_host,
                                                                    yolo_files, tmp_path: Path
                                                                    ) -> None:
    path = tmp_path / "renamed.pt"
    original, renamed = rename_yolo_key(yolo_files["trained"], path, tmp_path / "cfg")
    with pytest.raises(ModelUnavailable, match="do not fit the architecture they declare"):
        YoloDetector(path, tmp_path / "cfg", "cpu", SIZE)
    settings = make_settings(label_studio_url=image_host.url, yolo_checkpoint=path,
                             detector_image_size=SIZE)
    with backend_app(settings) as (client, runtime, _):
        runtime.warm_up()
        status = client.get("/health").get_json()["models"]["detector"]
        assert status["status"] == "error", status
        assert f"1 missing from the checkpoint ({original})" in status["error"]
        assert f"1 not in the architecture ({renamed})" in status["error"]
        # No boxes, and no request fails half-way through a model without that tensor.
        assert predict(client, shape_tasks(image_host, 1), SHAPES)[0]["result"] == []


def test_a_truncated_yolo_checkpoint_is_an_error_read_once_until_replaced(
        make_settings, image_host, yolo_files, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "yolov8n.pt"
    shutil.copyfile(yolo_files["trained"], path)
    truncate(path)
    loads = CountingLoads(detector_family.YoloDetector)
    monkeypatch.setattr(detector_family, "YoloDetector", loads)
    settings = make_settings(label_studio_url=image_host.url, yolo_checkpoint=path,
                             detector_image_size=SIZE)
    with backend_app(settings) as (client, runtime, _):
        tasks = shape_tasks(image_host, 12)
        runtime.ls_api = FakeLabelStudioAPI(MIXED, tasks)  # type: ignore[assignment]
        assert train_classifier(runtime, TrainRequest(project=5, mode="full")).status == "trained"
        before = client.get("/health").get_json()["models"]["detector"]
        assert before["status"] == "not-loaded", before  # the file exists; nothing loaded yet

        for _ in range(3):  # the classifier keeps predicting; the detector adds nothing
            results = predict(client, tasks[:2], MIXED)
            assert all(types(p) == {"choices"} for p in results), results
        assert loads.calls == 1
        status = client.get("/health").get_json()["models"]["detector"]
        assert status["status"] == "error", status
        assert f"cannot load YOLO weights {path}" in status["error"]

        shutil.copyfile(yolo_files["trained"], path)  # replaced: loaded again, boxes back
        results = predict(client, tasks[:2], MIXED)
        assert loads.calls == 2
        assert all(types(p) == {"choices", "rectanglelabels"} for p in results), results
        assert client.get("/health").get_json()["models"]["detector"]["status"] == "ready"


# --- CLIPSeg (CLIPSEG_MODEL) ----------------------------------------------------------------
def clipseg_copy(tiny_clipseg: Path, target: Path,
                 edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of the saved model directory whose weights file ``edit`` changed."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_clipseg, target)
    state = load_file(target / "model.safetensors")
    edit(state)
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_clipseg_saved_with_save_pretrained_loads_its_own_values(tiny_clipseg: Path,
                                                                 tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def released_buffers(state: dict[str, torch.Tensor]) -> None:
        # The released rd64-refined carries the embeddings' position_ids (persistent
        # buffers when it was converted): the one allowed difference.
        state["clip.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        state["clip.vision_model.embeddings.position_ids"] = torch.arange(17)[None]

    for directory in (tiny_clipseg,
                      clipseg_copy(tiny_clipseg, tmp_path / "released", released_buffers)):
        model = load_clipseg(locate_clipseg(str(directory)), torch.device("cpu")).model
        loaded = model.state_dict()
        for key, value in load_file(directory / "model.safetensors").items():
            if not key.endswith("position_ids"):
                assert torch.equal(loaded[key], value), key


def test_clipseg_with_one_renamed_key_is_an_error_naming_it(make_settings, tiny_clipseg: Path,
                                                            tmp_path: Path) -> None:
    def rename(state: dict[str, torch.Tensor]) -> None:
        state["decoder.film_mul.weights"] = state.pop("decoder.film_mul.weight")

    directory = clipseg_copy(tiny_clipseg, tmp_path / "renamed", rename)
    runtime = Runtime(make_settings(clipseg_model=str(directory)))
    runtime.warm_up()
    status = runtime.clipseg.status()
    assert status["status"] == "error", status
    assert "1 missing from the checkpoint (decoder.film_mul.weight)" in status["error"]
    assert "1 not in the architecture (decoder.film_mul.weights)" in status["error"]


def test_a_truncated_clipseg_model_is_an_error_read_once_until_replaced(
        make_settings: Callable[..., Settings], tiny_clipseg: Path, tmp_path: Path,
        monkeypatch) -> None:
    directory = tmp_path / "clipseg"
    shutil.copytree(tiny_clipseg, directory)
    truncate(directory / "model.safetensors")
    loads = CountingLoads(clipseg_family.load_clipseg)
    monkeypatch.setattr(clipseg_family, "load_clipseg", loads)
    runtime = Runtime(make_settings(clipseg_model=str(directory)))
    runtime.warm_up()
    status = runtime.clipseg.status()
    assert status["status"] == "error" and "could not be loaded as CLIPSeg" in status["error"]
    for _ in range(3):
        with pytest.raises(ModelUnavailable, match="could not be loaded as CLIPSeg"):
            runtime.clipseg.model()
    assert loads.calls == 1
    # The classifier keeps serving.
    assert runtime.classifier.status()["status"] == "degraded"
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    assert runtime.classifier.embedder(None).embed_pixels([pixels]).shape == (1, 512)

    shutil.copyfile(tiny_clipseg / "model.safetensors", directory / "model.safetensors")
    runtime.clipseg.model()
    assert loads.calls == 2 and runtime.clipseg.status()["status"] == "ready"
