"""The classifier family of a running process: the ResNet backbone (loaded once, remembered
when it fails), each project's linear heads, and Choices for a batch of tasks."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.settings import Settings
from ml_backend.core.store import ModelStore, ModelVersion
from ml_backend.core.task_images import ImageBatch, TaskImage
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily
from ml_backend.labelstudio.results import classification_outputs
from ml_backend.learning.heads import LinearHead
from ml_backend.learning.selection import Strategy, uncertainty_table
from ml_backend.models.classifier.embeddings import EmbeddingCache
from ml_backend.models.classifier.model import (
    BackboneWeights,
    ResNetEmbedder,
    load_backbone,
    locate_weights,
)
from ml_backend.models.family import (
    Embeddings,
    FamilyScores,
    FileSignature,
    LoadState,
    TaskOutputs,
    file_signature,
)

log = logging.getLogger(__name__)

EMBED_CHUNK = 16


@dataclass(frozen=True)
class ClassifierModel:
    """What predicting with one classifier version needs: the embedder and its heads."""

    version: str
    embedder: ResNetEmbedder
    heads: dict[str, LinearHead]


class ClassifierFamily:
    name = ModelFamily.CLASSIFIER.value
    kind = ModelFamily.CLASSIFIER

    def __init__(self, settings: Settings, device: torch.device, store: ModelStore,
                 state: LoadState) -> None:
        self.settings = settings
        self.device = device
        self.store = store
        self.embedding_cache = EmbeddingCache(settings.cache_dir / "embeddings")
        self._state = state
        self._weights: BackboneWeights | None = None  # located, not necessarily loaded
        self._weights_failure: tuple[FileSignature, str] | None = None
        self._base_loaded = False  # the base backbone has been loaded into an embedder
        self._embedders: OrderedDict[str, ResNetEmbedder] = OrderedDict()
        self._heads: OrderedDict[str, dict[str, LinearHead]] = OrderedDict()

    def version_prefix(self) -> str:
        return self.settings.resnet_arch

    def status(self) -> dict[str, Any]:
        """The base backbone as /health reports it: ``ready`` (or ``degraded`` on a random
        init) only once it has loaded; ``not-loaded`` / ``loading`` before; ``error`` with
        the reason when locating or loading it failed."""
        with self._state.lock:
            failure, weights, loaded = self._weights_failure, self._weights, self._base_loaded
        loading = self._state.is_loading("classifier")
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

    def warm_up(self) -> None:
        try:
            self.embedder(None)
        except ModelUnavailable as exc:
            log.error("classifier unavailable: %s", exc)

    # --- loading ------------------------------------------------------------------------
    def base_weights(self) -> BackboneWeights:
        """The located base backbone weights. A failure to locate or load them is kept and
        raised again without another attempt until the file changes (``RESNET_CHECKPOINT``
        appears or is replaced); once loaded, the base stays fixed for the process, since
        trained heads read its embeddings (a replaced file is read at the next start)."""
        lock = self._state.lock
        with lock:
            weights, failure = self._weights, self._weights_failure
        if weights is not None and failure is None:
            return weights
        # Before waiting on the load lock: another family's slow load may hold it.
        if failure is not None and failure[0] == self._base_signature(weights):
            raise ModelUnavailable(failure[1])
        with self._state.load_lock:
            with lock:
                weights, failure = self._weights, self._weights_failure
            if failure is not None:
                if failure[0] == self._base_signature(weights):
                    raise ModelUnavailable(failure[1])
                weights = None  # the file changed: locate it afresh, then load it again
            if weights is None:
                try:
                    with self._state.marking("classifier"):  # may write the shared random init
                        weights = locate_weights(self.settings.resnet_arch,
                                                 self.settings.resnet_checkpoint,
                                                 self.settings.model_dir)
                except ModelUnavailable as exc:
                    with lock:
                        self._weights_failure = (self._base_signature(None), str(exc))
                    raise
                with lock:
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
        lock = self._state.lock
        with lock:
            embedder = self._embedders.get(weights.digest)
        if embedder is not None:
            return embedder
        with self._state.load_lock:
            with lock:
                embedder = self._embedders.get(weights.digest)
            if embedder is None:
                try:
                    with self._state.marking("classifier" if base
                                             else f"backbone:{weights.digest}"):
                        backbone = load_backbone(weights, self.device)
                except ModelUnavailable as exc:
                    if base:
                        with lock:
                            self._weights_failure = (self._base_signature(weights), str(exc))
                    raise
                embedder = ResNetEmbedder(backbone, weights.digest,
                                          self.settings.classifier_image_size, self.device,
                                          self.embedding_cache)
                with lock:
                    self._base_loaded = self._base_loaded or base
                    self._embedders[weights.digest] = embedder
                    while len(self._embedders) > 4:
                        self._embedders.popitem(last=False)
            return embedder

    def model(self, project: int | None) -> ClassifierModel | None:
        """The latest trained classifier of ``project``, or None before its first training."""
        version = self.store.latest(project) if project is not None else None
        if version is None:
            return None
        key = f"{project}/{version.name}"
        with self._state.lock:
            heads = self._heads.get(key)
        if heads is None:
            heads = {
                control: LinearHead.from_bytes(version.read_bytes(info["file"]))
                for control, info in version.manifest.get("heads", {}).items()
            }
            with self._state.lock:
                self._heads[key] = heads
                while len(self._heads) > 64:
                    self._heads.popitem(last=False)
        return ClassifierModel(version.name, self.embedder(version), heads)

    # --- batch prediction ---------------------------------------------------------------
    def score_batch(self, batch: ImageBatch, controls: tuple[ControlSpec, ...],
                    project: int | None, strategy: Strategy) -> FamilyScores | None:
        """Choices for every task, or None before the project's first training."""
        model = self.model(project) if controls else None
        if model is None:
            return None
        usable = tuple(c for c in controls
                       if c.name in model.heads and model.heads[c.name].labels == c.labels)
        if len(usable) < len(controls):
            log.warning("project %s: controls without a head for the current labels get no "
                        "prediction until the next training: %s", project,
                        [c.name for c in controls if c not in usable])
        # Each control is scored on its own image; a task needs all of them.
        by_key = {key: embed_batch(model.embedder, batch, key)
                  for key in dict.fromkeys(c.value_key for c in usable)}
        good = sorted(set.intersection(*(set(v) for v in by_key.values()))) if by_key else []
        outputs: dict[int, TaskOutputs] = {}
        uncertainty: dict[int, dict[str, float]] = {}
        if good:
            probas = {c.name: model.heads[c.name].predict_proba(
                np.stack([by_key[c.value_key][r] for r in good])) for c in usable}
            outputs = dict(zip(good, classification_outputs(usable, probas, strategy),
                               strict=True))
            tables = [uncertainty_table(probas[c.name], c.multiple) for c in usable]
            uncertainty = {r: {name: float(np.max([t[name][j] for t in tables]))
                               for name in tables[0]} for j, r in enumerate(good)}
        # The first control's image carries ranked batch sampling's diversity term.
        embeddings = None
        if usable:
            key = usable[0].value_key
            embeddings = Embeddings(key, {r: by_key[key][r] for r in good},
                                    lambda other: embed_batch(model.embedder, other, key))
        return FamilyScores(ModelFamily.CLASSIFIER, model.version, usable, outputs, uncertainty,
                            embeddings)


