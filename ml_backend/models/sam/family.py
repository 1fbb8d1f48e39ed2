"""The SAM family of a running process: the model (loaded once, a failed checkpoint
remembered until it changes) and its store of image embeddings. SAM answers clicks, one task
at a time (see :meth:`ml_backend.pipeline.prediction.Predictor.segment`); it pre-labels no
batches."""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.settings import Settings
from ml_backend.models.family import LoadState
from ml_backend.models.sam.embeddings import SamEmbeddingStore
from ml_backend.models.sam.loading import load_sam, locate_sam
from ml_backend.models.sam.model import SamWeights, Segmenter

log = logging.getLogger(__name__)


class SamFamily:
    name = "sam"

    def __init__(self, settings: Settings, device: torch.device, state: LoadState) -> None:
        self.settings = settings
        self.device = device
        self.embeddings = SamEmbeddingStore(settings.cache_dir / "sam",
                                            settings.sam_embedding_memory_mb * 2**20,
                                            settings.sam_embedding_disk_mb * 2**20)
        self._state = state
        self._sam_lock = threading.Lock()  # SAM loads apart: a slow one blocks no classifier
        self._sam: Segmenter | None = None
        self._failure: tuple[tuple[str, int, float], str] | None = None

    def version_prefix(self) -> None:
        return None

    def configured(self) -> bool:
        """Whether a SAM checkpoint is set and exists (cheap: precompute jobs are only
        queued when they can run)."""
        checkpoint = self.settings.sam_checkpoint
        return checkpoint is not None and checkpoint.is_file()

    def status(self) -> dict[str, Any]:
        """SAM as /health reports it: only settings and a stat, never a load."""
        with self._state.lock:
            sam, failure = self._sam, self._failure
        if sam is not None:
            return {"status": "ready", "model_type": self.settings.sam_model_type,
                    "model_id": sam.model_id, "embeddings": self.embeddings.stats()}
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

    def warm_up(self) -> None:
        if self.settings.sam_checkpoint is None:
            return
        try:
            self.segmenter()
        except ModelUnavailable as exc:
            log.error("SAM unavailable: %s", exc)

    def segmenter(self) -> Segmenter:
        """The SAM model, loaded once per process. Raises ModelUnavailable with what to set
        when there is no usable checkpoint; a file that failed to load is not re-read until
        it changes."""
        with self._state.lock:
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
                with self._state.lock:
                    failure = self._failure
                if failure is not None and failure[0] == signature:
                    raise ModelUnavailable(failure[1])
            weights: SamWeights = locate_sam(self.settings.sam_model_type, checkpoint)
            try:
                sam = load_sam(weights, self.device)
            except ModelUnavailable as exc:
                with self._state.lock:
                    self._failure = (signature, str(exc))
                raise
            log.info("SAM %s loaded from %s", weights.model_id, weights.path)
            with self._state.lock:
                self._sam, self._failure = sam, None
            return sam
