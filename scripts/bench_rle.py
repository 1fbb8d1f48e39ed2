#!/usr/bin/env python3
"""Brush RLE encode time: ``ml_backend.labelstudio.rle.mask_to_rle`` vs label-studio-sdk's
``mask2rle``, side by side in one run, on a 1920×1080 mask that is smooth (one SAM-like
blob) and one that is noisy (every pixel random). Both outputs are checked to be identical.

    .venv/bin/python scripts/bench_rle.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from ml_backend.labelstudio.rle import mask_to_rle

from bench_common import write_report

REPO = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH = 1080, 1920


def _masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    # A smooth blob with a wavy outline, as a segmentation model returns.
    angle = np.arctan2(yy - 540, xx - 900)
    radius = 350 + 60 * np.sin(5 * angle) + 25 * np.cos(11 * angle)
    smooth = ((np.hypot(yy - 540, xx - 900) < radius) * 255).astype(np.uint8)
    noisy = (np.random.default_rng(0).random((HEIGHT, WIDTH)) < 0.5).astype(np.uint8) * 255
    return {"smooth": smooth, "noisy": noisy}


def _time(fn: Callable[[np.ndarray], Any], mask: np.ndarray, repeats: int
          ) -> tuple[float, Any]:
    samples, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn(mask)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), out


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["masks"])
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [report["masks"][n]["sdk_ms"] for n in names], 0.4, label="SDK mask2rle")
    ax.bar(xs + 0.2, [report["masks"][n]["ours_ms"] for n in names], 0.4,
           label="ml_backend.labelstudio.rle")
    ax.set_xticks(xs, [f"{n}\n{report['masks'][n]['speedup']}x" for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("encode time, 1920x1080 (ms, log)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our encoder")
    parser.add_argument("--sdk-repeats", type=int, default=1, help="timed runs of the SDK's")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "bench_rle")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"size": f"{WIDTH}x{HEIGHT}", "masks": {}}
    for name, mask in _masks().items():
        sdk_s, sdk_rle = _time(mask2rle, mask, args.sdk_repeats)
        ours_s, ours_rle = _time(mask_to_rle, mask, args.repeats)
        report["masks"][name] = {
            "foreground_share": round(float((mask > 0).mean()), 3),
            "rle_bytes": len(ours_rle), "identical": ours_rle == sdk_rle,
            "sdk_ms": round(1000 * sdk_s, 1), "ours_ms": round(1000 * ours_s, 1),
            "speedup": round(sdk_s / ours_s, 1)}
    write_report(report, args.out, _plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
