"""CI's reduced run of the annotator-effort benchmark through the real Label Studio: every
pool on a few images, the manual arm and the shipped one (pre-labels + the ranked queue; the
random-order arm runs the same code with another order, so CI leaves it out), and the SAM arm
on a random tiny SAM (only its accounting is checked), with the costs checked against
hand-computed totals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_effort_benchmark_reduced_run(label_studio, tmp_path: Path) -> None:
    out = tmp_path / "bench_effort"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_effort.py"),
         "--pools", "digits,shapes,masks", "--pool-size", "10", "--heldout", "6",
         "--batch", "5", "--arms", "prelabels_ranked", "--detector-epochs", "1",
         "--detector-image-size", "64",
         "--sam-random-init", "--max-clicks", "2", "--workdir", str(tmp_path / "work"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=1500, cwd=REPO,
        env={**os.environ, "BENCH_LABEL_STUDIO_URL": label_studio.url,
             "BENCH_LABEL_STUDIO_API_KEY": label_studio.api_key})
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert json.loads(completed.stdout) == report
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["costs_seconds"]["max_clicks"] == 2
    pools = report["pools"]

    digits = pools["digits"]
    assert set(digits["arms"]) == {"manual_random", "prelabels_ranked"}
    assert digits["arms"]["manual_random"]["task_seconds"] == [3.0] * 10
    summary = digits["arms"]["prelabels_ranked"]
    seconds = summary["task_seconds"]
    assert len(seconds) == 10 and set(seconds) <= {1.0, 3.0}  # confirmed, or picked/changed
    assert seconds.count(1.0) == round(summary["accepted_without_edit_share"] * 10)
    assert [n for n, _ in summary["quality"]] == [5, 10]
    assert summary["quality"][-1][1] is not None  # a classifier was trained and scored
    assert "met" in digits["goal"]

    shapes = pools["shapes"]
    boxes = shapes["objects"]
    assert sum(shapes["arms"]["manual_random"]["task_seconds"]) == 7.0 * boxes
    summary = shapes["arms"]["prelabels_ranked"]
    # No detector before its first fine-tune (8 labels): the first five are drawn.
    assert summary["tasks_with_prelabel"] <= 5
    assert all(s % 1.0 == 0 and s >= 1.0 for s in summary["task_seconds"])

    masks = pools["masks"]
    objects = masks["objects"]
    assert sum(masks["arms"]["manual_random"]["task_seconds"]) == 79.0 * objects
    sam = masks["arms"]["sam_clicks"]
    assert sam["objects"] == objects
    reached = sam["objects_reaching_iou_0.9"]
    clicks = (sam["mean_clicks_when_reached"] or 0) * reached
    assert sum(sam["task_seconds"]) == round(79.0 * (objects - reached) + 2.0 * clicks, 3)
    assert "mean nothing" in masks["notes"]["sam_clicks"]
