"""After a correction: the correction read from the annotation webhook, the nearest unlabeled
tasks the retrained model labels alike (a pure function), and their marks and tab written by
the quality job that follows the training."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.jobs.kinds import QualityRequest
from ml_backend.quality.label_errors import quality_job
from ml_backend.quality.like_correction import (
    LAST_CORRECTION_STATE,
    LIKE_CORRECTION_K,
    Correction,
    choice_corrections,
    like_correction,
)
from ml_backend.quality.scoring import nearest
from ml_backend.quality.similar import load_index
from ml_backend.quality.views import (
    LIKE_CORRECTION_KEY,
    LIKE_CORRECTION_VIEW,
    LIKE_SIMILARITY_KEY,
)

from conftest import DIGITS_CONFIG, hosted_digit_tasks
from fakes import QualityFakeAPI

CAPTURE = Path(__file__).parent / "fixtures" / "captures" / "webhook_ANNOTATION_CREATED.json"
PROJECT = 7


def _choices(control: str, *values: str) -> dict[str, Any]:
    return {"from_name": control, "to_name": "image", "type": "choices",
            "value": {"choices": list(values)}}


def _captured_annotation() -> dict[str, Any]:
    return copy.deepcopy(json.loads(CAPTURE.read_text())["body"]["annotation"])


# --- the correction, from Label Studio's webhook ---------------------------------------------
def test_the_captured_annotation_corrected_nothing() -> None:
    """Label Studio 1.23.2's webhook carries the prediction the annotator saw; the captured
    one had no result, so nothing was corrected."""
    annotation = _captured_annotation()
    assert annotation["prediction"]["result"] == []
    assert choice_corrections(annotation) == []


def test_a_changed_single_choice_is_a_correction() -> None:
    annotation = _captured_annotation()  # its "quality" control says "good"
    annotation["prediction"]["result"] = [_choices("quality", "bad")]
    assert choice_corrections(annotation) == [Correction(
        task=1, annotation=1, control="quality", label="good", predicted="bad", prediction=6,
        updated_at="2026-11-21T22:21:44.885836Z")]
    record = choice_corrections(annotation)[0]
    assert Correction.from_state(json.loads(json.dumps(record.as_state()))) == record


@pytest.mark.parametrize("change", ["same choice", "skipped", "no prediction",
                                    "multiple choices", "no id"])
def test_what_is_no_correction(change: str) -> None:
    annotation = _captured_annotation()
    annotation["prediction"]["result"] = [_choices("quality", "bad")]
    if change == "same choice":
        annotation["prediction"]["result"] = [_choices("quality", "good")]
    elif change == "skipped":
        annotation["was_cancelled"] = True
    elif change == "no prediction":
        annotation["prediction"] = {}  # Label Studio's default when none was shown
        assert choice_corrections(annotation) == []
        annotation["prediction"] = None
    elif change == "multiple choices":
        annotation["result"] = [_choices("quality", "good", "bad")]
    else:
        del annotation["id"]
    assert choice_corrections(annotation) == []


# --- the tasks like it -----------------------------------------------------------------------
def test_like_correction_keeps_the_nearest_unlabeled_rows_labeled_alike() -> None:
    angles = np.radians([0, 10, 20, 30, 40, 50, 60])  # row 0 is the corrected task
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0
    unlabeled = [6, 2, 1, 4, 3]  # row 5 is annotated: never a candidate
    alike = np.array([True, True, False, True, True])
    rows, sims = like_correction(embeddings, 0, unlabeled, alike, k=3)
    # The three nearest unlabeled rows are 1, 2, 3; row 1 the model labels otherwise.
    assert rows.tolist() == [2, 3]
    np.testing.assert_allclose(sims, np.cos(np.radians([20, 30])), rtol=1e-6)
    assert like_correction(embeddings, 0, [], np.zeros(0, dtype=bool))[0].tolist() == []
    with pytest.raises(ValueError, match="one labeled_alike flag per unlabeled row"):
        like_correction(embeddings, 0, [1, 2], np.ones(3, dtype=bool))


# --- through the backend ---------------------------------------------------------------------
def _label_of(prediction: dict[str, Any]) -> str | None:
    regions = prediction.get("result") or []
    return regions[0]["value"]["choices"][0] if regions else None


def test_a_correction_marks_the_tasks_the_retrained_model_labels_alike(backend, image_host
                                                                       ) -> None:
    client, runtime, jobs = backend
    tasks = hosted_digit_tasks(image_host, 90, project=PROJECT)
    labeled, rest = tasks[:50], tasks[50:]
    fake = QualityFakeAPI(DIGITS_CONFIG, labeled, project=PROJECT)
    fake.unlabeled = [{"id": t["id"], "data": dict(t["data"])} for t in rest]
    runtime.ls_api = fake  # type: ignore[assignment]
    anchor = labeled[0]
    label = anchor["annotations"][0]["result"][0]["value"]["choices"][0]
    wrong = "9" if label != "9" else "8"
    response = client.post("/webhook", json={
        "action": "ANNOTATION_UPDATED",
        "project": {"id": PROJECT, "label_config": DIGITS_CONFIG},
        "task": {"id": anchor["id"], "project": PROJECT, "data": anchor["data"]},
        "annotation": {**anchor["annotations"][0], "task": anchor["id"], "project": PROJECT,
                       "prediction": {"id": 3, "result": [_choices("digit", wrong)]}}})
    assert response.status_code == 200, response.get_json()
    kept = runtime.store.read_state(PROJECT, LAST_CORRECTION_STATE)
    assert kept["corrections"][0]["task"] == anchor["id"]
    assert kept["corrections"][0]["predicted"] == wrong

    # Training chains the re-rank and the quality job.
    assert jobs.wait_idle(300)
    assert not [j for j in jobs.recent() if j["status"] == "failed"], jobs.recent()
    result = next(j["result"] for j in jobs.recent()
                  if j["name"] == "quality" and j["status"] == "finished")
    like = result["like_correction"]
    assert like["status"] == "marked" and like["task"] == anchor["id"], like
    assert like["label"] == label and like["was"] == wrong
    assert like["nearest"] == LIKE_CORRECTION_K
    marked = like["marked"]
    assert marked and like["written"] == len(marked) and like["cleared"] == 0, like

    # Checked against the predictions the re-rank wrote for the same version: of the 20
    # unlabeled tasks nearest the corrected one, exactly those predicted as its label.
    version = runtime.model_version(PROJECT)
    predicted = {p["task"]: _label_of(p) for p in fake.predictions
                 if p["model_version"] == version}
    index = load_index(runtime.store, PROJECT)
    open_rows = [index.row(t["id"]) for t in fake.unlabeled]
    rows, _ = nearest(index.unit[open_rows], index.unit[index.row(anchor["id"])],
                      LIKE_CORRECTION_K)
    near = [int(index.task_ids[open_rows[r]]) for r in rows]
    assert set(marked) == {t for t in near if predicted[t] == label}, (near, predicted)

    data = {int(t["id"]): t["data"] for t in fake._all_tasks()}
    similarities = [data[t][LIKE_SIMILARITY_KEY] for t in marked]
    assert similarities == sorted(similarities, reverse=True)
    assert all(data[t][LIKE_CORRECTION_KEY] == anchor["id"] for t in marked)
    assert not [t for t in data if t not in marked and LIKE_CORRECTION_KEY in data[t]]
    assert fake.views[LIKE_CORRECTION_VIEW]["ordering"] == [f"-tasks:data.{LIKE_SIMILARITY_KEY}"]

    # Nothing changed: nothing is written again. A marked task annotated since loses its
    # marks (the tab shows unlabeled tasks only, and the marks would describe an old state).
    again = quality_job(runtime, QualityRequest(PROJECT))["like_correction"]
    assert again["marked"] == marked and again["written"] == 0 and again["cleared"] == 0
    done = next(t for t in fake.unlabeled if t["id"] == marked[0])
    fake.unlabeled.remove(done)
    annotated = {**done, "annotations": [{
        "id": 999, "updated_at": "2026-01-02T00:00:00Z", "was_cancelled": False,
        "result": [_choices("digit", label)]}]}
    fake.tasks.append(annotated)
    after = quality_job(runtime, QualityRequest(PROJECT))["like_correction"]
    assert marked[0] not in after["marked"] and after["cleared"] >= 1, after
    assert not {LIKE_CORRECTION_KEY, LIKE_SIMILARITY_KEY} & set(annotated["data"])
