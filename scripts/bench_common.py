"""Pieces the benchmark scripts share: a simulated annotator in place of Label Studio's API,
and writing a report (JSON on stdout and to disk, plus a plot)."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.core.settings import Settings
from ml_backend.devtools.datasets import SHAPE_CLASSES, ShapeScene
from ml_backend.labelstudio.api import LabeledTask, labeled_tasks_from_export
from ml_backend.models.detector.model import DetectionSample


class SimulatedAnnotator:
    """Stands in for Label Studio's API in the training jobs: the label config, and the
    annotations given so far as its export returns them."""

    def __init__(self, label_config: str) -> None:
        self.config = label_config
        self.done: dict[int, dict[str, Any]] = {}

    def annotate(self, task: dict[str, Any], result: list[dict[str, Any]]) -> None:
        self.done[task["id"]] = {**task, "annotations": [{
            "id": task["id"], "updated_at": f"{time.time():.6f}", "result": result}]}

    def label_config(self, project: int) -> str:
        return self.config

    def labeled_tasks(self, project: int) -> list[LabeledTask]:
        return labeled_tasks_from_export(list(self.done.values()))

    def set_model_version(self, project: int, version: str, is_ours: Any,
                          retitle: bool = True) -> None:
        return None


def write_report(report: dict[str, Any], out: Path,
                 plot: Callable[[dict[str, Any], Path], None]) -> None:
    """Print ``report`` as JSON and save it as ``out.json`` with ``plot``'s ``out.png``."""
    text = json.dumps(report, indent=1)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(text + "\n")
    plot(report, out.with_suffix(".png"))


