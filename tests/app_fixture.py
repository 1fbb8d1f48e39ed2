"""The Flask app as tests drive it: a test client, the runtime and the in-process job queue
(closed afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ml_backend.app import create_app
from ml_backend.core.settings import Settings
from ml_backend.jobs.queues import InProcessQueue
from ml_backend.jobs.registry import job_registry
from ml_backend.runtime import Runtime

AppParts = tuple[Any, Runtime, InProcessQueue]  # (Flask test client, runtime, job queue)


@contextmanager
def backend_app(settings: Settings) -> Iterator[AppParts]:
    runtime = Runtime(settings)
    jobs = InProcessQueue(runtime, job_registry())
    app = create_app(settings, runtime=runtime, jobs=jobs, warm_up=False)
    try:
        yield app.test_client(), runtime, jobs
    finally:
        jobs.close()
