"""Segment Anything (``segment-anything``): interactive masks from clicks and boxes.

The stock ``SamPredictor`` keeps one image as mutable state, so two requests sharing it can
mix images. Here the image encoder's output is a value (:class:`SamEmbedding`) that callers
cache and pass back in; :meth:`SamSegmenter.segment` reads nothing but its arguments and the
model's (read-only) weights, so any number of threads can decode at once.

Weights: ``SAM_CHECKPOINT`` (an official ``sam_vit_*.pth`` state dict) for the
architecture named by ``SAM_MODEL_TYPE``. Without a checkpoint there is no SAM: the error
names the setting, and the other model families keep working.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.models.checkpoints import compare_state_dicts

log = logging.getLogger(__name__)

SAM_IMAGE_SIZE = 1024  # the encoder's square input side (fixed by segment-anything's builder)


@dataclass(frozen=True)
class SamArchitecture:
    """The image encoder's size; the prompt encoder and mask decoder are the same for all."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


# The three released models (sizes as segment-anything's build_sam defines them).
SAM_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}


def sam_architecture(model_type: str) -> SamArchitecture:
    """``vit_b`` / ``vit_l`` / ``vit_h``, or ``vit:<embed_dim>/<depth>/<heads>`` for other
    encoder sizes (distilled checkpoints, tests); the latter attends globally every
    ``depth // 4`` blocks like the released ones."""
    if model_type in SAM_ARCHITECTURES:
        return SAM_ARCHITECTURES[model_type]
    match = re.fullmatch(r"vit:(\d+)/(\d+)/(\d+)", model_type)
    if match is None:
        raise ModelUnavailable(f"SAM_MODEL_TYPE={model_type!r} is not one of vit_b, vit_l, "
                               "vit_h (or vit:<embed_dim>/<depth>/<heads>)")
    dim, depth, heads = (int(g) for g in match.groups())
    if not (depth >= 1 and heads >= 1 and dim >= heads and dim % heads == 0):
        raise ModelUnavailable(f"SAM_MODEL_TYPE={model_type!r}: embed_dim must be a positive "
                               "multiple of heads, depth >= 1")
    step = max(depth // 4, 1)
    return SamArchitecture(dim, depth, heads, tuple(range(step - 1, depth, step)))


def build_sam_model(arch: SamArchitecture) -> torch.nn.Module:
    """A randomly initialised SAM of ``arch``, built by segment-anything's own builder."""
    from segment_anything.build_sam import _build_sam

    return _build_sam(encoder_embed_dim=arch.embed_dim, encoder_depth=arch.depth,
                      encoder_num_heads=arch.num_heads,
                      encoder_global_attn_indexes=list(arch.global_attn_indexes))


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


def locate_sam(model_type: str, checkpoint: Path | None) -> SamWeights:
    """Check the settings without loading weights (cheap enough for /health after the
    first call). Raises ModelUnavailable naming what to set."""
    sam_architecture(model_type)
    if checkpoint is None:
        raise ModelUnavailable(
            "SAM_CHECKPOINT is not set: interactive segmentation needs a Segment Anything "
            f"checkpoint for SAM_MODEL_TYPE={model_type} (run scripts/download_weights.py "
            "--sam vit_b, then set SAM_CHECKPOINT to the file)")
    if not checkpoint.is_file():
        raise ModelUnavailable(f"SAM_CHECKPOINT {checkpoint} does not exist")
    return SamWeights(model_type, checkpoint, _file_digest(checkpoint))


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def load_sam(weights: SamWeights, device: torch.device) -> torch.nn.Module:
    """Build the architecture and load the checkpoint into it; a file that is not a SAM
    state dict of that architecture is a ModelUnavailable naming both."""
    model = build_sam_model(sam_architecture(weights.model_type))
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ModelUnavailable(f"SAM_CHECKPOINT {weights.path} could not be read: "
                               f"{type(exc).__name__}: {exc}") from exc
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
    return model.to(device).eval()


@dataclass(frozen=True)
class SamEmbedding:
    """The image encoder's output for one image, with the sizes needed to map prompts in
    and masks out. ``features (1, 256, 64, 64)`` float32 on the CPU."""

    features: np.ndarray
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (H, W) after resizing the long side to 1024

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


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


@dataclass(frozen=True)
class SamMask:
    """The chosen mask ``(H, W)`` bool at the image's size and SAM's predicted IoU for it;
    ``candidate_scores`` are the predicted IoUs of every mask SAM proposed."""

    mask: np.ndarray
    score: float
    candidate_scores: tuple[float, ...]


class SamSegmenter:
    """One loaded SAM: ``embed`` (slow: the image encoder) and ``segment`` (fast: prompt
    encoder + mask decoder). Thread-safe; holds no per-image state."""

    def __init__(self, model: torch.nn.Module, model_id: str, device: torch.device) -> None:
        self.model = model
        self.model_id = model_id
        self.device = device
        # Encodes run one at a time: two at once on the CPU only split the same cores and
        # both finish later.
        self._encode_lock = threading.Lock()

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> SamEmbedding:
        """Encode an ``H x W x 3`` uint8 RGB image."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.shape} "
                             f"{pixels.dtype}")
        from segment_anything.utils.transforms import ResizeLongestSide

        height, width = pixels.shape[:2]
        # The library's own resize (PIL), so embeddings match what SAM was trained on.
        resized = ResizeLongestSide(SAM_IMAGE_SIZE).apply_image(pixels)
        input_size = (int(resized.shape[0]), int(resized.shape[1]))
        image = torch.from_numpy(np.ascontiguousarray(resized)).to(self.device)
        image = image.permute(2, 0, 1)[None].float()
        with self._encode_lock:
            features = self.model.image_encoder(self.model.preprocess(image))
        return SamEmbedding(features.float().cpu().numpy(), (height, width), input_size)

    @torch.inference_mode()
    def segment(self, embedding: SamEmbedding, prompt: SamPrompt) -> SamMask:
        """The best mask for ``prompt`` on the image ``embedding`` was computed from.

        SAM proposes three masks for an ambiguous prompt plus one for an unambiguous one.
        A single click (no box) is ambiguous: choose among the three by predicted IoU. With
        several clicks or a box, the single-mask output competes too (SAM's authors
        recommend it for such prompts)."""
        model = self.model
        height, width = embedding.original_size
        scale = np.array([embedding.input_size[1] / width, embedding.input_size[0] / height])
        points = box = None
        if len(prompt.points):
            coords = torch.as_tensor(prompt.points * scale, dtype=torch.float32,
                                     device=self.device)[None]
            labels = torch.as_tensor(prompt.positive.astype(np.int64), device=self.device)[None]
            points = (coords, labels)
        if prompt.box is not None:
            box = torch.as_tensor(prompt.box * np.tile(scale, 2), dtype=torch.float32,
                                  device=self.device)[None]
        sparse, dense = model.prompt_encoder(points=points, boxes=box, masks=None)
        features = torch.from_numpy(embedding.features).to(self.device)
        low_res, iou = model.mask_decoder.predict_masks(
            image_embeddings=features, image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        scores = iou[0].float().cpu().numpy()
        ambiguous = prompt.box is None and len(prompt.points) == 1
        first = 1 if ambiguous else 0
        best = first + int(np.argmax(scores[first:]))
        logits = model.postprocess_masks(low_res[:, best:best + 1], embedding.input_size,
                                         embedding.original_size)
        mask = (logits[0, 0] > model.mask_threshold).cpu().numpy()
        return SamMask(mask, float(scores[best]),
                       tuple(round(float(s), 6) for s in scores[first:]))
