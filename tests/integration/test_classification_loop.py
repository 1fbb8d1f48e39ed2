"""The whole classification loop against the real Label Studio and a real backend process:
predict all → annotate through the API → background training → new model_version →
re-retrieved predictions carry it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from ml_backend.devtools.datasets import write_digit_pngs
from ml_backend.devtools.project_setup import (
    connect_backend,
    create_project,
    retrieve_predictions,
    upload_images,
)

from .backend_process import BackendProcess

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 24
N_ANNOTATED = 12


def _predictions(ls_client, project: int) -> dict[int, list]:
    tasks = ls_client.tasks.list(project=project, fields="all", page_size=100)
    return {t.id: list(t.predictions or []) for t in tasks}


def _version(prediction) -> str:
    return prediction["model_version"] if isinstance(prediction, dict) else \
        prediction.model_version


@pytest.mark.integration
def test_classification_loop(label_studio, ls_client, tmp_path: Path) -> None:
    images = write_digit_pngs(tmp_path / "digits", N_IMAGES)
    backend = BackendProcess({
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key,
        "MODEL_DIR": str(tmp_path / "models"), "CACHE_DIR": str(tmp_path / "cache"),
        "CLASSIFIER_IMAGE_SIZE": "64", "FULL_SYNC_INTERVAL_S": "0", "REDIS_URL": "",
    }, tmp_path / "backend.log")
    try:
        backend.wait_ready()
        project = create_project(ls_client, "digits-loop",
                                 REPO / "labeling_configs" / "digit_classification.xml")
        task_ids = upload_images(label_studio.url, label_studio.api_key, project,
                                 [path for path, _ in images])
        assert len(task_ids) == N_IMAGES
        connect_backend(ls_client, project, backend.url)
        schema = ls_client.projects.get(id=project).label_config

        def backend_version() -> str:
            return requests.post(f"{backend.url}/setup", json={
                "project": f"{project}.0", "schema": schema}).json()["model_version"]

        first_version = backend_version()

        # One request for all tasks ("Retrieve predictions" in the Data Manager).
        retrieve_predictions(ls_client, project, task_ids)
        predicted = _predictions(ls_client, project)
        assert all(any(_version(p) == first_version for p in preds)
                   for preds in predicted.values()), predicted

        # Annotate through the API: Label Studio sends webhooks to the backend.
        labels = dict(zip(task_ids, (label for _, label in images), strict=True))
        for task_id in task_ids[:N_ANNOTATED]:
            ls_client.annotations.create(id=task_id, result=[{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [str(labels[task_id])]}}])

        deadline = time.monotonic() + 180
        new_version = first_version
        while time.monotonic() < deadline and new_version == first_version:
            time.sleep(0.5)
            new_version = backend_version()
        assert new_version != first_version, backend.log_tail()
        # Twelve events may train more than once: wait until the queue is idle and the
        # version has stayed the same for a while, then take that final version.
        stable_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - stable_since < 3.0:
            time.sleep(0.5)
            busy = any(j["status"] in {"queued", "running"}
                       for j in requests.get(f"{backend.url}/jobs").json()["jobs"])
            current = backend_version()
            if busy or current != new_version:
                new_version, stable_since = current, time.monotonic()
        # The backend made the new version the project's, so Data Manager shows its scores.
        while time.monotonic() < deadline and \
                ls_client.projects.get(id=project).model_version != new_version:
            time.sleep(0.5)
        assert ls_client.projects.get(id=project).model_version == new_version
        jobs = requests.get(f"{backend.url}/jobs").json()["jobs"]
        assert any(j["name"] == "train" and j["status"] == "finished" for j in jobs), jobs

        # Re-retrieve: Label Studio asks again because the version changed.
        retrieve_predictions(ls_client, project, task_ids)
        predicted = _predictions(ls_client, project)
        for task_id in task_ids:
            versions = [_version(p) for p in predicted[task_id]]
            assert new_version in versions or any(
                v != first_version for v in versions), (task_id, versions)
        unlabeled = [t for t in task_ids[N_ANNOTATED:]]
        fresh = [p for t in unlabeled for p in predicted[t] if _version(p) == new_version]
        assert len(fresh) == len(unlabeled)
        assert all(p["result"] if isinstance(p, dict) else p.result for p in fresh)
    finally:
        backend.stop()
