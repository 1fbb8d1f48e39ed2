"""Fine-tuning the detector on the boxes annotators corrected.

The job reads the project's annotated tasks, writes them as a YOLO dataset (train/val split
fixed by task id, so the validation set is the same every round), warm-starts from the
current detector (else ``YOLO_CHECKPOINT``, else the architecture config from scratch),
trains a bounded number of epochs in a child process at low CPU priority (serving keeps its
latency; a crash or kill of the child leaves the store untouched), and saves a new version
with its validation mAP. The previous version keeps serving until the save.

Run as ``python -m ml_backend.models.detector.training SPEC.json`` it is that child process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml_backend.core.detections import Detections, LabeledBoxes, ls_rect_to_xyxy
from ml_backend.core.errors import BackendError, ImageError, LabelStudioUnavailable
from ml_backend.core.images import decode_image
from ml_backend.core.settings import absolute_path
from ml_backend.core.store import ModelVersion
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.labelstudio.api import LabeledTask
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, parse_label_config
from ml_backend.models.classifier.training import (
    TrainOutcome,
    _holdout,
    _sync_labels,
    after_new_version,
    carry_over,
    quality_next_jobs,
)
from ml_backend.models.detector.boxes import DETECT_CHUNK
from ml_backend.models.detector.calibration import MIN_CALIBRATION_MATCHES, fit_calibration
from ml_backend.models.detector.model import (
    DetectionSample,
    YoloDetector,
    file_digest,
    train_detector,
    write_yolo_dataset,
)
from ml_backend.models.detector.thresholds import DEFAULT_GRID, fixup_threshold
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)
LEDGER = "detector-labels"
WEIGHTS_FILE = "detector.pt"
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def boxes_of(control: ControlSpec, result: Sequence[dict[str, Any]], width: int, height: int
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``control``'s boxes in one annotation ``result``: pixel corners ``(N, 4)`` and class
    indices into ``control.labels``. None when the annotation does not label this control
    (it labels another one): an empty result means "no objects" and gives empty arrays."""
    index = {label: i for i, label in enumerate(control.labels)}
    regions = [r for r in result if r.get("from_name") == control.name
               and r.get("type") == "rectanglelabels"]
    if not regions and result:
        return None
    xyxy, classes = [], []
    for region in regions:
        value = region.get("value") or {}
        labels = [lab for lab in value.get("rectanglelabels") or [] if lab in index]
        if not labels:
            continue
        try:
            box = ls_rect_to_xyxy(value, width, height)
        except (KeyError, TypeError, ValueError):
            log.warning("detector training: skipping a malformed box: %s", value)
            continue
        if box[2] > box[0] and box[3] > box[1]:
            xyxy.append(box)
            classes.append(index[labels[0]])
    return np.array(xyxy, dtype=np.float64).reshape(-1, 4), np.array(classes, dtype=np.int64)


def detection_samples(runtime: Runtime, control: ControlSpec, labeled: Sequence[LabeledTask]
                      ) -> tuple[list[DetectionSample], list[int]]:
    """Training samples of ``control`` from annotated tasks, and their task ids. Tasks whose
    image cannot be had, or whose annotation labels only other controls, are skipped."""
    samples, ids = [], []
    for task in labeled:
        url = task.data.get(control.value_key)
        if not isinstance(url, str):
            continue
        try:
            blob, _ = runtime.images.load_bytes(url, task_id=task.task_id)
            with Image.open(io.BytesIO(blob)) as image:
                width, height, fmt = image.width, image.height, image.format or ""
        except (ImageError, LabelStudioUnavailable, OSError) as exc:
            log.warning("detector training: skipping task %s: %s", task.task_id, exc)
            continue
        if width * height > runtime.settings.max_image_pixels or fmt not in _SUFFIX:
            log.warning("detector training: skipping task %s: %s image of %dx%d",
                        task.task_id, fmt or "unknown", width, height)
            continue
        boxes = boxes_of(control, task.result, width, height)
        if boxes is None:
            continue
        samples.append(DetectionSample(f"task-{task.task_id}", blob, _SUFFIX[fmt], boxes[0],
                                       boxes[1], width, height))
        ids.append(task.task_id)
    return samples, ids


