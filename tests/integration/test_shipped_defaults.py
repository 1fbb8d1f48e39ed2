"""The backend as the README starts it: `ml-backend serve` from the checkout's root with no
settings but Label Studio's URL and key, so models and caches land in the relative default
folders (`var/models`, `var/cache`) of that working directory. Every other test sets absolute
temporary folders, which hid a fine-tune that could not find its own spec file.

SAM has no default weights: its checkpoint is given as a path relative to the working
directory, the way a user who copied it next to the checkout would write it.

One backend process, the real Label Studio, four projects' worth of work: classifier training,
a detector fine-tune from the shipped defaults (architecture from scratch) that saves a new
version and writes its boxes, SAM precompute on import, and whole-project pre-annotation
through the CLI started from the same directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from ml_backend.devtools.datasets import shape_scenes, write_digit_pngs
from ml_backend.devtools.project_setup import connect_backend, create_project, upload_images

from .backend_process import BackendProcess, submit_boxes

REPO = Path(__file__).resolve().parents[2]
N_DIGITS = 16
N_DIGITS_LABELED = 10
N_SHAPES = 12
N_SHAPES_BOXED = 8  # DETECTOR_MIN_LABELS' default: the first fine-tune starts here
SAM_CHECKPOINT = "checkpoints/sam-tiny.pth"  # relative to the working directory


def user_environment(label_studio) -> dict[str, str]:
    """What a user's shell holds, plus the two settings the README asks for: none of this
    test process's own settings leak into the backend."""
    kept = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
            if name in os.environ}
    return {**kept, "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": label_studio.api_key}


def _predictions(ls_client, project: int) -> dict[int, list[dict]]:
    tasks = ls_client.tasks.list(project=project, fields="all", page_size=100)
    return {t.id: [p if isinstance(p, dict) else p.dict() for p in (t.predictions or [])]
            for t in tasks}


