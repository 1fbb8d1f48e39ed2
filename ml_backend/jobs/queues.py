"""Background jobs behind one interface: an in-process worker (embedded default) or Redis + RQ.

A job kind (:class:`JobKind`) is a function ``(runtime, request) -> JSON-able result`` and the
type of its request (a :class:`ml_backend.jobs.kinds.JobRequest` dataclass). A submission is
checked against that type at once (a bad one is a ValueError with the reason), travels as a
plain dict, and is rebuilt as the typed request when the job runs. Submitting with a ``key``
coalesces: while a job with that key waits in the queue, further submissions with the same key
are merged into it (the queued job will read the newest data anyway, because training re-reads
labels when it starts). A job chains others by listing them under ``next_jobs`` in its result
(training does so to re-rank after a new version); both queues submit those, with their keys,
before the job counts as done. On Redis, a request's ``timeout_s`` (default an hour) and
``retries`` (how often RQ runs it again after a failure, a timeout or its worker's death)
become the job's limits.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ml_backend.jobs.compute_threads import on_short_lived_thread
from ml_backend.jobs.kinds import JobRequest

if TYPE_CHECKING:
    from redis import Redis

    from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)
JobFunction = Callable[["Runtime", Any], Any]  # (runtime, request of the kind's type)
RequestMerge = Callable[[Any, Any], Any]  # (queued request, new request) -> merged
RQ_RECORD_ID = "rq"  # the record of a job an RQ worker runs (RQ keeps the real id)


def keep_newest(queued: JobRequest, new: JobRequest) -> JobRequest:
    return new


@dataclass(frozen=True)
class JobKind:
    """A job function, the type of request it takes, how two coalesced requests combine, and
    the in-process lane (worker thread) it runs on."""

    run: JobFunction
    request: type[JobRequest]
    merge: RequestMerge = keep_newest
    lane: str = "models"

    def parse(self, payload: JobRequest | Mapping[str, Any]) -> JobRequest:
        """``payload`` as this kind's request (a ValueError or TypeError says what is wrong)."""
        if isinstance(payload, self.request):
            return payload
        if isinstance(payload, JobRequest):
            raise TypeError(f"expected a {self.request.__name__}, got {type(payload).__name__}")
        return self.request.from_payload(payload)

    def merged(self, queued: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
        """Two coalesced payloads as one (transported as dicts, merged as requests)."""
        return self.merge(self.parse(queued), self.parse(new)).as_payload()


# Job kinds by name (see ml_backend.jobs.registry for the product's): passed to the queues.
Registry = Mapping[str, JobKind]


@dataclass(frozen=True)
class NextJob:
    """A job another job asks for when it ends (``next_jobs`` in its result)."""

    name: str
    payload: dict[str, Any]
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_jobs(result: Any) -> list[NextJob]:
    if not isinstance(result, dict):
        return []
    return [NextJob(item["name"], item["payload"], item.get("key"))
            for item in result.get("next_jobs") or []]


@dataclass
class JobRecord:
    id: str
    name: str
    key: str | None
    payload: dict[str, Any]
    status: str = "queued"  # queued | running | finished | failed
    enqueued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    result: Any = None
    error: str | None = None
    progress: dict[str, Any] | None = None  # what report_progress last said

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("payload")
        return out


# The job record of the job running on this thread (set on the job's own short-lived
# thread), for report_progress.
_running = threading.local()


def report_progress(done: int, total: int, stage: str = "") -> None:
    """Called by a long job as it goes: ``/jobs`` shows ``progress`` (``done`` of ``total``
    in ``stage``) while it runs. Outside a job it does nothing."""
    progress = {"done": int(done), "total": int(total), "stage": stage}
    record: JobRecord | None = getattr(_running, "record", None)
    if record is None:
        return
    record.progress = progress
    if record.id == RQ_RECORD_ID:  # an RQ job: its meta is what `recent` reads back
        from rq import get_current_job

        job = get_current_job()
        if job is not None:
            job.meta["progress"] = progress
            job.save_meta()


def _run_as(record: JobRecord, run: Callable[[], Any]) -> Any:
    _running.record = record
    try:
        return run()
    finally:
        _running.record = None


def execute(runtime: Runtime, record: JobRecord, registry: Registry) -> JobRecord:
    """Run one job; the single place where any failure is caught, logged with its
    traceback and recorded on the job."""
    record.status, record.started_at = "running", time.time()
    try:
        # On a thread of its own, which ends with the job: see compute_threads.
        kind = registry[record.name]
        request = kind.parse(record.payload)
        record.result = on_short_lived_thread(
            f"job-{record.name}", lambda: _run_as(record, lambda: kind.run(runtime, request)))
        record.status = "finished"
    except Exception as exc:
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}"
        log.error("job %s (%s) failed:\n%s", record.id, record.name, traceback.format_exc())
    record.ended_at = time.time()
    _record_outcome(runtime, record)
    return record


