"""Whole-project pre-annotation on the in-process worker against a stand-in for Label
Studio's API: every task predicted once per model version, a rerun adds nothing, and a run
that died half-way resumes without duplicates. (With Redis, several workers and a killed
one: tests/integration/test_preannotation_workers.py.)"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ml_backend.core.errors import LabelStudioUnavailable
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.models.classifier.training import train_classifier

from conftest import DIGITS_CONFIG, digit_images
from fakes import FakeLabelStudioAPI, choice_task

PROJECT = 7


def digits_project(image_host, count: int, labeled: int) -> FakeLabelStudioAPI:
    pngs, labels = digit_images(count)
    tasks = []
    for i, (png, label) in enumerate(zip(pngs, labels, strict=True)):
        image_host.files[f"/data/upload/7/p{i}.png"] = png
        tasks.append(choice_task(i + 1, f"/data/upload/7/p{i}.png", "digit", [str(label)]))
    api = FakeLabelStudioAPI(DIGITS_CONFIG, tasks[:labeled])
    api.unlabeled = [{"id": t["id"], "data": t["data"]} for t in tasks[labeled:]]
    return api


def predicted_per_task(api: FakeLabelStudioAPI, version: str) -> Counter[int]:
    return Counter(p["task"] for p in api.predictions if p["model_version"] == version)


def test_every_task_once_and_a_rerun_adds_nothing(backend, image_host) -> None:
    client, runtime, jobs = backend
    api = digits_project(image_host, 130, labeled=40)
    runtime.ls_api = api  # type: ignore[assignment]
    runtime.settings = runtime.settings.__class__(**{**runtime.settings.__dict__,
                                                     "preannotate_chunk_size": 16})
    assert train_classifier(runtime, TrainRequest(project=PROJECT, mode="full")).status == "trained"
    version = runtime.model_version(PROJECT)

    response = client.post(f"/preannotate/{PROJECT}")
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    assert jobs.wait_idle(120)
    counts = predicted_per_task(api, version)
    assert len(counts) == 130 and set(counts.values()) == {1}
    assert all(p["result"][0]["type"] == "choices" for p in api.predictions)
    state = client.get(f"/preannotate/{PROJECT}").get_json()
    assert state["status"] == "finished" and state["progress"] == 1.0
    assert (state["total"], state["chunks"], state["predicted"]) == (130, 9, 130)
    # The jobs predicted with the server's own predictor: /metrics counts them.
    exported = client.get("/metrics").get_data(as_text=True)
    assert 'mlb_predictions_total{family="classifier"} 130.0' in exported

    client.post(f"/preannotate/{PROJECT}")  # nothing left to do
    assert jobs.wait_idle(60)
    assert predicted_per_task(api, version) == counts
    state = client.get(f"/preannotate/{PROJECT}").get_json()
    assert (state["already"], state["chunks"], state["status"]) == (130, 0, "finished")


class DiesMidWrite(FakeLabelStudioAPI):
    """Label Studio stores the first rows of one bulk import, then the connection drops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 1

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> int:
        if self.failures and len(predictions) > 3:
            self.failures -= 1
            super().import_predictions(project, predictions[:3])
            raise LabelStudioUnavailable("connection reset")
        return super().import_predictions(project, predictions)


def test_an_interrupted_run_resumes_without_duplicates(backend, image_host) -> None:
    client, runtime, jobs = backend
    plain = digits_project(image_host, 60, labeled=0)
    api = DiesMidWrite(DIGITS_CONFIG, [])
    api.unlabeled = plain.unlabeled
    runtime.ls_api = api  # type: ignore[assignment]
    runtime.settings = runtime.settings.__class__(**{**runtime.settings.__dict__,
                                                     "preannotate_chunk_size": 10})
    version = runtime.model_version(PROJECT)  # untrained: still one prediction per task

    client.post(f"/preannotate/{PROJECT}")
    assert jobs.wait_idle(60)
    failed = [j for j in jobs.recent() if j["status"] == "failed"]
    assert len(failed) == 1 and "connection reset" in failed[0]["error"]
    assert len(predicted_per_task(api, version)) == 53  # 5 chunks and 3 rows of the 6th
    state = client.get(f"/preannotate/{PROJECT}").get_json()
    assert state["status"] == "running" and state["done"] == 50

    client.post(f"/preannotate/{PROJECT}")  # resume
    assert jobs.wait_idle(60)
    counts = predicted_per_task(api, version)
    assert len(counts) == 60 and set(counts.values()) == {1}
    state = client.get(f"/preannotate/{PROJECT}").get_json()
    assert (state["already"], state["predicted"], state["status"]) == (53, 7, "finished")


def test_without_label_studio_it_is_a_clear_400(backend) -> None:
    client, runtime, _ = backend
    runtime.ls_api = None
    response = client.post(f"/preannotate/{PROJECT}")
    assert response.status_code == 400 and "LABEL_STUDIO_URL" in response.get_json()["error"]
    assert client.get(f"/preannotate/{PROJECT}").status_code == 404
