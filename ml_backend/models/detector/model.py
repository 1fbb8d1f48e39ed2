"""Object detection with Ultralytics YOLO: boxes for ``RectangleLabels`` controls.

Weights come from, in order: the project's latest fine-tuned version; ``YOLO_CHECKPOINT`` (a
local ``.pt`` file such as ``yolov8n.pt`` / ``yolo11n.pt``, or a project checkpoint); else no
weights at all: the architecture config (``YOLO_ARCH``, e.g. ``yolov8n.yaml``) is trained from
scratch by the first fine-tune, and until then the detector reports itself untrained in
``/health`` and predicts no boxes (random weights would be a silent fake).

Ultralytics is imported lazily and offline (see :func:`ultralytics_module`): on import it
probes public DNS, and its dataset checks fetch a font, unless told otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ml_backend.core.detections import Detections, xyxy_to_yolo
from ml_backend.core.errors import ModelUnavailable
from ml_backend.models.checkpoints import compare_state_dicts

log = logging.getLogger(__name__)

_IMPORT_LOCK = threading.Lock()
MAX_BOXES = 100  # per image: more is noise to an annotator
# Ultralytics checks for these fonts before training and downloads them when missing.
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
# Ultralytics tasks whose results carry ``boxes`` (a classify or OBB model's do not).
BOX_TASKS = ("detect", "segment", "pose")


def ultralytics_module(config_dir: Path) -> ModuleType:
    """Import ``ultralytics`` with no network use: ``YOLO_OFFLINE`` stops its DNS probe and
    update checks, its settings (``YOLO_CONFIG_DIR``) live under our cache with sync off, and
    the fonts its dataset check would download are provided locally (matplotlib's DejaVu
    Sans under the expected names; they only label plots, which we do not draw)."""
    with _IMPORT_LOCK:
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_OFFLINE"] = "true"
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
        target = Path(os.environ["YOLO_CONFIG_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        missing = [name for name in _FONTS if not (target / name).exists()]
        if missing:
            from matplotlib import font_manager

            font = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
            for name in missing:
                shutil.copyfile(font, target / name)
        # Ultralytics sets OMP_NUM_THREADS=1 on import when it is unset (for its training
        # dataloaders). Torch reads that variable for every new thread, and each request and
        # job runs on a new one (jobs/compute_threads.py): left set, every model in this
        # process would compute on one core once a detector had loaded.
        omp_threads = os.environ.get("OMP_NUM_THREADS")
        import ultralytics
        from ultralytics.utils import SETTINGS

        if omp_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)

        if SETTINGS.get("sync"):
            SETTINGS.update({"sync": False})
        return ultralytics


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Undo what Ultralytics does to the whole process: choosing the CPU sets torch's
    intra-op threads to its own training default (CPUs - 1, so 1 on a 2-core machine), which
    would slow every other model served here (SAM, the classifier) from then on."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@dataclass(frozen=True)
class DetectorWeights:
    """Where a detector starts from. ``source``: ``project`` (a fine-tuned version),
    ``checkpoint`` (``YOLO_CHECKPOINT``) or ``architecture`` (no weights: a config to train
    from scratch). ``spec`` is what ``ultralytics.YOLO`` loads: a file path or a config name."""

    source: str
    spec: str
    digest: str

    @property
    def trained(self) -> bool:
        return self.source != "architecture"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def locate_detector(checkpoint: str | None, arch: str) -> DetectorWeights:
    """The base detector: ``checkpoint`` when set (it must exist: a typo must not silently
    fall back), else the architecture config ``arch``. Asset names are never resolved online:
    ``yolov8n.pt`` means a file of that name, which ``scripts/download_weights.py`` fetches."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelUnavailable(
                f"YOLO_CHECKPOINT {checkpoint} does not exist (run scripts/download_weights.py "
                "--yolo to fetch yolov8n.pt, or unset it to train from the architecture)")
        return DetectorWeights("checkpoint", str(path), file_digest(path))
    if not arch.endswith((".yaml", ".yml")):
        raise ModelUnavailable(f"YOLO_ARCH must be an architecture config such as "
                               f"yolov8n.yaml, got {arch!r}")
    return DetectorWeights("architecture", arch, f"arch-{arch}")


def verify_architecture(model: Any, weights_path: Path) -> None:
    """Raise ModelUnavailable unless ``model``'s tensors are exactly (keys and shapes) those
    of the architecture it declares (``model.yaml``, which Ultralytics stores in the file).

    An Ultralytics ``.pt`` pickles the module itself, so loading it checks nothing: a file
    whose tensors were renamed or dropped loads, reports itself ready and fails mid-request,
    or serves a layer that lost its weights. The declared architecture is rebuilt (cheap: it
    is the config without weights) and compared; a fused checkpoint is compared with the
    fused architecture."""
    import torch

    declared = getattr(model, "yaml", None)
    if not isinstance(declared, dict):
        raise ModelUnavailable(f"YOLO weights {weights_path} declare no architecture (no "
                               "model.yaml): not a checkpoint saved by Ultralytics")
    try:
        # Building initialises weights from torch's global generator: leave it as it was.
        with torch.random.fork_rng(devices=[]):
            reference = type(model)(cfg=copy.deepcopy(declared), verbose=False)
            if model.is_fused():
                reference.fuse(verbose=False)
    except Exception as exc:  # Ultralytics' builder raises KeyError, ValueError … by cause
        raise ModelUnavailable(f"YOLO weights {weights_path}: the architecture they declare "
                               f"cannot be built to check them against: "
                               f"{type(exc).__name__}: {exc}") from exc
    problem = compare_state_dicts(model.state_dict(), reference.state_dict())
    if problem:
        raise ModelUnavailable(f"YOLO weights {weights_path} do not fit the architecture they "
                               f"declare ({declared.get('yaml_file', 'model.yaml')}): {problem}")


