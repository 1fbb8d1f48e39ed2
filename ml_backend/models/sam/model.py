"""Segment Anything, both generations: interactive masks from clicks and boxes.

The stock predictors (``SamPredictor``, ``SAM2ImagePredictor``) keep one image as mutable
state, so two requests sharing one can mix images. Here the image encoder's output is a value
(:class:`SamEmbedding`) that callers cache and pass back in; a :class:`Segmenter`'s
``segment`` reads nothing but its arguments and the model's (read-only) weights, so any number
of threads can decode at once.

What the generations share lives here: the prompt, embedding and mask types, the rule that
picks one of the proposed masks, a checkpoint's identity and its strict load. Building,
encoding and decoding differ and live in :mod:`.sam1` (``segment-anything``: ``vit_b``,
``vit_l``, ``vit_h``) and :mod:`.sam2_1` (``sam2``: ``sam2.1_hiera_tiny`` … ``_large``);
:mod:`.loading` picks between them by ``SAM_MODEL_TYPE``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.models.checkpoints import compare_state_dicts


@dataclass(frozen=True)
class SamEmbedding:
    """The image encoder's output for one image, with the sizes needed to map prompts in
    and masks out. ``features (1, 256, 64, 64)`` float32 on the CPU; ``high_res`` the finer
    feature maps SAM 2.1's decoder also reads (``(1, 32, 256, 256)``, ``(1, 64, 128, 128)``),
    empty for SAM 1."""

    features: np.ndarray
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (H, W) of the image as the encoder saw it
    high_res: tuple[np.ndarray, ...] = ()

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes + sum(level.nbytes for level in self.high_res))


@dataclass(frozen=True)
class SamPrompt:
    """Clicks and an optional box in image pixels: ``points (N, 2)`` as x, y;
    ``positive (N,)`` True for a foreground click; ``box (4,)`` as x0, y0, x1, y1."""

    points: np.ndarray
    positive: np.ndarray
    box: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points.shape != (len(self.positive), 2):
            raise ValueError(f"points must be (N, 2) with N = {len(self.positive)}, "
                             f"got {self.points.shape}")
        if self.box is not None and self.box.shape != (4,):
            raise ValueError(f"box must have shape (4,), got {self.box.shape}")
        if len(self.points) == 0 and self.box is None:
            raise ValueError("a prompt needs at least one point or a box")

    @property
    def ambiguous(self) -> bool:
        """One click and no box: it could mean a part, the object or a group of objects."""
        return self.box is None and len(self.points) == 1


@dataclass(frozen=True)
class SamMask:
    """The chosen mask ``(H, W)`` bool at the image's size and SAM's predicted IoU for it;
    ``candidate_scores`` are the predicted IoUs of every mask SAM proposed."""

    mask: np.ndarray
    score: float
    candidate_scores: tuple[float, ...]


def choose_mask(scores: np.ndarray, prompt: SamPrompt) -> tuple[int, tuple[float, ...]]:
    """Which of SAM's four proposals to answer with, and the scores of those that competed.

    Both generations propose one mask for an unambiguous prompt (output 0) and three for an
    ambiguous one (outputs 1-3). A single click (no box) is ambiguous: choose among the three
    by predicted IoU. With several clicks or a box, the single-mask output competes too
    (SAM's authors recommend it for such prompts)."""
    first = 1 if prompt.ambiguous else 0
    best = first + int(np.argmax(scores[first:]))
    return best, tuple(round(float(s), 6) for s in scores[first:])


class Segmenter(Protocol):
    """One loaded SAM of either generation. Thread-safe; holds no per-image state."""

    model: torch.nn.Module
    model_id: str

    def embed(self, pixels: np.ndarray) -> SamEmbedding:
        """Encode an ``H x W x 3`` uint8 RGB image (slow: the image encoder)."""
        ...

    def segment(self, embedding: SamEmbedding, prompt: SamPrompt) -> SamMask:
        """The best mask for ``prompt`` on the image ``embedding`` was computed from (fast:
        the prompt encoder and mask decoder)."""
        ...


def check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.shape} "
                         f"{pixels.dtype}")


@dataclass(frozen=True)
class SamWeights:
    """A located checkpoint: ``model_id`` names the exact weights (embedding cache keys and
    versions use it)."""

    model_type: str
    path: Path
    digest: str

    @property
    def model_id(self) -> str:
        return f"sam_{re.sub(r'[^0-9a-z]', '_', self.model_type)}_{self.digest}"


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def load_weights(weights: SamWeights, model: torch.nn.Module) -> torch.nn.Module:
    """Load the checkpoint into ``model`` (an architecture of ``weights.model_type``); a
    file that is not a state dict of that architecture is a ModelUnavailable naming both."""
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ModelUnavailable(f"SAM_CHECKPOINT {weights.path} could not be read: "
                               f"{type(exc).__name__}: {exc}") from exc
    # SAM 2.1's releases (and training checkpoints of either) wrap the weights in "model".
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelUnavailable(f"SAM_CHECKPOINT {weights.path} holds a "
                               f"{type(state).__name__}, not a SAM state dict")
    # Named keys rather than torch's message, whose first line names none.
    problem = compare_state_dicts(state, model.state_dict())
    if problem:
        raise ModelUnavailable(f"SAM_CHECKPOINT {weights.path} does not fit "
                               f"SAM_MODEL_TYPE={weights.model_type}: {problem}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:  # values that are not tensors
        first = str(exc).splitlines()[0][:300]
        raise ModelUnavailable(f"SAM_CHECKPOINT {weights.path} does not fit "
                               f"SAM_MODEL_TYPE={weights.model_type}: {first}") from exc
    return model
