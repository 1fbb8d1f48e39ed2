"""Segment Anything 1 (``segment-anything``): building the ViT models, encoding and
decoding. Everything else about SAM is shared with SAM 2.1 in :mod:`.model`."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.models.sam.model import (
    SamEmbedding,
    SamMask,
    SamPrompt,
    check_pixels,
    choose_mask,
)

SAM_IMAGE_SIZE = 1024  # the encoder's input side (fixed by segment-anything's builder)


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
        raise ModelUnavailable(
            f"SAM_MODEL_TYPE={model_type!r} is not one of vit_b, vit_l, vit_h (or "
            "vit:<embed_dim>/<depth>/<heads>), sam2.1_hiera_tiny, sam2.1_hiera_small, "
            "sam2.1_hiera_base_plus, sam2.1_hiera_large (or sam2.1_hiera:<embed_dim>/<stages>)")
    dim, depth, heads = (int(g) for g in match.groups())
    if not (depth >= 1 and heads >= 1 and dim >= heads and dim % heads == 0):
        raise ModelUnavailable(f"SAM_MODEL_TYPE={model_type!r}: embed_dim must be a positive "
                               "multiple of heads, depth >= 1")
    step = max(depth // 4, 1)
    return SamArchitecture(dim, depth, heads, tuple(range(step - 1, depth, step)))


def build_sam1_model(arch: SamArchitecture) -> torch.nn.Module:
    """A randomly initialised SAM of ``arch``, built by segment-anything's own builder."""
    from segment_anything.build_sam import _build_sam

    return _build_sam(encoder_embed_dim=arch.embed_dim, encoder_depth=arch.depth,
                      encoder_num_heads=arch.num_heads,
                      encoder_global_attn_indexes=list(arch.global_attn_indexes))


class SamSegmenter:
    """One loaded SAM 1: ``embed`` (the image encoder) and ``segment`` (prompt encoder +
    mask decoder). Thread-safe; holds no per-image state."""

    def __init__(self, model: torch.nn.Module, model_id: str, device: torch.device) -> None:
        self.model = model
        self.model_id = model_id
        self.device = device
        self._encode_lock = threading.Lock()  # two encodes at once only split the cores

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> SamEmbedding:
        """Encode an ``H x W x 3`` uint8 RGB image."""
        check_pixels(pixels)
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
        """The best mask for ``prompt`` (see :func:`.model.choose_mask`)."""
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
        best, candidates = choose_mask(iou[0].float().cpu().numpy(), prompt)
        logits = model.postprocess_masks(low_res[:, best:best + 1], embedding.input_size,
                                         embedding.original_size)
        mask = (logits[0, 0] > model.mask_threshold).cpu().numpy()
        return SamMask(mask, float(iou[0, best]), candidates)
