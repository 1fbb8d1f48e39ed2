"""The composition root of the HTTP server: settings → runtime, job queue, metrics, the
endpoint service, and the Flask routes that serve it (``ml-backend serve`` builds one per
gunicorn worker, after the fork)."""

from __future__ import annotations

import threading

from flask import Flask

from ml_backend.core.settings import Settings
from ml_backend.http.routes import build_flask_app
from ml_backend.jobs.queues import JobQueue, JobRecord, RQQueue, publish_storage
from ml_backend.jobs.registry import make_queue
from ml_backend.runtime import Runtime
from ml_backend.service import Backend


def create_app(settings: Settings | None = None, runtime: Runtime | None = None,
               jobs: JobQueue | None = None, warm_up: bool = True) -> Flask:
    """Build the app. Tests pass their own ``runtime``/``jobs``; production reads settings
    from the environment."""
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    runtime = runtime or Runtime(settings)
    metrics = runtime.metrics

    def on_done(record: JobRecord) -> None:  # in-process jobs: RQ's are its workers'
        metrics.jobs.labels(name=record.name, status=record.status).inc()
        if record.started_at and record.ended_at:
            metrics.job_seconds.labels(name=record.name).observe(
                record.ended_at - record.started_at)

    if jobs is None:
        jobs = make_queue(runtime, on_done=on_done)
    if isinstance(jobs, RQQueue):
        publish_storage(jobs.redis, settings.paths())
    backend = Backend(runtime, jobs)
    sam_counts = runtime.sam.embeddings.counts
    metrics.watch_caches({
        "classifier_embeddings": lambda: (runtime.classifier.embedding_cache.hits,
                                          runtime.classifier.embedding_cache.misses),
        "sam_embeddings": lambda: (sam_counts["memory"] + sam_counts["disk"]
                                   + sam_counts["waited"], sam_counts["computed"]),
    })
    # The SDK's config parser is slow to import; do it now so the first /setup stays fast.
    import label_studio_sdk.label_interface  # noqa: F401

    if warm_up:
        threading.Thread(target=runtime.warm_up, name="warm-up", daemon=True).start()
    return build_flask_app(backend, settings, metrics)
