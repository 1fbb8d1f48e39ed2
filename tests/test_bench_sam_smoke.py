"""CI's reduced run of the SAM latency benchmark: the whole path (random-init checkpoint,
raw encoder and decoder, the backend served on 127.0.0.1, warm and cold clicks, JSON and plot)
with a tiny encoder and a few clicks. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sam_latency_benchmark_reduced_run(tmp_path: Path) -> None:
    out = tmp_path / "bench_sam_latency.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_sam_latency.py"), "--arch", "vit:32/2/2",
         "--clicks", "3", "--cold-clicks", "1", "--encode-repeats", "1",
         "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(completed.stdout) == report
    for key in ("arch", "image_size", "encoder_s", "decoder_ms", "server_warm_ms", "target_ms",
                "target_met", "server_over_decoder", "cold_click_s", "counts", "overhead",
                "response_bytes", "torch_threads", "cpu_count"):
        assert key in report, key
    assert report["arch"] == "vit:32/2/2" and report["image_size"] == "1920x1080"
    assert set(report["server_warm_ms"]) >= {"median", "p90"}
    assert report["server_warm_ms"]["n"] == 3 and isinstance(report["target_met"], bool)
    assert report["counts"]["warm_clicks"]["memory"] == 3
    assert report["counts"]["cold_clicks"]["computed"] == 1
    assert out.with_suffix(".png").stat().st_size > 0
