"""Where model work runs: on a thread that ends with it.

PyTorch's CPU kernels run on OpenMP (GNU libgomp in the Linux wheels). libgomp gives every
thread that starts a parallel region a pool of worker threads, and the pool lives as long as
that thread. Once the pools' threads outnumber the CPUs, libgomp throttles spinning for all
of them: an idle worker sleeps on a futex right away instead of spinning for the next region.
Each of the hundreds of small parallel regions in SAM's mask decoder then pays for a wake-up.
On the 2-core test machine one extra idle pool made a click's decode 15–25 % slower.

Long-lived threads that run torch would keep such pools forever: gunicorn's request threads
(up to ``--threads`` of them, used in turn) and the job lanes. So a request's or a job's model
work runs on a fresh thread. Its pool goes away when the thread ends, and an idle server holds
no pool at all. Starting the thread costs a fraction of a millisecond.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_short_lived_thread(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` run on a new thread named ``name``; returns its result or raises its exception
    here (with its traceback). The caller waits, so the work keeps the caller's ordering and
    time limits."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller, which re-raises it
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
