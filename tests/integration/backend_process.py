"""Run `ml-backend serve` as a real subprocess on loopback, for integration tests and
benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from ml_backend.core.detections import xyxy_to_ls_rect


def backend_env(label_studio: Any, work: Path, **extra: str) -> dict[str, str]:
    """The backend's environment against ``label_studio``, with its models and caches under
    ``work``, a small classifier input and no Redis (``extra`` adds or overrides)."""
    return {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.api_key,
            "MODEL_DIR": str(work / "models"), "CACHE_DIR": str(work / "cache"),
            "CLASSIFIER_IMAGE_SIZE": "32", "REDIS_URL": "", **extra}


def submit_boxes(ls_client: Any, task_id: int, scene: Any, control: str = "shape") -> None:
    """An annotator's exact boxes of a synthetic ``scene`` (devtools.datasets.ShapeScene),
    submitted to Label Studio through the API (so it sends the webhook)."""
    height, width = scene.pixels.shape[:2]
    ls_client.annotations.create(id=task_id, result=[{
        "from_name": control, "to_name": "image", "type": "rectanglelabels",
        "original_width": width, "original_height": height,
        "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [label]}}
        for box, label in zip(scene.xyxy, scene.labels, strict=True)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackendProcess:
    """``ml-backend serve`` (the installed command) on a free loopback port. ``env`` adds to
    this process's environment, or with ``clean_env`` is the whole of it; ``cwd`` is the
    directory it starts in (default: this one)."""

    def __init__(self, env: dict[str, str], log_path: Path, dev: bool = False,
                 cwd: Path | None = None, clean_env: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [str(Path(sys.executable).parent / "ml-backend"), "serve",
                   "--host", "127.0.0.1", "--port", str(self.port)]
        if dev:
            command.append("--dev")
        full_env = dict(env) if clean_env else {**os.environ, **env}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, env=full_env, cwd=cwd, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"backend exited: {self.log_tail()}")
            try:
                health = requests.get(f"{self.url}/health", timeout=2).json()
                if health["models"]["classifier"]["status"] in {"ready", "degraded"}:
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"backend not ready in {timeout_s} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def jobs(self) -> list[dict]:
        return requests.get(f"{self.url}/jobs", timeout=5).json()["jobs"]

    def wait_idle(self, timeout_s: float = 600.0, stable_s: float = 1.5) -> None:
        """Until no job is queued or running, and none has appeared for ``stable_s``
        seconds (a finished job may chain another, and webhooks may still be arriving)."""
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = any(j["status"] in {"queued", "running"} for j in self.jobs())
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= stable_s:
                return
            time.sleep(0.25)
        raise TimeoutError(f"backend jobs still busy after {timeout_s} s: {self.log_tail()}")

    def failed_jobs(self) -> list[dict]:
        return [j for j in self.jobs() if j["status"] == "failed"]
