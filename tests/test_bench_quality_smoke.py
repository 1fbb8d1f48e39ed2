"""CI's reduced run of the data-quality benchmark: label errors, near-duplicates and
find-similar latency on a tiny digits set (the whole in-process path, JSON and plot). No
figure or timing is asserted; the report's shape is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quality_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_quality"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_quality.py"), "--count", "200",
         "--shapes", "60", "--similar-sizes", "300,600", "--queries", "5",
         "--pair-timing-rows", "300", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert json.loads(completed.stdout) == report
    (errors,) = report["label_errors"]
    assert errors["images"] == 200 and errors["flipped"] == 10
    for key in ("precision", "recall"):
        assert 0.0 <= errors["top_cut"][key] <= 1.0
    assert 0.0 <= errors["pr_auc"] <= 1.0
    duplicates = report["near_duplicates"]
    assert duplicates["injected"] == 20
    assert set(duplicates["recall_by_transform"]) == {"resize", "jpeg", "crop_5pct",
                                                      "brightness"}
    assert set(duplicates["per_10k_images_s"]) == {"dhash", "pair_search",
                                                   "embedding_if_not_cached"}
    assert set(report["similar"]) == {"300", "600"}
    assert out.with_suffix(".png").stat().st_size > 0