def _record_outcome(runtime: Runtime, record: JobRecord) -> None:
    """A project's job failures in a row go to its store, for /health: a fine-tune that
    fails on every round must be visible without reading logs."""
    # Requests are checked when submitted (a project is a non-negative int); a payload that
    # failed that check names no project to charge.
    project = record.payload.get("project")
    if isinstance(project, bool) or not isinstance(project, int) or project < 0:
        return
    try:
        runtime.store.record_job_outcome(project, record.name, record.error)
    except OSError as exc:  # bookkeeping only: never turns a job's outcome around
        log.warning("job %s: could not record its outcome: %s", record.id, exc)


def _payload(registry: Registry, name: str, request: JobRequest | Mapping[str, Any]
             ) -> dict[str, Any]:
    """What a queue stores for a submission: the request checked against the kind's type
    (a bad one is refused here, at once, with the reason), as a JSON-able dict."""
    if name not in registry:
        raise ValueError(f"unknown job {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name].parse(request).as_payload()


class JobQueue(Protocol):
    def submit(self, name: str, request: JobRequest | Mapping[str, Any],
               key: str | None = None) -> str: ...
    def recent(self) -> list[dict[str, Any]]: ...
    def wait_idle(self, timeout_s: float) -> bool: ...
    def close(self) -> None: ...


class InProcessQueue:
    """Worker threads in this process, one per lane (jobs of one lane run in order). Nothing
    to install; jobs die with the process, which loses nothing because training data is
    re-read from Label Studio."""

    def __init__(self, runtime: Runtime, registry: Registry,
                 on_done: Callable[[JobRecord], None] | None = None) -> None:
        self.runtime = runtime
        self.registry = registry
        self.on_done = on_done
        self._pending: dict[str, JobRecord] = {}
        self._history: deque[JobRecord] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._lanes: dict[str, tuple[queue.Queue[JobRecord | None], threading.Thread]] = {}
        for lane in sorted({kind.lane for kind in self.registry.values()}):
            lane_queue: queue.Queue[JobRecord | None] = queue.Queue()
            thread = threading.Thread(target=self._work, args=(lane_queue,),
                                      name=f"ml-backend-jobs-{lane}", daemon=True)
            self._lanes[lane] = (lane_queue, thread)
            thread.start()

    def submit(self, name: str, request: JobRequest | Mapping[str, Any],
               key: str | None = None) -> str:
        payload = _payload(self.registry, name, request)
        with self._lock:
            if key is not None and key in self._pending:
                queued = self._pending[key]
                queued.payload = self.registry[name].merged(queued.payload, payload)
                return queued.id
            record = JobRecord(id=uuid.uuid4().hex[:12], name=name, key=key, payload=payload)
            if key is not None:
                self._pending[key] = record
            self._history.append(record)
            self._active += 1
        self._lanes[self.registry[name].lane][0].put(record)
        return record.id

    def _work(self, lane_queue: queue.Queue[JobRecord | None]) -> None:
        while True:
            record = lane_queue.get()
            if record is None:
                return
            with self._lock:
                if record.key is not None:
                    self._pending.pop(record.key, None)
            execute(self.runtime, record, self.registry)
            for job in next_jobs(record.result):
                self.submit(job.name, job.payload, job.key)
            if self.on_done is not None:
                try:
                    self.on_done(record)
                except Exception:  # a metrics hook must never stop the worker thread
                    log.exception("job %s: on_done hook failed", record.id)
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.summary() for r in reversed(self._history)]

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0 or not self._idle.wait(left):
                    return False
            return True

    def close(self) -> None:
        for lane_queue, _ in self._lanes.values():
            lane_queue.put(None)
        for _, thread in self._lanes.values():
            thread.join(timeout=5)