@contextlib.contextmanager
def serve_loopback(app: Callable[..., Any]) -> Iterator[str]:
    """Serve a WSGI ``app`` on 127.0.0.1 (threaded, like gunicorn's gthread workers) for the
    duration of the block; yields its base URL."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="bench-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def save_random_sam(model_type: str, path: Path, seed: int = 0) -> Path:
    """A randomly initialised SAM of ``model_type`` saved as a state-dict checkpoint (what
    SAM_CHECKPOINT points at): real architecture, no downloaded weights. Timing only."""
    import torch

    from ml_backend.models.sam.loading import build_sam_model

    if not path.is_file():
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_sam_model(model_type).state_dict(), path)
    return path


def sample_photo(name: str) -> np.ndarray:
    """One of the photos Ultralytics ships (``bus.jpg``, ``zidane.jpg``) as RGB pixels,
    found without importing ultralytics (which would write its settings file)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ultralytics (for its bundled sample photos) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / name
    if not path.is_file():
        raise SystemExit(f"no sample photo {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


@contextlib.contextmanager
def serve_backend(env: dict[str, str], log_path: Path, serve_args: list[str],
                  ready: Callable[[dict[str, Any]], bool]) -> Iterator[str]:
    """``ml-backend serve`` (gunicorn unless ``--dev``) on 127.0.0.1 in a child process, as in
    production; yields its URL once ``ready(health)`` holds (``ready`` may raise to give up).
    The client never shares the server's interpreter."""
    import os
    import socket
    import subprocess
    import sys

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "ml_backend.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), *serve_args],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while True:
                if child.poll() is not None:
                    raise RuntimeError(f"the backend exited: {log_path.read_text()[-2000:]}")
                try:
                    if ready(requests.get(f"{base}/health", timeout=5).json()):
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass  # not listening yet, or busy loading models on a loaded machine
                if time.monotonic() > deadline:
                    raise RuntimeError("the backend was not ready within 600 s")
                time.sleep(0.5)
            yield base
        finally:
            child.terminate()
            child.wait(timeout=30)


def measure_in_workdir(workdir: Path | None, prefix: str,
                       measure: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """``measure(folder)`` in ``workdir`` (kept) or a temporary folder (deleted), with the
    run's total ``seconds`` added to its report."""
    import tempfile

    started = time.perf_counter()
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        report = measure(workdir)
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            report = measure(Path(tmp))
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def classifier_accuracy(runtime: Any, project: int, control: str,
                        heldout: list[tuple[Path, str]]) -> float | None:
    """Held-out accuracy of the project's current classifier head for ``control`` on local
    image files with their true choice (None while the project has no classifier). The
    runtime's ``local_files_document_root`` must hold the files."""
    from ml_backend.labelstudio.api import LabeledTask
    from ml_backend.models.classifier.training import embed_images, fetch_images

    model = runtime.classifier.model(project)
    if model is None or control not in model.heads:
        return None
    root = runtime.settings.local_files_document_root
    tasks = [LabeledTask(i + 1, {"image": f"/data/local-files/?d={path.relative_to(root)}"},
                         0, "", []) for i, (path, _) in enumerate(heldout)]
    rows, x = embed_images(runtime, model.embedder, fetch_images(runtime, tasks, "image"))
    head = model.heads[control]
    predicted = np.asarray(head.labels)[head.predict_proba(x).argmax(axis=1)]
    truth = np.asarray([heldout[r][1] for r in rows])
    return float((predicted == truth).mean()) if len(rows) else None


def heldout_yolo_dataset(root: Path, scenes: list[tuple[Path, Any]]) -> Path:
    """A YOLO ``data.yaml`` with every ``(image file, devtools.datasets.ShapeScene)`` in its
    validation split, for :func:`detector_map`."""
    from ml_backend.devtools.datasets import SHAPE_CLASSES
    from ml_backend.models.detector.model import DetectionSample, write_yolo_dataset

    samples = [DetectionSample(f"h{i}", path.read_bytes(), path.suffix, scene.xyxy,
                               np.array([SHAPE_CLASSES.index(lab) for lab in scene.labels]),
                               scene.pixels.shape[1], scene.pixels.shape[0])
               for i, (path, scene) in enumerate(scenes)]
    return write_yolo_dataset(root, samples, SHAPE_CLASSES, [True] * len(samples))


def detector_map(runtime: Any, project: int, data_yaml: Path, image_size: int
                 ) -> tuple[float, float] | None:
    """(mAP50, mAP50-95) of the project's newest detector version on ``data_yaml``'s
    validation split, by Ultralytics' validator (None while no version has a detector)."""
    from ml_backend.models.detector.model import ultralytics_module

    version = runtime.store.latest(project)
    if version is None or not version.manifest.get("detector"):
        return None
    yolo = ultralytics_module(runtime.detector.config_dir()).YOLO
    model = yolo(str(version.file(version.manifest["detector"]["file"])), task="detect")
    metrics = model.val(data=str(data_yaml), imgsz=image_size, batch=16, device="cpu",
                        workers=0, plots=False, verbose=False,
                        project=str(runtime.settings.cache_dir / "val"), name="run",
                        exist_ok=True)
    return float(metrics.box.map50), float(metrics.box.map)


def digits_images(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``load_digits`` as the benchmarks render them: dark on white, 32 px, RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for image in digits.images[:count]:
        grey = 255 - (image / 16.0 * 255).astype(np.uint8)
        big = np.asarray(Image.fromarray(grey).resize((32, 32), Image.NEAREST))
        images.append(np.repeat(big[:, :, None], 3, axis=2))
    return images, np.asarray(digits.target[:count])


DETECTOR_BATCH = Settings.detector_batch  # the shipped DETECTOR_BATCH


def scene_sample(name: str, scene: ShapeScene) -> DetectionSample:
    """A shape scene as the fine-tune job's training sample: PNG bytes and class indices."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(scene.pixels).save(buffer, format="PNG")
    return DetectionSample(name, buffer.getvalue(), ".png", scene.xyxy,
                           np.array([SHAPE_CLASSES.index(lab) for lab in scene.labels]),
                           scene.pixels.shape[1], scene.pixels.shape[0])