class YoloDetector:
    """One loaded YOLO model. Ultralytics' predictor keeps per-call state, so calls are
    serialised by a lock; load one object per weights file and reuse it."""

    def __init__(self, weights_path: Path, config_dir: Path, device: str, image_size: int
                 ) -> None:
        yolo = ultralytics_module(config_dir).YOLO
        try:
            with keep_torch_threads():
                self.model = yolo(str(weights_path), task="detect")
        except Exception as exc:  # ultralytics raises several types for unreadable files
            raise ModelUnavailable(f"cannot load YOLO weights {weights_path}: {exc}") from exc
        task = getattr(self.model, "task", None)
        if task not in BOX_TASKS:
            raise ModelUnavailable(f"YOLO weights {weights_path} are a {task!r} model, which "
                                   f"predicts no boxes (expected one of {', '.join(BOX_TASKS)})")
        verify_architecture(self.model.model, weights_path)
        names = self.model.names
        self.classes: tuple[str, ...] = tuple(str(names[i]) for i in sorted(names))
        self.device = device
        self.image_size = image_size
        self._lock = threading.Lock()

    def detect(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        """Boxes of each RGB ``(H, W, 3)`` image in one batched call, labelled with the
        model's class names, scores ≥ ``min_score``."""
        if not images:
            return []
        # Ultralytics reads numpy images as OpenCV's BGR.
        batch = [np.ascontiguousarray(image[..., ::-1]) for image in images]
        with self._lock, keep_torch_threads():
            results = self.model.predict(batch, imgsz=self.image_size, conf=min_score,
                                         device=self.device, max_det=MAX_BOXES, verbose=False)
        out = []
        for image, result in zip(images, results, strict=True):
            boxes = result.boxes
            xyxy = boxes.xyxy.cpu().numpy().astype(np.float64).reshape(-1, 4)
            classes = boxes.cls.cpu().numpy().astype(int)
            out.append(Detections(xyxy, tuple(self.classes[c] for c in classes),
                                  boxes.conf.cpu().numpy().astype(np.float64),
                                  image.shape[1], image.shape[0]))
        return out


@dataclass(frozen=True)
class DetectorModel:
    """What predicting boxes needs: the loaded detector and the version it belongs to."""

    version: str
    detector: YoloDetector
    digest: str


@dataclass(frozen=True)
class DetectionSample:
    """One training image: encoded bytes (any format PIL reads) and its boxes in pixels."""

    name: str
    image: bytes
    suffix: str
    xyxy: np.ndarray
    class_ids: np.ndarray
    width: int
    height: int


def write_yolo_dataset(root: Path, samples: Sequence[DetectionSample], names: Sequence[str],
                       is_val: Sequence[bool]) -> Path:
    """Write ``samples`` in YOLO's layout (``images/{train,val}``, ``labels/{train,val}``)
    and return the ``data.yaml`` describing it. ``is_val`` fixes each sample's split."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for sample, val in zip(samples, is_val, strict=True):
        split = "val" if val else "train"
        (root / "images" / split / f"{sample.name}{sample.suffix}").write_bytes(sample.image)
        rows = xyxy_to_yolo(sample.xyxy, sample.width, sample.height)
        lines = [f"{int(c)} {r[0]:.6f} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f}"
                 for c, r in zip(sample.class_ids, rows, strict=True) if r[2] > 0 and r[3] > 0]
        (root / "labels" / split / f"{sample.name}.txt").write_text("\n".join(lines))
    data = root / "data.yaml"
    quoted = ", ".join(f"{i}: {_yaml_str(n)}" for i, n in enumerate(names))
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
                    f"names: {{{quoted}}}\n")
    return data


def _yaml_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class TrainedDetector:
    weights: Path
    map50: float
    map50_95: float
    epochs: int


def train_detector(start: str, data_yaml: Path, out_dir: Path, config_dir: Path, *,
                   epochs: int, image_size: int, batch: int, device: str, warm: bool,
                   seed: int = 0) -> TrainedDetector:
    """Train ``start`` (a weights file or an architecture config) on ``data_yaml`` for
    ``epochs`` and validate it on the dataset's val split. A warm start skips the learning-rate
    warm-up: the weights are already trained, a ramp from zero would waste short rounds.
    One optimizer step per batch (``nbs=batch``): Ultralytics otherwise accumulates gradients
    to 64 images, which leaves a 200-image round with three updates per epoch."""
    yolo = ultralytics_module(config_dir).YOLO
    model = yolo(start, task="detect")
    args: dict[str, Any] = dict(
        data=str(data_yaml), epochs=epochs, imgsz=image_size, batch=batch, nbs=batch,
        device=device,
        project=str(out_dir), name="run", exist_ok=True, workers=0, plots=False,
        verbose=False, amp=False, seed=seed, deterministic=False, patience=epochs,
        close_mosaic=max(1, epochs // 4), warmup_epochs=0.0 if warm else min(3.0, epochs / 4),
    )
    model.train(**args)
    trainer = model.trainer
    weights = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    metrics = getattr(trainer, "metrics", None) or {}
    return TrainedDetector(weights, float(metrics.get("metrics/mAP50(B)", 0.0)),
                           float(metrics.get("metrics/mAP50-95(B)", 0.0)), epochs)
