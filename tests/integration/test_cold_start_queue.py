"""The cold-start queue against the real Label Studio and a real backend process (issue 21):
a fresh classification project, images imported sorted by class, no label yet. The import's
TASKS_CREATED webhook embeds the tasks and ranks them for coverage, so the "Most informative
first" view starts with one task per cluster (many digits) instead of task-id order (one
digit)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from ml_backend.devtools.datasets import write_digit_pngs
from ml_backend.devtools.project_setup import (
    connect_backend,
    create_informative_view,
    create_project,
    upload_images,
)

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 80  # 8 of each digit; one import (Label Studio takes at most 100 files at once)


def _ranking(backend: BackendProcess, project: int) -> dict | None:
    response = requests.get(f"{backend.url}/ranking/{project}?limit=1000", timeout=5)
    return response.json() if response.status_code == 200 else None


@pytest.mark.integration
def test_fresh_project_queue_covers_the_data_before_any_label(label_studio, ls_client,
                                                              tmp_path: Path) -> None:
    # Sorted by class: task-id order shows every zero, then every one, ...
    images = sorted(write_digit_pngs(tmp_path / "digits", N_IMAGES, size=32),
                    key=lambda item: item[1])
    backend = BackendProcess(backend_env(label_studio, tmp_path, FULL_SYNC_INTERVAL_S="0",
                                         RERANK_MIN_INTERVAL_S="0"),
                             tmp_path / "backend.log")
    try:
        backend.wait_ready()
        project = create_project(ls_client, "digits-cold-start",
                                 REPO / "labeling_configs" / "digit_classification.xml")
        # Connected first: Label Studio sends the import's TASKS_CREATED to the backend.
        connect_backend(ls_client, project, backend.url)
        view = create_informative_view(ls_client, project)
        task_ids = upload_images(label_studio.url, label_studio.api_key, project,
                                 [path for path, _ in images], batch_size=N_IMAGES)
        assert len(task_ids) == N_IMAGES
        digit = dict(zip(task_ids, (label for _, label in images), strict=True))

        deadline = time.monotonic() + 90
        ranking = _ranking(backend, project)
        while (ranking is None or ranking["n_unlabeled"] < N_IMAGES) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
            ranking = _ranking(backend, project)
        assert ranking is not None and ranking["n_unlabeled"] == N_IMAGES, backend.log_tail()
        backend.wait_idle(60)
        assert not backend.failed_jobs(), backend.failed_jobs()
        ranking = _ranking(backend, project)
        assert ranking is not None
        version = ranking["version"]
        assert version.endswith("-v0-untrained") and ranking["strategy"] == "coverage"
        assert ls_client.projects.get(id=project).model_version == version

        # Every task carries one empty prediction of the untrained version, scored in the
        # coverage order.
        tasks = {t.id: t for t in ls_client.tasks.list(project=project, fields="all",
                                                        page_size=100)}
        assert set(tasks) == set(task_ids)
        for task in tasks.values():
            predictions = task.predictions or []
            assert [(p.model_version, p.result) for p in predictions] == [(version, [])], \
                (task.id, predictions)

        # The annotators' view lists the tasks in that order.
        listed = [t.id for t in ls_client.tasks.list(project=project, view=view,
                                                      page_size=100)]
        assert listed == [item["task"] for item in ranking["top"]]
        cluster = {item["task"]: item["cluster"] for item in ranking["top"]}
        n_clusters = len(set(cluster.values()))
        assert n_clusters >= 10
        assert len({cluster[t] for t in listed[:n_clusters]}) == n_clusters, \
            "one task of every cluster before any cluster repeats"
        # Task-id order would start with one digit (8 zeros, then the ones); the coverage
        # order spans the digits.
        assert len({digit[t] for t in sorted(task_ids)[:N_IMAGES // 10]}) == 1
        assert len({digit[t] for t in sorted(task_ids)[:10]}) == 2
        first = [digit[t] for t in listed[:10]]
        assert len(set(first)) >= 6, first
        assert len({digit[t] for t in listed[:n_clusters]}) >= 8, \
            [digit[t] for t in listed[:n_clusters]]
    finally:
        backend.stop()
