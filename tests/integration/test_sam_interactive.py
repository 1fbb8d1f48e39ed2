"""Smart-tool clicks through the real Label Studio to a real backend process running a tiny
random-init SAM of either generation (segment-anything, SAM 2.1): imported tasks get their
embeddings before anyone clicks, and Label Studio's interactive-annotating calls (a smart
keypoint, a smart rectangle) come back with brush masks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from ml_backend.devtools.project_setup import connect_backend, create_project, upload_images

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]


def _sam_counts(backend: BackendProcess) -> dict[str, int]:
    sam = requests.get(f"{backend.url}/health", timeout=10).json()["models"]["sam"]
    return sam.get("embeddings") or {}


@pytest.mark.integration
@pytest.mark.parametrize("generation", ["sam1", "sam2.1"])
def test_click_in_label_studio_gets_a_precomputed_mask(label_studio, ls_client,
                                                       tmp_path: Path, generation: str) -> None:
    from sam_fixture import TINY_SAM2_1_TYPE, TINY_SAM_TYPE, distinct_scenes, save_tiny_sam

    model_type = TINY_SAM_TYPE if generation == "sam1" else TINY_SAM2_1_TYPE
    paths = distinct_scenes(tmp_path / "scenes", 3)
    backend = BackendProcess(backend_env(
        label_studio, tmp_path,
        SAM_CHECKPOINT=str(save_tiny_sam(tmp_path / "sam", model_type=model_type)),
        SAM_MODEL_TYPE=model_type), tmp_path / "backend.log")
    try:
        backend.wait_ready()
        project = create_project(ls_client, "sam-clicks",
                                 REPO / "labeling_configs" / "interactive_segmentation.xml")
        ml_id = connect_backend(ls_client, project, backend.url)
        task_ids = upload_images(label_studio.url, label_studio.api_key, project, paths)

        # TASKS_CREATED reached the backend, which encoded every image in the background.
        deadline = time.monotonic() + 180
        while _sam_counts(backend).get("computed", 0) < len(paths):
            assert time.monotonic() < deadline, backend.log_tail()
            time.sleep(0.5)
        before = _sam_counts(backend)

        # An annotator's smart keypoint, sent by Label Studio to the backend.
        context = {"result": [{
            "from_name": "kp", "to_name": "image", "type": "keypointlabels",
            "is_positive": True, "origin": "manual",
            "original_width": 112, "original_height": 72,
            "value": {"x": 60, "y": 50, "width": 0.25, "keypointlabels": ["Object"]}}]}
        # ... and a smart rectangle, as the UI sends it, on another task.
        box = {"result": [{
            "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "is_positive": True, "origin": "manual",
            "original_width": 112, "original_height": 72,
            "value": {"x": 20, "y": 20, "width": 50, "height": 50, "rotation": 0,
                      "rectanglelabels": ["Object"]}}]}
        for task_id, prompt in ((task_ids[1], context), (task_ids[2], box)):
            response = requests.post(
                f"{label_studio.url}/api/ml/{ml_id}/interactive-annotating",
                headers={"Authorization": f"Token {label_studio.api_key}"},
                json={"task": task_id, "context": prompt}, timeout=120)
            assert response.status_code == 200, response.text[:2000]
            text = json.dumps(response.json())
            assert '"brushlabels"' in text and '"rle"' in text, text[:2000]
        after = _sam_counts(backend)
        assert after["computed"] == before["computed"]  # the clicks found them ready
        assert after["memory"] + after["disk"] > before["memory"] + before["disk"]
    finally:
        backend.stop()
