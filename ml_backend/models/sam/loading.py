"""Loading a SAM of either generation, picked by ``SAM_MODEL_TYPE``.

Weights: ``SAM_CHECKPOINT`` (an official checkpoint file) for the architecture named by
``SAM_MODEL_TYPE``. Without a checkpoint there is no SAM: the error names the setting, and
the other model families keep working.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.models.sam.model import SamWeights, Segmenter, file_digest, load_weights
from ml_backend.models.sam.sam1 import SamSegmenter, build_sam1_model, sam_architecture
from ml_backend.models.sam.sam2_1 import Sam2_1Segmenter, build_sam2_1_model, sam2_1_overrides


def is_sam2_1(model_type: str) -> bool:
    return model_type.startswith("sam2.1_hiera")


def check_model_type(model_type: str) -> None:
    """Raises ModelUnavailable naming the accepted values when ``model_type`` is neither a
    SAM 1 nor a SAM 2.1 architecture."""
    if is_sam2_1(model_type):
        sam2_1_overrides(model_type)
    else:
        sam_architecture(model_type)


def build_sam_model(model_type: str) -> torch.nn.Module:
    """A randomly initialised SAM of ``model_type``, built by its own library's builder."""
    check_model_type(model_type)
    if is_sam2_1(model_type):
        return build_sam2_1_model(model_type)
    return build_sam1_model(sam_architecture(model_type))


def locate_sam(model_type: str, checkpoint: Path | None) -> SamWeights:
    """Check the settings without loading weights (cheap enough for /health after the
    first call). Raises ModelUnavailable naming what to set."""
    check_model_type(model_type)
    if checkpoint is None:
        fetch = model_type if is_sam2_1(model_type) else "vit_b"
        raise ModelUnavailable(
            "SAM_CHECKPOINT is not set: interactive segmentation needs a Segment Anything "
            f"checkpoint for SAM_MODEL_TYPE={model_type} (run scripts/download_weights.py "
            f"--sam {fetch}, then set SAM_CHECKPOINT to the file)")
    if not checkpoint.is_file():
        raise ModelUnavailable(f"SAM_CHECKPOINT {checkpoint} does not exist")
    return SamWeights(model_type, checkpoint, file_digest(checkpoint))


def load_sam(weights: SamWeights, device: torch.device) -> Segmenter:
    """The segmenter of ``weights``: its architecture built, the checkpoint loaded strictly,
    wrapped in its generation's encode/decode."""
    model = load_weights(weights, build_sam_model(weights.model_type)).to(device).eval()
    if is_sam2_1(weights.model_type):
        return Sam2_1Segmenter(model, weights.model_id, device)
    return SamSegmenter(model, weights.model_id, device)
