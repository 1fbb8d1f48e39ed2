"""The cold-start queue (issue 21): before the first head, or while it has seen fewer labels
than the project has classes, re-ranking orders the unlabeled tasks for coverage (k-means
on the embeddings, most typical member of each cluster first) and writes that order to Label
Studio like any ranking; with enough labels it goes back to the uncertainty order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ml_backend.jobs.kinds import RerankRequest, TrainRequest
from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.learning.cold_start import cold_start_clusters
from ml_backend.models.classifier.training import train_classifier
from ml_backend.pipeline.ranking import COVERAGE, needs_coverage, rerank_project

from conftest import DIGITS_CONFIG, digit_images
from fakes import FakeLabelStudioAPI, choice_task

PROJECT = 5
N_TASKS = 60

BOXES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="cat"/></RectangleLabels>
</View>"""


@pytest.fixture
def cold_project(backend, image_host) -> tuple[Any, FakeLabelStudioAPI, dict[int, int]]:
    """A digits project with no label and no version; its tasks sorted by class (task-id
    order shows one digit at a time), as an upload of a class-sorted folder gives."""
    _, runtime, _ = backend
    pngs, labels = digit_images(N_TASKS)
    by_class = np.argsort(labels, kind="stable")
    tasks, truth = [], {}
    for task_id, i in enumerate(by_class, start=1):
        path = f"/data/upload/{PROJECT}/{i}.png"
        image_host.files[path] = pngs[i]
        tasks.append({"id": task_id, "data": {"image": path}})
        truth[task_id] = int(labels[i])
    fake = FakeLabelStudioAPI(DIGITS_CONFIG, [])
    fake.unlabeled = tasks
    runtime.ls_api = fake  # type: ignore[assignment]
    return runtime, fake, truth


def _label(fake: FakeLabelStudioAPI, truth: dict[int, int], task_ids: list[int]) -> None:
    """Annotate ``task_ids`` with their true digit (they leave the unlabeled pool)."""
    chosen = set(task_ids)
    by_id = {t["id"]: t for t in fake.unlabeled}
    fake.tasks += [choice_task(t, by_id[t]["data"]["image"], "digit", [str(truth[t])])
                   for t in task_ids]
    fake.unlabeled = [t for t in fake.unlabeled if t["id"] not in chosen]


def _written(fake: FakeLabelStudioAPI, version: str) -> list[dict[str, Any]]:
    """The predictions of ``version`` in Data Manager's order (score ascending)."""
    return sorted((p for p in fake.predictions if p["model_version"] == version),
                  key=lambda p: p["score"])


def _assert_covering_top(state: dict[str, Any], truth: dict[int, int]) -> int:
    """The ranking state's first entries come one per cluster; returns the cluster count."""
    clusters = [item["cluster"] for item in state["top"]]
    n_clusters = len(set(clusters))
    assert n_clusters > 1
    assert len(set(clusters[:n_clusters])) == n_clusters, \
        "every cluster comes once before one repeats"
    first = [item["task"] for item in state["top"][:10]]
    # Task-id order shows the zeros, then the ones; coverage spans the digits.
    assert len({truth[t] for t in first}) >= 5, [truth[t] for t in first]
    assert len({truth[t] for t in sorted(truth)[:10]}) <= 2
    return n_clusters


def test_untrained_project_is_ranked_for_coverage(cold_project) -> None:
    runtime, fake, truth = cold_project
    assert runtime.store.latest(PROJECT) is None
    outcome = rerank_project(runtime, RerankRequest(PROJECT, force=True))
    version = runtime.model_version(PROJECT)
    assert version.endswith("-v0-untrained")
    assert outcome["status"] == "ranked" and outcome["strategy"] == COVERAGE
    assert outcome["version"] == version and outcome["scored"] == N_TASKS
    assert fake.announced[-1] == (PROJECT, version)

    written = _written(fake, version)
    assert sorted(p["task"] for p in written) == sorted(truth), "one prediction per task"
    assert all(p["result"] == [] for p in written), "no head: nothing to pre-label"
    assert all(0.0 <= p["score"] < 1.0 for p in written)
    assert len({p["score"] for p in written}) == N_TASKS, "a strict order, no ties"

    state = runtime.store.read_state(PROJECT, "ranking")
    assert state["strategy"] == COVERAGE and state["version"] == version
    # Data Manager's order (scores ascending) is the coverage order kept in the state.
    assert [p["task"] for p in written] == [item["task"] for item in state["top"]]
    assert state["batch"] == [p["task"] for p in written[:len(state["batch"])]]
    n_clusters = _assert_covering_top(state, truth)
    assert n_clusters == cold_start_clusters(N_TASKS, 10, runtime.settings.ranking_batch_size)


