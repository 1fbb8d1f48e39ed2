"""Per-project model versions on disk: atomic saves that survive restarts and crashes.

Layout under ``root``::

    projects/<project>/versions/<version>/manifest.json   # files + sha256, metadata
    projects/<project>/versions/<version>/<file>          # heads, backbones, …
    projects/<project>/LATEST                             # {"version": "<version>"}
    projects/<project>/state/<name>.json                  # small mutable state (label ledger)

A version directory is assembled under a temporary name and renamed into place, then LATEST
is replaced atomically: readers see either the old version or the complete new one. A
process killed mid-save leaves only a ``.tmp-*`` folder (swept later). A version that fails
its checksums when it becomes current (disk damage, a hand edit) is moved to
``projects/<project>/quarantine/``, recorded in ``state/quarantine.json`` (shown by /health)
and replaced by the newest version that verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_backend.core.files import atomic_write_bytes, atomic_write_json, file_lock, fsync_dir

_VERSION_RE = re.compile(r"-v(\d+)-")
# The re-ranked queue of a project (written by ml_backend.pipeline.ranking, read by SAM's
# precompute to encode in queue order).
RANKING_STATE = "ranking"
_JOB_FAILURES = "job-failures"
_STALE_TMP_S = 3600.0  # a .tmp- version folder this old belongs to a dead saver
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    project: int
    name: str
    path: Path
    manifest: Mapping[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    def read_bytes(self, name: str) -> bytes:
        """Read a file of this version, verifying its checksum against the manifest."""
        data = (self.path / name).read_bytes()
        expected = self.manifest.get("files", {}).get(name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise OSError(f"checksum mismatch for {self.path / name}")
        return data


class ModelStore:
    """Versions per project. Safe across threads and processes sharing ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[int, tuple[tuple[int, int, int], ModelVersion]] = {}
        self._cache_lock = threading.Lock()

    def project_dir(self, project: int) -> Path:
        if not isinstance(project, int) or project < 0:
            raise ValueError(f"project id must be a non-negative int, got {project!r}")
        return self.root / "projects" / str(project)

    @contextlib.contextmanager
    def locked(self, project: int, purpose: str = "model") -> Iterator[None]:
        """Exclusive lock on a project across processes and threads, one per ``purpose``
        ("model": training and saving; "ranking": writing the queue to Label Studio)."""
        lock_path = self.project_dir(project) / (".lock" if purpose == "model"
                                                 else f".{purpose}.lock")
        with file_lock(lock_path):
            yield

    def latest(self, project: int) -> ModelVersion | None:
        """The current version of ``project``, verified against its checksums, or None before
        the first save. Cheap: one stat call when nothing changed."""
        pointer = self.project_dir(project) / "LATEST"
        try:
            st = pointer.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            cached = self._cache.get(project)
            if cached is not None and cached[0] == key:
                return cached[1]
        name = None
        try:
            name = str(json.loads(pointer.read_text())["version"])
            version = self._open_verified(project, name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            version = self._recover(project, name, f"{type(exc).__name__}: {exc}")
            if version is None:
                return None
            st = pointer.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            self._cache[project] = (key, version)
        return version

    def _open(self, project: int, name: str) -> ModelVersion:
        path = self.project_dir(project) / "versions" / name
        manifest = json.loads((path / "manifest.json").read_text())
        return ModelVersion(project=project, name=name, path=path, manifest=manifest)

    def _open_verified(self, project: int, name: str) -> ModelVersion:
        """The version with every file present and matching its checksum, else raises."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad version name {name!r}")
        version = self._open(project, name)
        files = version.manifest.get("files")
        if not isinstance(files, dict):
            raise ValueError(f"manifest of {name} lists no files")
        for file_name in files:
            version.read_bytes(file_name)
        return version

    def _recover(self, project: int, bad: str | None, reason: str) -> ModelVersion | None:
        """Quarantine the damaged current version and make the newest one that verifies
        current (None when none does)."""
        # Its own lock: callers of latest() may hold the project's model lock already.
        with self.locked(project, "quarantine"):
            project_dir = self.project_dir(project)
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                current = str(json.loads((project_dir / "LATEST").read_text())["version"])
                if current != bad:  # another process recovered (or a new save) meanwhile
                    return self._open_verified(project, current)
            log.error("project %s: model version %s is damaged (%s); quarantining it",
                      project, bad or "(unreadable LATEST)", reason)
            if bad and "/" not in bad and not bad.startswith(".") \
                    and (project_dir / "versions" / bad).is_dir():
                quarantine = project_dir / "quarantine"
                quarantine.mkdir(parents=True, exist_ok=True)
                os.rename(project_dir / "versions" / bad,
                          quarantine / f"{bad}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
            records = self.read_state(project, "quarantine") or {"versions": []}
            records["versions"].append({"version": bad, "reason": reason[:500],
                                        "at": time.time()})
            self.write_state(project, "quarantine", records)
            for name in reversed(self.versions(project)):
                try:
                    version = self._open_verified(project, name)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                atomic_write_json(project_dir / "LATEST", {"version": name})
                log.error("project %s: back to model version %s", project, name)
                return version
            (project_dir / "LATEST").unlink(missing_ok=True)
            return None

    def quarantined(self) -> dict[int, list[dict[str, Any]]]:
        """Every project's quarantined versions: name, reason, time."""
        out = {}
        for project in self.projects():
            records = self.read_state(project, "quarantine")
            if records and records.get("versions"):
                out[project] = records["versions"]
        return out

    def record_job_outcome(self, project: int, job: str, error: str | None) -> None:
        """Count ``job``'s failures in a row for ``project`` (``error`` None: it succeeded,
        the count ends). Kept on disk beside the versions so /health shows the failures of
        jobs that ran in any process (RQ workers too)."""
        if error is None and job not in (self.read_state(project, _JOB_FAILURES) or {}):
            return  # the common case: nothing failed, nothing to write
        with self.locked(project, _JOB_FAILURES):
            state = dict(self.read_state(project, _JOB_FAILURES) or {})
            if error is None:
                state.pop(job, None)
            else:
                now = time.time()
                before = state.get(job) or {}
                state[job] = {"failures_in_a_row": int(before.get("failures_in_a_row", 0)) + 1,
                              "first_failed_at": before.get("first_failed_at", now),
                              "last_failed_at": now, "last_error": error[-1000:]}
            self.write_state(project, _JOB_FAILURES, state)

    def failing_jobs(self) -> dict[int, dict[str, dict[str, Any]]]:
        """Per project, the jobs whose latest runs failed (see :meth:`record_job_outcome`)."""
        out = {}
        for project in self.projects():
            state = self.read_state(project, _JOB_FAILURES)
            if state:
                out[project] = state
        return out

    def versions(self, project: int) -> list[str]:
        root = self.project_dir(project) / "versions"
        if not root.is_dir():
            return []
        names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(names, key=_version_number)

    def projects(self) -> list[int]:
        root = self.root / "projects"
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())

    def save(self, project: int, prefix: str, files: Mapping[str, bytes],
             metadata: Mapping[str, Any]) -> ModelVersion:
        """Store ``files`` as a new version named ``<prefix>-v<n>-<UTC time>`` and make it the
        latest. Callers hold :meth:`locked` when concurrent savers are possible."""
        versions_dir = self.project_dir(project) / "versions"
        versions_dir.mkdir(parents=True, exist_ok=True)
        number = max((_version_number(n) for n in self.versions(project)), default=0) + 1
        name = f"{prefix}-v{number}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        self._sweep_stale_tmp(versions_dir)
        tmp = versions_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            checksums = {}
            for file_name, data in files.items():
                if "/" in file_name or file_name.startswith("."):
                    raise ValueError(f"bad file name in model version: {file_name!r}")
                atomic_write_bytes(tmp / file_name, data)
                checksums[file_name] = hashlib.sha256(data).hexdigest()
            manifest = {"version": name, "number": number, "created_at": time.time(),
                        "files": checksums, **metadata}
            atomic_write_json(tmp / "manifest.json", manifest)
            os.rename(tmp, versions_dir / name)
            fsync_dir(versions_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_json(self.project_dir(project) / "LATEST", {"version": name})
        return self._open(project, name)

    @staticmethod
    def _sweep_stale_tmp(versions_dir: Path) -> None:
        """Remove version folders that savers killed mid-save left behind."""
        cutoff = time.time() - _STALE_TMP_S
        for path in versions_dir.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)

    def read_state(self, project: int, name: str) -> dict[str, Any] | None:
        path = self.project_dir(project) / "state" / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def write_state(self, project: int, name: str, state: Mapping[str, Any]) -> None:
        atomic_write_json(self.project_dir(project) / "state" / f"{name}.json", state)


def _version_number(name: str) -> int:
    match = _VERSION_RE.search(name)
    return int(match.group(1)) if match else 0
