"""CLIPSeg (``transformers``): per-pixel probabilities for text prompts, zero-shot.

The stock usage, ``model(**processor(text=prompts, images=[image] * len(prompts)))``, runs
the CLIP vision backbone once per prompt. The backbone is nearly all of the cost and does not
depend on the prompt, so here it runs once per image (:meth:`TextSegmenter.encode_image`,
whose output callers cache) and the light decoder reads that for every prompt in one batch.
Text embeddings are cached per prompt.

Weights: ``CLIPSEG_MODEL``, a local directory saved with ``save_pretrained`` or a Hugging
Face id already in the local cache (``scripts/download_weights.py --clipseg`` puts it
there). The server never downloads: a missing model is a ModelUnavailable naming what to
run, and the other model families keep working.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.lru import BoundedLRU
from ml_backend.models.checkpoints import describe_mismatch

log = logging.getLogger(__name__)

# Output probabilities are computed at most this many pixels on the long side: CLIPSeg's
# map is 352 x 352, so more is interpolation only (and 9 prompts at 8000 x 6000 would be
# gigabytes). Boxes are scaled back to the image's pixels, masks resized to its size.
WORK_SIDE = 1024
TEXT_CACHE_ITEMS = 4096
# The released ``CIDAS/clipseg-rd64-refined``: CLIP ViT-B/16 (transformers' CLIPSegConfig
# defaults otherwise), decoder width 64, activations of layers 3, 6, 9, refined upsampling;
# input 352 x 352.
RD64_REFINED: dict[str, Any] = {"vision_config": {"patch_size": 16}, "reduce_dim": 64,
                                "extract_layers": [3, 6, 9],
                                "use_complex_transposed_convolution": True}
RD64_IMAGE_SIDE = 352
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The only keys a checkpoint may lack or carry beyond the architecture's: the text and vision
# embeddings' ``position_ids``, ``arange`` buffers the model builds itself. The released
# CIDAS/clipseg-rd64-refined was converted when they were persistent and carries them (its
# conversion checked that nothing else was missing); models saved since do not, and an older
# transformers may expect them. Any other difference would be served as random values or
# dropped weights.
REBUILT_BUFFERS = re.compile(r"(^|\.)embeddings\.position_ids$")


@dataclass(frozen=True)
class ClipSegWeights:
    """A located model directory; ``model_id`` names the exact weights (cache keys)."""

    source: str  # what CLIPSEG_MODEL said
    path: Path  # the directory loaded
    digest: str

    @property
    def model_id(self) -> str:
        return f"clipseg_{self.digest}"


def locate_clipseg(spec: str | None) -> ClipSegWeights:
    """Resolve ``CLIPSEG_MODEL`` to a local directory without loading it. Raises
    ModelUnavailable saying what to set or run."""
    if not spec:
        raise ModelUnavailable(
            "CLIPSEG_MODEL is not set: text-prompted masks and boxes need a CLIPSeg model (run "
            "scripts/download_weights.py --clipseg, then set CLIPSEG_MODEL=CIDAS/clipseg-rd64-"
            "refined or to a directory saved with save_pretrained)")
    path = Path(spec).expanduser()
    if not path.is_dir():
        if path.exists() or not _HUB_ID.fullmatch(spec):
            raise ModelUnavailable(f"CLIPSEG_MODEL={spec}: no such model directory")
        path = _cached_snapshot(spec)
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"CLIPSEG_MODEL={spec}: {path} has no config.json (not a "
                               "model saved with save_pretrained)")
    return ClipSegWeights(spec, path, _directory_digest(path))


def _cached_snapshot(repo_id: str) -> Path:
    """The local copy of a Hugging Face model, never fetched from the network here."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError and friends, by version
        raise ModelUnavailable(
            f"CLIPSEG_MODEL={repo_id} is not in the local Hugging Face cache and this server "
            f"does not download: run scripts/download_weights.py --clipseg {repo_id} on a "
            f"machine online (or set CLIPSEG_MODEL to a model directory) "
            f"[{type(exc).__name__}]") from exc


def _directory_digest(path: Path) -> str:
    """The config's bytes plus each weights file's size and mtime: cheap, and changes when
    the model does."""
    sha = hashlib.sha256((path / "config.json").read_bytes())
    for name in _WEIGHT_FILES:
        weights = path / name
        if weights.is_file():
            stat = weights.stat()
            sha.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return sha.hexdigest()[:16]


def load_clipseg(weights: ClipSegWeights, device: torch.device) -> TextSegmenter:
    """The model and its processor from ``weights.path``; anything unloadable is a
    ModelUnavailable naming the directory.

    Strict: ``from_pretrained`` gives a key the checkpoint lacks a random value and drops a
    key the architecture lacks, with a log line only. Such a model would segment plausibly
    and wrongly, so any key that differs (beyond :data:`REBUILT_BUFFERS`) is refused here,
    named."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    try:
        # ignore_mismatched_sizes: a tensor of another shape is then reported in the loading
        # info with both shapes (and refused below) instead of failing with a generic message.
        model, info = CLIPSegForImageSegmentation.from_pretrained(
            weights.path, local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True)
        processor = CLIPSegProcessor.from_pretrained(weights.path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError … by cause
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"CLIPSEG_MODEL={weights.source}: {weights.path} could not be "
                               f"loaded as CLIPSeg: {first}") from exc
    problem = describe_mismatch(
        [k for k in info.get("missing_keys", ()) if not REBUILT_BUFFERS.search(k)],
        [k for k in info.get("unexpected_keys", ()) if not REBUILT_BUFFERS.search(k)],
        {key: (ckpt, own) for key, ckpt, own in info.get("mismatched_keys", ())})
    if problem:
        raise ModelUnavailable(f"CLIPSEG_MODEL={weights.source}: {weights.path} does not fit "
                               f"the CLIPSeg architecture of its config.json: {problem}")
    return TextSegmenter(model.to(device).eval(), processor, weights.model_id, device)


@dataclass(frozen=True)
class ClipSegActivations:
    """The vision backbone's output for one image that the decoder reads: the hidden states
    of the configured layers, each ``(1, tokens, width)``, and the image's ``(H, W)``."""

    hidden: tuple[torch.Tensor, ...]
    image_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.hidden)