@dataclass(frozen=True)
class FineTuneSpec:
    """What the child process trains: everything is a plain value (it crosses a process)."""

    start: str
    data_yaml: str
    out_dir: str
    config_dir: str
    epochs: int
    image_size: int
    batch: int
    device: str
    warm: bool
    seed: int = 0


def move_to_idle_class(pid: int) -> None:
    """Move process ``pid`` to Linux's SCHED_IDLE class: it then runs only on cores nothing
    else wants. Set from here, not in the child, so a platform that refuses it costs a
    warning rather than the fine-tune."""
    if not hasattr(os, "sched_setscheduler"):
        log.warning("DETECTOR_TRAIN_IDLE: this platform has no SCHED_IDLE; niceness only")
        return
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        log.warning("DETECTOR_TRAIN_IDLE: could not move the training process to SCHED_IDLE "
                    "(%s); niceness only", exc)


def fine_tune(spec: FineTuneSpec, work_dir: Path, nice: int = 0,
              timeout_s: float | None = None, idle_class: bool = False) -> dict[str, Any]:
    """Run :func:`train_detector` in a child process (niceness ``nice``; in Linux's
    ``SCHED_IDLE`` class with ``idle_class``, where the platform has it) and return its
    result: ``weights`` path, ``map50``, ``map50_95``. Raises BackendError with the end of
    the child's log when it fails or runs past ``timeout_s`` (the child is killed).

    The child runs in ``work_dir``: every path it is handed is made absolute first, so a
    relative one given here cannot point elsewhere there."""
    work_dir = absolute_path(work_dir)
    spec = replace(spec, data_yaml=str(absolute_path(spec.data_yaml)),
                   out_dir=str(absolute_path(spec.out_dir)),
                   config_dir=str(absolute_path(spec.config_dir)),
                   # An architecture config (yolov8n.yaml) is a name Ultralytics resolves.
                   start=spec.start if not spec.warm else str(absolute_path(spec.start)))
    spec_path = work_dir / "spec.json"
    result_path = work_dir / "result.json"
    log_path = work_dir / "train.log"
    spec_path.write_text(json.dumps(asdict(spec)))

    def lower_priority() -> None:  # runs in the child before exec
        if nice:
            os.nice(nice)

    with open(log_path, "wb") as log_file, subprocess.Popen(
            [sys.executable, "-m", "ml_backend.models.detector.training", str(spec_path),
             str(result_path)], stdout=log_file, stderr=subprocess.STDOUT,
            preexec_fn=lower_priority, cwd=work_dir) as child:
        if idle_class:
            move_to_idle_class(child.pid)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            child.kill()
            child.wait()
            raise BackendError(f"detector fine-tune killed after {timeout_s:.0f} s "
                               "(DETECTOR_TRAIN_TIMEOUT_S)") from exc
    if code != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise BackendError(f"detector fine-tune failed (exit {code}): {tail}")
    return json.loads(result_path.read_text())


def _fingerprint(control: ControlSpec, samples: Sequence[DetectionSample], ids: Sequence[int]
                 ) -> str:
    digest = hashlib.sha256(json.dumps([control.name, list(control.labels)]).encode())
    for task_id, sample in sorted(zip(ids, samples, strict=True), key=lambda p: p[0]):
        digest.update(f"{task_id}:{sample.xyxy.round(2).tolist()}:{sample.class_ids.tolist()}"
                      .encode())
        digest.update(hashlib.sha256(sample.image).digest())
    return digest.hexdigest()[:16]