def embed_batch(embedder: ResNetEmbedder, batch: ImageBatch, key: str
                ) -> dict[int, np.ndarray]:
    """The embedding of each task's ``key`` image by row; the rows whose image cannot be had
    go to ``batch.failures`` instead. Cached embeddings are used without decoding their
    image; the others are embedded a chunk at a time as the chunk arrives."""
    def cached(sha: str) -> np.ndarray | None:
        return embedder.cache.get_many(embedder.digest, [sha]).get(sha)

    vectors: dict[int, np.ndarray] = {}
    for loaded in batch.chunks(key, EMBED_CHUNK, cached):
        rows = [row for row, _ in loaded]
        vectors.update(zip(rows, _embed(embedder, [image for _, image in loaded]),
                           strict=True))
    return vectors


def _embed(embedder: ResNetEmbedder, images: Sequence[TaskImage]) -> list[np.ndarray]:
    """Each image's embedding: the cached one, else one made from its pixels (an image that
    comes twice is embedded once)."""
    known = {i.sha256: i.embedding for i in images if i.embedding is not None}
    pixels = {i.sha256: i.rgb() for i in images if i.embedding is None}
    shas = list(dict.fromkeys(i.sha256 for i in images))
    by_sha = dict(zip(shas, embedder.embed(shas, lambda j: pixels[shas[j]], cached=known),
                      strict=True))
    return [by_sha[i.sha256] for i in images]
