"""Text prompts through the real Label Studio to a real backend process running a tiny
random-init CLIPSeg: "Retrieve predictions" stores zero-shot boxes and masks for every task,
and text typed into the prompt TextArea comes back as a suggestion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from ml_backend.devtools.project_setup import (
    connect_backend,
    create_project,
    retrieve_predictions,
    upload_images,
)

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_retrieved_predictions_and_a_typed_prompt(label_studio, ls_client,
                                                  tmp_path: Path) -> None:
    from clipseg_fixture import save_tiny_clipseg
    from sam_fixture import distinct_scenes

    paths = distinct_scenes(tmp_path / "scenes", 3)
    backend = BackendProcess(backend_env(
        label_studio, tmp_path, CLIPSEG_MODEL=str(save_tiny_clipseg(tmp_path / "clipseg"))),
        tmp_path / "backend.log")
    try:
        backend.wait_ready()
        # The shipped config, its threshold control at 0: every pixel counts, so outputs
        # have a known shape.
        config = tmp_path / "config.xml"
        config.write_text((REPO / "labeling_configs" / "text_prompted_segmentation.xml")
                          .read_text().replace('defaultValue="0.4"', 'defaultValue="0"'))
        project = create_project(ls_client, "clipseg-prompts", config)
        ml_id = connect_backend(ls_client, project, backend.url)
        task_ids = upload_images(label_studio.url, label_studio.api_key, project, paths)

        retrieve_predictions(ls_client, project)
        for task_id in task_ids:
            [prediction] = ls_client.tasks.get(task_id).predictions or []
            regions = sorted((r["type"], r["from_name"], json.dumps(r["value"].get(
                r["type"]))) for r in prediction.result)
            assert regions == [
                ("brushlabels", "mask", '["Person"]'), ("brushlabels", "mask", '["Vehicle"]'),
                ("rectanglelabels", "bbox", '["Person"]'),
                ("rectanglelabels", "bbox", '["Vehicle"]')], regions
            assert 0.0 <= prediction.score <= 1.0

        context = {"result": [
            {"from_name": "prompt", "to_name": "image", "type": "textarea", "origin": "manual",
             "value": {"text": ["a vehicle on the road"]}},
            {"from_name": "threshold", "to_name": "image", "type": "number",
             "value": {"number": 0.0}}]}
        response = requests.post(
            f"{label_studio.url}/api/ml/{ml_id}/interactive-annotating",
            headers={"Authorization": f"Token {label_studio.api_key}"},
            json={"task": task_ids[1], "context": context}, timeout=120)
        assert response.status_code == 200, response.text[:2000]
        text = json.dumps(response.json())
        assert '"rectanglelabels": ["Vehicle"]' in text, text[:2000]
        assert '"brushlabels": ["Vehicle"]' in text, text[:2000]
    finally:
        backend.stop()