def _wait_for(condition, timeout_s: float, backend: BackendProcess, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: {backend.log_tail()}"
        time.sleep(0.5)


def _project_version(ls_client, project: int) -> str:
    return ls_client.projects.get(id=project).model_version or ""


@pytest.mark.integration
def test_shipped_defaults_from_the_checkout_root(label_studio, ls_client,
                                                  tmp_path: Path) -> None:
    from sam_fixture import TINY_SAM_TYPE, distinct_scenes, save_tiny_sam

    checkout = tmp_path / "checkout"  # the user's working directory: `cd ml-backend`
    (checkout / "checkpoints").mkdir(parents=True)
    save_tiny_sam(tmp_path / "sam").replace(checkout / SAM_CHECKPOINT)
    env = {**user_environment(label_studio), "SAM_CHECKPOINT": SAM_CHECKPOINT,
           "SAM_MODEL_TYPE": TINY_SAM_TYPE}
    backend = BackendProcess(env, tmp_path / "backend.log", cwd=checkout, clean_env=True)
    try:
        backend.wait_ready(timeout_s=180)
        health = requests.get(f"{backend.url}/health", timeout=10).json()
        assert health["storage"] == {"model_dir": str(checkout / "var" / "models"),
                                     "cache_dir": str(checkout / "var" / "cache")}
        assert health["models"]["sam"]["status"] in {"ready", "not-loaded"}, health
        assert health["jobs"] == "in-process"

        # -- classifier: annotations → webhooks → training → a new version ---------------
        digits = write_digit_pngs(tmp_path / "digits", N_DIGITS)
        digits_project = create_project(
            ls_client, "defaults-digits", REPO / "labeling_configs" / "digit_classification.xml")
        connect_backend(ls_client, digits_project, backend.url)
        digit_tasks = upload_images(label_studio.url, label_studio.api_key, digits_project,
                                    [path for path, _ in digits])
        for task_id, (_, label) in list(zip(digit_tasks, digits, strict=True))[
                :N_DIGITS_LABELED]:
            ls_client.annotations.create(id=task_id, result=[{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [str(label)]}}])

        # -- detector: boxes → the default fine-tune (yolov8n.yaml from scratch) ----------
        scenes = shape_scenes(N_SHAPES, seed=5)
        shape_paths = []
        for i, scene in enumerate(scenes):
            shape_paths.append(tmp_path / "shapes" / f"shape{i}.png")
            shape_paths[-1].parent.mkdir(exist_ok=True)
            Image.fromarray(scene.pixels).save(shape_paths[-1])
        # The project (not the backend) asks for every box: a model trained from scratch for
        # the default 10 epochs on 8 images is unsure of all of them.
        config = (REPO / "labeling_configs" / "shapes_detection.xml").read_text().replace(
            '<RectangleLabels name="shape" toName="image">',
            '<RectangleLabels name="shape" toName="image" model_score_threshold="0">')
        (tmp_path / "shapes.xml").write_text(config)
        shapes_project = create_project(ls_client, "defaults-shapes", tmp_path / "shapes.xml")
        connect_backend(ls_client, shapes_project, backend.url)
        shape_tasks = upload_images(label_studio.url, label_studio.api_key, shapes_project,
                                    shape_paths)
        for task_id, scene in zip(shape_tasks[:N_SHAPES_BOXED], scenes, strict=False):
            submit_boxes(ls_client, task_id, scene)

        # -- SAM: imported tasks are encoded ahead of clicks, into var/cache/sam ----------
        sam_project = create_project(
            ls_client, "defaults-sam", REPO / "labeling_configs" / "interactive_segmentation.xml")
        connect_backend(ls_client, sam_project, backend.url)
        sam_images = distinct_scenes(tmp_path / "scenes", 3)
        upload_images(label_studio.url, label_studio.api_key, sam_project, sam_images)

        def sam_computed() -> int:
            sam = requests.get(f"{backend.url}/health", timeout=10).json()["models"]["sam"]
            return int((sam.get("embeddings") or {}).get("computed", 0))

        _wait_for(lambda: sam_computed() >= len(sam_images), 300, backend, "SAM precompute")
        assert len(list((checkout / "var" / "cache" / "sam").glob("*/*/*.npz"))) >= \
            len(sam_images), "SAM embeddings did not land in the default cache folder"

        _wait_for(lambda: _project_version(ls_client, digits_project).startswith("resnet18-v"),
                  300, backend, "classifier version")
        _wait_for(lambda: _project_version(ls_client, shapes_project).startswith("yolov8n-v"),
                  900, backend, "detector version")
        backend.wait_idle(timeout_s=600)

        jobs = backend.jobs()
        assert not backend.failed_jobs(), backend.failed_jobs()
        trained = [j for j in jobs if j["name"] == "train_detector"
                   and j["result"]["status"] == "trained"]
        assert trained, jobs
        assert (checkout / "var" / "models" / "projects" / str(shapes_project)).is_dir()
        assert not list((checkout / "var" / "cache" / "detector-train").glob("*")), \
            "a fine-tune's work folder was left behind"
        health = requests.get(f"{backend.url}/health", timeout=10).json()
        assert health["failing_jobs"] == {}, health["failing_jobs"]

        # The new detector version's boxes are on the tasks nobody boxed.
        detector_version = _project_version(ls_client, shapes_project)
        after = _predictions(ls_client, shapes_project)
        unboxed = shape_tasks[N_SHAPES_BOXED:]
        for task_id in unboxed:
            assert [p["model_version"] for p in after[task_id]] == [detector_version]
        regions = [r for t in unboxed for r in after[t][0]["result"]]
        assert regions and all(r["type"] == "rectanglelabels" for r in regions)

        # -- whole-project pre-annotation, from the CLI in the same directory -------------
        done = subprocess.run(
            [sys.executable, "-m", "ml_backend.cli", "preannotate", "--project",
             str(digits_project), "--wait"], cwd=checkout, env=env, capture_output=True,
            text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        digits_version = _project_version(ls_client, digits_project)
        predicted = _predictions(ls_client, digits_project)
        for task_id in digit_tasks:
            assert digits_version in [p["model_version"] for p in predicted[task_id]], task_id
    finally:
        backend.stop()