def train_detector_job(runtime: Runtime, request: TrainRequest) -> dict[str, Any]:
    """Job entry. Incremental requests train once ``DETECTOR_TRAIN_EVERY`` tasks were
    annotated since the current detector; ``full`` (START_TRAINING) trains whenever anything
    changed."""
    started = time.perf_counter()
    project = request.project
    settings = runtime.settings
    full = request.full

    def outcome(status: str, version: str | None, n: int, detail: str = "",
                next_jobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        result = TrainOutcome(project, status, version, n, time.perf_counter() - started,
                              detail, next_jobs=next_jobs or []).as_dict()
        log.info("detector training: %s", result)
        return result

    with runtime.store.locked(project, "detector"):
        config, labeled = _sync_labels(runtime, request, ledger_name=LEDGER)
        try:
            controls = parse_label_config(config).for_family(ModelFamily.DETECTOR)
        except BackendError as exc:
            return outcome("skipped", None, len(labeled), str(exc))
        if not controls:
            return outcome("skipped", None, len(labeled), "no RectangleLabels control")
        # One detector per project, trained on the first RectangleLabels control; other
        # rectangle controls use it through their labels' names.
        control = controls[0]
        previous = runtime.store.latest(project)
        current = (previous.manifest.get("detector") or {}) if previous is not None else {}
        new_labels = len(labeled) - int(current.get("n_labeled", 0))
        if not full and current and new_labels < settings.detector_train_every:
            return outcome("skipped", previous.name if previous else None, len(labeled),
                           f"{new_labels} new annotated tasks since the current detector; "
                           f"training starts at {settings.detector_train_every}")
        samples, ids = detection_samples(runtime, control, labeled)
        if len(samples) < settings.detector_min_labels:
            return outcome("no-labels", previous.name if previous else None, len(samples),
                           f"{len(samples)} usable annotated images; the detector trains "
                           f"from {settings.detector_min_labels} (DETECTOR_MIN_LABELS)")
        fingerprint = _fingerprint(control, samples, ids)
        if current.get("fingerprint") == fingerprint:
            return outcome("skipped", previous.name if previous else None, len(samples),
                           "nothing changed")
        work_dir = settings.cache_dir / "detector-train" / f"{project}-{uuid.uuid4().hex[:8]}"
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            trained = _train(runtime, control, samples, ids, previous, current, work_dir)
            weights = Path(trained["weights"]).read_bytes()
            meta = {"file": WEIGHTS_FILE, "digest": hashlib.sha256(weights).hexdigest()[:16],
                    "classes": list(control.labels), "control": control.name,
                    "fingerprint": fingerprint, "n_labeled": len(labeled),
                    **{k: trained[k] for k in ("map50", "map50_95", "epochs", "n_train",
                                               "n_val", "val_source", "start")},
                    "trained_on": trained_on(previous, current, trained)}
            meta.update(trained["fits"])  # box_threshold, confidence_calibration
            with runtime.store.locked(project):
                # Re-read: the classifier may have saved a version meanwhile; keep its parts.
                latest = runtime.store.latest(project)
                files, carried = carry_over(latest, exclude="detector")
                files[WEIGHTS_FILE] = weights
                version = runtime.store.save(project, runtime.detector.version_prefix(), files, {
                    **carried, "family": ModelFamily.DETECTOR.value, "detector": meta})
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    detail = (f"val mAP50 {meta['map50']:.3f}, mAP50-95 {meta['map50_95']:.3f} "
              f"({meta['val_source']})")
    if "box_threshold" in meta:
        detail += f"; box threshold {meta['box_threshold']['value']:.2f} (least fix-up time)"
    return outcome("trained", version.name, len(samples), detail,
                   after_new_version(runtime, project, version.name)
                   + quality_next_jobs(runtime, project))


def trained_on(previous: ModelVersion | None, current: dict[str, Any], trained: dict[str, Any]
               ) -> list[int]:
    """The task ids whose boxes this detector has seen: this round's training split and,
    when it warm-started from the previous version, that version's record (the quality job
    scores only the other annotated tasks). A previous version from before the record adds
    nothing: its rounds trained on the non-held-out tasks of their time, which this round's
    split holds again, except a task whose annotation was removed since and a round too
    small for a split (it trained on every task)."""
    warm = previous is not None and trained["start"] == f"version {previous.name}"
    inherited = current.get("trained_on", []) if warm else []
    return sorted({int(t) for t in inherited} | {int(t) for t in trained["train_ids"]})


REPEAT_MARK = "~copy"


# DETECTOR_MIN_EPOCH_IMAGES=auto: the floor bench_effort measured (160 images at 256 px); on
# a CPU it is scaled to the same pixels per epoch, so a round at 640 px stays minutes long.
AUTO_EPOCH_IMAGES = 160
AUTO_REFERENCE_SIZE = 256


def min_epoch_images(setting: int | None, image_size: int, device_type: str) -> int:
    """The images per epoch a small training split is repeated up to (0: no repeats)."""
    if setting is not None:
        return setting
    if device_type != "cpu":
        return AUTO_EPOCH_IMAGES
    scaled = AUTO_EPOCH_IMAGES * (AUTO_REFERENCE_SIZE / image_size) ** 2
    return max(1, min(AUTO_EPOCH_IMAGES, round(scaled)))


def repeat_training_images(samples: list[DetectionSample], is_val: np.ndarray, min_images: int
                           ) -> tuple[list[DetectionSample], np.ndarray]:
    """Repeat the training split (never the validation one) until an epoch holds at least
    ``min_images`` images. A from-scratch detector on a few labeled images otherwise gets one
    optimizer step per epoch and learns nothing for the first rounds; with repeats each round
    takes as many steps as one on ``min_images`` images (mosaic augmentation makes the copies
    differ)."""
    train = [s for s, val in zip(samples, is_val, strict=True) if not val]
    if not train or len(train) >= min_images:
        return samples, is_val
    copies = [dataclasses.replace(s, name=f"{s.name}{REPEAT_MARK}{k}")
              for k in range(1, -(-min_images // len(train))) for s in train]
    copies = copies[:min_images - len(train)]
    return samples + copies, np.concatenate([is_val, np.zeros(len(copies), dtype=bool)])


HELD_OUT = "held-out tasks"
# Fewer held-out images than this and one box more or less decides the threshold: the version
# then chooses none (DETECTOR_MIN_SCORE=auto falls back to the mAP default). With about one
# task in five held out, 4 images come at about 20 annotated tasks, where the offline
# experiment (issue 18) already measured a lower threshold paying off.
MIN_THRESHOLD_IMAGES = 4


def held_out_meta(predictions: Sequence[Detections], truths: Sequence[LabeledBoxes]
                  ) -> dict[str, Any]:
    """What a version's meta keeps of its held-out predictions (made at the grid's lowest
    confidence): ``box_threshold``, the threshold with the least annotator fix-up time, and
    ``confidence_calibration``, held-out precision against confidence (for the label-quality
    job; left out with too few right boxes). Pure: the label-quality benchmark calls it too."""
    choice = fixup_threshold(predictions, truths)
    calibration = fit_calibration(predictions, truths)
    log.info("detector training: box threshold %.2f for the least fix-up time on %d held-out "
             "images (seconds per image: %s); confidence calibrated on %s", choice.value,
             choice.n_images, choice.as_meta()["seconds_per_image"],
             f"{calibration.n_boxes} boxes ({calibration.n_right} right)" if calibration
             else f"nothing (fewer than {MIN_CALIBRATION_MATCHES} right boxes)")
    meta: dict[str, Any] = {"box_threshold": choice.as_meta()}
    if calibration is not None:
        meta["confidence_calibration"] = calibration.as_meta()
    return meta


def held_out_fits(runtime: Runtime, weights: Path, val: Sequence[DetectionSample],
                  labels: Sequence[str]) -> dict[str, Any]:
    """Run the new ``weights`` once over the held-out images at the grid's lowest confidence
    and return :func:`held_out_meta` of them; empty when that failed (logged): both fits are
    extras, the training stands.

    Cheap next to the fine-tune, whose validation predicted these images every epoch; here in
    the job process, through the serving detector's own predict path, a chunk of images in
    memory at a time."""
    try:
        detector = YoloDetector(weights, runtime.detector.config_dir(), str(runtime.device),
                                runtime.settings.detector_image_size)
        floor = min(DEFAULT_GRID)
        predictions = []
        for start in range(0, len(val), DETECT_CHUNK):
            chunk = val[start:start + DETECT_CHUNK]
            predictions += detector.detect(
                [decode_image(s.image, runtime.settings.max_image_pixels) for s in chunk], floor)
        truths = [LabeledBoxes(s.xyxy, tuple(labels[int(c)] for c in s.class_ids)) for s in val]
        return held_out_meta(predictions, truths)
    except Exception:  # Ultralytics and torch raise many types; logged with the traceback
        log.exception("detector training: predicting the %d held-out images for the box "
                      "threshold failed; the version has none (DETECTOR_MIN_SCORE=auto shows "
                      "it boxes from the default) and no confidence calibration", len(val))
        return {}


def _train(runtime: Runtime, control: ControlSpec, samples: list[DetectionSample],
           ids: list[int], previous: Any, current: dict[str, Any], work_dir: Path
           ) -> dict[str, Any]:
    settings = runtime.settings
    is_val = _holdout(ids)
    val_source = HELD_OUT
    if not is_val.any() or is_val.all():
        # Too few tasks for a split: validate on the training images (reported as such).
        samples = samples + samples
        is_val = np.array([False] * (len(samples) // 2) + [True] * (len(samples) // 2))
        val_source = "training images (too few tasks for a held-out split)"
    epoch_floor = min_epoch_images(settings.detector_min_epoch_images,
                                   settings.detector_image_size, runtime.device.type)
    samples, is_val = repeat_training_images(samples, is_val, epoch_floor)
    data_yaml = write_yolo_dataset(work_dir / "dataset", samples, control.labels, list(is_val))
    if current and current.get("classes") == list(control.labels) and previous is not None:
        start, source = str(previous.file(current["file"])), f"version {previous.name}"
    else:
        base = runtime.detector.base()
        start, source = base.spec, base.source
    spec = FineTuneSpec(start=start, data_yaml=str(data_yaml), out_dir=str(work_dir / "runs"),
                        config_dir=str(runtime.detector.config_dir()),
                        epochs=settings.detector_epochs, image_size=settings.detector_image_size,
                        batch=settings.detector_batch, device=str(runtime.device),
                        warm=not start.endswith((".yaml", ".yml")))
    result = fine_tune(spec, work_dir, settings.detector_train_nice,
                       settings.detector_train_timeout_s, settings.detector_train_idle)
    val = [s for s, v in zip(samples, is_val, strict=True) if v]
    fits: dict[str, Any] = {}
    if val_source == HELD_OUT and len(val) >= MIN_THRESHOLD_IMAGES:
        fits = held_out_fits(runtime, Path(result["weights"]), val, control.labels)
    else:
        log.info("detector training: no box threshold or confidence calibration: %d "
                 "held-out tasks, they take %d",
                 len(val) if val_source == HELD_OUT else 0, MIN_THRESHOLD_IMAGES)
    train_names = {s.name.split(REPEAT_MARK)[0]
                   for s, v in zip(samples, is_val, strict=True) if not v}
    return {**result, "n_train": len(train_names),
            # The first len(ids) samples are the tasks' own (copies are appended).
            "train_ids": [t for t, s in zip(ids, samples[:len(ids)], strict=True)
                          if s.name in train_names],
            "n_val": int(is_val.sum()),
            "val_source": val_source, "start": source, "fits": fits}


def main(argv: Sequence[str] | None = None) -> int:
    """Child-process entry: train the spec in ``argv[0]``, write the result to ``argv[1]``."""
    spec_path, result_path = (argv or sys.argv[1:])[:2]
    spec = FineTuneSpec(**json.loads(Path(spec_path).read_text()))
    trained = train_detector(spec.start, Path(spec.data_yaml), Path(spec.out_dir),
                             Path(spec.config_dir), epochs=spec.epochs,
                             image_size=spec.image_size, batch=spec.batch, device=spec.device,
                             warm=spec.warm, seed=spec.seed)
    Path(result_path).write_text(json.dumps({
        "weights": str(trained.weights), "map50": trained.map50,
        "map50_95": trained.map50_95, "epochs": trained.epochs,
        "digest": file_digest(trained.weights)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
