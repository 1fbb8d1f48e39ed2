#!/usr/bin/env python3
"""Hardening report: the backend under hostile input and crashes, in one run.

1. Fuzzing: property-based requests (hypothesis) to every endpoint of the app with SAM and
   CLIPSeg configured (tiny random-init models): requests sent, 5xx answers, crashes.
2. SSRF: non-public addresses in every spelling, non-http schemes, and live redirects to
   loopback and cloud metadata from a Label Studio stand-in; all must be refused, and a
   listener on 127.0.0.1 must receive nothing. No traffic leaves the machine: this process's
   socket layer refuses anything but loopback, and non-loopback cases are decided by the
   address check before any connection.
3. Decompression bomb: a 100-megapixel PNG (12 kB) read through the image loader: a clear
   error, and the peak memory growth of that load (in a fresh process; Linux).
4. kill -9: a child process saving model versions, then one running real classifier
   training, each SIGKILLed at random moments; after every kill a fresh store must load.

Prints a table and one JSON document (also saved).

    .venv/bin/python scripts/hardening_report.py [--fuzz 2000] [--kills 20]
    .venv/bin/python scripts/hardening_report.py --only decompression_bomb   # printed only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the shared hostile inputs, fuzzer and kill harness

import netguard  # noqa: E402

netguard.install()  # before anything can open a socket: loopback only

from flask import Flask, redirect  # noqa: E402

from ml_backend.core.errors import ImageError, ImageNotAllowed  # noqa: E402
from ml_backend.core.images import ImageLoader  # noqa: E402
from ml_backend.core.settings import Settings  # noqa: E402
from ml_backend.core.url_guard import AddressPolicy  # noqa: E402

from crash_harness import (  # noqa: E402
    SAVE_KILL_DELAY_S,
    TRAIN_KILL_DELAY_S,
    kill_rounds,
    report_dict,
)
from fuzzing import fuzz  # noqa: E402
from hostile_inputs import (  # noqa: E402
    BOMB_MEMORY_LIMIT_BYTES,
    REFUSED_HOSTS,
    REFUSED_SCHEMES,
    Listener,
    measure_local_load,
    write_huge_png,
)

PARTS = ("fuzzing", "ssrf", "decompression_bomb", "kill_9")
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "hardening_report.json"


def _fuzz(work: Path, examples: int) -> dict[str, Any]:
    from app_fixture import backend_app
    from clipseg_fixture import save_tiny_clipseg
    from conftest import png_bytes
    from sam_fixture import TINY_SAM_TYPE, save_tiny_sam, square_scene

    docs = work / "docs" / "set1"
    docs.mkdir(parents=True)
    for name in ("img_1.png", "img_3.png", "img_4.png"):
        (docs / name).write_bytes(png_bytes(square_scene()))
    settings = Settings(model_dir=work / "models", cache_dir=work / "cache",
                        sam_checkpoint=save_tiny_sam(work / "sam"), sam_model_type=TINY_SAM_TYPE,
                        clipseg_model=str(save_tiny_clipseg(work / "clipseg")),
                        local_files_document_root=work / "docs", classifier_image_size=32)
    started = time.perf_counter()
    with backend_app(settings) as (client, _, jobs):
        report = fuzz(client, examples)
        jobs.wait_idle(120)
    return {"requests": report.requests, "server_errors_5xx": len(report.server_errors),
            "crashes": len(report.crashes), "statuses": dict(sorted(report.statuses.items())),
            "examples": (report.server_errors + report.crashes)[:5],
            "seconds": round(time.perf_counter() - started, 1)}


def _ssrf(work: Path) -> dict[str, Any]:
    from http_fixtures import serve_app

    def no_dns(host: str, port: int) -> list[str]:
        raise OSError(f"no lookup expected for {host}")

    policy = AddressPolicy.create(["http://ls.example:8080"], [], resolve=no_dns)
    let_through: list[str] = []

    def attempt(use: Callable[[str], Any], url: str) -> None:
        """Record ``url`` as let through unless ``use`` refuses it."""
        try:
            use(url)
            let_through.append(url)
        except ImageNotAllowed:
            pass
        except ImageError as exc:  # refused for another reason: not by the guard
            let_through.append(f"{url}: {exc}")

    checked = [f"http://{host}/latest/meta-data/" for host in REFUSED_HOSTS] + REFUSED_SCHEMES
    for url in checked:
        attempt(policy.check_url, url)
    listener = Listener()
    target = f"http://127.0.0.1:{listener.port}/secret.png"
    jumps = {"loopback": target, "metadata": "http://169.254.169.254/latest/meta-data/",
             "decimal": f"http://2130706433:{listener.port}/x.png",
             "mapped": f"http://[::ffff:127.0.0.1]:{listener.port}/x.png",
             "gopher": f"gopher://127.0.0.1:{listener.port}/_x"}
    ls = Flask("ls")

    @ls.get("/data/upload/1/<name>.png")
    def jump(name: str) -> Any:
        return redirect(jumps[name], 302)

    base, shutdown = serve_app(ls)
    loader = ImageLoader(Settings(label_studio_url=base, label_studio_api_key="k",
                                  cache_dir=work / "ssrf-cache"))
    live = [target, f"http://0x7f.1:{listener.port}/x.png",
            *(f"/data/upload/1/{name}.png" for name in jumps)]
    for url in live:
        attempt(loader.load, url)
    shutdown()
    listener.close()
    tried = len(checked) + len(live)
    return {"cases": tried, "refused": tried - len(let_through), "not_refused": let_through,
            "listener_connections": listener.accepted,
            "live_redirect_cases": len(live)}


def _bomb(work: Path) -> dict[str, Any]:
    path = work / "bomb" / "100mp.png"
    path.parent.mkdir(parents=True)
    write_huge_png(path, 10_000, 10_000)
    # In a fresh process: this one's lifetime peak (ru_maxrss) was set by the fuzzing before,
    # so it could not grow whatever the load took.
    load = measure_local_load(path, work / "bomb-cache",
                              max_pixels=Settings().max_image_pixels)
    return {"file_bytes": path.stat().st_size, "pixels": 10_000 * 10_000,
            "decoded_size_if_allowed_mb": round(10_000 * 10_000 * 3 / 2**20),
            "error": load.error,
            "peak_memory_growth_mb": round(load.peak_growth_bytes / 2**20, 1),
            "measured_as": "peak resident memory during the load minus that just before it, "
                           "in a fresh process" + ("" if load.peak_reset else
                                                   " (peak not reset: includes start-up)"),
            "bounded": load.error is not None
                       and load.peak_growth_bytes < BOMB_MEMORY_LIMIT_BYTES}


def _targets(name: str, part: dict[str, Any], kills: int) -> bool:
    if name == "fuzzing":
        return part["server_errors_5xx"] == 0 and part["crashes"] == 0
    if name == "ssrf":
        return part["refused"] == part["cases"] and part["listener_connections"] == 0
    if name == "decompression_bomb":
        return bool(part["bounded"])
    return all(k["loadable_after_kill"] == k["kills"] == kills and not k["problems"]
               for k in part.values())


def _rows(name: str, part: dict[str, Any]) -> list[tuple[str, Any, str]]:
    if name == "fuzzing":
        return [("requests fuzzed", part["requests"], ""),
                ("5xx answers", part["server_errors_5xx"], "0"),
                ("crashes", part["crashes"], "0")]
    if name == "ssrf":
        return [("SSRF cases tried / refused", f"{part['cases']} / {part['refused']}", "all"),
                ("connections reaching the loopback listener", part["listener_connections"],
                 "0")]
    if name == "decompression_bomb":
        return [("100 MP PNG: error / peak memory growth",
                 f"{'clear error' if part['error'] else 'none'} / "
                 f"{part['peak_memory_growth_mb']} MB", "error, bounded")]
    return [(f"kill -9 during {mode}: kills / store loadable",
             f"{k['kills']} / {k['loadable_after_kill']}", "every time")
            for mode, k in part.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=2000, help="fuzzed requests")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 rounds per mode")
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run this part only (repeatable); the report is then saved only "
                             "where --out says, so a partial run never replaces the full one")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to save the JSON (default for a full run: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    parts = [name for name in PARTS if name in (args.only or PARTS)]
    out = args.out or (None if args.only else DEFAULT_OUT)
    runs: dict[str, Callable[[Path], Any]] = {
        "fuzzing": lambda work: _fuzz(work / "fuzz", args.fuzz),
        "ssrf": _ssrf,
        "decompression_bomb": _bomb,
        "kill_9": lambda work: {mode: report_dict(kill_rounds(
            mode, work / f"kill-{mode}", args.kills, seed=7,
            delay_s=SAVE_KILL_DELAY_S if mode == "save" else TRAIN_KILL_DELAY_S))
            for mode in ("save", "train")},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hardening-") as tmp:
        report: dict[str, Any] = {name: runs[name](Path(tmp)) for name in parts}
    report["targets_met"] = all(_targets(name, report[name], args.kills) for name in parts)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print("| check | result | target |\n|---|---|---|", file=sys.stderr)
    for name in parts:
        for check, value, target in _rows(name, report[name]):
            print(f"| {check} | {value} | {target} |", file=sys.stderr)
    text = json.dumps(report, indent=1)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0 if report["targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
