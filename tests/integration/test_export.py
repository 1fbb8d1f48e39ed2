"""`ml-backend export` and POST /export against the real Label Studio: detection,
segmentation and classification projects labeled through its API export to every format,
each loads with its trainer's reader, and the YOLO export trains one epoch with
Ultralytics (YOLOv8n from its architecture config at 64 px, no downloaded weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from ml_backend.core.detections import xyxy_to_ls_rect
from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes, write_digit_pngs
from ml_backend.devtools.project_setup import create_project, upload_images
from ml_backend.labelstudio.rle import mask_to_rle

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]
BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="paint" toName="image">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </BrushLabels>
</View>"""


def boxes(scene: Any) -> list[dict[str, Any]]:
    height, width = scene.pixels.shape[:2]
    return [{"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
             "original_width": width, "original_height": height,
             "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [label]}}
            for box, label in zip(scene.xyxy, scene.labels, strict=True)]


def brushes(scene: Any) -> list[dict[str, Any]]:
    height, width = scene.pixels.shape[:2]
    return [{"from_name": "paint", "to_name": "image", "type": "brushlabels",
             "original_width": width, "original_height": height,
             "value": {"format": "rle", "rle": mask_to_rle(mask.astype(np.uint8)),
                       "brushlabels": [label]}}
            for mask, label in zip(scene.masks, scene.labels, strict=True)]


def cli_export(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "ml-backend"), "export", *args]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.integration
def test_export_through_label_studio(label_studio, ls_client, tmp_path: Path) -> None:
    scenes = shape_scenes(10, seed=31)
    paths = []
    for i, scene in enumerate(scenes):
        paths.append(tmp_path / f"shape{i}.png")
        Image.fromarray(scene.pixels).save(paths[-1])
    detection = create_project(ls_client, "export-boxes",
                               REPO / "labeling_configs" / "shapes_detection.xml")
    boxed = upload_images(label_studio.url, label_studio.api_key, detection, paths)
    for task, scene in zip(boxed[:8], scenes, strict=False):
        ls_client.annotations.create(id=task, result=boxes(scene))
    # An accepted pre-label counts as the annotator's; a skip and an untouched task do not.
    prediction = ls_client.predictions.create(task=boxed[7], result=boxes(scenes[7]),
                                              model_version="v1", score=0.5)
    ls_client.annotations.create(id=boxed[7], result=boxes(scenes[7]),
                                 parent_prediction=prediction.id)
    ls_client.annotations.create(id=boxed[8], result=[], was_cancelled=True)

    config = tmp_path / "brush.xml"
    config.write_text(BRUSH_CONFIG)
    segmentation = create_project(ls_client, "export-masks", config)
    painted = upload_images(label_studio.url, label_studio.api_key, segmentation, paths[:6])
    for task, scene in zip(painted, scenes, strict=False):
        ls_client.annotations.create(id=task, result=brushes(scene))

    digits = write_digit_pngs(tmp_path / "digits", 12)
    classes = create_project(ls_client, "export-classes",
                             REPO / "labeling_configs" / "image_classification.xml")
    chosen = upload_images(label_studio.url, label_studio.api_key, classes,
                           [p for p, _ in digits])
    names = ("Cat", "Dog", "Bird")
    for task, (_, digit) in zip(chosen, digits, strict=True):
        ls_client.annotations.create(id=task, result=[{
            "from_name": "choice", "to_name": "image", "type": "choices",
            "value": {"choices": [names[digit % 3]]}}])

    env = backend_env(label_studio, tmp_path)
    # YOLO: loads with Ultralytics' own dataset check, and trains one epoch.
    yolo = tmp_path / "yolo"
    done = cli_export(env, "--project", str(detection), "--format", "yolo", "--out", str(yolo),
                      "--split", "0.5/0.5/0", "--augment", "1", "--seed", "3")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    report = json.loads((yolo / "report.json").read_text())
    assert (report["images"], report["skipped_tasks"], report["unannotated_tasks"]) == (8, 1, 1)
    assert summary["written"]["train"] == 2 * report["splits"]["train"]["images"]
    from ml_backend.models.detector.model import ultralytics_module
    from ml_backend.models.detector.training import FineTuneSpec, fine_tune

    ultralytics_module(tmp_path / "yolo-config")
    (tmp_path / "train").mkdir()
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(yolo / "data.yaml"))
    assert list(data["names"].values()) == list(SHAPE_CLASSES)
    trained = fine_tune(FineTuneSpec(start="yolov8n.yaml", data_yaml=str(yolo / "data.yaml"),
                                     out_dir=str(tmp_path / "runs"),
                                     config_dir=str(tmp_path / "yolo-config"), epochs=1,
                                     image_size=64, batch=4, device="cpu", warm=False),
                        tmp_path / "train")
    assert Path(trained["weights"]).is_file()

    # COCO through the same command; the splits are the ones the YOLO export chose.
    coco = tmp_path / "coco"
    done = cli_export(env, "--project", str(detection), "--format", "coco", "--out", str(coco))
    assert done.returncode == 0, done.stderr
    from pycocotools.coco import COCO

    first = json.loads((yolo / "export.json").read_text())["splits"]
    again = json.loads((coco / "export.json").read_text())["splits"]
    assert first == again
    loaded = COCO(str(coco / "annotations" / "instances_train.json"))
    assert len(loaded.getImgIds()) == len(first["train"]) and loaded.getAnnIds()

    # Bad input: an unknown project, a folder with an export in it, a format with nothing.
    missing = cli_export(env, "--project", str(classes + 1000), "--format", "coco", "--out",
                         str(tmp_path / "none"))
    assert missing.returncode == 2 and f"no project {classes + 1000}" in missing.stderr
    busy = cli_export(env, "--project", str(detection), "--format", "coco", "--out", str(coco))
    assert busy.returncode == 2 and "not empty" in busy.stderr

    # Masks and ImageFolder through POST /export, as background jobs shown in /jobs.
    backend = BackendProcess(env, tmp_path / "backend.log")
    try:
        backend.wait_ready()
        queued = requests.post(f"{backend.url}/export/{segmentation}",
                               json={"format": "masks", "split": "0.5/0.5/0"}, timeout=60)
        assert queued.status_code == 200, queued.text
        masks_dir = Path(queued.json()["out_dir"])
        queued = requests.post(f"{backend.url}/export/{classes}",
                               json={"format": "imagefolder", "out": "digits"}, timeout=60)
        assert queued.status_code == 200, queued.text
        folder = Path(queued.json()["out_dir"])
        backend.wait_idle(timeout_s=300)
        exports = [j for j in backend.jobs() if j["name"] == "export"]
        assert [j["status"] for j in exports] == ["finished", "finished"], exports
        assert all(j["progress"]["done"] == j["progress"]["total"] > 0 for j in exports)

        pngs = sorted((masks_dir / "masks").rglob("*.png"))
        assert len(pngs) == 6
        assert set(np.unique(np.concatenate([np.asarray(Image.open(p)).ravel()
                                             for p in pngs]))) <= {0, 1, 2, 3}
        from torchvision.datasets import ImageFolder

        train = ImageFolder(str(folder / "train"), allow_empty=True)
        assert set(train.classes) == {"Cat", "Dog", "Bird", "Other"} and len(train) >= 6

        nothing = requests.post(f"{backend.url}/export/{classes}", json={"format": "masks"},
                                timeout=60)
        assert nothing.status_code == 422 and "BrushLabels" in nothing.json()["error"]
        unknown = requests.post(f"{backend.url}/export/{classes + 1000}",
                                json={"format": "yolo"}, timeout=60)
        assert unknown.status_code == 404
    finally:
        backend.stop()
