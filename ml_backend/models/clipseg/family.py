"""The CLIPSeg family of a running process: the text-prompted segmenter (loaded once, a model
that failed remembered until its files change) and an LRU of image activations, so an image
costs one backbone pass however many prompts it gets."""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.lru import BoundedLRU
from ml_backend.core.settings import Settings
from ml_backend.labelstudio.label_config import ModelFamily
from ml_backend.models.clipseg.model import (
    ClipSegActivations,
    TextSegmenter,
    load_clipseg,
    locate_clipseg,
)
from ml_backend.models.family import LoadState

log = logging.getLogger(__name__)


class ClipSegFamily:
    name = ModelFamily.TEXT_SEGMENTER.value

    def __init__(self, settings: Settings, device: torch.device, state: LoadState) -> None:
        self.settings = settings
        self.device = device
        self._state = state
        self._load_lock = threading.Lock()
        self._model: TextSegmenter | None = None
        self._failure: tuple[str, str] | None = None  # (model digest, error)
        self.activations: BoundedLRU[tuple[str, str], ClipSegActivations] = \
            BoundedLRU(settings.clipseg_cache_mb * 2**20, lambda a: a.nbytes)

    def version_prefix(self) -> None:
        return None

    def configured(self) -> bool:
        """Whether CLIPSEG_MODEL is set: its controls are then served (or reported failing)."""
        return bool(self.settings.clipseg_model)

    def status(self) -> dict[str, Any]:
        """CLIPSeg as /health reports it (never loads)."""
        with self._state.lock:
            model, failure = self._model, self._failure
        if model is not None:
            return {"status": "ready", "model": self.settings.clipseg_model,
                    "model_id": model.model_id, "activations_cached": len(self.activations),
                    **model.counts}
        if failure is not None:
            return {"status": "error", "error": failure[1]}
        try:
            locate_clipseg(self.settings.clipseg_model)
        except ModelUnavailable as exc:
            return {"status": "error", "error": str(exc)}
        return {"status": "not-loaded", "model": self.settings.clipseg_model}

    def warm_up(self) -> None:
        if not self.configured():
            return
        try:
            self.model()
        except ModelUnavailable as exc:
            log.error("CLIPSeg unavailable: %s", exc)

    def model(self) -> TextSegmenter:
        """CLIPSeg, loaded once per process. Raises ModelUnavailable saying what to set or
        run; a model that failed to load is not retried until its files change."""
        with self._state.lock:
            if self._model is not None:
                return self._model
        with self._load_lock:
            if self._model is not None:
                return self._model
            weights = locate_clipseg(self.settings.clipseg_model)
            with self._state.lock:
                failure = self._failure
            if failure is not None and failure[0] == weights.digest:
                raise ModelUnavailable(failure[1])
            try:
                model = load_clipseg(weights, self.device)
            except ModelUnavailable as exc:
                with self._state.lock:
                    self._failure = (weights.digest, str(exc))
                raise
            log.info("CLIPSeg %s loaded from %s", weights.model_id, weights.path)
            with self._state.lock:
                self._model, self._failure = model, None
            return model

    def image_activations(self, model: TextSegmenter, sha256: str, pixels: np.ndarray
                          ) -> tuple[ClipSegActivations, str]:
        """The image's vision activations and where they came from (``memory`` or
        ``computed``): one backbone pass per image while it stays in the LRU."""
        key = (model.model_id, sha256)
        found = self.activations.get(key)
        if found is not None:
            return found, "memory"
        found = model.encode_image(pixels)
        self.activations.put(key, found)
        return found, "computed"
