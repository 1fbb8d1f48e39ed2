"""The annotators' queue against the real Label Studio and a real backend process: after a
retrain, every unlabeled task carries the new model_version and its score, older predictions
are gone, and the "Most informative first" view lists the tasks in the selector's order."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from ml_backend.devtools.datasets import write_digit_pngs
from ml_backend.devtools.project_setup import (
    connect_backend,
    create_informative_view,
    create_project,
    retrieve_predictions,
    upload_images,
)

from .backend_process import BackendProcess

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 40
N_LATER = 5  # imported after the queue exists
BATCH = 10


def _annotate(ls_client, task_id: int, label: int) -> None:
    ls_client.annotations.create(id=task_id, result=[{
        "from_name": "digit", "to_name": "image", "type": "choices",
        "value": {"choices": [str(label)]}}])


def _check_queue(ls_client, backend: BackendProcess, project: int, view: int,
                 unlabeled: set[int], ls_url: str, api_key: str) -> dict:
    """Everything the annotator's queue must satisfy after a re-rank; returns the ranking."""
    backend.wait_idle(300)
    assert not backend.failed_jobs(), backend.failed_jobs()
    ranking = requests.get(f"{backend.url}/ranking/{project}?limit=1000", timeout=5).json()
    version = ranking["version"]
    latest = requests.get(f"{backend.url}/versions?project={project}",
                          timeout=5).json()["versions"][0]
    assert version == latest, "the queue was ranked by the newest version"
    assert ls_client.projects.get(id=project).model_version == version

    tasks = {t.id: t for t in ls_client.tasks.list(project=project, fields="all",
                                                    page_size=100)}
    for task_id in unlabeled:
        predictions = tasks[task_id].predictions or []
        assert [p.model_version for p in predictions] == [version], (task_id, predictions)
        region = predictions[0].result[0]
        assert set(region["meta"]["uncertainty"]) == {"least_confidence", "margin", "entropy"}
    written = {t: tasks[t].predictions[0].score for t in unlabeled}
    kept = {item["task"]: item["score"] for item in ranking["top"]}
    assert written == pytest.approx(kept, abs=1e-6), "scores in Label Studio = the ranking"

    # The view: unlabeled tasks only, in the selector's order (batch first).
    listed = [t.id for t in ls_client.tasks.list(project=project, view=view, page_size=100)]
    assert set(listed) == unlabeled
    assert listed[:BATCH] == ranking["batch"]
    assert listed == [item["task"] for item in ranking["top"]]
    # Label Studio's own labeling stream (uncertainty sampling) starts at the same task.
    next_task = requests.get(f"{ls_url}/api/projects/{project}/next", timeout=10,
                             headers={"Authorization": f"Token {api_key}"}).json()
    assert next_task["id"] == ranking["batch"][0], next_task.get("id")
    return ranking


@pytest.mark.integration
def test_queue_follows_the_selector_after_each_retrain(label_studio, ls_client,
                                                       tmp_path: Path) -> None:
    images = write_digit_pngs(tmp_path / "digits", N_IMAGES + N_LATER)
    later = images[N_IMAGES:]
    images = images[:N_IMAGES]
    backend = BackendProcess({
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key,
        "MODEL_DIR": str(tmp_path / "models"), "CACHE_DIR": str(tmp_path / "cache"),
        "CLASSIFIER_IMAGE_SIZE": "32", "FULL_SYNC_INTERVAL_S": "0", "REDIS_URL": "",
        # Diversity-aware batches with a random hedge: the order is not the score order,
        # so the written scores must encode it.
        "RANKING_STRATEGY": "ranked_batch", "RANKING_BATCH_SIZE": str(BATCH),
        "RANKING_RANDOM_SHARE": "0.2",
    }, tmp_path / "backend.log")
    try:
        backend.wait_ready()
        project = create_project(ls_client, "digits-queue",
                                 REPO / "labeling_configs" / "digit_classification.xml")
        task_ids = upload_images(label_studio.url, label_studio.api_key, project,
                                 [path for path, _ in images])
        connect_backend(ls_client, project, backend.url)
        view = create_informative_view(ls_client, project)
        retrieve_predictions(ls_client, project, task_ids)  # untrained: v0 for every task
        labels = dict(zip(task_ids, (label for _, label in images), strict=True))

        for task_id in task_ids[:15]:
            _annotate(ls_client, task_id, labels[task_id])
        unlabeled = set(task_ids[15:])
        first = _check_queue(ls_client, backend, project, view, unlabeled,
                             label_studio.url, label_studio.api_key)
        versions = requests.get(f"{label_studio.url}/api/projects/{project}/model-versions/",
                                headers={"Authorization": f"Token {label_studio.api_key}"},
                                timeout=10).json()
        assert set(versions) == {first["version"]}, "older versions' predictions deleted"

        # The annotator takes the top of the queue; the model retrains and re-ranks.
        for task_id in first["batch"][:3]:
            _annotate(ls_client, task_id, labels[task_id])
        unlabeled -= set(first["batch"][:3])
        second = _check_queue(ls_client, backend, project, view, unlabeled,
                             label_studio.url, label_studio.api_key)
        assert second["version"] != first["version"]
        assert not set(second["batch"]) & set(first["batch"][:3])

        # New tasks join the queue without a retrain (TASKS_CREATED → embed → re-rank).
        new_ids = upload_images(label_studio.url, label_studio.api_key, project,
                                [path for path, _ in later])
        unlabeled |= set(new_ids)
        third = _check_queue(ls_client, backend, project, view, unlabeled,
                             label_studio.url, label_studio.api_key)
        assert third["version"] == second["version"] and third["n_unlabeled"] == len(unlabeled)

        # Skipping the head of the queue sends that task to the end of it.
        head = third["batch"][0]
        ls_client.annotations.create(id=head, result=[], was_cancelled=True)
        backend.wait_idle(300)
        fourth = requests.get(f"{backend.url}/ranking/{project}?limit=1000", timeout=5).json()
        assert fourth["skipped"] == [head] and head not in fourth["batch"]
        listed = [t.id for t in ls_client.tasks.list(project=project, view=view, page_size=100)]
        assert listed[-1] == head and listed[:BATCH] == fourth["batch"]
    finally:
        backend.stop()
