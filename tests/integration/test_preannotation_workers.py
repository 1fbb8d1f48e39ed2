"""Whole-project pre-annotation on Redis with two RQ worker processes, against the real Label
Studio: 500 tasks, one worker killed (SIGKILL) in the middle of a chunk, and in the end every
task has exactly one prediction of the current model version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ml_backend.core.settings import Settings
from ml_backend.devtools.project_setup import create_project, upload_images
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.models.classifier.training import train_classifier
from ml_backend.runtime import Runtime

from .backend_process import backend_env

REPO = Path(__file__).resolve().parents[2]
TASKS = 500


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker",
                                 "--lanes", "predict"], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _current_chunk(connection: object, pid: int) -> str | None:
    from rq import Worker
    from rq.job import Job

    for worker in Worker.all(connection=connection):  # type: ignore[arg-type]
        if worker.pid == pid:
            job_id = worker.get_current_job_id()
            if job_id:
                job = Job.fetch(job_id, connection=connection)  # type: ignore[arg-type]
                if job.args and job.args[0] == "preannotate_chunk":
                    return job_id
    return None


@pytest.mark.integration
def test_500_tasks_two_workers_one_killed(label_studio, ls_client, redis_server,
                                          tmp_path: Path) -> None:
    from redis import Redis

    from ml_backend.jobs.kinds import JobName, job_key
    from ml_backend.jobs.queues import RQQueue
    from ml_backend.jobs.registry import job_registry

    from conftest import digit_images
    from fakes import FakeLabelStudioAPI, choice_task

    config = REPO / "labeling_configs" / "digit_classification.xml"
    project = create_project(ls_client, "preannotate-500", config)
    pngs, labels = digit_images(TASKS)
    paths = []
    for i, png in enumerate(pngs):
        paths.append(tmp_path / "images" / f"d{i:03d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(png)
    task_ids = upload_images(label_studio.url, label_studio.api_key, project, paths)
    assert len(task_ids) == TASKS

    env = backend_env(label_studio, tmp_path, REDIS_URL=redis_server,
                      PREANNOTATE_CHUNK_SIZE="25", PREANNOTATE_CHUNK_TIMEOUT_S="20",
                      WORKER_MAINTENANCE_S="5", UPDATE_PROJECT_MODEL_VERSION="false")
    # A classifier trained on 40 of the tasks (labels given here, images read from Label
    # Studio), so that chunks do real work: fetch, embed, predict, write.
    runtime = Runtime(Settings.from_env(env))
    tasks = ls_client.tasks.list(project=project, page_size=100)
    by_id = {t.id: t for t in tasks}
    labeled = [choice_task(task_id, by_id[task_id].data["image"], "digit", [str(label)])
               for task_id, label in zip(task_ids[:40], labels[:40], strict=True)]
    label_config = LabelStudioAPI(label_studio.url, label_studio.api_key).label_config(project)
    runtime.ls_api = FakeLabelStudioAPI(label_config, labeled)  # type: ignore[assignment]
    assert train_classifier(runtime, TrainRequest(project=project, mode="full")).status == "trained"
    version = runtime.model_version(project)

    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [_start_worker(env, log) for log in logs]
    connection = Redis.from_url(redis_server)
    try:
        RQQueue(connection, job_registry()).submit(
            JobName.PREANNOTATE, {"project": project}, key=job_key(JobName.PREANNOTATE, project))
        deadline = time.monotonic() + 180
        killed = None
        while killed is None:
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            killed = _current_chunk(connection, workers[0].pid)
            time.sleep(0.05)
        os.killpg(workers[0].pid, signal.SIGKILL)  # mid-chunk: its job is abandoned
        workers[0].wait(timeout=10)

        api = LabelStudioAPI(label_studio.url, label_studio.api_key)
        deadline = time.monotonic() + 420
        while api.prediction_versions(project).get(version, 0) < TASKS:
            assert workers[1].poll() is None, logs[1].read_text()[-3000:]
            assert time.monotonic() < deadline, (api.prediction_versions(project),
                                                 logs[1].read_text()[-3000:])
            time.sleep(2)
        time.sleep(3)  # anything still being written would show up now
        per_task: Counter[int] = Counter()
        for page in api.task_pages(project):
            for task in page:
                per_task[task.id] += task.prediction_versions.count(version)
        assert len(per_task) == TASKS and set(per_task.values()) == {1}, \
            Counter(per_task.values())
        from rq.job import Job

        retried = Job.fetch(killed, connection=connection)
        assert retried.get_status().value == "finished"  # the abandoned chunk ran again
        progress = runtime.store.read_state(project, "preannotate")
        assert progress is not None and progress["status"] == "finished"
        assert progress["done"] == TASKS

        # The command line: a second run finds nothing left to do; the job list shows the
        # chunks, the re-run one included.
        cli = [sys.executable, "-m", "ml_backend.cli"]
        rerun = subprocess.run([*cli, "preannotate", "--project", str(project), "--wait"],
                               env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        summary = json.loads(rerun.stdout)
        assert (summary["already"], summary["chunks"], summary["status"]) == \
            (TASKS, 0, "finished")
        listed = subprocess.run([*cli, "jobs", "--limit", "200"], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=60)
        jobs = [json.loads(line) for line in listed.stdout.splitlines()]
        killed_job = next(j for j in jobs if j["id"] == killed)
        assert (killed_job["name"], killed_job["status"], killed_job["error"]) == \
            ("preannotate_chunk", "finished", None)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:  # a slow warm shutdown is not the test's subject
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(timeout=10)
        connection.close()
