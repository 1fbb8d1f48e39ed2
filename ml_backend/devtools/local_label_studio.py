"""Run the real Label Studio as a local subprocess, for integration tests and the demo.

Label Studio lives in its own virtualenv (``.venv-ls``, made by ``scripts/setup_env.sh``)
because its pins clash with the backend's. :class:`LocalLabelStudio` starts it on loopback
with an admin user, a legacy API token, local-file serving and the SSRF guards off (so an ML
backend on 127.0.0.1 is accepted), waits until ``/health`` answers, and stops the whole
process group on exit::

    with LocalLabelStudio() as ls:
        client = LabelStudio(base_url=ls.url, api_key=ls.api_key)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["LabelStudioStartError", "LocalLabelStudio", "find_label_studio_bin", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]  # ml_backend/devtools/ → the checkout
SETUP_HINT = "run scripts/setup_env.sh (it installs label-studio==1.23.2 into .venv-ls)"
CREDENTIALS_FILE = "credentials.json"
LOG_FILE = "label-studio.log"
_STARTED_RE = re.compile(r"Starting development server at https?://[^:/\s]+:(\d+)/")
# Variables Label Studio reads as fallbacks for its own settings: never inherit them.
_UNSET = ("HOST", "PORT", "USERNAME", "PASSWORD", "PYTHONPATH", "PYTHONHOME",
          "DJANGO_SETTINGS_MODULE")


class LabelStudioStartError(RuntimeError):
    """Label Studio could not be found, started, or did not become healthy."""


def find_label_studio_bin(executable: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``label-studio`` executable.

    Order: ``executable``, env ``LABEL_STUDIO_BIN``, ``<repo>/.venv-ls/bin/label-studio``,
    ``label-studio`` on PATH. Raises :class:`LabelStudioStartError` with a setup hint.
    """
    candidates: list[str] = []
    if executable:
        candidates.append(os.fspath(executable))
    elif os.environ.get("LABEL_STUDIO_BIN"):
        candidates.append(os.environ["LABEL_STUDIO_BIN"])
    else:
        candidates.append(str(REPO_ROOT / ".venv-ls" / "bin" / "label-studio"))
        on_path = shutil.which("label-studio")
        if on_path:
            candidates.append(on_path)
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            # Absolute: Label Studio runs with its data dir as cwd, where a relative
            # LABEL_STUDIO_BIN would name another file.
            return path.absolute()
    raise LabelStudioStartError(
        f"Label Studio executable not found (tried: {', '.join(candidates)}); {SETUP_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: a port in TIME_WAIT after a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("localhost", port)) != 0


class LocalLabelStudio:
    """A Label Studio server in a subprocess on 127.0.0.1 (context manager).

    Args:
        data_dir: persistent data dir (SQLite, uploads, log, credentials, Django secret
            key). ``None`` makes a fresh temp dir, removed again by :meth:`stop`.
        port: port to use; ``None`` picks a free one. Label Studio silently moves to the
            next port when its port is busy: that is detected and raises.
        executable: ``label-studio`` to run (see :func:`find_label_studio_bin`).
        document_root: root for ``/data/local-files/?d=…`` (default ``<data_dir>/files``).
        username, password, api_key: admin credentials; defaults are generated once and
            kept in ``<data_dir>/credentials.json`` so a persistent dir keeps working (Label
            Studio only applies them when it first creates the user).
        startup_timeout: seconds to wait for ``/health`` (a first start migrates: ≈50 s on 2 cores).
        extra_env: additional environment variables for Label Studio.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        executable: str | os.PathLike[str] | None = None,
        document_root: str | os.PathLike[str] | None = None,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        startup_timeout: float = 180.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self._executable = executable
        self._requested_data_dir = Path(data_dir).resolve() if data_dir else None
        self._requested_port = port
        self._requested_document_root = Path(document_root).resolve() if document_root else None
        self._credentials: dict[str, str | None] = dict(
            username=username, password=password, api_key=api_key, secret_key=None
        )
        self.startup_timeout = startup_timeout
        self._extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._temp_dir: Path | None = None
        self._data_dir: Path | None = None
        self._port: int | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        if self._port is None:
            raise RuntimeError("Label Studio is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int | None:
        """The port Label Studio listens on (``None`` before :meth:`start`)."""
        return self._port

    @property
    def data_dir(self) -> Path:
        """Label Studio's base data dir."""
        if self._data_dir is None:
            raise RuntimeError("Label Studio is not started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """File receiving Label Studio's stdout and stderr."""
        return self.data_dir / LOG_FILE

    @property
    def document_root(self) -> Path:
        """``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` given to Label Studio."""
        return self._requested_document_root or self.data_dir / "files"

    @property
    def api_key(self) -> str:
        """The admin's legacy API token (send as ``Authorization: Token <key>``)."""
        return self._require("api_key")

    @property
    def username(self) -> str:
        """The admin's e-mail (login name)."""
        return self._require("username")

    @property
    def password(self) -> str:
        """The admin's password."""
        return self._require("password")

    def _require(self, key: str) -> str:
        value = self._credentials.get(key)
        if not value:
            raise RuntimeError("Label Studio is not started")
        return value

    def __enter__(self) -> LocalLabelStudio:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def is_running(self) -> bool:
        """True while the Label Studio process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalLabelStudio:
        """Start Label Studio and block until ``/health`` is UP; return ``self``."""
        if self.is_running():
            return self
        executable = find_label_studio_bin(self._executable)
        if self._requested_data_dir is not None:
            self._data_dir = self._requested_data_dir
        else:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="label-studio-"))
            self._data_dir = self._temp_dir
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        self._load_credentials()

        port = self._requested_port or free_port()
        if not port_is_free(port):
            raise LabelStudioStartError(f"port {port} on 127.0.0.1 is already in use")
        self._port = port
        started = time.monotonic()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1",
                 "--port", str(port)],
                cwd=self._data_dir,
                env=self._environment(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills all of it
            )
        try:
            self._wait_until_healthy(port, log_offset)
        except BaseException:
            self.stop(keep_data=True)  # the error names the log: keep it readable
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 20.0, keep_data: bool = False) -> None:
        """Terminate Label Studio's whole process group (SIGTERM, then SIGKILL) and remove
        a temporary data dir unless ``keep_data``."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            _signal_group(process, signal.SIGKILL)  # leftovers of the group, if any
        if self._temp_dir is not None and not keep_data:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _load_credentials(self) -> None:
        path = self.data_dir / CREDENTIALS_FILE
        saved: dict[str, str] = {}
        if path.is_file():
            saved = json.loads(path.read_text())
        defaults = {
            "username": "admin@example.com",
            "password": secrets.token_urlsafe(12),
            "api_key": secrets.token_hex(20),  # 40 chars: DRF Token key length
            "secret_key": secrets.token_urlsafe(40),  # Django's; stable => logins survive
        }
        for key, default in defaults.items():
            self._credentials[key] = self._credentials[key] or saved.get(key) or default
        path.write_text(json.dumps(self._credentials, indent=2) + "\n")
        path.chmod(0o600)

    def _environment(self, port: int) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("LABEL_STUDIO_") and key not in _UNSET
        }
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "SECRET_KEY": self._require("secret_key"),
                "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.api_key,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
                "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
                "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self._extra_env)
        return env

    def _wait_until_healthy(self, port: int, log_offset: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        bound_port: int | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise self._error(f"Label Studio exited with code {code} during startup")
            if bound_port is None:
                match = _STARTED_RE.search(self._log_text(log_offset))
                if match:
                    bound_port = int(match.group(1))
                    if bound_port != port:
                        raise self._error(
                            f"Label Studio bound port {bound_port} instead of {port} "
                            "(the port was taken while it started)"
                        )
            if bound_port is not None and _health_up(self.url):
                return
            time.sleep(0.5)
        raise self._error(
            f"Label Studio did not report /health UP on {self.url} "
            f"within {self.startup_timeout:.0f} s"
        )

    def _log_text(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _error(self, message: str, tail_lines: int = 40) -> LabelStudioStartError:
        tail = "\n".join(self._log_text().splitlines()[-tail_lines:])
        return LabelStudioStartError(
            f"{message}.\nLog: {self.log_path}\n--- last {tail_lines} log lines ---\n{tail}"
        )


def _health_up(url: str) -> bool:
    """True when ``GET {url}/health`` answers ``{"status": "UP"}``."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return json.loads(response.read().decode()).get("status") == "UP"
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``process`` (ignore if already gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
