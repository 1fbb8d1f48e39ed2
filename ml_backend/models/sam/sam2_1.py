"""SAM 2.1 (``sam2``) for single images: building the Hiera models from their released
configs, encoding and decoding. Everything else about SAM is shared with SAM 1 in
:mod:`.model`.

Encoding and decoding follow ``sam2.SAM2ImagePredictor.set_image`` / ``predict`` step for
step (the same transforms, the no-memory embedding, the feature levels), with the image's
state kept in a :class:`.model.SamEmbedding` value instead of on the predictor. SAM 2.1's
decoder also reads two finer feature maps, so an embedding is 16 MB rather than SAM 1's 4 MB.
"""

from __future__ import annotations

import re
import threading
import warnings

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

# The released image models and their configs inside the sam2 package.
SAM2_1_CONFIGS: dict[str, str] = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# Feature map sizes of the three levels at the 1024 px input (as SAM2ImagePredictor has them).
_FEATURE_SIZES = ((256, 256), (128, 128), (64, 64))


def sam2_1_overrides(model_type: str) -> tuple[str, list[str]]:
    """The config file and Hydra overrides that build ``model_type``: a released model, or
    ``sam2.1_hiera:<embed_dim>/<blocks per stage, 4 joined by ->`` (smaller encoders for
    tests and benchmarks: one head, global attention in the last block of stage 3, one
    memory-attention layer, the tiny model's config otherwise)."""
    if model_type in SAM2_1_CONFIGS:
        return SAM2_1_CONFIGS[model_type], []
    match = re.fullmatch(r"sam2\.1_hiera:(\d+)/(\d+)-(\d+)-(\d+)-(\d+)", model_type)
    if match is None:
        raise ModelUnavailable(
            f"SAM_MODEL_TYPE={model_type!r} is not one of {', '.join(SAM2_1_CONFIGS)} (or "
            "sam2.1_hiera:<embed_dim>/<b1>-<b2>-<b3>-<b4>), vit_b, vit_l, vit_h")
    dim, *stages = (int(g) for g in match.groups())
    # Stage 3's first block pools; its global-attention block must be another one.
    if dim < 1 or min(stages) < 1 or stages[2] < 2:
        raise ModelUnavailable(f"SAM_MODEL_TYPE={model_type!r}: embed_dim and every stage's "
                               "block count must be >= 1, stage 3's >= 2")
    trunk, neck = "++model.image_encoder.trunk", "++model.image_encoder.neck"
    return SAM2_1_CONFIGS["sam2.1_hiera_tiny"], [
        f"{trunk}.embed_dim={dim}", f"{trunk}.num_heads=1",
        f"{trunk}.stages=[{','.join(map(str, stages))}]",
        f"{trunk}.global_att_blocks=[{sum(stages[:3]) - 1}]",
        f"{neck}.backbone_channel_list=[{8 * dim},{4 * dim},{2 * dim},{dim}]",
        "++model.memory_attention.num_layers=1",
    ]


def build_sam2_1_model(model_type: str) -> torch.nn.Module:
    """A randomly initialised SAM 2.1 of ``model_type``, built by ``sam2``'s own builder."""
    config, overrides = sam2_1_overrides(model_type)
    try:
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise ModelUnavailable(
            f"SAM_MODEL_TYPE={model_type} needs the sam2 package: SAM2_BUILD_CUDA=0 pip "
            "install --no-build-isolation sam2==1.1.0 (scripts/setup_env.sh does it)"
        ) from exc
    # apply_postprocessing: built exactly as for sam2's own predictors (it only changes the
    # single-mask output, which our decode does not use: it picks among all four itself).
    return build_sam2(config, ckpt_path=None, device="cpu", mode="eval",
                      hydra_overrides_extra=overrides, apply_postprocessing=True)


class Sam2_1Segmenter:
    """One loaded SAM 2.1: ``embed`` (the Hiera encoder and feature pyramid) and ``segment``
    (prompt encoder + mask decoder). Thread-safe; holds no per-image state."""

    def __init__(self, model: torch.nn.Module, model_id: str, device: torch.device) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.model = model
        self.model_id = model_id
        self.device = device
        self.resolution = int(model.image_size)
        # The predictor's transforms (its defaults: no hole filling, which needs the CUDA
        # extension); they hold no per-image state.
        with warnings.catch_warnings():  # sam2 scripts its resize with torch.jit (deprecated)
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated",
                                    FutureWarning)
            self.transforms = SAM2Transforms(resolution=self.resolution, mask_threshold=0.0)
        self._encode_lock = threading.Lock()  # two encodes at once only split the cores

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> SamEmbedding:
        """Encode an ``H x W x 3`` uint8 RGB image (squashed to the square input, as
        SAM 2.1 was trained)."""
        check_pixels(pixels)
        model = self.model
        image = self.transforms(pixels)[None].to(self.device)
        with self._encode_lock:
            backbone = model.forward_image(image)
            _, levels, _, _ = model._prepare_backbone_features(backbone)
        if model.directly_add_no_mem_embed:
            levels[-1] = levels[-1] + model.no_mem_embed
        maps = [level.permute(1, 2, 0).reshape(1, -1, *size).float().cpu().numpy()
                for level, size in zip(levels, _FEATURE_SIZES, strict=True)]
        return SamEmbedding(maps[-1], (int(pixels.shape[0]), int(pixels.shape[1])),
                            (self.resolution, self.resolution), tuple(maps[:-1]))

    @torch.inference_mode()
    def segment(self, embedding: SamEmbedding, prompt: SamPrompt) -> SamMask:
        """The best mask for ``prompt`` (see :func:`.model.choose_mask`)."""
        model = self.model
        if len(embedding.high_res) != 2:
            raise ValueError("not a SAM 2.1 embedding (it lacks the high-resolution maps)")
        coords = [torch.as_tensor(prompt.points, dtype=torch.float, device=self.device)]
        labels = [torch.as_tensor(prompt.positive.astype(np.int32), device=self.device)]
        if prompt.box is not None:  # a box is two corner points labelled 2 and 3, first
            coords.insert(0, torch.as_tensor(prompt.box, dtype=torch.float,
                                             device=self.device).reshape(2, 2))
            labels.insert(0, torch.tensor([2, 3], dtype=torch.int, device=self.device))
        points = self.transforms.transform_coords(torch.cat(coords), normalize=True,
                                                  orig_hw=embedding.original_size)
        sparse, dense = model.sam_prompt_encoder(
            points=(points[None], torch.cat(labels)[None]), boxes=None, masks=None)
        features = torch.from_numpy(embedding.features).to(self.device)
        high_res = [torch.from_numpy(level).to(self.device) for level in embedding.high_res]
        low_res, iou, _, _ = model.sam_mask_decoder.predict_masks(
            image_embeddings=features, image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            repeat_image=False, high_res_features=high_res)
        best, candidates = choose_mask(iou[0].float().cpu().numpy(), prompt)
        logits = self.transforms.postprocess_masks(low_res[:, best:best + 1],
                                                   embedding.original_size)
        mask = (logits[0, 0] > 0.0).cpu().numpy()
        return SamMask(mask, float(iou[0, best]), candidates)
