"""The heavy, long-lived objects of one process, built once from settings.

The HTTP server and the RQ worker each build one :class:`Runtime`; request handlers and jobs
receive it explicitly. Models are loaded lazily (first use or the warm-up thread), never by
``/health`` or ``/setup``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ml_backend.core.errors import LabelStudioNotConfigured, ModelUnavailable
from ml_backend.core.images import ImageLoader
from ml_backend.core.lru import BoundedLRU
from ml_backend.core.metrics import Metrics
from ml_backend.core.settings import Device, Settings
from ml_backend.core.store import ModelStore, ModelVersion
from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.learning.heads import LinearHead
from ml_backend.models.classifier.embeddings import EmbeddingCache
from ml_backend.models.classifier.model import (
    BackboneWeights,
    ResNetEmbedder,
    load_backbone,
    locate_weights,
)
from ml_backend.models.clipseg.model import (
    ClipSegActivations,
    TextSegmenter,
    load_clipseg,
    locate_clipseg,
)
from ml_backend.models.detector.model import DetectorWeights, YoloDetector, locate_detector
from ml_backend.models.sam.embeddings import SamEmbeddingStore
from ml_backend.models.sam.model import SamSegmenter, SamWeights, load_sam, locate_sam

log = logging.getLogger(__name__)


def resolve_device(device: Device) -> torch.device:
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ModelUnavailable("DEVICE=cuda but no CUDA device is available")
    return torch.device(device.value)


# A file's path, size, mtime (ns) and inode: one stat that changes when the file is replaced
# or rewritten. A load that failed is not retried until its file's signature changes.
FileSignature = tuple[str, int, int, int]


def file_signature(path: Path | str | None) -> FileSignature:
    """The :data:`FileSignature` of ``path``; a missing file (or none) has size 0."""
    if path is None:
        return ("", 0, 0, 0)
    try:
        stat = Path(path).stat()
    except FileNotFoundError:  # reported by whoever locates it; here only "not this file"
        return (str(path), 0, 0, 0)
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def version_index(name: str) -> int | None:
    """The ``n`` of a version named ``{arch}-v{n}-{time}`` (versions of one project count
    up), or None for other names."""
    match = re.fullmatch(r"[\w.]+-v(\d+)-\w+", name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ClassifierModel:
    """What predicting with one classifier version needs: the embedder and its heads."""

    version: str
    embedder: ResNetEmbedder
    heads: dict[str, LinearHead]


@dataclass(frozen=True)
class DetectorModel:
    """What predicting boxes needs: the loaded detector and the version it belongs to."""

    version: str
    detector: YoloDetector
    digest: str


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # This process's counters: /metrics exports them, whoever counted (requests or jobs).
        self.metrics = Metrics()
        self.store = ModelStore(settings.model_dir)
        self.images = ImageLoader(settings)
        self.embedding_cache = EmbeddingCache(settings.cache_dir / "embeddings")
        self.sam_embeddings = SamEmbeddingStore(settings.cache_dir / "sam",
                                                settings.sam_embedding_memory_mb * 2**20,
                                                settings.sam_embedding_disk_mb * 2**20)
        self.device = resolve_device(settings.device)
        self.ls_api: LabelStudioAPI | None = None
        if settings.label_studio_url and settings.label_studio_api_key:
            self.ls_api = LabelStudioAPI(settings.label_studio_url,
                                         settings.label_studio_api_key)
        self._lock = threading.Lock()  # guards the small state below; never held while loading
        self._load_lock = threading.Lock()  # serialises slow loads
        # Families being loaded now ("classifier", "detector:<digest>"), for /health.
        self._loading: set[str] = set()
        self._weights: BackboneWeights | None = None  # located, not necessarily loaded
        self._weights_failure: tuple[FileSignature, str] | None = None
        self._base_loaded = False  # the base backbone has been loaded into an embedder
        self._embedders: OrderedDict[str, ResNetEmbedder] = OrderedDict()
        self._heads: OrderedDict[str, dict[str, LinearHead]] = OrderedDict()
        self._detectors: OrderedDict[str, YoloDetector] = OrderedDict()
        self._detector_base: tuple[FileSignature, DetectorWeights] | None = None
        self._detectors_loaded: set[str] = set()  # digests loaded at least once
        # Detector files that failed to load, by path: (signature then, the error).
        self._detector_failures: dict[str, tuple[FileSignature, str]] = {}
        self._sam_lock = threading.Lock()  # SAM loads apart: a slow one blocks no classifier
        self._sam: SamSegmenter | None = None
        self._sam_failure: tuple[tuple[str, int, float], str] | None = None
        self._clipseg_lock = threading.Lock()
        self._clipseg: TextSegmenter | None = None
        self._clipseg_failure: tuple[str, str] | None = None  # (model digest, error)
        self.clipseg_activations: BoundedLRU[tuple[str, str], ClipSegActivations] = \
            BoundedLRU(settings.clipseg_cache_mb * 2**20, lambda a: a.nbytes)

    def label_studio(self, purpose: str) -> LabelStudioAPI:
        """The Label Studio API client, or LabelStudioNotConfigured saying that ``purpose``
        (e.g. "re-ranking") needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."""
        if self.ls_api is None:
            raise LabelStudioNotConfigured(purpose)
        return self.ls_api

    # --- status (cheap, never loads anything) -----------------------------------------
    def classifier_status(self) -> dict[str, Any]:
        """The base backbone as /health reports it: ``ready`` (or ``degraded`` on a random
        init) only once it has loaded; ``not-loaded`` / ``loading`` before; ``error`` with
        the reason when locating or loading it failed."""
        with self._lock:
            failure, weights, loaded = self._weights_failure, self._weights, self._base_loaded
            loading = "classifier" in self._loading
        if failure is not None:
            return {"status": "error", "error": failure[1]}
        if weights is None or not loaded:
            status: dict[str, Any] = {"status": "loading" if loading else "not-loaded",
                                      "arch": self.settings.resnet_arch}
            if weights is not None:
                status.update(weights=weights.source, path=str(weights.path))
            return status
        status = {
            "status": "degraded" if weights.degraded else "ready",
            "arch": weights.arch, "weights": weights.source, "digest": weights.digest,
        }
        if weights.degraded:
            status["warning"] = ("no pretrained backbone found: running on a random init; set "
                                 "RESNET_CHECKPOINT or run scripts/download_weights.py")
        return status

    def detector_status(self) -> dict[str, Any]:
        """The base detector, as /health reports it: ``ready`` only once its weights have
        loaded, ``not-loaded`` / ``loading`` before, ``error`` with the reason when the file
        is missing or failed to load (until it changes). Never loads; a stat per call, and a
        hash of the file when it changed."""
        try:
            base = self.detector_base()
        except ModelUnavailable as exc:
            return {"status": "error", "error": str(exc)}
        if base.trained:
            where = {"weights": base.source, "path": base.spec, "digest": base.digest}
            with self._lock:
                loaded = base.digest in self._detectors_loaded
                loading = f"detector:{base.digest}" in self._loading
                failure = self._detector_failures.get(base.spec)
            if loaded:
                return {"status": "ready", **where}
            if failure is not None and failure[0] == file_signature(base.spec):
                return {"status": "error", "error": failure[1], **where}
            return {"status": "loading" if loading else "not-loaded", **where}
        return {"status": "untrained", "arch": base.spec,
                "warning": "no YOLO_CHECKPOINT: no boxes until the first fine-tune trains "
                           f"{base.spec} from scratch on the project's annotations (set "
                           "YOLO_CHECKPOINT or run scripts/download_weights.py --yolo)"}

    def sam_status(self) -> dict[str, Any]:
        """SAM as /health reports it: only settings and a stat, never a load."""
        with self._lock:
            sam, failure = self._sam, self._sam_failure
        if sam is not None:
            return {"status": "ready", "model_type": self.settings.sam_model_type,
                    "model_id": sam.model_id, "embeddings": self.sam_embeddings.stats()}
        checkpoint = self.settings.sam_checkpoint
        if checkpoint is None or not checkpoint.is_file():
            try:
                locate_sam(self.settings.sam_model_type, checkpoint)
            except ModelUnavailable as exc:
                return {"status": "error", "error": str(exc)}
        if failure is not None:
            return {"status": "error", "error": failure[1]}
        return {"status": "not-loaded", "model_type": self.settings.sam_model_type,
                "checkpoint": str(checkpoint)}

    def clipseg_status(self) -> dict[str, Any]:
        """CLIPSeg as /health reports it (never loads)."""
        with self._lock:
            model, failure = self._clipseg, self._clipseg_failure
        if model is not None:
            return {"status": "ready", "model": self.settings.clipseg_model,
                    "model_id": model.model_id, "activations_cached":
                        len(self.clipseg_activations), **model.counts}
        if failure is not None:
            return {"status": "error", "error": failure[1]}
        try:
            locate_clipseg(self.settings.clipseg_model)
        except ModelUnavailable as exc:
            return {"status": "error", "error": str(exc)}
        return {"status": "not-loaded", "model": self.settings.clipseg_model}

    def clipseg_configured(self) -> bool:
        """Whether CLIPSEG_MODEL is set: its controls are then served (or reported failing)."""
        return bool(self.settings.clipseg_model)

    def text_segmenter(self) -> TextSegmenter:
        """CLIPSeg, loaded once per process. Raises ModelUnavailable saying what to set or
        run; a model that failed to load is not retried until its files change."""
        with self._lock:
            if self._clipseg is not None:
                return self._clipseg
        with self._clipseg_lock:
            if self._clipseg is not None:
                return self._clipseg
            weights = locate_clipseg(self.settings.clipseg_model)
            with self._lock:
                failure = self._clipseg_failure
            if failure is not None and failure[0] == weights.digest:
                raise ModelUnavailable(failure[1])
            try:
                model = load_clipseg(weights, self.device)
            except ModelUnavailable as exc:
                with self._lock:
                    self._clipseg_failure = (weights.digest, str(exc))
                raise
            log.info("CLIPSeg %s loaded from %s", weights.model_id, weights.path)
            with self._lock:
                self._clipseg, self._clipseg_failure = model, None
            return model

    def clipseg_image(self, model: TextSegmenter, sha256: str, pixels: Any
                      ) -> tuple[ClipSegActivations, str]:
        """The image's vision activations and where they came from (``memory`` or
        ``computed``): one backbone pass per image while it stays in the LRU."""
        key = (model.model_id, sha256)
        found = self.clipseg_activations.get(key)
        if found is not None:
            return found, "memory"
        found = model.encode_image(pixels)
        self.clipseg_activations.put(key, found)
        return found, "computed"

    def sam_configured(self) -> bool:
        """Whether a SAM checkpoint is set and exists (cheap: precompute jobs are only
        queued when they can run)."""
        checkpoint = self.settings.sam_checkpoint
        return checkpoint is not None and checkpoint.is_file()

    # --- loading ------------------------------------------------------------------------
    def segmenter(self) -> SamSegmenter:
        """The SAM model, loaded once per process. Raises ModelUnavailable with what to set
        when there is no usable checkpoint; a file that failed to load is not re-read until
        it changes."""
        with self._lock:
            if self._sam is not None:
                return self._sam
        with self._sam_lock:
            if self._sam is not None:
                return self._sam
            checkpoint = self.settings.sam_checkpoint
            signature = ("", 0, 0.0)
            if checkpoint is not None and checkpoint.is_file():
                stat = checkpoint.stat()
                signature = (str(checkpoint), stat.st_size, stat.st_mtime)
                with self._lock:
                    failure = self._sam_failure
                if failure is not None and failure[0] == signature:
                    raise ModelUnavailable(failure[1])
            weights: SamWeights = locate_sam(self.settings.sam_model_type, checkpoint)
            try:
                model = load_sam(weights, self.device)
            except ModelUnavailable as exc:
                with self._lock:
                    self._sam_failure = (signature, str(exc))
                raise
            sam = SamSegmenter(model, weights.model_id, self.device)
            log.info("SAM %s loaded from %s", weights.model_id, weights.path)
            with self._lock:
                self._sam, self._sam_failure = sam, None
            return sam

    def detector_base(self) -> DetectorWeights:
        """The configured starting point of every project's detector (see
        :func:`locate_detector`). The checkpoint is located again whenever its file changes
        (one stat per call): one copied in or replaced later is picked up without a restart,
        under its new digest."""
        checkpoint = self.settings.yolo_checkpoint
        signature = file_signature(checkpoint.expanduser() if checkpoint else None)
        with self._lock:
            cached = self._detector_base
        if cached is not None and cached[0] == signature:
            return cached[1]
        base = locate_detector(str(checkpoint) if checkpoint else None, self.settings.yolo_arch)
        with self._lock:
            self._detector_base = (signature, base)
        return base

    def detector(self, project: int | None) -> DetectorModel | None:
        """The project's latest fine-tuned detector, else the configured checkpoint, else
        None (untrained: only an architecture config). Loaded once per weights file."""
        version = self.store.latest(project) if project is not None else None
        info = version.manifest.get("detector") if version is not None else None
        if version is not None and info:
            name, path, digest = version.name, version.file(info["file"]), info["digest"]
        else:
            base = self.detector_base()
            if not base.trained:
                return None
            name, path, digest = self.model_version(project), base.spec, base.digest
        with self._lock:
            detector = self._detectors.get(digest)
        if detector is None:
            with self._load_lock:
                with self._lock:
                    detector = self._detectors.get(digest)
                if detector is None:
                    detector = self._load_detector(Path(path), digest, version,
                                                   info["file"] if info else None)
        return DetectorModel(name, detector, digest)

    def _load_detector(self, path: Path, digest: str, version: ModelVersion | None,
                       file_name: str | None) -> YoloDetector:
        """Load one detector file (caller holds the load lock). A file that failed is not
        read again until it changes: the error is raised from memory, so a broken
        checkpoint costs one load per file, not one per request."""
        signature = file_signature(path)
        with self._lock:
            failure = self._detector_failures.get(str(path))
        if failure is not None and failure[0] == signature:
            raise ModelUnavailable(failure[1])
        try:
            with self._marking(f"detector:{digest}"):
                if version is not None and file_name is not None:
                    try:  # a damaged file must not load: verify it against the manifest
                        version.read_bytes(file_name)
                    except OSError as exc:
                        raise ModelUnavailable(f"detector of {version.name}: {exc}") from exc
                detector = YoloDetector(path, self.yolo_config_dir(), str(self.device),
                                        self.settings.detector_image_size)
        except ModelUnavailable as exc:
            with self._lock:
                self._detector_failures[str(path)] = (signature, str(exc))
            raise
        log.info("detector %s loaded from %s", digest, path)
        with self._lock:
            self._detector_failures.pop(str(path), None)
            self._detectors_loaded.add(digest)
            self._detectors[digest] = detector
            while len(self._detectors) > 4:
                self._detectors.popitem(last=False)
        return detector

    @contextmanager
    def _marking(self, key: str) -> Iterator[None]:
        """``key`` is in :attr:`_loading` while the block runs (status says ``loading``)."""
        with self._lock:
            self._loading.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._loading.discard(key)

    def yolo_config_dir(self) -> Path:
        return self.settings.cache_dir / "ultralytics"

    def base_weights(self) -> BackboneWeights:
        """The located base backbone weights. A failure to locate or load them is kept and
        raised again without another attempt until the file changes (``RESNET_CHECKPOINT``
        appears or is replaced); once loaded, the base stays fixed for the process, since
        trained heads read its embeddings (a replaced file is read at the next start)."""
        with self._lock:
            weights, failure = self._weights, self._weights_failure
        if weights is not None and failure is None:
            return weights
        # Before waiting on the load lock: another family's slow load may hold it.
        if failure is not None and failure[0] == self._base_signature(weights):
            raise ModelUnavailable(failure[1])
        with self._load_lock:
            with self._lock:
                weights, failure = self._weights, self._weights_failure
            if failure is not None:
                if failure[0] == self._base_signature(weights):
                    raise ModelUnavailable(failure[1])
                weights = None  # the file changed: locate it afresh, then load it again
            if weights is None:
                try:
                    with self._marking("classifier"):  # may write the shared random init
                        weights = locate_weights(self.settings.resnet_arch,
                                                 self.settings.resnet_checkpoint,
                                                 self.settings.model_dir)
                except ModelUnavailable as exc:
                    with self._lock:
                        self._weights_failure = (self._base_signature(None), str(exc))
                    raise
                with self._lock:
                    self._weights, self._weights_failure = weights, None
            return weights

    def _base_signature(self, weights: BackboneWeights | None) -> FileSignature:
        """What a base-weights failure waits on: the configured checkpoint, else the file
        that was located."""
        path = self.settings.resnet_checkpoint or (weights.path if weights else None)
        return file_signature(path)

    def embedder(self, version: ModelVersion | None = None) -> ResNetEmbedder:
        """The embedder for ``version``: its own fine-tuned backbone if it has one, else the
        shared base backbone. Loaded once per process and reused; a base backbone that
        fails to load is remembered (see :meth:`base_weights`)."""
        weights = self.base_weights()
        base = True
        if version is not None and version.manifest.get("backbone", {}).get("file"):
            info = version.manifest["backbone"]
            weights = BackboneWeights(weights.arch, "finetuned", version.file(info["file"]),
                                      info["digest"])
            base = False
        with self._lock:
            embedder = self._embedders.get(weights.digest)
        if embedder is not None:
            return embedder
        with self._load_lock:
            with self._lock:
                embedder = self._embedders.get(weights.digest)
            if embedder is None:
                try:
                    with self._marking("classifier" if base else f"backbone:{weights.digest}"):
                        backbone = load_backbone(weights, self.device)
                except ModelUnavailable as exc:
                    if base:
                        with self._lock:
                            self._weights_failure = (self._base_signature(weights), str(exc))
                    raise
                embedder = ResNetEmbedder(backbone, weights.digest,
                                          self.settings.classifier_image_size, self.device,
                                          self.embedding_cache)
                with self._lock:
                    self._base_loaded = self._base_loaded or base
                    self._embedders[weights.digest] = embedder
                    while len(self._embedders) > 4:
                        self._embedders.popitem(last=False)
            return embedder

    def classifier(self, project: int | None) -> ClassifierModel | None:
        """The latest trained classifier of ``project``, or None before its first training."""
        version = self.store.latest(project) if project is not None else None
        if version is None:
            return None
        with self._lock:
            heads = self._heads.get(f"{project}/{version.name}")
        if heads is None:
            heads = {
                control: LinearHead.from_bytes(version.read_bytes(info["file"]))
                for control, info in version.manifest.get("heads", {}).items()
            }
            with self._lock:
                self._heads[f"{project}/{version.name}"] = heads
                while len(self._heads) > 64:
                    self._heads.popitem(last=False)
        return ClassifierModel(version.name, self.embedder(version), heads)

    def warm_up(self) -> None:
        """Locate weights and load the base backbone, the detector's checkpoint, SAM and
        CLIPSeg when they are configured (run in a background thread), so /health says
        ``ready`` soon after start for what loads."""
        try:
            self.embedder(None)
        except ModelUnavailable as exc:
            log.error("classifier unavailable: %s", exc)
        if self.settings.yolo_checkpoint is not None:
            try:
                self.detector(None)
            except ModelUnavailable as exc:
                log.error("detector unavailable: %s", exc)
        if self.settings.sam_checkpoint is not None:
            try:
                self.segmenter()
            except ModelUnavailable as exc:
                log.error("SAM unavailable: %s", exc)
        if self.clipseg_configured():
            try:
                self.text_segmenter()
            except ModelUnavailable as exc:
                log.error("CLIPSeg unavailable: %s", exc)

    def is_our_version(self, name: str) -> bool:
        """Whether ``name`` is a version string this backend produces (for any project)."""
        prefixes = "|".join(re.escape(p) for p in (self.settings.resnet_arch,
                                                    self.detector_prefix()))
        return re.fullmatch(rf"(?:{prefixes})-v\d+-[\w]+", name) is not None

    def detector_prefix(self) -> str:
        """Detector versions are named after the architecture or checkpoint (``yolov8n-v3-…``),
        in the characters version names allow."""
        stem = Path(self.settings.yolo_checkpoint or self.settings.yolo_arch).stem
        return re.sub(r"[^\w.]", "_", stem) or "yolo"

    def untrained_version(self) -> str:
        return f"{self.settings.resnet_arch}-v0-untrained"

    def model_version(self, project: int | None) -> str:
        version = self.store.latest(project) if project is not None else None
        return version.name if version is not None else self.untrained_version()
