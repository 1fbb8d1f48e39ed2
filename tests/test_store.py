from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_backend.core.store import ModelStore


def test_save_latest_and_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.latest(3) is None
    first = store.save(3, "resnet18", {"a.bin": b"1"}, {"note": "x"})
    second = store.save(3, "resnet18", {"a.bin": b"2"}, {})
    assert first.name != second.name and "-v1-" in first.name and "-v2-" in second.name
    assert store.latest(3).name == second.name
    assert store.latest(3).read_bytes("a.bin") == b"2"
    assert store.versions(3) == [first.name, second.name]
    assert store.projects() == [3]
    # A fresh store object (another process, a restart) sees the same state.
    assert ModelStore(tmp_path).latest(3).name == second.name


def test_leftover_temporary_dirs_are_not_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(1, "m", {"f": b"x"}, {})
    (store.project_dir(1) / "versions" / ".tmp-crashed").mkdir()
    assert len(store.versions(1)) == 1


def test_checksum_mismatch_is_detected(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version = store.save(1, "m", {"f": b"good"}, {})
    version.file("f").write_bytes(b"evil")
    with pytest.raises(OSError, match="checksum"):
        version.read_bytes("f")


def test_bad_file_names_rejected_and_nothing_left_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ValueError):
        store.save(1, "m", {"../x": b""}, {})
    assert store.latest(1) is None
    assert not [p for p in (store.project_dir(1) / "versions").iterdir()]


def test_state_roundtrip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.write_state(2, "labels", {"k": [1, 2]})
    assert store.read_state(2, "labels") == {"k": [1, 2]}
    assert json.loads((store.project_dir(2) / "state" / "labels.json").read_text())
