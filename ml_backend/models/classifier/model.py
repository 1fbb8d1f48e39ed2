"""ResNet (torchvision) image classification: a frozen backbone gives embeddings, light linear
heads per ``Choices`` control turn them into calibrated probabilities.

Backbone weights come from, in order: ``RESNET_CHECKPOINT``; torchvision's cache
(``$TORCH_HOME/hub/checkpoints``); else a random init generated once and shared by every
process through the model directory. The last is a degraded mode and is reported as such.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.files import atomic_write_bytes
from ml_backend.models.checkpoints import describe_mismatch, reshaped_keys
from ml_backend.models.classifier.embeddings import EmbeddingCache

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 20261121


@dataclass(frozen=True)
class BackboneWeights:
    """Where the backbone's weights came from: ``source`` is ``checkpoint``, ``torchvision``
    or ``random-init``; ``digest`` identifies the exact weights (cache keys use it)."""

    arch: str
    source: str
    path: Path
    digest: str

    @property
    def degraded(self) -> bool:
        return self.source == "random-init"


def _new_resnet(arch: str) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=None)
    except ValueError as exc:
        raise ModelUnavailable(f"unknown RESNET_ARCH {arch!r}: {exc}") from exc


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def locate_weights(arch: str, checkpoint: Path | None, model_dir: Path) -> BackboneWeights:
    """Find the backbone weights to use, creating the shared random init if nothing exists.

    A configured checkpoint that is missing is an error (a typo must not silently degrade).
    """
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ModelUnavailable(f"RESNET_CHECKPOINT {checkpoint} does not exist")
        return BackboneWeights(arch, "checkpoint", checkpoint, _digest(checkpoint))
    import torchvision

    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    except (ValueError, AttributeError):
        cached = None
    if cached is not None and cached.is_file():
        return BackboneWeights(arch, "torchvision", cached, _digest(cached))
    path = Path(model_dir) / "backbones" / f"{arch}-random-init.pt"
    if not path.is_file():
        torch.manual_seed(RANDOM_INIT_SEED)
        buffer = io.BytesIO()
        torch.save(_new_resnet(arch).state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
    log.warning("no pretrained weights for %s (set RESNET_CHECKPOINT or run "
                "scripts/download_weights.py); using a random init: pre-labels start weak",
                arch)
    return BackboneWeights(arch, "random-init", path, _digest(path))


def load_backbone(weights: BackboneWeights, device: torch.device) -> nn.Module:
    """The ResNet without its ImageNet classifier: images → pooled features ``(N, D)``.

    The file must be a state dict of exactly ``weights.arch`` (torchvision's key names); a
    file that cannot be read, or whose keys or shapes differ, is a ModelUnavailable that
    names the file and the keys: a backbone with layers left at random values would embed
    images plausibly and wrongly."""
    model = _new_resnet(weights.arch)
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    # A damaged file reaches torch as one of these, by how it is damaged: RuntimeError (a
    # truncated zip), EOFError (empty), UnpicklingError (not a pickle, or one holding more
    # than tensors), OSError (unreadable).
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise ModelUnavailable(f"{weights.path} could not be read as a {weights.arch} state "
                               f"dict: {type(exc).__name__}: {first}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailable(f"{weights.path} holds a {type(state).__name__}, not a "
                               f"{weights.arch} state dict")
    # The ImageNet classifier (fc) is replaced by the identity below, so whether the file has
    # one (fine-tuned backbones are saved without it), and for how many classes, does not
    # matter; every other key must match.
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    reshaped = reshaped_keys(state, model.state_dict())
    if reshaped:
        raise ModelUnavailable(f"{weights.path} does not fit {weights.arch}: "
                               f"{describe_mismatch((), (), reshaped)}")
    # torch's own key matching, not a comparison of key sets: it also accepts files saved
    # before BatchNorm had num_batches_tracked (torchvision's older releases).
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as exc:  # values that are not tensors
        first = str(exc).splitlines()[0][:300]
        raise ModelUnavailable(f"{weights.path} does not fit {weights.arch}: {first}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    problem = describe_mismatch(missing, result.unexpected_keys)
    if problem:
        raise ModelUnavailable(f"{weights.path} does not fit {weights.arch}: {problem}")
    model.fc = nn.Identity()  # type: ignore[assignment]
    return model.eval().to(device)


AUTO_MIN_SIDE, AUTO_MAX_SIDE = 32, 224  # the range an automatic embedding side keeps to


def native_side(shape: tuple[int, ...]) -> int:
    """The side an image is embedded at when ``CLASSIFIER_IMAGE_SIZE=auto``: its longer side
    rounded up to a multiple of 32 (ResNet's stride), within [32, 224]. Small images are not
    blown up to 224 px (upsampling costs accuracy on frozen features; see
    docs/benchmarks.md#embedding-resolution) and large ones are reduced as before."""
    longer = max(int(shape[0]), int(shape[1]))
    return int(min(AUTO_MAX_SIDE, max(AUTO_MIN_SIDE, -(-longer // 32) * 32)))


def preprocess(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """HWC uint8 RGB arrays → normalised float batch ``(N, 3, size, size)`` (squash resize:
    the label is about the whole image, so nothing is cropped away)."""
    batch = []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        batch.append(t)
    x = torch.cat(batch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ResNetEmbedder:
    """Turns images into embeddings with one backbone. Thread-safe: the module is read-only
    and every call works on its own tensors."""

    def __init__(self, backbone: nn.Module, digest: str, image_size: int | None,
                 device: torch.device, cache: EmbeddingCache, batch_size: int = 32) -> None:
        self.backbone = backbone
        # ``image_size`` None: each image at its own :func:`native_side`.
        self.digest = f"{digest}-{image_size or 'auto'}"
        self.image_size = image_size
        self.device = device
        self.cache = cache
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def embed_pixels(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``images``: HWC uint8 RGB → embeddings ``(N, D) float32``; no caching. Images of
        one side are batched together."""
        sides = [self.image_size or native_side(image.shape) for image in images]
        out: list[np.ndarray | None] = [None] * len(images)
        for side in sorted(set(sides)):
            rows = [i for i, s in enumerate(sides) if s == side]
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                batch = preprocess([images[i] for i in chunk], side)
                vectors = self.embed_torch(batch.to(self.device)).cpu().numpy()
                for i, vector in zip(chunk, vectors, strict=True):
                    out[i] = vector
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(out).astype(np.float32)  # type: ignore[arg-type]

    def embed_torch(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.backbone(batch)

    def embed(self, shas: Sequence[str], pixels_of: Callable[[int], np.ndarray],
              cached: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Embeddings ``(N, D)`` for images identified by content hash. Only images missing
        from the cache are materialised, through ``pixels_of(i)`` (HWC uint8 RGB), so cached
        ones are never decoded. ``cached``: a lookup the caller already made, not repeated."""
        known = dict(cached) if cached is not None else self.cache.get_many(self.digest, shas)
        todo = [i for i, sha in enumerate(shas) if sha not in known]
        if todo:
            fresh = self.embed_pixels([pixels_of(i) for i in todo])
            new = {shas[i]: fresh[j] for j, i in enumerate(todo)}
            self.cache.put_many(self.digest, new)
            known.update(new)
        if not shas:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[sha] for sha in shas])


def finetune_backbone(backbone: nn.Module, images: Sequence[np.ndarray], targets: np.ndarray,
                      n_classes: int, image_size: int | None, epochs: int, device: torch.device,
                      seed: int = 0, batch_size: int = 32, lr: float = 1e-3) -> nn.Module:
    """Fine-tune the last residual stage (``layer4``) with a temporary linear classifier on
    single-label targets (``image_size`` None: the images' median :func:`native_side`).
    Returns a new module; the input module is left untouched."""
    import copy

    if image_size is None:
        image_size = int(np.median([native_side(image.shape) for image in images]))
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(device)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("layer4")
    with torch.inference_mode():
        dim = model(preprocess(images[:1], image_size).to(device)).shape[1]
    classifier = nn.Linear(dim, n_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(classifier.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(targets, dtype=torch.long)
    for _ in range(epochs):
        # Only layer4 learns: the frozen stages keep their BatchNorm statistics too.
        model.eval()
        model.layer4.train()  # type: ignore[union-attr]
        for start in range(0, len(images), batch_size):
            idx = rng.permutation(len(images))[start:start + batch_size]
            if len(idx) < 2:
                continue
            x = preprocess([images[i] for i in idx], image_size).to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(classifier(model(x)), y[idx].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    for param in model.parameters():
        param.requires_grad = False
    return model.eval()


def backbone_bytes(backbone: nn.Module) -> bytes:
    buffer = io.BytesIO()
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, buffer)
    return buffer.getvalue()
