"""Both job queue implementations: the in-process worker and Redis + RQ (real redis-server)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from ml_backend.jobs.kinds import JobRequest, TrainRequest
from ml_backend.jobs.queues import InProcessQueue, JobKind, RQQueue, bind_worker, run_rq_job
from ml_backend.jobs.registry import job_registry
from ml_backend.models.classifier.training import merge_train_requests
from ml_backend.runtime import Runtime

from conftest import DIGITS_CONFIG, digit_images, wait_until
from fakes import FakeLabelStudioAPI, choice_task
from redis_fixture import redis_server  # noqa: F401


@dataclass(frozen=True)
class Step(JobRequest):
    """A test job's request."""

    n: int = 0


def test_in_process_runs_records_and_survives_failures(make_settings) -> None:
    gate = threading.Event()
    seen: list[TrainRequest] = []

    def slow(runtime: Runtime, request: TrainRequest) -> Any:
        gate.wait(10)
        seen.append(request)
        return {"ok": request.mode}

    def boom(runtime: Runtime, request: Step) -> Any:
        raise ValueError("bad payload")

    queue = InProcessQueue(Runtime(make_settings()), registry={
        "slow": JobKind(slow, TrainRequest, merge_train_requests), "boom": JobKind(boom, Step)})
    try:
        first = queue.submit("slow", TrainRequest(1, "incremental"), key="p1")
        # While the first runs (blocked), two more for the key coalesce into one queued job.
        wait_until(lambda: queue.recent()[0]["status"] == "running", "the first job to run")
        second = queue.submit("slow", TrainRequest(1, "incremental", task={"id": 5}), key="p1")
        third = queue.submit("slow", {"project": 1, "mode": "full"}, key="p1")  # as a dict too
        assert second == third != first
        failing = queue.submit("boom", Step(), key=None)
        gate.set()
        assert queue.wait_idle(30)
        records = {r["id"]: r for r in queue.recent()}
        assert records[first]["status"] == "finished"
        assert records[failing]["status"] == "failed"
        assert "ValueError: bad payload" in records[failing]["error"]
        # The coalesced job became a full re-read (no single-event body) and ran once.
        assert len(seen) == 2 and seen[1].full and seen[1].task is None
        with pytest.raises(ValueError, match="unknown job"):
            queue.submit("nope", Step())
        # A request of the wrong shape is refused at once, saying what is wrong.
        with pytest.raises(ValueError, match="unknown fields"):
            queue.submit("slow", {"project": 1, "n": 3})
        with pytest.raises(ValueError, match="project must be a non-negative integer"):
            queue.submit("slow", {"project": "not-a-number"})
        with pytest.raises(TypeError, match="expected a TrainRequest"):
            queue.submit("slow", Step())
    finally:
        queue.close()


def test_in_process_lanes_and_chained_jobs(make_settings) -> None:
    gate = threading.Event()
    order: list[str] = []

    def slow_rank(runtime: Runtime, request: Step) -> Any:
        gate.wait(10)
        order.append(f"rank{request.n}")

    def train(runtime: Runtime, request: Step) -> Any:
        order.append(f"train{request.n}")
        return {"next_jobs": [{"name": "rank", "payload": {"n": request.n}, "key": "r"}]}

    queue = InProcessQueue(Runtime(make_settings()), registry={
        "train": JobKind(train, Step), "rank": JobKind(slow_rank, Step, lane="ranking")})
    try:
        queue.submit("train", Step(1))
        wait_until(lambda: any(r["name"] == "rank" and r["status"] == "running"
                               for r in queue.recent()), "the chained rank job to run")
        # The chained rank job blocks its own lane only: training goes on meanwhile.
        queue.submit("train", Step(2))
        queue.submit("train", Step(3))
        wait_until(lambda: len(order) >= 3, "three training jobs to finish")
        assert order == ["train1", "train2", "train3"]
        gate.set()
        assert queue.wait_idle(30)
        # rank1 ran; the ones chained while it ran coalesced into one with the newest payload.
        assert order[3:] == ["rank1", "rank3"]
    finally:
        queue.close()


def test_rq_queue_trains_with_a_real_redis_and_worker(redis_server, make_settings,  # noqa: F811
                                                      image_host) -> None:
    from rq import SimpleWorker

    settings = make_settings(label_studio_url=image_host.url, redis_url=redis_server)
    pngs, labels = digit_images(24)
    tasks = []
    for i, (png, label) in enumerate(zip(pngs, labels, strict=True)):
        image_host.files[f"/data/upload/2/{i}.png"] = png
        tasks.append(choice_task(i + 1, f"/data/upload/2/{i}.png", "digit", [str(label)]))
    runtime = Runtime(settings)
    runtime.ls_api = FakeLabelStudioAPI(DIGITS_CONFIG, tasks)  # type: ignore[assignment]

    queue = RQQueue.from_url(redis_server, job_registry())
    first = queue.submit("train", {"project": 2, "mode": "incremental"}, key="train:2")
    duplicate = queue.submit("train", {"project": 2, "mode": "full"}, key="train:2")
    assert duplicate == first, "a queued job for the key absorbs the second request"
    with pytest.raises(ValueError, match="project must be"):
        queue.submit("train", {"project": "not-a-number"})
    # A payload that reaches Redis by another way (an older version's job) fails in the worker.
    bad = queue.queue.enqueue(run_rq_job, "train", {"project": "not-a-number"}, None).id
    assert queue.queue.count == 2

    bind_worker(runtime, job_registry())
    SimpleWorker(list(queue.queues.values()), connection=queue.redis).work(burst=True)

    statuses = {r["id"]: r for r in queue.recent()}
    assert statuses[first]["status"] == "finished"
    assert statuses[bad]["status"] == "failed" and "ValueError" in statuses[bad]["error"]
    version = runtime.store.latest(2)
    assert version is not None and version.manifest["mode"] == "full", \
        "the coalesced full request was honoured"
    # The new version chained a re-ranking job, which a worker ran and which announced it.
    reranks = [r for r in queue.recent() if r["name"] == "rerank"]
    assert [r["status"] for r in reranks] == ["finished"], reranks
    assert runtime.ls_api.announced == [(2, version.name)]
    assert queue.wait_idle(5)
    queue.close()


def test_wait_until_gives_up_with_what_it_waited_for() -> None:
    wait_until(lambda: True, "nothing")
    with pytest.raises(pytest.fail.Exception, match=r"waited 0.05 s for the moon, in vain"):
        wait_until(lambda: False, "the moon", timeout_s=0.05)