_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


@contextmanager
def exclusive(key: str, ttl_s: float) -> Iterator[None]:
    """Run the body in one job at a time per ``key``: a Redis lock when this is an RQ job
    (workers on several machines; it expires after ``ttl_s`` if its holder dies), else a
    lock in this process. Raises TimeoutError after waiting ``ttl_s``."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        lock = job.connection.lock(f"ml-backend:lock:{key}", timeout=ttl_s,
                                   blocking_timeout=ttl_s)
        if not lock.acquire():
            raise TimeoutError(f"{key} stayed locked for {ttl_s:.0f} s")
        try:
            yield
        finally:
            with suppress(Exception):  # expired meanwhile: nothing to release
                lock.release()
        return
    with _local_locks_guard:
        local = _local_locks.setdefault(key, threading.Lock())
    if not local.acquire(timeout=ttl_s):
        raise TimeoutError(f"{key} stayed locked for {ttl_s:.0f} s")
    try:
        yield
    finally:
        local.release()


# --- Redis + RQ ---------------------------------------------------------------------------
QUEUE_NAME = "ml-backend"


def rq_queue_name(lane: str) -> str:
    """One RQ queue per lane, so a worker can be dedicated to re-ranking (whose throttle
    sleeps) while others train: ``ml-backend worker --lanes ranking``."""
    return QUEUE_NAME if lane == "models" else f"{QUEUE_NAME}-{lane}"


def lanes(registry: Registry) -> list[str]:
    return sorted({kind.lane for kind in registry.values()})


# What RQ workers run jobs against: RQ calls run_rq_job by its dotted name, so the worker
# entry point binds its runtime and registry here once (the only module state).
_worker: tuple[Runtime, Registry] | None = None


def bind_worker(runtime: Runtime, registry: Registry) -> None:
    """Called once by the worker entry point: jobs run against this process's runtime."""
    global _worker
    _worker = (runtime, registry)


def run_rq_job(name: str, payload: dict[str, Any], key: str | None = None) -> Any:
    """What an RQ worker executes. Raises on failure so RQ records the job as failed."""
    if _worker is None:
        raise RuntimeError("no runtime bound: start workers with `ml-backend worker`")
    runtime, registry = _worker
    if key is not None:
        from rq import get_current_job

        job = get_current_job()
        if job is not None:
            job.connection.delete(_pending_key(key))
            coalesced = job.connection.getdel(_coalesced_key(key))
            if coalesced:
                payload = registry[name].merged(payload, json.loads(coalesced))
    record = execute(runtime, JobRecord(id=RQ_RECORD_ID, name=name, key=key, payload=payload),
                     registry)
    if record.status == "failed":
        raise RuntimeError(record.error)
    follow_ups = next_jobs(record.result)
    if follow_ups:
        from rq import get_current_job

        job = get_current_job()
        if job is None:
            raise RuntimeError("next_jobs outside an RQ job")
        queue = RQQueue(job.connection, registry)
        for follow_up in follow_ups:
            queue.submit(follow_up.name, follow_up.payload, follow_up.key)
    return record.result


