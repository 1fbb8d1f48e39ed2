"""CI's reduced run of the load test: the whole path (classifier trained and saved, gunicorn
served on 127.0.0.1, concurrent and single clients, JSON and plot) with a few requests. No
timing is asserted; errors are (the target is none)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_load_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_load.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_load.py"), "--clients", "3",
         "--requests", "4", "--image-size", "32", "--workdir", str(tmp_path / "work"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(completed.stdout) == report
    assert report["concurrent"]["requests"] == 12 and report["single_client"]["requests"] == 4
    assert report["concurrent"]["errors"] == 0 and report["target_met"] is True
    assert set(report["concurrent"]["latency_ms"]) >= {"p50", "p99"}
    assert report["metrics_predictions_line"].startswith("mlb_predictions_total")
    assert out.with_suffix(".png").stat().st_size > 0
