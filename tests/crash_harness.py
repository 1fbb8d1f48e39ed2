"""Kill -9 at random moments while model versions are being written, then check the store.

Run as a child: ``python tests/crash_harness.py save|train <model dir> <files dir>`` loops
forever, either saving versions of random files straight through ``ModelStore.save`` or
running real classifier training (``train_classifier`` on digit images read from local
files) that saves a version per round. :func:`kill_rounds` starts such a child, kills it
with SIGKILL after a random delay, and checks that a fresh process sees a loadable store
every time. Used by tests/test_crash_safety.py and scripts/hardening_report.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = 1
# A training child saves its first version ~5-10 s after it starts (imports, backbone,
# embeddings), then one every ~0.4 s: kills in this window land inside training rounds.
TRAIN_KILL_DELAY_S = (5.0, 12.0)
SAVE_KILL_DELAY_S = (0.4, 1.6)
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
    from ml_backend.jobs.kinds import TrainRequest
    from ml_backend.models.classifier.training import train_classifier
    from ml_backend.runtime import Runtime

    runtime = Runtime(settings_for(model_dir, files))
    runtime.ls_api = _Annotations(files)  # type: ignore[assignment]
    while True:
        train_classifier(runtime, TrainRequest(project=PROJECT, mode="full"))


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


def kill_rounds(mode: str, work: Path, rounds: int, seed: int = 0,
                delay_s: tuple[float, float] = (0.3, 3.0)) -> KillReport:
    """``rounds`` times: start the child, SIGKILL it after a random delay, check the store
    from a fresh process (this one, with new objects)."""
    model_dir, files = work / "models", work / "files"
    files.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    report = KillReport(mode)
    for _ in range(rounds):
        child = subprocess.Popen([sys.executable, __file__, mode, str(model_dir), str(files)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        time.sleep(rng.uniform(*delay_s))
        if child.poll() is not None:
            report.problems.append(f"child exited early: {child.stderr.read()[-500:]!r}")
            continue
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
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
