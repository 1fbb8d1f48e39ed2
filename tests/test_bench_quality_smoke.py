"""CI's reduced run of the data-quality benchmark: label errors, near-duplicates and
find-similar latency on a tiny digits set, and label errors in detection with a detector
trained one epoch at 64 px (the whole in-process path, JSON and plot). No figure or timing is
asserted; the report's shape is."""

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
         "--pair-timing-rows", "300", "--det-train", "16", "--det-val", "4",
         "--det-scored", "20", "--det-epochs", "1", "--det-image-size", "64",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert json.loads(completed.stdout) == report
    (errors,) = report["label_errors"]
    assert errors["images"] == 200 and errors["flipped"] == 10
    for key in ("precision", "recall"):
        assert 0.0 <= errors["top_cut"][key] <= 1.0
    assert 0.0 <= errors["pr_auc"] <= 1.0
    pools = report["near_duplicates"]
    assert set(pools) == {"digits", "shapes"}
    assert pools["digits"]["injected"] == 20 and pools["shapes"]["injected"] == 6
    for duplicates in pools.values():
        assert set(duplicates["recall_by_transform"]) == {"resize", "jpeg", "crop_5pct",
                                                          "brightness"}
        assert set(duplicates["per_10k_images_s"]) == {"fingerprints", "pair_search",
                                                       "embedding_if_not_cached"}
    assert set(report["similar"]) == {"300", "600"}
    detection = report["detection_label_errors"]
    assert (detection["train_images"], detection["scored_images"]) == (16, 20)
    assert detection["corrupted"] == 3
    assert detection["corrupted_by_kind"] == {"swap": 1, "shift": 1, "remove": 1}
    for part in ("top_cut", "cleanlab_issues"):
        assert detection[part]["recall"] is not None and 0.0 <= detection[part]["recall"] <= 1
        precision = detection[part]["precision"]
        assert precision is None or 0.0 <= precision <= 1.0
        assert set(detection[f"{part}_recall_by_kind"]) == {"swap", "shift", "remove"}
    assert detection["top_cut"]["size"] == 3
    assert 0.0 <= detection["pr_auc"] <= 1.0
    # The product's path calibrates on the val scenes (a one-epoch detector may have too few
    # right boxes to fit); the raw confidences are reported beside it.
    calibration = detection["confidence_calibration"]
    assert calibration is None or calibration["n_images"] == 4
    raw = detection["raw_confidences"]
    assert raw["top_cut"]["size"] == 3 and 0.0 <= raw["pr_auc"] <= 1.0
    assert set(raw["top_cut_recall_by_kind"]) == {"swap", "shift", "remove"}
    for key in ("val_map50", "scored_map50"):
        assert 0.0 <= detection[key] <= 1.0
    assert out.with_suffix(".png").stat().st_size > 0
