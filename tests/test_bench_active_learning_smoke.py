"""CI's reduced run of the active-learning benchmark on the glyph set: the whole in-process
path (full-data ceiling, strategies with the baseline beside the head, the cold-start arm,
JSON and plot) on a small pool. No accuracy is asserted; the report's shape is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_active_learning_benchmark_reduced_run(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_active_learning.py"),
         "--datasets", "glyphs", "--pool", "150", "--seeds", "1", "--max-labels", "40",
         "--strategies", "margin,random", "--cold-start-labels", "30", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = tmp_path / "bench_active_learning_glyphs.json"
    report = json.loads(out.read_text())
    assert json.loads(completed.stdout) == report
    assert report["dataset"] == "glyphs" and report["pool"] + report["heldout"] == 150
    assert report["image_size"] == "auto" and report["labels"] == [20, 30, 40]
    assert 0.0 <= report["full_data_accuracy_baseline"] <= 1.0
    for entry in report["strategies"].values():
        assert len(entry["baseline_mean_accuracy"]) == len(entry["mean_accuracy"]) == 3
        assert len(entry["head_at_least_baseline_minus_1std"]) == 3
        assert len(entry["baseline_per_seed_accuracy"]) == 1
    assert set(report["cold_start"]["after"]) == {"20", "30"}
    assert out.with_suffix(".png").stat().st_size > 0
