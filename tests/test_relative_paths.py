"""Relative paths never cross into a process or thread that works in another directory:
settings are absolute once read, the detector fine-tune's child gets absolute paths, Label
Studio's executable is found from its data dir, and job failures are kept where /health and
every worker see them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ml_backend.app import create_app
from ml_backend.core.settings import Settings
from ml_backend.devtools.local_label_studio import find_label_studio_bin
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.jobs.queues import (
    InProcessQueue,
    JobKind,
    publish_storage,
    storage_mismatch,
)
from ml_backend.runtime import Runtime

from redis_fixture import running_redis

PATH_VARIABLES = {"MODEL_DIR": "model_dir", "CACHE_DIR": "cache_dir",
                  "UPLOAD_DIR": "upload_dir", "LOCAL_FILES_DOCUMENT_ROOT":
                  "local_files_document_root", "RESNET_CHECKPOINT": "resnet_checkpoint",
                  "SAM_CHECKPOINT": "sam_checkpoint", "YOLO_CHECKPOINT": "yolo_checkpoint"}


def test_defaults_and_relative_settings_are_absolute_in_the_starting_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = Settings.from_env({})
    assert defaults.model_dir == tmp_path / "var" / "models"
    assert defaults.cache_dir == tmp_path / "var" / "cache"
    assert Settings().cache_dir == tmp_path / "var" / "cache"  # built directly, too
    settings = Settings.from_env({name: f"sub/{name.lower()}" for name in PATH_VARIABLES})
    for name, field in PATH_VARIABLES.items():
        assert getattr(settings, field) == tmp_path / "sub" / name.lower(), name
    # A later chdir changes nothing.
    (tmp_path / "elsewhere").mkdir()
    os.chdir(tmp_path / "elsewhere")
    assert settings.model_dir == tmp_path / "sub" / "model_dir"
    assert Settings.from_env({"CACHE_DIR": "~/c"}).cache_dir == Path.home() / "c"
    assert settings.paths() == {"model_dir": str(tmp_path / "sub" / "model_dir"),
                                "cache_dir": str(tmp_path / "sub" / "cache_dir")}


def test_clipseg_model_is_a_hub_id_or_an_absolute_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "clipseg").mkdir(parents=True)
    hub = Settings.from_env({"CLIPSEG_MODEL": "CIDAS/clipseg-rd64-refined"})
    assert hub.clipseg_model == "CIDAS/clipseg-rd64-refined"
    local = Settings.from_env({"CLIPSEG_MODEL": "models/clipseg"})
    assert local.clipseg_model == str(tmp_path / "models" / "clipseg")
    dotted = Settings.from_env({"CLIPSEG_MODEL": "./not-yet-there"})
    assert dotted.clipseg_model == str(tmp_path / "not-yet-there")


def test_fine_tune_from_relative_paths_in_another_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child runs with cwd = its work folder; relative spec paths once failed there
    (FileNotFoundError: var/cache/detector-train/…/spec.json)."""
    from yolo_fixture import train_tiny_yolo

    monkeypatch.chdir(tmp_path)
    checkpoint = train_tiny_yolo(Path("var/cache/tiny"))
    assert (tmp_path / checkpoint).is_file()


def test_label_studio_found_from_a_relative_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "label-studio"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    assert find_label_studio_bin("bin/label-studio") == exe  # absolute: LS runs elsewhere


def test_repeated_job_failures_show_in_health_until_one_succeeds(make_settings) -> None:
    outcomes = iter([RuntimeError("fine-tune failed (exit 1): spec.json missing")] * 3
                    + [None])

    def flaky(runtime: Runtime, request: TrainRequest) -> Any:
        error = next(outcomes)
        if error is not None:
            raise error
        return {"status": "trained"}

    settings = make_settings()
    runtime = Runtime(settings)
    jobs = InProcessQueue(runtime, registry={"train_detector": JobKind(flaky, TrainRequest)})
    client = create_app(settings, runtime=runtime, jobs=jobs, warm_up=False).test_client()
    try:
        for _ in range(3):
            jobs.submit("train_detector", {"project": 7})
            assert jobs.wait_idle(30)
        health = client.get("/health").get_json()
        failing = health["failing_jobs"]["7"]["train_detector"]
        assert failing["failures_in_a_row"] == 3
        assert "spec.json missing" in failing["last_error"]
        detector = health["models"]["detector"]
        assert detector["training_failures"]["7"]["failures_in_a_row"] == 3
        assert "project 7: fine-tune failed 3× in a row" in detector["training_warning"]
        # Another process's view (a worker, a restarted server) is the same: it is on disk.
        assert Runtime(settings).store.failing_jobs() == {7: health["failing_jobs"]["7"]}

        jobs.submit("train_detector", {"project": 7})
        assert jobs.wait_idle(30)
        health = client.get("/health").get_json()
        assert health["failing_jobs"] == {}
        assert "training_failures" not in health["models"]["detector"]
    finally:
        jobs.close()


def test_a_worker_started_elsewhere_is_told_its_storage_differs(tmp_path: Path) -> None:
    from redis import Redis

    server = Settings(model_dir=tmp_path / "a" / "var" / "models",
                      cache_dir=tmp_path / "a" / "var" / "cache")
    worker = Settings(model_dir=tmp_path / "b" / "var" / "models",
                      cache_dir=tmp_path / "a" / "var" / "cache")
    with running_redis() as url:
        connection = Redis.from_url(url)
        assert storage_mismatch(connection, worker.paths()) is None  # no server yet
        publish_storage(connection, server.paths())
        assert storage_mismatch(connection, server.paths()) is None
        warning = storage_mismatch(connection, worker.paths())
        assert warning is not None
        assert f"MODEL_DIR {tmp_path / 'b' / 'var' / 'models'} here" in warning
        assert f"{tmp_path / 'a' / 'var' / 'models'} on the server" in warning
        assert "CACHE_DIR /" not in warning  # that one is the same
        connection.close()


def test_label_studio_is_looked_for_in_this_checkout() -> None:
    """The default `.venv-ls` is the checkout's (found from the module's own place)."""
    from ml_backend.devtools import local_label_studio

    assert Path(__file__).resolve().parents[1] == local_label_studio.REPO_ROOT
