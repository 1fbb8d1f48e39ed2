#!/usr/bin/env python3
"""The demo: a real Label Studio, the backend, 200 handwritten digits and 100 shapes images,
ready to label.

Starts Label Studio (data kept under ``var/demo/label-studio``), starts ``ml-backend serve``
(models and caches under ``var/demo``), renders the digits, creates the project "Digits
(active learning)", connects the backend, adds the "Most informative first" view and uploads
the images in a seeded shuffled order; the import's webhook has the backend order the queue
for coverage before any label exists (the cold start). Then the same for "Shapes
(detection)" (synthetic circles, squares and triangles to box; the detector trains from
scratch on the first boxes), whose predictions are retrieved. Then prints where to log in
and runs until Ctrl-C.
A second run reuses the same data dir and project.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROJECT_TITLE = "Digits (active learning)"
DIGIT_CONFIG = REPO / "labeling_configs" / "digit_classification.xml"
SHAPES_TITLE = "Shapes (detection)"
SHAPES_CONFIG = REPO / "labeling_configs" / "shapes_detection.xml"
UPLOAD_SEED = 0  # the shuffled upload order is the same on every run


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "var" / "demo")
    parser.add_argument("--ls-port", type=int, default=8080, help="used when free")
    parser.add_argument("--backend-port", type=int, default=9090, help="used when free")
    parser.add_argument("--count", type=int, default=200, help="digit images to upload")
    parser.add_argument("--shapes", type=int, default=100,
                        help="shapes images for the detection project (0: none)")
    parser.add_argument("--exit-after-setup", action="store_true",
                        help="stop everything once the project is ready (smoke test)")
    return parser.parse_args(argv)


def _pick_port(preferred: int) -> int:
    from ml_backend.devtools.local_label_studio import free_port, port_is_free

    return preferred if port_is_free(preferred) else free_port()


def _wait_health(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"backend exited with {process.returncode}; {log}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if json.loads(response.read()).get("status") == "UP":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"backend not healthy on {url} after {timeout:.0f} s; see {log}")


def _start_backend(port: int, data_dir: Path, ls: Any) -> subprocess.Popen[bytes]:
    """Run ``ml-backend serve`` in its own process group, logging to ``backend.log``."""
    exe = Path(sys.executable).parent / "ml-backend"
    command = [str(exe)] if exe.exists() else [shutil.which("ml-backend") or "ml-backend"]
    env = dict(os.environ)
    env.update(
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.api_key,
        MODEL_DIR=str(data_dir / "models"),
        CACHE_DIR=str(data_dir / "cache"),
        LOCAL_FILES_DOCUMENT_ROOT=str(ls.document_root),
        UPLOAD_DIR=str(ls.data_dir / "media" / "upload"),  # same machine: read uploads directly
        # The shapes are at most 320 px: train and detect at that size (faster on a CPU).
        DETECTOR_IMAGE_SIZE=env.get("DETECTOR_IMAGE_SIZE", "320"),
    )
    log = (data_dir / "backend.log").open("ab")
    return subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def shuffled(paths: Sequence[Path], seed: int = UPLOAD_SEED) -> list[Path]:
    """``paths`` in a seeded random order. The upload order becomes the task-id order, which
    Label Studio lists until scores exist; rendered files come in a systematic order (the
    digits one class after another, round robin) that must not show through."""
    return random.Random(seed).sample(list(paths), len(paths))


def _wait_for_queue(backend_url: str, project_id: int, count: int, timeout: float) -> bool:
    """Until the backend has ranked ``count`` unlabeled tasks of the project (GET
    /ranking/<project>): the cold-start queue is written to Label Studio then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{backend_url}/ranking/{project_id}?limit=1",
                                        timeout=5) as response:
                if json.loads(response.read()).get("n_unlabeled", 0) >= count:
                    return True
        except (OSError, ValueError):  # 404 until the first ranking
            pass
        time.sleep(1.0)
    return False


