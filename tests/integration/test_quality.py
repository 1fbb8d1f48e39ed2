"""Data quality through the real Label Studio: a digits project labeled through its API with
two injected label errors → after training the "Suspected label errors" tab lists them first
(read through the SDK in the tab's order); near-duplicates found and marked by
`ml-backend dedupe --apply` go to the end of the ranked queue; GET /similar answers and
keeps its answer in the prediction's ``neighbors``; a correction's look-alikes are marked
for Label Studio's bulk action."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from ml_backend.devtools.datasets import write_digit_pngs
from ml_backend.devtools.project_setup import connect_backend, create_project, upload_images
from ml_backend.quality.views import (
    DUPLICATE_KEY,
    DUPLICATES_VIEW,
    LABEL_ERRORS_VIEW,
    LIKE_CORRECTION_KEY,
    LIKE_CORRECTION_VIEW,
    LIKE_SIMILARITY_KEY,
    QUALITY_KEY,
)

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]
PER_CLASS = 10  # labeled images of digits 0 and 1 each


def _near_copy(source: Path, out: Path) -> Path:
    """A JPEG re-encode of ``source``, a little brighter: a near-duplicate."""
    pixels = np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)
    Image.fromarray(np.clip(pixels + 12, 0, 255).astype(np.uint8)).save(out, quality=85)
    return out


def _view_tasks(ls_client: Any, project: int, title: str) -> list[Any]:
    views = [v for v in ls_client.views.list(project=project)
             if (v.data or {}).get("title") == title]
    assert len(views) == 1, [(v.data or {}).get("title") for v in
                             ls_client.views.list(project=project)]
    return list(ls_client.tasks.list(project=project, view=views[0].id, fields="all"))


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _dedupe(env: dict[str, str], project: int) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "ml-backend"), "dedupe", "--project",
               str(project), "--apply"]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600, check=False)


def _digits_project(label_studio: Any, ls_client: Any, backend: BackendProcess, title: str,
                    images: list[Path]) -> tuple[int, list[int]]:
    """Once ``backend`` is ready: a digit-classification project holding ``images``, and
    its task ids in their order."""
    backend.wait_ready()
    project = create_project(ls_client, title,
                             REPO / "labeling_configs" / "digit_classification.xml")
    return project, upload_images(label_studio.url, label_studio.api_key, project, images)


@pytest.mark.integration
def test_quality_through_label_studio(label_studio, ls_client, tmp_path: Path) -> None:
    digits = write_digit_pngs(tmp_path / "digits", 100, size=32)  # 10 a class
    zeros = [p for p, label in digits if label == 0][:PER_CLASS]
    ones = [p for p, label in digits if label == 1][:PER_CLASS]
    others = [p for p, label in digits if label in (4, 7)][:4]
    # Near-duplicates: of a labeled "0" (the labeled one is kept) and of an unlabeled image.
    copies = [_near_copy(zeros[0], tmp_path / "zero-copy.jpg"),
              _near_copy(others[0], tmp_path / "other-copy.jpg")]
    env = backend_env(label_studio, tmp_path, FULL_SYNC_INTERVAL_S="0",
                      RERANK_MIN_INTERVAL_S="0")
    backend = BackendProcess(env, tmp_path / "backend.log")
    try:
        project, ids = _digits_project(label_studio, ls_client, backend, "digits-quality",
                                       [*zeros, *ones, *others, *copies])
        zero_ids, one_ids = ids[:PER_CLASS], ids[PER_CLASS:2 * PER_CLASS]
        other_ids = ids[2 * PER_CLASS:2 * PER_CLASS + 4]
        zero_copy, other_copy = ids[-2:]
        connect_backend(ls_client, project, backend.url)
        # Two injected label errors: a 0 labeled "1" and a 1 labeled "0".
        errors = {zero_ids[3]: "1", one_ids[5]: "0"}
        for task_id in zero_ids + one_ids:
            label = errors.get(task_id, "0" if task_id in zero_ids else "1")
            ls_client.annotations.create(id=task_id, result=[{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [label]}}])

        # Training (one per event, coalesced) chains the quality job; wait for the one that
        # scored every label.
        deadline = time.monotonic() + 300
        scored = None
        while time.monotonic() < deadline and scored is None:
            backend.wait_idle(timeout_s=max(1.0, deadline - time.monotonic()))
            scored = next((j["result"] for j in backend.jobs() if j["name"] == "quality"
                           and j["status"] == "finished"
                           and (j.get("result") or {}).get("n_labeled") == 2 * PER_CLASS),
                          None)
        assert scored is not None, (backend.jobs(), backend.log_tail())
        assert scored["status"] == "scored" and scored["indexed"] == len(ids)

        # The tab, read through the SDK in its own order: the injected errors first.
        listed = _view_tasks(ls_client, project, LABEL_ERRORS_VIEW)
        assert len(listed) == 2 * PER_CLASS
        order = [int(t.id) for t in listed]
        assert set(order[:2]) == set(errors), (order, [t.data.get(QUALITY_KEY) for t in listed])
        qualities = [float(t.data[QUALITY_KEY]) for t in listed]
        assert qualities == sorted(qualities)
        assert all(t.data["image"] for t in listed)  # the image key is untouched

        # Find similar on the real project.
        similar = requests.get(f"{backend.url}/similar/{project}/{zero_copy}?k=5",
                               timeout=30).json()
        assert similar["status"] == "ok" and len(similar["similar"]) == 5, similar
        assert similar["similar"][0]["task"] == zero_ids[0], similar
        assert requests.get(f"{backend.url}/similar/{project}/99999",
                            timeout=30).status_code == 404
        assert requests.get(f"{backend.url}/similar/99999/{zero_copy}",
                            timeout=30).status_code == 404

        # Near-duplicates: marked by the CLI, shown in their tab, skipped by the ranking.
        done = _dedupe(env, project)
        assert done.returncode == 0, done.stderr
        marked = {int(t.id): t.data[DUPLICATE_KEY]
                  for t in _view_tasks(ls_client, project, DUPLICATES_VIEW)}
        assert marked.get(zero_copy) == zero_ids[0], marked
        assert marked.get(other_copy) == other_ids[0], marked
        assert not set(marked) & set(zero_ids + one_ids)  # annotated tasks are never marked
        requests.post(f"{backend.url}/ranking/{project}", timeout=30).raise_for_status()
        backend.wait_idle(timeout_s=300)
        ranking = requests.get(f"{backend.url}/ranking/{project}", timeout=30).json()
        assert not set(marked) & set(ranking["batch"]), ranking
        rerank = next(j["result"] for j in backend.jobs() if j["name"] == "rerank"
                      and j["status"] == "finished")
        assert rerank["duplicates"] == len(marked)
        version = ls_client.projects.get(id=project).model_version
        for task_id in marked:
            scores = [_field(p, "score") for p in ls_client.tasks.get(id=task_id).predictions
                      if _field(p, "model_version") == version]
            assert scores == [1.0], (task_id, scores)
        assert not backend.failed_jobs(), backend.failed_jobs()
    finally:
        backend.stop()


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "digit", "to_name": "image", "type": "choices",
             "value": {"choices": [label]}}]


def _predicted_choice(ls_client: Any, task_id: int, version: str) -> list[str]:
    return [_field(p, "result")[0]["value"]["choices"][0]
            for p in ls_client.tasks.get(id=task_id).predictions
            if _field(p, "model_version") == version and _field(p, "result")]


@pytest.mark.integration
def test_like_a_correction_through_label_studio(label_studio, ls_client, tmp_path: Path
                                                ) -> None:
    """An annotator corrects a predicted "0"/"1" to "7" (a class nobody labeled yet); after
    the retraining, the tab "Like the last correction" lists unlabeled tasks near it that
    the new version predicts as "7", and Label Studio's own bulk action accepts them.
    GET /similar keeps its answer in the task's prediction's ``neighbors``."""
    digits = write_digit_pngs(tmp_path / "digits", 200, size=32)  # 20 a class
    by_class = {c: [p for p, label in digits if label == c] for c in (0, 1, 7)}
    backend = BackendProcess(backend_env(label_studio, tmp_path, FULL_SYNC_INTERVAL_S="0",
                                         RERANK_MIN_INTERVAL_S="0"), tmp_path / "backend.log")
    try:
        project, ids = _digits_project(label_studio, ls_client, backend,
                                       "digits-like-correction",
                                       [*by_class[0], *by_class[1], *by_class[7]])
        truth = dict(zip(ids, ["0"] * 20 + ["1"] * 20 + ["7"] * 20, strict=True))
        connect_backend(ls_client, project, backend.url)
        for task_id in ids[:PER_CLASS] + ids[20:20 + PER_CLASS]:
            ls_client.annotations.create(id=task_id, result=_choice(truth[task_id]))
        backend.wait_idle(timeout_s=300)
        version = ls_client.projects.get(id=project).model_version
        sevens = ids[40:]
        assert _predicted_choice(ls_client, sevens[0], version)[0] in {"0", "1"}

        # Find similar keeps its answer in the prediction's neighbors.
        similar = requests.get(f"{backend.url}/similar/{project}/{sevens[1]}?k=5",
                               timeout=30).json()
        assert similar["status"] == "ok" and similar["neighbors"]["status"] == "written"
        neighbours = [_field(p, "neighbors") for p in ls_client.predictions.list(
            task=sevens[1])]
        assert neighbours == [[s["task"] for s in similar["similar"]]], neighbours

        # The correction: Label Studio sends the prediction the annotator saw with it.
        ls_client.annotations.create(id=sevens[0], result=_choice("7"))
        deadline = time.monotonic() + 300
        like = None
        while time.monotonic() < deadline and like is None:
            backend.wait_idle(timeout_s=max(1.0, deadline - time.monotonic()))
            like = next((j["result"]["like_correction"] for j in backend.jobs()
                         if j["name"] == "quality" and j["status"] == "finished"
                         and (j["result"].get("like_correction") or {}).get("task")
                         == sevens[0]), None)
        assert like is not None, (backend.jobs(), backend.log_tail())
        assert like["status"] == "marked" and like["label"] == "7", like
        assert like["was"] in {"0", "1"} and like["marked"], like

        # The tab, in its own order: exactly the marked tasks, most similar first, each
        # unlabeled and predicted "7" by the version the project shows.
        listed = _view_tasks(ls_client, project, LIKE_CORRECTION_VIEW)
        assert [int(t.id) for t in listed] == like["marked"], like
        similarities = [float(t.data[LIKE_SIMILARITY_KEY]) for t in listed]
        assert similarities == sorted(similarities, reverse=True)
        assert all(t.data[LIKE_CORRECTION_KEY] == sevens[0] for t in listed)
        version = ls_client.projects.get(id=project).model_version
        for task_id in like["marked"]:
            assert _predicted_choice(ls_client, task_id, version) == ["7"], task_id

        # The bulk action an annotator runs on the tab: annotations from the predictions.
        view = next(v.id for v in ls_client.views.list(project=project)
                    if (v.data or {}).get("title") == LIKE_CORRECTION_VIEW)
        ls_client.actions.create(id="predictions_to_annotations", project=project, view=view,
                                 selected_items={"all": True, "excluded": []})
        for task_id in like["marked"]:
            results = [_field(a, "result") for a in ls_client.tasks.get(id=task_id).annotations]
            assert [r[0]["value"]["choices"] for r in results] == [["7"]], (task_id, results)
        assert _view_tasks(ls_client, project, LIKE_CORRECTION_VIEW) == []
        assert not backend.failed_jobs(), backend.failed_jobs()
    finally:
        backend.stop()
