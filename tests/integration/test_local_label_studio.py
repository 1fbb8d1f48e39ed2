"""Smoke test of the local Label Studio harness and the project-setup helpers."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import requests

from ml_backend.devtools.datasets import write_digit_pngs
from ml_backend.devtools.local_label_studio import LocalLabelStudio
from ml_backend.devtools.project_setup import (
    INFORMATIVE_VIEW_TITLE,
    create_informative_view,
    create_project,
    ensure_label_errors_view,
    export_annotations,
    upload_images,
)
from ml_backend.quality.views import DUPLICATES_VIEW, LABEL_ERRORS_VIEW, QUALITY_KEY

REPO = Path(__file__).resolve().parents[2]
DIGIT_CONFIG = REPO / "labeling_configs" / "digit_classification.xml"
SETUP_SCRIPT = REPO / "scripts" / "setup_project.py"

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (REPO / "labeling_configs").glob("*.xml"))
)
def test_label_configs_are_accepted_by_label_studio(ls_client, config: str):
    project_id = create_project(ls_client, f"config {config}", REPO / "labeling_configs" / config)
    assert ls_client.projects.get(id=project_id).label_config.strip().startswith("<View>")
    ls_client.projects.delete(id=project_id)


def test_project_upload_view_export(label_studio: LocalLabelStudio, ls_client, tmp_path: Path):
    health = requests.get(f"{label_studio.url}/health", timeout=5).json()
    assert health["status"] == "UP"
    assert label_studio.url == f"http://127.0.0.1:{label_studio.port}"

    project_id = create_project(ls_client, "Digits smoke test", DIGIT_CONFIG)
    images = write_digit_pngs(tmp_path / "digits", count=3, size=32)
    task_ids = upload_images(label_studio.url, label_studio.api_key, project_id,
                             [path for path, _ in images])
    assert len(task_ids) == 3

    tasks = list(ls_client.tasks.list(project=project_id, fields="all"))
    assert sorted(task.id for task in tasks) == sorted(task_ids)
    image_url = tasks[0].data["image"]
    assert image_url.startswith("/data/upload/")
    download = requests.get(
        f"{label_studio.url}{image_url}",
        headers={"Authorization": f"Token {label_studio.api_key}"}, timeout=10,
    )
    assert download.status_code == 200
    assert download.content.startswith(b"\x89PNG")

    view_id = create_informative_view(ls_client, project_id)
    view = ls_client.views.get(id=str(view_id))
    assert view.data["title"] == INFORMATIVE_VIEW_TITLE
    assert view.data["ordering"] == ["tasks:predictions_score"]
    in_view = list(ls_client.tasks.list(project=project_id, view=view_id))
    assert len(in_view) == 3  # nothing labeled yet

    ls_client.annotations.create(
        id=task_ids[0],
        result=[{"from_name": "digit", "to_name": "image", "type": "choices",
                 "value": {"choices": [str(images[0][1])]}}],
    )
    assert len(list(ls_client.tasks.list(project=project_id, view=view_id))) == 2

    out = export_annotations(ls_client, project_id, "JSON", tmp_path / "export.json")
    exported = json.loads(out.read_text())
    assert len(exported) == 3
    labeled = [task for task in exported if task["annotations"]]
    assert labeled[0]["annotations"][0]["result"][0]["value"]["choices"] == [str(images[0][1])]


def _setup_script() -> ModuleType:
    from conftest import load_script

    return load_script(SETUP_SCRIPT)


def _view_titles(ls_client, project_id: int) -> dict[int, str]:
    return {int(view.id): view.data["title"] for view in ls_client.views.list(project=project_id)}


def test_setup_script_creates_the_quality_views(
    label_studio: LocalLabelStudio, ls_client, tmp_path: Path, monkeypatch, capsys
):
    """scripts/setup_project.py adds the "Suspected label errors" and "Near-duplicates" tabs
    beside "Most informative first" (issue 19), prints their ids, and the backend's quality
    job later finds them by title instead of adding its own; --no-view adds none."""
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    images = write_digit_pngs(tmp_path / "digits", count=2, size=16, seed=5)
    script = _setup_script()

    assert script.main(["--config", str(DIGIT_CONFIG), "--images", str(tmp_path / "digits"),
                        "--title", "Setup script views"]) == 0
    out = json.loads(capsys.readouterr().out)
    project_id = out["project_id"]
    assert len(out["task_ids"]) == len(images)
    assert _view_titles(ls_client, project_id) == {
        out["view_id"]: INFORMATIVE_VIEW_TITLE,
        out["label_errors_view_id"]: LABEL_ERRORS_VIEW,
        out["duplicates_view_id"]: DUPLICATES_VIEW,
    }
    errors_view = ls_client.views.get(id=str(out["label_errors_view_id"]))
    assert errors_view.data["ordering"] == [f"tasks:data.{QUALITY_KEY}"]  # worst first
    # What the quality job does after a training: the existing tab, not a second one
    assert ensure_label_errors_view(ls_client, project_id) == out["label_errors_view_id"]
    assert len(_view_titles(ls_client, project_id)) == 3

    assert script.main(["--config", str(DIGIT_CONFIG), "--no-view",
                        "--title", "Setup script without views"]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert "label_errors_view_id" not in bare and "duplicates_view_id" not in bare
    assert _view_titles(ls_client, bare["project_id"]) == {}


def _stub_backend(version: str, seen: list[dict]):
    """A minimal ML backend: constant digit, score derived from the task id."""
    from flask import Flask, jsonify, request

    app = Flask("stub-backend")

    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class="Stub")

    @app.post("/setup")
    def setup():
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        body = request.get_json()
        seen.append(body)
        results = [
            {"model_version": version, "score": _score(task["id"]),
             "result": [{"from_name": "digit", "to_name": "image", "type": "choices",
                         "value": {"choices": ["7"]}, "score": _score(task["id"])}]}
            for task in body["tasks"]
        ]
        return jsonify(results=results)

    @app.post("/webhook")
    def webhook():
        return jsonify(status="ok")

    @app.get("/versions")
    def versions():
        return jsonify(versions=[version])

    return app


def _score(task_id: int) -> float:
    return round(0.05 + (task_id * 37 % 10) / 11, 4)


def test_connect_backend_and_retrieve_predictions(
    label_studio: LocalLabelStudio, ls_client, tmp_path: Path
):
    from ml_backend.devtools.project_setup import connect_backend, retrieve_predictions

    from http_fixtures import serve_app

    seen: list[dict] = []
    backend_url, shutdown = serve_app(_stub_backend("stub-v1", seen))
    try:
        project_id = create_project(ls_client, "Digits with backend", DIGIT_CONFIG)
        images = write_digit_pngs(tmp_path / "digits", count=5, size=16, seed=3)
        task_ids = upload_images(label_studio.url, label_studio.api_key, project_id,
                                 [path for path, _ in images], batch_size=2)
        assert len(task_ids) == 5

        backend_id = connect_backend(ls_client, project_id, backend_url, is_interactive=True)
        backend = ls_client.ml.get(id=backend_id)
        assert backend.title == "stub-v1"
        assert backend.is_interactive
        assert ls_client.projects.get(id=project_id).model_version == "stub-v1"

        retrieve_predictions(ls_client, project_id)
        batches = [body for body in seen if len(body["tasks"]) > 1]
        assert len(batches) == 1  # all tasks in ONE /predict request
        assert sorted(task["id"] for task in batches[0]["tasks"]) == sorted(task_ids)

        view_id = create_informative_view(ls_client, project_id)
        ordered = [task.id for task in ls_client.tasks.list(project=project_id, view=view_id)]
        assert ordered == sorted(task_ids, key=_score)
        tasks = list(ls_client.tasks.list(project=project_id, fields="all"))
        assert all(len(task.predictions) == 1 for task in tasks)
        assert {task.predictions[0].model_version for task in tasks} == {"stub-v1"}
    finally:
        shutdown()
