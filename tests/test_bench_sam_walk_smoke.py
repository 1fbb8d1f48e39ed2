"""CI's reduced run of the SAM annotator walk: import webhook, the re-rank's head job, task
opens and clicks over loopback HTTP, the hit rate, JSON and plot; a tiny encoder, 3 tasks and
short pauses, for both SAM generations. No timing or hit rate is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sam_walk_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_sam_walk.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_sam_walk.py"),
         "--archs", "vit:32/2/2,sam2.1_hiera:16/1-1-2-1",
         "--tasks", "3", "--pause-s", "0.2", "--work-s", "0.2",
         "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [w["arch"] for w in report["walks"]] == ["vit:32/2/2", "sam2.1_hiera:16/1-1-2-1"]
    for result in report["walks"]:
        assert result["tasks"] == 3 and len(result["rows"]) == 3
        assert sorted(r["task"] for r in result["rows"]) == [1, 2, 3]
        assert all(r["regions"] <= 1 for r in result["rows"])
        assert 0.0 <= result["hit_rate"] <= 1.0 and isinstance(result["target_met"], bool)
        assert result["store"]["computed"] == 3  # each image encoded once, by a job or a click
    assert out.with_suffix(".png").stat().st_size > 0
