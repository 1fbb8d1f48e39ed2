"""Data quality: label-quality scores (out-of-fold + cleanlab), near-duplicates and the
ranking's skip of them, and GET /similar."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ml_backend.jobs.kinds import QualityRequest, RerankRequest, TrainRequest
from ml_backend.learning.heads import BASELINE, Regularisation, out_of_fold_proba
from ml_backend.models.classifier.training import train_classifier
from ml_backend.pipeline.ranking import queue_candidates, rerank_project
from ml_backend.quality.fingerprints import fingerprints
from ml_backend.quality.label_errors import quality_job
from ml_backend.quality.scoring import (
    duplicate_pairs,
    duplicates_to_mark,
    groups_from_pairs,
    label_issues,
    label_quality_scores,
    nearest,
    normalise,
)
from ml_backend.quality.views import DUPLICATE_KEY, QUALITY_KEY, is_marked_duplicate

from conftest import DIGITS_CONFIG, hosted_digit_tasks
from fakes import QualityFakeAPI


def _blobs(n_per_class: int, n_classes: int, dim: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(0, 1.0, size=(len(y), dim)), y


# --- label errors ---------------------------------------------------------------------------
def test_scores_are_the_out_of_fold_probability_of_the_given_label() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(label_quality_scores(probs, labels), [0.9, 0.2, 0.3, 0.6])
    # A class without any label is left out and the rest renormalised.
    three = np.array([[0.45, 0.05, 0.5], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(label_quality_scores(three, np.array([0, 2])),
                               [0.45 / 0.95, 0.8 / 0.9])
    # One labeled class: nothing can be suspected.
    assert label_quality_scores(probs, np.zeros(4, dtype=int)).tolist() == [1.0] * 4
    assert not label_issues(probs, np.zeros(4, dtype=int)).any()


@pytest.mark.parametrize("probs, labels, error", [
    (np.ones((3, 2)) / 2, np.array([0, 1]), "pred_probs must be"),
    (np.ones((2, 2)) / 2, np.array([0, 2]), "labels must lie"),
])
def test_scores_refuse_mismatched_input(probs: np.ndarray, labels: np.ndarray,
                                        error: str) -> None:
    with pytest.raises(ValueError, match=error):
        label_quality_scores(probs, labels)


@pytest.mark.parametrize("regularisation", [BASELINE, Regularisation(True, 1e-2)])
def test_injected_flips_rank_first(regularisation: Regularisation) -> None:
    x, y = _blobs(40, 4, 16, seed=1)
    rng = np.random.default_rng(2)
    flipped = rng.choice(len(y), size=8, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 4, size=8)) % 4
    proba = out_of_fold_proba(x, noisy, 4, regularisation, k=5, seed=0)
    assert proba.shape == (160, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    scores = label_quality_scores(proba, noisy)
    worst = set(np.argsort(scores)[:8].tolist())
    assert len(worst & set(flipped.tolist())) >= 7, (sorted(worst), sorted(flipped))
    issues = label_issues(proba, noisy)
    caught = set(np.flatnonzero(issues).tolist()) & set(flipped.tolist())
    assert len(caught) >= 6 and issues.sum() <= 14, (len(caught), int(issues.sum()))


def test_quality_job_writes_scores_and_the_view(backend, image_host) -> None:
    _, runtime, _ = backend
    tasks = hosted_digit_tasks(image_host, 60)
    flips = {3: "8", 17: "1", 40: "0"}  # task id -> a wrong label
    for task in tasks:
        if task["id"] in flips:
            task["annotations"][0]["result"][0]["value"]["choices"] = [flips[task["id"]]]
    fake = QualityFakeAPI(DIGITS_CONFIG, tasks, project=7)
    runtime.ls_api = fake  # type: ignore[assignment]
    outcome = train_classifier(runtime, TrainRequest(project=7, mode="full"))
    assert {"name": "quality", "payload": {"project": 7}, "key": "quality:7"} \
        in outcome.next_jobs
    result = quality_job(runtime, QualityRequest(7))
    assert result["status"] == "scored" and result["n_labeled"] == 60
    assert result["indexed"] == 60 and result["written"] == 60
    scores = {int(t["id"]): t["data"][QUALITY_KEY] for t in fake.tasks}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    ranks = sorted(scores, key=lambda t: scores[t])
    # A random-weight backbone at 32 px and 6 labels a class: the flips rank low, not all
    # first (the pure test above and the benchmark measure the ranking itself).
    positions = sorted(ranks.index(t) for t in flips)
    assert positions[1] < 10 and positions[2] < 30, positions
    assert "Suspected label errors" in fake.views
    assert fake.views["Suspected label errors"]["ordering"] == [f"tasks:data.{QUALITY_KEY}"]
    # Nothing changed: nothing is written again.
    assert quality_job(runtime, QualityRequest(7))["written"] == 0


def test_quality_job_with_few_labels_says_so(backend, image_host) -> None:
    _, runtime, _ = backend
    fake = QualityFakeAPI(DIGITS_CONFIG, hosted_digit_tasks(image_host, 6), project=7)
    runtime.ls_api = fake  # type: ignore[assignment]
    train_classifier(runtime, TrainRequest(project=7, mode="full"))
    result = quality_job(runtime, QualityRequest(7))
    assert result["status"] == "not-enough-labels" and fake.data_updates == 0


# --- near-duplicates ------------------------------------------------------------------------
def test_duplicate_pairs_join_fingerprint_and_trusted_embedding_pairs() -> None:
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(4)]
    prints = fingerprints([scenes[0], scenes[0][::-1].copy(), scenes[1], scenes[0]])
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.99, 0.14]])
    # Pixels: 0-3 are the same image. Embeddings: 1-3 point the same way.
    assert duplicate_pairs(prints).tolist() == [[0, 3]]
    assert duplicate_pairs(prints, x, sure_cosine=0.98).tolist() == [[0, 3], [1, 3]]
    with pytest.raises(ValueError, match="4 fingerprints"):
        duplicate_pairs(prints, x[:3])


def test_groups_and_marks_keep_one_and_never_mark_an_annotated_task() -> None:
    groups = groups_from_pairs(6, np.array([[0, 1], [1, 2], [4, 5]]))
    assert groups.tolist() == [0, 0, 0, 3, 4, 4]
    marks = duplicates_to_mark(groups, np.array([False, True, False, False, True, True]))
    # Group {0,1,2} keeps annotated 1; group {4,5}: both annotated, neither is marked.
    assert marks.tolist() == [1, -1, 1, -1, -1, -1]
    none_annotated = duplicates_to_mark(groups, np.zeros(6, dtype=bool))
    assert none_annotated.tolist() == [-1, 0, 0, -1, -1, 4]


def test_ranking_skips_marked_duplicates(backend, image_host) -> None:
    _, runtime, _ = backend
    tasks = hosted_digit_tasks(image_host, 40)
    fake = QualityFakeAPI(DIGITS_CONFIG, tasks[:20], project=7)
    runtime.ls_api = fake  # type: ignore[assignment]
    version = train_classifier(runtime, TrainRequest(project=7, mode="incremental")).version
    unlabeled = [{"id": int(t["id"]), "data": dict(t["data"])} for t in tasks[20:]]
    # Tasks 21 and 22 are marked as near-duplicates of 23.
    for task in unlabeled[:2]:
        task["data"][DUPLICATE_KEY] = 23
    fake.unlabeled = unlabeled
    queued, later = queue_candidates(unlabeled)
    assert [t["id"] for t in later] == [21, 22] and len(queued) == 18
    assert is_marked_duplicate(unlabeled[0]) and not is_marked_duplicate(unlabeled[2])
    outcome = rerank_project(runtime, RerankRequest(project=7, force=True))
    assert outcome["duplicates"] == 2 and not {21, 22} & set(outcome["batch"])
    written = {p["task"]: p["score"] for p in fake.predictions if p["model_version"] == version}
    assert written[21] == written[22] == 1.0
    assert sorted(written, key=lambda t: written[t])[:10] == outcome["batch"]


# --- find similar ---------------------------------------------------------------------------
def test_nearest_is_exact_cosine_search() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    unit = normalise(x)
    rows, sims = nearest(unit, x[5], 4, exclude=5)
    brute = unit @ unit[5]
    brute[5] = -np.inf
    assert rows.tolist() == np.argsort(-brute)[:4].tolist()
    np.testing.assert_allclose(sims, np.sort(brute)[::-1][:4], rtol=1e-5)
    assert nearest(unit[:1], x[0], 3, exclude=0)[0].tolist() == []


def test_similar_endpoint(backend, image_host) -> None:
    client, runtime, _ = backend
    tasks = hosted_digit_tasks(image_host, 30)
    fake = QualityFakeAPI(DIGITS_CONFIG, tasks, project=7)
    runtime.ls_api = fake  # type: ignore[assignment]
    # Before any training: a clear status, not an error.
    early = client.get("/similar/7/1")
    assert early.status_code == 200 and early.get_json()["status"] == "not-enough-embeddings"
    train_classifier(runtime, TrainRequest(project=7, mode="full"))
    quality_job(runtime, QualityRequest(7))
    answer = client.get("/similar/7/1?k=5")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["status"] == "ok" and len(body["similar"]) == 5
    assert 1 not in [s["task"] for s in body["similar"]]
    sims = [s["similarity"] for s in body["similar"]]
    assert sims == sorted(sims, reverse=True)
    # Annotated tasks without a prediction: nothing to keep the neighbours in.
    assert body["neighbors"]["status"] == "no-prediction"
    fake.predictions = [{"task": 1, "model_version": "v", "result": [], "score": 0.5},
                        {"task": 2, "model_version": "v", "result": [], "score": 0.5}]
    body = client.get("/similar/7/1?k=5").get_json()
    assert body["neighbors"] == {"status": "written", "predictions": [1]}
    assert fake.predictions[0]["neighbors"] == [s["task"] for s in body["similar"]]
    assert "neighbors" not in fake.predictions[1]
    for url in ("/similar/7/999", "/similar/8/1"):
        missing = client.get(url)
        assert missing.status_code == 404 and "error" in missing.get_json(), url
    assert client.get("/similar/7/1?k=0").status_code == 400
    # A task added after the index was built.
    fake.unlabeled = [{"id": 500, "data": {"image": tasks[0]["data"]["image"]}}]
    assert client.get("/similar/7/500").get_json()["status"] == "not-indexed"


def test_default_hidden_columns_as_a_tab_made_in_the_ui() -> None:
    """The columns a tab made in the UI hides (Label Studio's ``visibility_defaults``),
    for a tab made through the API, but never the tab's own sort or filter column."""
    from ml_backend.labelstudio.data_manager import default_hidden_columns
    from ml_backend.quality.views import label_errors_view

    def column(id_: str, explore: bool, **extra: Any) -> dict[str, Any]:
        return {"id": id_, "target": "tasks", "visibility_defaults": {
            "explore": explore, "labeling": False}, **extra}

    columns = {"columns": [
        column("id", True), column("inner_id", False), column("predictions_score", False),
        column("file_upload", False), column("total_annotations", True),
        column("data", True), column(QUALITY_KEY, False, parent="data"),  # a data key
        {"id": "agreement", "target": "tasks"}]}  # no defaults: shown
    hidden = default_hidden_columns(columns, label_errors_view())
    expected = ["tasks:inner_id", "tasks:predictions_score", "tasks:file_upload"]
    assert hidden == {"explore": expected, "labeling": expected}  # both, or the UI fails
    # A tab sorted (descending) or filtered on a column hidden by default keeps it.
    view = {"ordering": ["-tasks:predictions_score"], "filters": {"items": [
        {"filter": "filter:tasks:file_upload", "operator": "contains", "value": "x"}]}}
    assert default_hidden_columns(columns, view)["explore"] == ["tasks:inner_id"]
    with pytest.raises(ValueError):
        default_hidden_columns({"detail": "Authentication failed"}, view)


def test_ensure_view_without_the_columns_creates_the_tab_all_shown(caplog) -> None:
    """Reading the columns fails: the tab is still created (every column), with a warning."""
    from types import SimpleNamespace

    from ml_backend.core.errors import LabelStudioUnavailable
    from ml_backend.labelstudio.api import LabelStudioAPI
    from ml_backend.quality.views import LABEL_ERRORS_VIEW, label_errors_view

    created: list[dict[str, Any]] = []

    def create(project: int, data: dict[str, Any]) -> Any:
        created.append(data)
        return SimpleNamespace(id=5)

    def no_columns(*args: Any, **kwargs: Any) -> Any:
        raise LabelStudioUnavailable("HTTP 500")

    api = LabelStudioAPI.__new__(LabelStudioAPI)
    views = SimpleNamespace(list=lambda project: [], create=create)
    api._client = SimpleNamespace(views=views)  # type: ignore[assignment]
    api._raw = no_columns  # type: ignore[method-assign]
    with caplog.at_level("WARNING"):
        assert api.ensure_view(7, LABEL_ERRORS_VIEW, label_errors_view()) == 5
    assert created == [{"title": LABEL_ERRORS_VIEW, **label_errors_view()}]
    assert "every column" in caplog.text
