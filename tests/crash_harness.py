"""Kill -9 at random moments while model versions are being written, then check the store.

Run as a child: ``python tests/crash_harness.py save|train <model dir> <files dir>`` loops
forever, either saving versions of random files straight through ``ModelStore.save`` or
running real classifier training (``train_classifier`` on digit images read from local
files) that saves a version per round, and prints ``saved`` after each. :func:`kill_rounds`
starts such a child, waits for its first ``saved``, kills it with SIGKILL after a further
random delay, and checks that a fresh process sees a loadable store every time. Waiting for
the first save (rather than a fixed time from start) makes every kill land inside later
saves or training rounds however slow the machine is. Used by tests/test_crash_safety.py
and scripts/hardening_report.py.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = 1
# Delays after the child's first completed save. A training child then saves a version
# every ~0.4 s, a saving child every ~0.1 s: kills in these windows land inside later
# training rounds and their saves.
TRAIN_KILL_DELAY_S = (0.0, 1.2)
SAVE_KILL_DELAY_S = (0.0, 0.6)
# A training child's first save comes after imports, the backbone and embeddings (~5-10 s
# here); a loaded CI machine may take several times that.
FIRST_SAVE_TIMEOUT_S = 180.0
CONFIG = (Path(__file__).resolve().parent.parent / "labeling_configs"
          / "digit_classification.xml").read_text()


class _Annotations:
    """Label Studio's API as training reads it: the config and the labeled tasks."""

    def __init__(self, files: Path) -> None:
        from ml_backend.devtools.datasets import write_digit_pngs

        self.tasks = []
        for i, (path, label) in enumerate(write_digit_pngs(files / "digits", 40, 32, seed=5)):
            self.tasks.append({"id": i + 1, "data": {
                "image": f"/data/local-files/?d={path.relative_to(files)}"},
                "annotations": [{"id": i + 1, "updated_at": f"{i}", "result": [{
                    "from_name": "digit", "to_name": "image", "type": "choices",
                    "value": {"choices": [str(label)]}}]}]})

    def label_config(self, project: int) -> str:
        return CONFIG

    def labeled_tasks(self, project: int) -> list[Any]:
        from ml_backend.labelstudio.api import labeled_tasks_from_export

        return labeled_tasks_from_export(self.tasks)

    def set_model_version(self, *args: Any, **kwargs: Any) -> None:
        return None


def settings_for(model_dir: Path, files: Path) -> Any:
    from ml_backend.core.settings import Settings

    return Settings(model_dir=model_dir, cache_dir=model_dir.parent / "cache",
                    local_files_document_root=files, classifier_image_size=32,
                    update_project_model_version=False, rerank_after_training=False)


def _child(mode: str, model_dir: Path, files: Path) -> None:
    from ml_backend.core.store import ModelStore

    if mode == "save":
        store = ModelStore(model_dir)
        rng = random.Random(os.getpid())
        while True:
            files_ = {f"part{i}.bin": os.urandom(rng.randint(1, 3) * 2**20) for i in range(3)}
            with store.locked(PROJECT):
                store.save(PROJECT, "crash", files_, {"note": "kill test"})
            print("saved", flush=True)
    from ml_backend.jobs.kinds import TrainRequest
    from ml_backend.models.classifier.training import train_classifier
    from ml_backend.runtime import Runtime

    runtime = Runtime(settings_for(model_dir, files))
    runtime.ls_api = _Annotations(files)  # type: ignore[assignment]
    while True:
        train_classifier(runtime, TrainRequest(project=PROJECT, mode="full"))
        print("saved", flush=True)


@dataclass
class KillReport:
    mode: str
    kills: int = 0
    loadable: int = 0
    versions_seen: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def check_store(mode: str, model_dir: Path, files: Path) -> str | None:
    """The current version's name after verifying it (and, for training, loading the
    classifier the way the server does); raises when the store is not loadable."""
    from ml_backend.core.store import ModelStore
    from ml_backend.runtime import Runtime

    if mode == "save":
        version = ModelStore(model_dir).latest(PROJECT)
        return None if version is None else version.name
    runtime = Runtime(settings_for(model_dir, files))
    model = runtime.classifier.model(PROJECT)
    return None if model is None else model.version


def _wait_for_first_save(child: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([child.stdout], [], [], left)
        if not ready:
            return False
        line = child.stdout.readline()  # type: ignore[union-attr]
        if not line:  # the child exited
            return False
        if line.strip() == b"saved":
            return True
    return False


def kill_rounds(mode: str, work: Path, rounds: int, seed: int = 0,
                delay_s: tuple[float, float] = SAVE_KILL_DELAY_S) -> KillReport:
    """``rounds`` times: start the child, wait for its first completed save, SIGKILL it
    after a further random delay, check the store from a fresh process (this one, with new
    objects). Every child completes a save before its kill, so each kill sees a newer
    version than the one before."""
    model_dir, files = work / "models", work / "files"
    files.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    report = KillReport(mode)
    for _ in range(rounds):
        child = subprocess.Popen([sys.executable, __file__, mode, str(model_dir), str(files)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 bufsize=0, start_new_session=True)
        if not _wait_for_first_save(child, FIRST_SAVE_TIMEOUT_S):
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            report.problems.append(f"no save within {FIRST_SAVE_TIMEOUT_S:.0f} s: "
                                   f"{child.stderr.read()[-500:]!r}")  # type: ignore[union-attr]
            continue
        time.sleep(rng.uniform(*delay_s))
        if child.poll() is not None:
            report.problems.append(f"child exited early: {child.stderr.read()[-500:]!r}")
            continue
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
        report.kills += 1
        try:
            name = check_store(mode, model_dir, files)
        except Exception as exc:  # any failure to load is what this harness looks for
            report.problems.append(f"store not loadable: {type(exc).__name__}: {exc}")
            continue
        report.loadable += 1
        if name is not None:
            report.versions_seen.add(name)
    return report


def report_dict(report: KillReport) -> dict[str, Any]:
    return {"mode": report.mode, "kills": report.kills, "loadable_after_kill": report.loadable,
            "distinct_versions_seen": len(report.versions_seen),
            "problems": report.problems[:5]}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))  # runs until killed
