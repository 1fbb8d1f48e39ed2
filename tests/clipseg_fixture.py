"""A tiny random-init CLIPSeg with a letter-only tokenizer, saved with ``save_pretrained``
the way released models are, so the backend loads it through the real ``from_pretrained``
path. No downloads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml_backend.core.settings import Settings
from ml_backend.models.clipseg.model import save_random_clipseg

from app_fixture import AppParts, backend_app

TINY_IMAGE_SIDE = 64  # the processor's square input (the released model uses 352)


TINY_CLIPSEG: dict[str, Any] = {
    "text_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "max_position_embeddings": 77,
                    "vocab_size": 54},
    "vision_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3,
                      "num_attention_heads": 2, "image_size": TINY_IMAGE_SIDE,
                      "patch_size": 16},
    "projection_dim": 16, "reduce_dim": 16, "extract_layers": [0, 1, 2],
    "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32,
    "use_complex_transposed_convolution": True,  # as in the released rd64-refined
}


def save_tiny_clipseg(directory: Path, seed: int = 0) -> Path:
    """The real architecture at toy sizes, with its processor; returns the directory.

    Random weights make logits in the hundreds, so probabilities round to exactly 0 or 1.
    The decoder's output layer is scaled down so every probability is strictly between: a
    threshold of 0 then selects every pixel, which gives outputs of a known shape."""
    from safetensors.torch import load_file, save_file

    if (directory / "config.json").is_file():
        return directory
    save_random_clipseg(directory, TINY_CLIPSEG, TINY_IMAGE_SIDE, seed)
    weights = directory / "model.safetensors"
    state = load_file(weights)
    for name in state:
        if name.startswith("decoder.transposed_convolution.4."):
            state[name] = state[name] * 1e-3
    save_file(state, weights, metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="session")
def tiny_clipseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clipseg(tmp_path_factory.mktemp("clipseg"))


@pytest.fixture
def clipseg_app(make_settings: Callable[..., Settings], tiny_clipseg: Path, docs: Path
                ) -> Iterator[AppParts]:
    """The Flask app with CLIPSeg configured (threshold 0: every pixel of a label counts,
    so a random-init model's output has a known shape)."""
    settings = make_settings(clipseg_model=str(tiny_clipseg), clipseg_threshold=0.0,
                             local_files_document_root=docs)
    with backend_app(settings) as parts:
        yield parts