def _pending_key(key: str) -> str:
    return f"ml-backend:pending:{key}"


def _coalesced_key(key: str) -> str:
    return f"ml-backend:coalesced:{key}"


class RQQueue:
    """Jobs on Redis, run by `ml-backend worker` processes (possibly on other machines)."""

    def __init__(self, connection: Redis, registry: Registry) -> None:
        from rq import Queue

        self.redis = connection
        self.registry = registry
        self.queues = {lane: Queue(rq_queue_name(lane), connection=self.redis)
                       for lane in lanes(self.registry)}
        self.queue = self.queues["models"]

    @classmethod
    def from_url(cls, redis_url: str, registry: Registry) -> RQQueue:
        from redis import Redis

        return cls(Redis.from_url(redis_url), registry)

    def submit(self, name: str, request: JobRequest | Mapping[str, Any],
               key: str | None = None) -> str:
        payload = _payload(self.registry, name, request)
        job_id = uuid.uuid4().hex[:12]
        if key is not None and not self.redis.set(_pending_key(key), job_id, nx=True, ex=3600):
            # A job with this key is queued: record that it must also cover this request.
            # (Payload merges for RQ assume merge(a, merge(b, c)) == merge(merge(a, b), c).)
            previous = self.redis.get(_coalesced_key(key))
            merged = self.registry[name].merged(json.loads(previous), payload) if previous \
                else payload
            self.redis.set(_coalesced_key(key), json.dumps(merged), ex=3600)
            existing = self.redis.get(_pending_key(key))
            return existing.decode() if existing else job_id
        from rq import Retry

        retries = int(payload.get("retries") or 0)
        self.queues[self.registry[name].lane].enqueue(
            run_rq_job, name, payload, key, job_id=job_id,
            job_timeout=int(payload.get("timeout_s") or 3600), result_ttl=3600,
            failure_ttl=86400, retry=Retry(max=retries) if retries else None)
        return job_id

    def recent(self) -> list[dict[str, Any]]:
        from rq.job import Job
        from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

        ids = []
        for lane_queue in self.queues.values():
            ids += list(lane_queue.job_ids)
            for registry in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry):
                ids += registry(queue=lane_queue).get_job_ids()[-50:]
        out = []
        for job in Job.fetch_many(ids[-100:], connection=self.redis):
            if job is not None:
                out.append({"id": job.id, "name": job.args[0] if job.args else None,
                            "status": job.get_status().value,
                            "progress": job.meta.get("progress"),
                            "error": (job.latest_result().exc_string[-500:]
                                      if job.is_failed and job.latest_result() else None)})
        return out

    def wait_idle(self, timeout_s: float) -> bool:
        from rq.registry import StartedJobRegistry

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(q.count == 0 and StartedJobRegistry(queue=q).count == 0
                   for q in self.queues.values()):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.redis.close()


STORAGE_KEY = f"{QUEUE_NAME}:storage"


def publish_storage(connection: Redis, paths: dict[str, str]) -> None:
    """The server says where it keeps models and caches, for workers to compare."""
    connection.set(STORAGE_KEY, json.dumps(paths, sort_keys=True), ex=7 * 86400)


def storage_mismatch(connection: Redis, paths: dict[str, str]) -> str | None:
    """A warning when this worker's folders differ from the ones the server published (a
    worker started from another directory with relative MODEL_DIR/CACHE_DIR would save
    versions the server never sees), else None."""
    published = connection.get(STORAGE_KEY)
    if not published:
        return None
    theirs = json.loads(published)
    differ = {k: (v, theirs.get(k)) for k, v in paths.items() if theirs.get(k) != v}
    if not differ:
        return None
    return ("this worker's storage differs from the server's: " + "; ".join(
        f"{k.upper()} {ours} here, {server} on the server" for k, (ours, server)
        in sorted(differ.items())) + " (set the same absolute MODEL_DIR and CACHE_DIR on "
        "both, on shared storage)")