def _setup_project(client: Any, ls: Any, backend_url: str, title: str, config: Path,
                   images: Callable[[], list[Path]], cold_start: bool = False) -> int:
    """Create (or find again) a demo project; make sure it points at ``backend_url``.

    A new project is connected to the backend before its images are uploaded, so the
    import's TASKS_CREATED webhook reaches it: for a classification project (``cold_start``)
    the backend embeds the new tasks and writes a queue ordered for coverage before any
    label exists. Otherwise (or when that queue does not come in time) the predictions are
    retrieved from the backend."""
    from ml_backend.devtools import project_setup as ps

    existing = [p for p in client.projects.list() if p.title == title]
    if existing:
        project_id = int(existing[0].id)
        print(f"reusing project {project_id} ({title})")
        for backend in client.ml.list(project=project_id):
            if backend.url != backend_url:
                client.ml.update(id=backend.id, url=backend_url)
        if not list(client.ml.list(project=project_id)):
            ps.connect_backend(client, project_id, backend_url)
        return project_id

    project_id = ps.create_project(client, title, config)
    ps.connect_backend(client, project_id, backend_url)
    ps.create_informative_view(client, project_id)
    task_ids = ps.upload_images(ls.url, ls.api_key, project_id, shuffled(images()))
    print(f"project {project_id} ({title}): uploaded {len(task_ids)} images")
    started = time.monotonic()
    if cold_start and _wait_for_queue(backend_url, project_id, len(task_ids), timeout=300):
        print(f"queue ordered for coverage (cold start) in {time.monotonic() - started:.1f} s")
        return project_id
    try:
        ps.retrieve_predictions(client, project_id)
        print(f"predictions retrieved in {time.monotonic() - started:.1f} s")
    except Exception as exc:  # tasks still get predictions when opened
        print(f"warning: retrieving predictions failed ({exc}); they come on task open")
    return project_id


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo until Ctrl-C (or until set up, with ``--exit-after-setup``)."""
    args = _parse(argv)
    sys.path.insert(0, str(REPO))
    from label_studio_sdk import LabelStudio

    from ml_backend.devtools.local_label_studio import LocalLabelStudio

    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    # Explicit handlers: a shell's background job starts with SIGINT ignored.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    backend: subprocess.Popen[bytes] | None = None
    ls = LocalLabelStudio(data_dir / "label-studio", port=_pick_port(args.ls_port),
                          username="admin@example.com")
    try:
        print("starting Label Studio (first start migrates its database: ~1 min) ...")
        ls.start()
        print(f"Label Studio up on {ls.url} after {ls.startup_seconds:.1f} s")
        backend_port = _pick_port(args.backend_port)
        backend_url = f"http://127.0.0.1:{backend_port}"
        backend = _start_backend(backend_port, data_dir, ls)
        _wait_health(backend_url, backend, data_dir / "backend.log", timeout=180)
        print(f"backend up on {backend_url}")
        client = LabelStudio(base_url=ls.url, api_key=ls.api_key)
        from ml_backend.devtools.datasets import write_digit_pngs, write_shape_pngs

        project_id = _setup_project(
            client, ls, backend_url, PROJECT_TITLE, DIGIT_CONFIG,
            lambda: [p for p, _ in write_digit_pngs(data_dir / "digits", count=args.count,
                                                    size=64, seed=0)],
            cold_start=True)
        shapes_id = None
        if args.shapes:
            shapes_id = _setup_project(
                client, ls, backend_url, SHAPES_TITLE, SHAPES_CONFIG,
                lambda: [p for p, _ in write_shape_pngs(data_dir / "shapes", args.shapes)])
        print("\n" + "=" * 64)
        print(f"  Label Studio : {ls.url}/projects/{project_id}/data")
        if shapes_id is not None:
            print(f"  Detection    : {ls.url}/projects/{shapes_id}/data  (boxes appear after "
                  "the first fine-tune: 8 boxed images)")
        print(f"  username     : {ls.username}")
        print(f"  password     : {ls.password}")
        print(f"  API key      : {ls.api_key}")
        print(f"  ML backend   : {backend_url}  (log: {data_dir / 'backend.log'})")
        print("  Open the 'Most informative first' tab and label from the top.")
        print("=" * 64 + "\nPress Ctrl-C to stop.", flush=True)
        while not args.exit_after_setup and not stop_requested:
            if backend.poll() is not None:
                print(f"backend exited with {backend.returncode}; see backend.log")
                return 1
            if not ls.is_running():
                print(f"Label Studio exited; see {ls.log_path}")
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(backend)
        ls.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