class TextSegmenter:
    """One loaded CLIPSeg. Thread-safe: images' activations are values, the text cache is
    locked, the model is read-only."""

    def __init__(self, model: Any, processor: Any, model_id: str, device: torch.device
                 ) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self._texts: BoundedLRU[str, torch.Tensor] = BoundedLRU(TEXT_CACHE_ITEMS, lambda _: 1)
        self._lock = threading.Lock()
        self.counts = {"image_passes": 0, "texts_encoded": 0, "texts_cached": 0}

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray) -> ClipSegActivations:
        """One backbone pass over an ``H x W x 3`` uint8 RGB image."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.shape} "
                             f"{pixels.dtype}")
        inputs = self.processor.image_processor(images=pixels, return_tensors="pt")
        vision = self.model.clip.vision_model(inputs.pixel_values.to(self.device),
                                              output_hidden_states=True)
        # hidden_states[0] is the patch embedding; layer i's output is hidden_states[i + 1].
        hidden = tuple(vision.hidden_states[i + 1].detach()
                       for i in self.model.config.extract_layers)
        with self._lock:
            self.counts["image_passes"] += 1
        return ClipSegActivations(hidden, (int(pixels.shape[0]), int(pixels.shape[1])))

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(len(prompts), projection_dim)`` conditional embeddings; each distinct prompt is
        run through the text model once per process (and kept while in the LRU)."""
        found = {p: self._texts.get(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, v in found.items() if v is None]
        if missing:
            tokens = self.processor.tokenizer(missing, padding=True, return_tensors="pt")
            features = self.model.clip.get_text_features(
                input_ids=tokens.input_ids.to(self.device),
                attention_mask=tokens.attention_mask.to(self.device))
            if not isinstance(features, torch.Tensor):  # transformers >= 5: an output record
                features = features.pooler_output
            for prompt, row in zip(missing, features, strict=True):
                self._texts.put(prompt, row.detach())
                found[prompt] = row.detach()
        with self._lock:
            self.counts["texts_encoded"] += len(missing)
            self.counts["texts_cached"] += len(found) - len(missing)
        return torch.stack([found[p] for p in prompts])  # type: ignore[misc]

    @torch.inference_mode()
    def logits(self, image: ClipSegActivations, prompts: Sequence[str]) -> torch.Tensor:
        """The decoder's ``(len(prompts), h, w)`` logits (CLIPSeg's square output grid), all
        prompts in one batch over the image's cached activations."""
        if not prompts:
            raise ValueError("no prompts")
        conditional = self.encode_texts(prompts)
        batch = len(prompts)
        hidden = [h.expand(batch, -1, -1) for h in image.hidden]
        out = self.model.decoder(hidden, conditional).logits
        return out if out.ndim == 3 else out[None]  # a batch of one may come back squeezed

    def probabilities(self, image: ClipSegActivations, prompts: Sequence[str],
                      background: str | None) -> np.ndarray:
        """``(len(prompts), h, w)`` float32 probabilities at the working size (the image's
        size, its long side capped at WORK_SIDE; see :func:`work_size`).

        With a ``background`` prompt, every pixel's probabilities over [background, *prompts]
        sum to 1 (softmax): prompts compete and a pixel is a label's only where it beats
        the background. Without, each prompt is an independent sigmoid (CLIPSeg's own
        reading; labels may overlap)."""
        texts = [background, *prompts] if background else list(prompts)
        logits = self.logits(image, texts)
        height, width = work_size(*image.image_size)
        with torch.inference_mode():
            resized = torch.nn.functional.interpolate(
                logits[None].float(), size=(height, width), mode="bilinear",
                align_corners=False)[0]
            probs = resized.softmax(dim=0)[1:] if background else resized.sigmoid()
        return probs.cpu().numpy().astype(np.float32, copy=False)


def work_size(height: int, width: int) -> tuple[int, int]:
    """The ``(H, W)`` probabilities are computed at: the image's size, scaled down to a long
    side of WORK_SIDE when larger."""
    scale = min(1.0, WORK_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def save_random_clipseg(directory: Path, config: dict[str, Any], image_side: int,
                        seed: int = 0) -> Path:
    """A randomly initialised CLIPSeg of ``config`` (CLIPSegConfig keyword arguments) and its
    processor saved to ``directory`` with ``save_pretrained``, loadable as CLIPSEG_MODEL; for
    timings and tests where no weights can be downloaded. Its tokenizer knows only lower-case
    letters (spelled one token each), which is enough to carry prompts to the model."""
    import json

    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = [*letters, *(f"{c}</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    text = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"], **config.get("text_config", {})}
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(**{**config, "text_config": text}))
    # CLIP's image statistics, as the released processor uses.
    images = ViTImageProcessor(size={"height": image_side, "width": image_side},
                               image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225])
    model.save_pretrained(directory)
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return directory
