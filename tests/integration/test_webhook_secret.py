"""A webhook secret end to end: the setup code registers a project webhook that carries it,
and the real Label Studio's annotation events reach a backend that refuses /webhook calls
without it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from ml_backend.devtools.project_setup import (
    connect_backend,
    create_project,
    register_webhook,
    upload_images,
)

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]


def _metric(backend: BackendProcess, prefix: str) -> float:
    text = requests.get(f"{backend.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


@pytest.mark.integration
def test_events_arrive_through_the_registered_webhook_only(label_studio, ls_client,
                                                           tmp_path: Path) -> None:
    from sam_fixture import distinct_scenes

    backend = BackendProcess(backend_env(label_studio, tmp_path, WEBHOOK_SECRET="hook-s3cret"),
                             tmp_path / "backend.log")
    try:
        backend.wait_ready()
        project = create_project(ls_client, "webhook-secret",
                                 REPO / "labeling_configs" / "digit_classification.xml")
        connect_backend(ls_client, project, backend.url)
        register_webhook(ls_client, project, backend.url, "hook-s3cret")
        [task_id, *_] = upload_images(label_studio.url, label_studio.api_key, project,
                                      distinct_scenes(tmp_path / "scenes", 2))
        ls_client.annotations.create(id=task_id, result=[{
            "from_name": "digit", "to_name": "image", "type": "choices",
            "value": {"choices": ["3"]}}])
        deadline = time.monotonic() + 60
        prefix = 'mlb_webhooks_total{action="ANNOTATION_CREATED"}'
        while _metric(backend, prefix) < 1:
            assert time.monotonic() < deadline, backend.log_tail()
            time.sleep(0.5)
        forged = requests.post(f"{backend.url}/webhook", json={"action": "START_TRAINING",
                                                               "project": {"id": project}},
                               timeout=10)
        assert forged.status_code == 401
    finally:
        backend.stop()
