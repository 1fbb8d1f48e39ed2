"""Every request body Label Studio 1.23.2 really sent (tests/fixtures/captures) replayed
through the Flask app, before and after the project has a trained model."""

from __future__ import annotations

from typing import Any

import pytest

from ml_backend.jobs.kinds import TrainRequest
from ml_backend.models.classifier.training import train_classifier

from conftest import CAPTURES, digit_images, load_capture
from fakes import FakeLabelStudioAPI, choice_task

CAPTURE_NAMES = sorted(p.name for p in CAPTURES.glob("*.json"))
SCHEMA = load_capture("setup.json")["body"]["schema"]


def _serve_capture_images(image_host: Any) -> None:
    """Make every image URL in the captures resolvable, as Label Studio would serve it."""
    pngs, _ = digit_images(10)
    urls = set()
    for name in CAPTURE_NAMES:
        body = load_capture(name)["body"] or {}
        for task in body.get("tasks", []):
            urls.add(task["data"]["image"])
        if "task" in body:
            urls.add(body["task"]["data"]["image"])
    for i, url in enumerate(sorted(urls)):
        image_host.files[url] = pngs[i % len(pngs)]


def _is_click(capture: dict[str, Any]) -> bool:
    """A smart-tool request: SAM answers it (tests/test_sam.py); here no SAM is configured."""
    context = ((capture["body"] or {}).get("params") or {}).get("context") or {}
    return bool(context.get("result"))


def _replay(client: Any, name: str) -> Any:
    capture = load_capture(name)
    if capture["method"] == "GET":
        return client.get(capture["path"], headers=capture["headers"])
    return client.post(capture["path"], json=capture["body"])


def test_all_captures_are_covered() -> None:
    assert len(CAPTURE_NAMES) >= 14


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_replay_untrained(backend, image_host, name: str) -> None:
    client, runtime, jobs = backend
    _serve_capture_images(image_host)
    response = _replay(client, name)
    capture = load_capture(name)
    if _is_click(capture):
        assert response.status_code == 503
        assert "SAM_CHECKPOINT is not set" in response.get_json()["error"]
        return
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    if name == "health.json":
        assert body["status"] == "UP" and body["model_class"]
    elif name == "versions.json":
        assert isinstance(body["versions"], list) and body["versions"]
    elif name == "setup.json":
        assert body["model_version"].endswith("v0-untrained")
    elif capture["path"] == "/predict":
        assert len(body["results"]) == len(capture["body"]["tasks"])
    elif capture["path"] == "/webhook":
        assert body["status"] in {"queued", "ignored"}
    jobs.wait_idle(60)


@pytest.mark.parametrize("name", [n for n in CAPTURE_NAMES if n.startswith("predict_")])
def test_replay_predict_after_training(backend, image_host, name: str) -> None:
    client, runtime, jobs = backend
    _serve_capture_images(image_host)
    labeled = [choice_task(100 + i, url, "quality", ["good" if i % 2 else "bad"])
               for i, url in enumerate(sorted(image_host.files))]
    runtime.ls_api = FakeLabelStudioAPI(SCHEMA, labeled)  # type: ignore[assignment]
    version = train_classifier(runtime, TrainRequest(project=1, mode="full")).version
    capture = load_capture(name)
    response = _replay(client, name)
    if _is_click(capture):
        assert response.status_code == 503  # the classifier is not asked for a click
        return
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(capture["body"]["tasks"])
    for result in results:
        assert result["model_version"] == version
        (region,) = result["result"]
        assert region["from_name"] == "quality" and region["to_name"] == "image"
        assert region["type"] == "choices" and region["value"]["choices"][0] in {"good", "bad"}
        assert 0.5 <= result["score"] <= 1.0


def test_setup_reports_the_trained_version(backend, image_host) -> None:
    client, runtime, jobs = backend
    _serve_capture_images(image_host)
    labeled = [choice_task(1 + i, url, "quality", ["good" if i % 2 else "bad"])
               for i, url in enumerate(sorted(image_host.files))]
    runtime.ls_api = FakeLabelStudioAPI(SCHEMA, labeled)  # type: ignore[assignment]
    version = train_classifier(runtime, TrainRequest(project=1, mode="incremental")).version
    response = _replay(client, "setup.json")
    assert response.get_json() == {"model_version": version}
    assert version in _replay(client, "versions.json").get_json()["versions"]
