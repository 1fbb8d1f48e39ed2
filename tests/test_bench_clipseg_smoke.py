"""CI's reduced run of the CLIPSeg prompt benchmark: the whole path (a random model saved
and loaded like CLIPSEG_MODEL, naive and cached calls, JSON and plot) on a toy configuration
of the architecture. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_clipseg_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_clipseg.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_clipseg.py"), "--arch", "tiny",
         "--repeats", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(completed.stdout) == report
    for key in ("naive_ms", "cached_new_image_ms", "cached_seen_image_ms"):
        assert set(report[key]) == {"1_prompts", "8_prompts"}, key
    assert isinstance(report["target_met"], bool) and report["cached_8_over_1"] > 0
    assert report["max_abs_logit_difference"] < 1e-3  # both paths compute the same logits
    assert len(report["prompts"]["8"]) == 9
    assert out.with_suffix(".png").stat().st_size > 0
