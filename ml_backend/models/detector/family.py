"""The detector family of a running process: the configured YOLO checkpoint and each
project's fine-tuned detector (loaded once per file, a failed file remembered until it
changes), and boxes for a batch of tasks."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.settings import Settings
from ml_backend.core.store import ModelStore, ModelVersion
from ml_backend.core.task_images import ImageBatch
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily
from ml_backend.labelstudio.results import combine_outputs
from ml_backend.learning.selection import Strategy
from ml_backend.models.detector.boxes import (
    DETECT_CHUNK,
    boxes_outputs,
    default_min_score,
    detect_images,
    unmapped_controls,
)
from ml_backend.models.detector.model import (
    DetectorModel,
    DetectorWeights,
    YoloDetector,
    locate_detector,
)
from ml_backend.models.detector.thresholds import tuned_threshold
from ml_backend.models.family import (
    FamilyScores,
    FileSignature,
    LoadState,
    TaskOutputs,
    file_signature,
)

log = logging.getLogger(__name__)


class DetectorFamily:
    name = ModelFamily.DETECTOR.value
    kind = ModelFamily.DETECTOR

    def __init__(self, settings: Settings, device: torch.device, store: ModelStore,
                 state: LoadState, untrained_version: str) -> None:
        self.settings = settings
        self.device = device
        self.store = store
        self._state = state
        self._untrained_version = untrained_version  # a project's version before training
        self._detectors: OrderedDict[str, YoloDetector] = OrderedDict()
        self._base: tuple[FileSignature, DetectorWeights] | None = None
        self._loaded: set[str] = set()  # digests loaded at least once
        # Detector files that failed to load, by path: (signature then, the error).
        self._failures: dict[str, tuple[FileSignature, str]] = {}

    def version_prefix(self) -> str:
        """Detector versions are named after the architecture or checkpoint (``yolov8n-v3-…``),
        in the characters version names allow."""
        stem = Path(self.settings.yolo_checkpoint or self.settings.yolo_arch).stem
        return re.sub(r"[^\w.]", "_", stem) or "yolo"

    def config_dir(self) -> Path:
        """Where Ultralytics keeps its settings for this process (never the user's home)."""
        return self.settings.cache_dir / "ultralytics"

    def status(self) -> dict[str, Any]:
        """The base detector, as /health reports it: ``ready`` only once its weights have
        loaded, ``not-loaded`` / ``loading`` before, ``error`` with the reason when the file
        is missing or failed to load (until it changes). Never loads; a stat per call, and a
        hash of the file when it changed."""
        try:
            base = self.base()
        except ModelUnavailable as exc:
            return {"status": "error", "error": str(exc)}
        if base.trained:
            where = {"weights": base.source, "path": base.spec, "digest": base.digest}
            with self._state.lock:
                loaded = base.digest in self._loaded
                failure = self._failures.get(base.spec)
            if loaded:
                return {"status": "ready", **where}
            if failure is not None and failure[0] == file_signature(base.spec):
                return {"status": "error", "error": failure[1], **where}
            loading = self._state.is_loading(f"detector:{base.digest}")
            return {"status": "loading" if loading else "not-loaded", **where}
        return {"status": "untrained", "arch": base.spec,
                "warning": "no YOLO_CHECKPOINT: no boxes until the first fine-tune trains "
                           f"{base.spec} from scratch on the project's annotations (set "
                           "YOLO_CHECKPOINT or run scripts/download_weights.py --yolo)"}

    def warm_up(self) -> None:
        if self.settings.yolo_checkpoint is None:
            return
        try:
            self.model(None)
        except ModelUnavailable as exc:
            log.error("detector unavailable: %s", exc)

    # --- loading ------------------------------------------------------------------------
    def base(self) -> DetectorWeights:
        """The configured starting point of every project's detector (see
        :func:`locate_detector`). The checkpoint is located again whenever its file changes
        (one stat per call): one copied in or replaced later is picked up without a restart,
        under its new digest."""
        checkpoint = self.settings.yolo_checkpoint
        signature = file_signature(checkpoint.expanduser() if checkpoint else None)
        with self._state.lock:
            cached = self._base
        if cached is not None and cached[0] == signature:
            return cached[1]
        base = locate_detector(str(checkpoint) if checkpoint else None, self.settings.yolo_arch)
        with self._state.lock:
            self._base = (signature, base)
        return base

    def model(self, project: int | None) -> DetectorModel | None:
        """The project's latest fine-tuned detector, else the configured checkpoint, else
        None (untrained: only an architecture config). Loaded once per weights file."""
        return self.model_and_threshold(project)[0]

    def model_and_threshold(self, project: int | None
                            ) -> tuple[DetectorModel | None, float | None]:
        """:meth:`model`, and the box threshold its training chose for the least annotator
        fix-up time (None: a checkpoint, or a version that chose none), read from the same
        version so the two cannot come from different rounds."""
        version = self.store.latest(project) if project is not None else None
        info = version.manifest.get("detector") if version is not None else None
        tuned = None
        if version is not None and info:
            name, path, digest = version.name, version.file(info["file"]), info["digest"]
            tuned = tuned_threshold(info)
        else:
            base = self.base()
            if not base.trained:
                return None, None
            name = version.name if version is not None else self._untrained_version
            path, digest = base.spec, base.digest
        with self._state.lock:
            detector = self._detectors.get(digest)
        if detector is None:
            with self._state.load_lock:
                with self._state.lock:
                    detector = self._detectors.get(digest)
                if detector is None:
                    detector = self._load(Path(path), digest, version,
                                          info["file"] if info else None)
        return DetectorModel(name, detector, digest), tuned

    def _load(self, path: Path, digest: str, version: ModelVersion | None,
              file_name: str | None) -> YoloDetector:
        """Load one detector file (caller holds the load lock). A file that failed is not
        read again until it changes: the error is raised from memory, so a broken
        checkpoint costs one load per file, not one per request."""
        signature = file_signature(path)
        with self._state.lock:
            failure = self._failures.get(str(path))
        if failure is not None and failure[0] == signature:
            raise ModelUnavailable(failure[1])
        try:
            with self._state.marking(f"detector:{digest}"):
                if version is not None and file_name is not None:
                    try:  # a damaged file must not load: verify it against the manifest
                        version.read_bytes(file_name)
                    except OSError as exc:
                        raise ModelUnavailable(f"detector of {version.name}: {exc}") from exc
                detector = YoloDetector(path, self.config_dir(), str(self.device),
                                        self.settings.detector_image_size)
        except ModelUnavailable as exc:
            with self._state.lock:
                self._failures[str(path)] = (signature, str(exc))
            raise
        log.info("detector %s loaded from %s", digest, path)
        with self._state.lock:
            self._failures.pop(str(path), None)
            self._loaded.add(digest)
            self._detectors[digest] = detector
            while len(self._detectors) > 4:
                self._detectors.popitem(last=False)
        return detector

    # --- batch prediction ---------------------------------------------------------------
    def score_batch(self, batch: ImageBatch, controls: tuple[ControlSpec, ...],
                    project: int | None, strategy: Strategy) -> FamilyScores | None:
        """Boxes for every task, or None when there is no detector to use (untrained, or its
        weights are unavailable: reported in /health, the other controls still predict).
        ``strategy`` is the classifier's; a detection's uncertainty is its own."""
        if not controls:
            return None
        try:
            model, tuned = self.model_and_threshold(project)
        except ModelUnavailable as exc:
            log.error("project %s: detector unavailable, no boxes: %s", project, exc)
            return None
        if model is None:
            return None
        unmapped = unmapped_controls(model, controls)
        if unmapped:
            log.warning("project %s: the detector's classes match no label of %s (map them "
                        "with predicted_values on <Label>)", project, unmapped)
        # A control's model_score_threshold still wins over this (detect_images).
        threshold = default_min_score(self.settings.detector_min_score, tuned)
        outputs: dict[int, TaskOutputs] = {}
        for key in dict.fromkeys(c.value_key for c in controls):
            group = [c for c in controls if c.value_key == key]
            for loaded in batch.chunks(key, DETECT_CHUNK):
                if not loaded:
                    continue
                boxes = detect_images(model, group, [image.rgb() for _, image in loaded],
                                      threshold)
                for (row, _), found in zip(loaded, boxes, strict=True):
                    combined = combine_outputs([outputs.get(row), boxes_outputs(found)])
                    if combined is not None:
                        outputs[row] = combined
        return FamilyScores(ModelFamily.DETECTOR, model.version, controls, outputs,
                            {r: {"detection": o[1]} for r, o in outputs.items()})
