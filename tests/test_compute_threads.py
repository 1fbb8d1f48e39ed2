"""Model work runs on short-lived threads, so no long-lived thread keeps an OpenMP pool
(see ml_backend/jobs/compute_threads.py for why that matters to click latency)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from test_sam import interactive_body, keypoint

from ml_backend.jobs.compute_threads import on_short_lived_thread
from ml_backend.jobs.kinds import RerankRequest
from ml_backend.jobs.queues import InProcessQueue, JobKind
from ml_backend.runtime import Runtime

from sam_fixture import SEGMENTATION_CONFIG


def test_result_and_exception_come_back_to_the_caller() -> None:
    assert on_short_lived_thread("t", lambda: threading.current_thread().name) == "t"
    error = ValueError("bad")

    def fail() -> None:
        raise error

    with pytest.raises(ValueError) as raised:
        on_short_lived_thread("t", fail)
    assert raised.value is error


def test_a_job_runs_on_its_own_thread_that_ends_with_it(make_settings) -> None:
    ran_on: list[threading.Thread] = []

    def record(runtime: Runtime, request: RerankRequest) -> Any:
        ran_on.append(threading.current_thread())
        return None

    queue = InProcessQueue(Runtime(make_settings()),
                           registry={"record": JobKind(record, RerankRequest)})
    try:
        queue.submit("record", RerankRequest(1))
        assert queue.wait_idle(10)
    finally:
        queue.close()
    (thread,) = ran_on
    assert thread.name == "job-record" and not thread.is_alive()


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _settled_os_threads() -> int:
    """This process's thread count once exiting threads (OpenMP workers of a pool whose
    owner ended) are gone."""
    count = _os_threads()
    for _ in range(50):
        time.sleep(0.05)
        now = _os_threads()
        if now == count:
            return now
        count = now
    return count


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or torch.get_num_threads() < 2,
                    reason="counts the process's threads in /proc; needs torch threads >= 2")
def test_a_request_thread_holds_no_openmp_pool_after_a_click(sam_app) -> None:
    """Like gunicorn: requests come in on a long-lived thread. After a SAM click, that thread
    must not own an OpenMP pool (its workers would be extra OS threads that stay)."""
    client, runtime, _ = sam_app
    body = interactive_body(SEGMENTATION_CONFIG, [keypoint(50, 50, "Object")])
    assert client.post("/predict", json=body).status_code == 200  # loads and caches
    with ThreadPoolExecutor(1, thread_name_prefix="request") as request_thread:
        request_thread.submit(lambda: None).result()
        idle = _settled_os_threads()
        for x in (30, 50, 70):
            body = interactive_body(SEGMENTATION_CONFIG, [keypoint(x, 50, "Object")])
            response = request_thread.submit(client.post, "/predict", json=body).result()
            assert response.status_code == 200, response.get_json()
        after = _settled_os_threads()
        # The control: the same model work run on the request thread itself does leave a
        # pool there, so the count above would have caught it.
        request_thread.submit(lambda: runtime.sam.segmenter().model.mask_decoder(
            image_embeddings=torch.zeros(1, 256, 64, 64),
            image_pe=torch.zeros(1, 256, 64, 64),
            sparse_prompt_embeddings=torch.zeros(1, 1, 256),
            dense_prompt_embeddings=torch.zeros(1, 256, 64, 64),
            multimask_output=True)).result()
        control = _settled_os_threads()
    assert after == idle
    assert control > idle


def test_loading_the_detector_library_leaves_torch_threads_alone(tmp_path: Path) -> None:
    """Ultralytics sets OMP_NUM_THREADS=1 when imported; torch reads it for each new thread,
    so every later request would have computed on one core."""
    code = ("import os\nfrom pathlib import Path\n"
            "from ml_backend.models.detector.model import ultralytics_module\n"
            f"ultralytics_module(Path({str(tmp_path)!r}))\n"
            "print('OMP_NUM_THREADS', os.environ.get('OMP_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert "OMP_NUM_THREADS None" in out.stdout