def test_coverage_order_is_deterministic_for_a_version(cold_project) -> None:
    runtime, fake, _ = cold_project
    rerank_project(runtime, RerankRequest(PROJECT, force=True))
    first = [item["task"] for item in runtime.store.read_state(PROJECT, "ranking")["top"]]
    again = rerank_project(runtime, RerankRequest(PROJECT, force=True))
    assert again["status"] == "ranked"
    assert [item["task"] for item in runtime.store.read_state(PROJECT, "ranking")["top"]] \
        == first
    # A forced re-rank of the same version replaces its predictions.
    assert len(_written(fake, runtime.model_version(PROJECT))) == N_TASKS


def test_coverage_until_the_labels_reach_the_classes(cold_project) -> None:
    runtime, fake, truth = cold_project
    rerank_project(runtime, RerankRequest(PROJECT, force=True))
    untrained = runtime.model_version(PROJECT)
    top = [item["task"] for item in runtime.store.read_state(PROJECT, "ranking")["top"]]

    # The annotator labels the head of the queue: 4 labels, 10 classes.
    _label(fake, truth, top[:4])
    first = train_classifier(runtime, TrainRequest(project=PROJECT, mode="incremental"))
    assert first.status == "trained"
    assert needs_coverage(runtime, PROJECT, parse_label_config(DIGITS_CONFIG))
    outcome = rerank_project(runtime, RerankRequest(PROJECT, force=True))
    assert outcome["strategy"] == COVERAGE and outcome["version"] == first.version
    assert outcome["scored"] == N_TASKS - 4
    assert outcome["deleted_versions"] == [untrained]
    written = _written(fake, first.version)
    assert len(written) == N_TASKS - 4 and {p["model_version"] for p in fake.predictions} \
        == {first.version}
    # The head's guesses are shown, but the queue is ordered for coverage.
    assert all(p["result"] and p["result"][0]["type"] == "choices" for p in written)
    state = runtime.store.read_state(PROJECT, "ranking")
    assert state["strategy"] == COVERAGE
    assert [p["task"] for p in written] == [item["task"] for item in state["top"]]
    clusters = [item["cluster"] for item in state["top"]]
    n_clusters = len(set(clusters))
    assert len(set(clusters[:n_clusters])) == n_clusters

    # As many labels as classes: back to the model's uncertainty.
    _label(fake, truth, [item["task"] for item in state["top"][:6]])
    second = train_classifier(runtime, TrainRequest(project=PROJECT, mode="incremental"))
    assert second.status == "trained" and second.version != first.version
    assert not needs_coverage(runtime, PROJECT, parse_label_config(DIGITS_CONFIG))
    outcome = rerank_project(runtime, RerankRequest(PROJECT, force=True))
    strategy = runtime.settings.ranking_strategy.value
    assert outcome["strategy"] == strategy and outcome["scored"] == N_TASKS - 10
    state = runtime.store.read_state(PROJECT, "ranking")
    assert state["strategy"] == strategy
    assert all("cluster" not in item and strategy in item["uncertainty"]
               for item in state["top"])


def test_new_tasks_of_an_untrained_project_are_queued_for_coverage(backend, cold_project
                                                                   ) -> None:
    """Label Studio's TASKS_CREATED webhook: the embed job chains a forced re-rank even
    before the first model."""
    client, _, jobs = backend
    runtime, fake, truth = cold_project
    response = client.post("/webhook", json={
        "action": "TASKS_CREATED",
        "project": {"id": PROJECT, "label_config": DIGITS_CONFIG},
        "tasks": fake.unlabeled})
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    assert jobs.wait_idle(120)
    names = [(j["name"], j["status"]) for j in jobs.recent()]
    assert ("embed", "finished") in names and ("rerank", "finished") in names, names
    assert not [j for j in jobs.recent() if j["status"] == "failed"], jobs.recent()
    state = runtime.store.read_state(PROJECT, "ranking")
    assert state["strategy"] == COVERAGE and state["n_unlabeled"] == N_TASKS
    assert len(_written(fake, runtime.model_version(PROJECT))) == N_TASKS
    _assert_covering_top(state, truth)
    ranking = client.get(f"/ranking/{PROJECT}?limit=5").get_json()
    assert ranking["strategy"] == COVERAGE and all("cluster" in t for t in ranking["top"])


def test_only_classification_projects_start_with_coverage(backend) -> None:
    _, runtime, _ = backend
    assert needs_coverage(runtime, 11, parse_label_config(DIGITS_CONFIG))
    assert not needs_coverage(runtime, 11, parse_label_config(BOXES_CONFIG))
    runtime.ls_api = FakeLabelStudioAPI(BOXES_CONFIG, [])  # type: ignore[assignment]
    assert rerank_project(runtime, RerankRequest(11, force=True))["status"] == "no-model"
