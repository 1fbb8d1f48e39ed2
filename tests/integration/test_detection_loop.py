"""The detection loop against the real Label Studio and a real backend process: boxes
pre-annotated → corrected boxes submitted through the API → the backend's fine-tune job
trains → the new version's boxes appear on the unlabeled tasks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from ml_backend.devtools.datasets import shape_scenes
from ml_backend.devtools.project_setup import (
    connect_backend,
    create_project,
    retrieve_predictions,
    upload_images,
)

from .backend_process import BackendProcess, submit_boxes

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 14
N_CORRECTED = 8


def _predictions(ls_client, project: int) -> dict[int, list[dict]]:
    tasks = ls_client.tasks.list(project=project, fields="all", page_size=100)
    return {t.id: [p if isinstance(p, dict) else p.dict() for p in (t.predictions or [])]
            for t in tasks}


@pytest.mark.integration
def test_detection_loop(label_studio, ls_client, tmp_path: Path) -> None:
    from yolo_fixture import train_tiny_yolo

    checkpoint = train_tiny_yolo(tmp_path / "tiny")
    scenes = shape_scenes(N_IMAGES, seed=21)
    paths = []
    for i, scene in enumerate(scenes):
        paths.append(tmp_path / f"shape{i}.png")
        Image.fromarray(scene.pixels).save(paths[-1])
    backend = BackendProcess({
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key,
        "MODEL_DIR": str(tmp_path / "models"), "CACHE_DIR": str(tmp_path / "cache"),
        "CLASSIFIER_IMAGE_SIZE": "32", "FULL_SYNC_INTERVAL_S": "0", "REDIS_URL": "",
        "YOLO_CHECKPOINT": str(checkpoint), "DETECTOR_IMAGE_SIZE": "64",
        "DETECTOR_EPOCHS": "1", "DETECTOR_BATCH": "4", "DETECTOR_MIN_LABELS": "4",
        "DETECTOR_MIN_EPOCH_IMAGES": "0",
        "DETECTOR_TRAIN_EVERY": "4", "DETECTOR_TRAIN_NICE": "0",
        # The one-epoch starting model is unsure of everything: show all its boxes.
        "DETECTOR_MIN_SCORE": "0", "RERANK_MIN_INTERVAL_S": "0",
    }, tmp_path / "backend.log")
    try:
        backend.wait_ready()
        # The warm-up loads YOLO_CHECKPOINT after the classifier; "ready" once it has loaded.
        deadline = time.monotonic() + 60
        while True:
            health = requests.get(f"{backend.url}/health").json()["models"]["detector"]
            if health["status"] not in {"not-loaded", "loading"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert health["status"] == "ready" and health["weights"] == "checkpoint", health
        project = create_project(ls_client, "shapes-loop",
                                 REPO / "labeling_configs" / "shapes_detection.xml")
        task_ids = upload_images(label_studio.url, label_studio.api_key, project, paths)
        connect_backend(ls_client, project, backend.url)

        # Pre-annotation: every task gets boxes from the starting checkpoint.
        retrieve_predictions(ls_client, project, task_ids)
        first = _predictions(ls_client, project)
        assert all(len(first[t]) == 1 for t in task_ids), first
        first_version = first[task_ids[0]][0]["model_version"]
        regions = [r for t in task_ids for r in first[t][0]["result"]]
        assert regions and all(r["type"] == "rectanglelabels" for r in regions)

        # Annotators correct the boxes: the exact ones are submitted.
        for task_id, scene in zip(task_ids[:N_CORRECTED], scenes, strict=False):
            submit_boxes(ls_client, task_id, scene)

        # Webhooks start the fine-tune (every 4 annotated tasks); its re-rank writes the
        # new version's predictions and makes the version the project's.
        deadline = time.monotonic() + 300
        version = first_version
        while time.monotonic() < deadline:
            version = ls_client.projects.get(id=project).model_version or ""
            if version.startswith("tiny_yolov8n-v"):
                break
            time.sleep(0.5)
        assert version.startswith("tiny_yolov8n-v"), backend.log_tail()
        backend.wait_idle(timeout_s=max(10.0, deadline - time.monotonic()))
        jobs = backend.jobs()
        trained = [j for j in jobs if j["name"] == "train_detector"
                   and j["status"] == "finished" and j["result"]["status"] == "trained"]
        assert trained, jobs
        final = ls_client.projects.get(id=project).model_version
        assert final == max((j["result"]["version"] for j in trained),
                            key=lambda v: int(v.split("-v")[1].split("-")[0]))
        manifest_map = trained[0]["result"]["detail"]
        assert "val mAP50" in manifest_map

        # The unlabeled tasks carry the new version's boxes, and only those.
        after = _predictions(ls_client, project)
        for task_id in task_ids[N_CORRECTED:]:
            versions = [p["model_version"] for p in after[task_id]]
            assert versions == [final], (task_id, versions)
            result = after[task_id][0]["result"]
            assert all(r["type"] == "rectanglelabels" and r["from_name"] == "shape"
                       for r in result)
        assert any(after[t][0]["result"] for t in task_ids[N_CORRECTED:])
    finally:
        backend.stop()
