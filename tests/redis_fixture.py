"""A throw-away ``redis-server`` on 127.0.0.1 for tests (RQ queue, worker).

Use the ``redis_server`` fixture (yields ``redis://127.0.0.1:<port>/0``) or the
:func:`running_redis` context manager. A missing ``redis-server`` binary FAILS the test
(it is a required dependency: ``scripts/setup_env.sh --with-redis`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["redis_server", "running_redis"]

INSTALL_HINT = "install it: bash scripts/setup_env.sh --with-redis (apt-get install redis-server)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def running_redis(timeout: float = 15.0) -> Iterator[str]:
    """Start ``redis-server`` (no persistence) on a free loopback port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"redis-server not found on PATH; {INSTALL_HINT}", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="redis-test-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(3):  # a free port can be taken before redis binds it
            port = _free_port()
            log = workdir / f"redis-{port}.log"
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None and not _ping(port):
                time.sleep(0.05)
            if process.poll() is None and _ping(port):
                break
            process.kill()
            process.wait()
        else:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"redis-server did not start on 127.0.0.1:\n{tail}", pytrace=False)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[str]:
    """A fresh, empty redis for one test; yields ``redis://127.0.0.1:<port>/0``."""
    with running_redis() as url:
        yield url
