"""Crash safety of the model store: SIGKILL at random moments while versions are written
(straight saves and real training) always leaves a loadable store; a damaged version is
detected, quarantined, reported, and the previous good one serves."""

from __future__ import annotations

import json
from pathlib import Path

from ml_backend.core.store import ModelStore

from app_fixture import backend_app
from crash_harness import SAVE_KILL_DELAY_S, TRAIN_KILL_DELAY_S, kill_rounds


def test_20_kills_during_saves_leave_a_loadable_store(tmp_path: Path) -> None:
    report = kill_rounds("save", tmp_path, rounds=20, seed=1, delay_s=SAVE_KILL_DELAY_S)
    assert report.problems == [] and report.kills == report.loadable == 20
    assert len(report.versions_seen) == 20  # every child saved before its kill
    leftovers = list((tmp_path / "models" / "projects" / "1" / "versions").glob(".tmp-*"))
    assert all(p.is_dir() for p in leftovers)  # half-written saves stay hidden, never current


def test_20_kills_during_training_leave_a_loadable_classifier(tmp_path: Path) -> None:
    # Each kill lands 0-1.2 s after the child's first save: inside later training rounds
    # (one every ~0.4 s) and their saves.
    report = kill_rounds("train", tmp_path, rounds=20, seed=2, delay_s=TRAIN_KILL_DELAY_S)
    assert report.problems == [] and report.kills == report.loadable == 20
    assert len(report.versions_seen) == 20  # every child trained a round before its kill


def _two_versions(root: Path) -> tuple[ModelStore, str, str]:
    store = ModelStore(root)
    first = store.save(1, "m", {"w.bin": b"a" * 1000}, {}).name
    second = store.save(1, "m", {"w.bin": b"b" * 1000}, {}).name
    return store, first, second


def test_a_damaged_version_is_quarantined_and_the_previous_one_serves(make_settings,
                                                                       tmp_path: Path) -> None:
    settings = make_settings()
    store, first, second = _two_versions(settings.model_dir)
    damaged = settings.model_dir / "projects" / "1" / "versions" / second / "w.bin"
    damaged.write_bytes(b"c" * 1000)  # same size, other bytes: only the checksum can tell
    fresh = ModelStore(settings.model_dir)
    assert fresh.latest(1).name == first
    assert fresh.versions(1) == [first]
    quarantined = list((settings.model_dir / "projects" / "1" / "quarantine").iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [second]
    with backend_app(settings) as (client, _, _):
        health = client.get("/health").get_json()
        [record] = health["quarantined"]["1"]
        assert record["version"] == second and "checksum" in record["reason"]
        assert client.post("/setup", json={"project": "1.1", "schema": (
            '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
            '<Choice value="a"/></Choices></View>')}).get_json()["model_version"] == first


def test_an_unreadable_pointer_falls_back_to_the_newest_good_version(tmp_path: Path) -> None:
    store, _, second = _two_versions(tmp_path)
    (tmp_path / "projects" / "1" / "LATEST").write_text("{not json")
    fresh = ModelStore(tmp_path)
    assert fresh.latest(1).name == second
    assert json.loads((tmp_path / "projects" / "1" / "LATEST").read_text()) == \
        {"version": second}
    records = fresh.read_state(1, "quarantine")["versions"]
    assert records[0]["version"] is None and "JSONDecodeError" in records[0]["reason"]
