"""CI's reduced run of the detection benchmark: the whole loop (production fine-tune job,
ranking, held-out evaluation, JSON and plot) on a handful of tiny images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_detection_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_detection"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_detection.py"), "--pool", "24",
         "--holdout", "8", "--start", "8", "--step", "8", "--max-labels", "16",
         "--epochs", "1", "--image-size", "64", "--batch", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["orders"]) == {"random", "uncertainty"}
    for order in report["orders"].values():
        assert order["labels"] == [8, 16]
        assert all(0.0 <= v <= 1.0 for v in order["heldout_map50"])
        assert [r["labels"] for r in order["rounds"][0]] == [8, 16]
    assert out.with_suffix(".png").stat().st_size > 0
