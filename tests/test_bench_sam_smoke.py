"""CI's reduced run of the SAM latency benchmark: the whole path (random-init checkpoint,
raw encoder and decoder, the backend served on 127.0.0.1, warm and cold clicks, JSON and plot)
for both SAM generations side by side, each a tiny encoder, with a few clicks. No timing is
asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("vit:32/2/2", "sam2.1_hiera:16/1-1-2-1")


def test_sam_latency_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_sam_latency.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_sam_latency.py"), "--archs", ",".join(ARCHS),
         "--clicks", "3", "--cold-clicks", "1", "--encode-repeats", "1",
         "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(completed.stdout) == report
    for key in ("image_size", "target", "models", "comparison", "all_targets_met",
                "torch_threads", "cpu_count"):
        assert key in report, key
    assert report["image_size"] == "1920x1080"
    assert [m["arch"] for m in report["models"]] == list(ARCHS)
    for model in report["models"]:
        for key in ("encoder_s", "decoder_ms", "server_warm_ms", "target_ms", "target_met",
                    "server_over_decoder", "cold_click_s", "counts", "overhead",
                    "response_bytes"):
            assert key in model, key
        assert set(model["server_warm_ms"]) >= {"median", "p90"}
        assert model["server_warm_ms"]["n"] == 3 and isinstance(model["target_met"], bool)
        assert model["counts"]["warm_clicks"]["memory"] == 3
        assert model["counts"]["cold_clicks"]["computed"] == 1
    assert report["comparison"]["baseline"] == ARCHS[0]
    assert set(report["comparison"][ARCHS[1]]) >= {"encoder_ratio", "cold_click_ratio"}
    assert out.with_suffix(".png").stat().st_size > 0
