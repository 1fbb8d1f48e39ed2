"""Text-prompted pre-labels: which text each label is asked with, which threshold applies,
what an annotator typed, and how CLIPSeg's probability maps become boxes and masks. Pure
functions over the parsed config, JSON and arrays (the model call is elsewhere).

Prompt of a label: its ``prompt`` attribute, else its ``hint`` (``<Label value="Car"
hint="a photo of a car"/>``), else its name.

Threshold (probability a pixel must exceed), first found of:
1. the value of a ``Number`` control on the image whose name contains ``threshold``, in the
   interactive context (``<Number name="threshold" toName="image" min="0" max="1"
   step="0.05"/>``), else its ``defaultValue``;
2. the control's ``clipseg_threshold`` attribute;
3. ``CLIPSEG_THRESHOLD``.

Typed prompts: text submitted in a ``TextArea`` on the image (interactive ``context``). Each
box or mask control on that image gets the text's regions under the label the text names:
the label whose name or prompt equals the text, else the longest label name the text
contains as a word (the first in the config on a tie), else the control's first label.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.detections import Detections
from ml_backend.core.errors import BadRequest
from ml_backend.labelstudio.label_config import ControlSpec, ParsedConfig
from ml_backend.labelstudio.masks import component_boxes, mask_components
from ml_backend.labelstudio.results import Boxes, Mask, Output
from ml_backend.learning.selection import probability_map_uncertainty

log = logging.getLogger(__name__)

BOX_TAGS = frozenset({"RectangleLabels"})
MASK_TAGS = frozenset({"BrushLabels", "PolygonLabels"})
TEXT_PROMPT_CONTROLS = BOX_TAGS | MASK_TAGS
MAX_PROMPT_CHARS = 300  # CLIP reads at most 77 tokens anyway


def label_prompt(control: ControlSpec, label: str) -> str:
    attrs = control.label_attrs.get(label, {})
    for key in ("prompt", "hint"):
        text = attrs.get(key, "").strip()
        if text:
            return text
    return label


def _unit_interval(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


def threshold_controls(parsed: ParsedConfig, image: str) -> list[ControlSpec]:
    return [c for c in parsed.controls
            if c.tag == "Number" and c.to_name == image and "threshold" in c.name.lower()]


def context_threshold(context: Any, parsed: ParsedConfig, image: str) -> float | None:
    """A threshold the annotator set in a threshold ``Number`` control, else its
    ``defaultValue``, else None."""
    numbers = threshold_controls(parsed, image)
    names = {c.name for c in numbers}
    results = context.get("result") if isinstance(context, dict) else None
    for region in reversed(results if isinstance(results, list) else []):
        if isinstance(region, dict) and region.get("from_name") in names:
            value = region.get("value")
            raw = value.get("number") if isinstance(value, dict) else None
            found = _unit_interval(raw)
            if found is None:
                raise BadRequest(f"threshold '{region.get('from_name')}' must be a number in "
                                 f"[0, 1], got {raw!r}")
            return found
    for control in numbers:
        found = _unit_interval(control.attrs.get("defaultValue"))
        if found is not None:
            return found
    return None


def control_threshold(control: ControlSpec, default: float, override: float | None) -> float:
    if override is not None:
        return override
    raw = control.attrs.get("clipseg_threshold")
    if raw is None:
        return default
    found = _unit_interval(raw)
    if found is None:
        log.warning("control %s: clipseg_threshold=%r is not a number in [0, 1]; using %s",
                    control.name, raw, default)
        return default
    return found


@dataclass(frozen=True)
class TypedPrompt:
    """Text an annotator submitted for the image ``image`` (an object tag name)."""

    image: str
    text: str


def typed_prompt(context: Any, parsed: ParsedConfig) -> TypedPrompt | None:
    """The last non-empty text of a prompt ``TextArea`` in the context, or None."""
    results = context.get("result") if isinstance(context, dict) else None
    if not isinstance(results, list):
        return None
    areas = {c.name: c for c in parsed.text_inputs}
    for region in reversed(results):
        if not isinstance(region, dict) or region.get("from_name") not in areas:
            continue
        value = region.get("value")
        texts = value.get("text") if isinstance(value, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest(f"TextArea '{region.get('from_name')}' in the context needs "
                             "value.text: a list of strings")
        text = " ".join(t.strip() for t in texts if t.strip())
        if len(text) > MAX_PROMPT_CHARS:
            raise BadRequest(f"the prompt in '{region['from_name']}' has {len(text)} "
                             f"characters; the limit is {MAX_PROMPT_CHARS}")
        if text:
            return TypedPrompt(areas[str(region["from_name"])].to_name, text)
    return None


def label_for_text(control: ControlSpec, text: str) -> str:
    """The control's label a typed ``text`` names (rule in the module docstring)."""
    folded = text.casefold().strip()
    for label in control.labels:
        if folded in (label.casefold(), label_prompt(control, label).casefold()):
            return label
    named = [label for label in control.labels
             if re.search(rf"(?<!\w){re.escape(label.casefold())}(?!\w)", folded)]
    if named:
        return max(named, key=len)
    return control.labels[0]


def scale_boxes(xyxy: np.ndarray, work: tuple[int, int], image: tuple[int, int]
                ) -> np.ndarray:
    """Pixel corners at the working size ``(H, W)`` to the image's ``(H, W)``."""
    factors = np.array([image[1] / work[1], image[0] / work[0]] * 2, dtype=np.float64)
    return xyxy * factors


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``(H, W)`` (pixel centres sampled)."""
    if mask.shape == size:
        return mask
    rows = ((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(np.intp)
    cols = ((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(np.intp)
    return mask[np.minimum(rows, mask.shape[0] - 1)][:, np.minimum(cols, mask.shape[1] - 1)]


# Given an image's boxes (xyxy pixels), one mask (H, W) bool per box and its score: how a
# mask is refined by SAM (text -> box -> SAM mask).
Refiner = Callable[[np.ndarray], list[tuple[np.ndarray, float]]]


@dataclass(frozen=True)
class TextSettings:
    threshold: float
    min_area: float  # share of the image a component needs to count
    polygon_tolerance_px: float


def text_outputs(controls: Sequence[ControlSpec],
                 maps: Mapping[str, Mapping[str, np.ndarray]], image_size: tuple[int, int],
                 settings: TextSettings, threshold: float | None = None,
                 refine: Refiner | None = None) -> tuple[list[Output], float]:
    """One image's boxes and masks for ``controls``: ``maps[control.name][label]`` is the
    label's probability map ``(h, w)`` at the working size. The image's uncertainty is that
    of its least certain control."""
    outputs: list[Output] = []
    uncertainty = 0.0
    height, width = image_size
    for control in controls:
        by_label = maps.get(control.name) or {}
        if not by_label:
            continue
        limit = control_threshold(control, settings.threshold, threshold)
        work = next(iter(by_label.values())).shape
        min_area = max(1, round(settings.min_area * work[0] * work[1]))
        unsure = probability_map_uncertainty(np.stack(list(by_label.values())))
        uncertainty = max(uncertainty, unsure)
        if control.tag in BOX_TAGS:
            boxes, names, scores = [], [], []
            for label, prob in by_label.items():
                xyxy, found = component_boxes(prob, limit, min_area)
                boxes.append(scale_boxes(xyxy, work, image_size))
                names.extend([label] * len(found))
                scores.append(found)
            detections = Detections(np.concatenate(boxes), tuple(names),
                                    np.concatenate(scores), width, height)
            outputs.append(Boxes(control, detections, unsure))
            continue
        for label, prob in by_label.items():
            found = _label_mask(prob, limit, min_area, image_size, refine)
            if found is not None:
                outputs.append(Mask(control, label, found[0], found[1],
                                    settings.polygon_tolerance_px))
    return outputs, uncertainty


def label_maps(controls: Sequence[ControlSpec], prompts: Sequence[str],
               probability: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Each control's label → map, from ``probability (len(prompts), h, w)`` computed for
    ``prompts`` (every label's :func:`label_prompt` among them)."""
    row = {prompt: i for i, prompt in enumerate(prompts)}
    return {c.name: {label: probability[row[label_prompt(c, label)]] for label in c.labels}
            for c in controls}


def _label_mask(prob: np.ndarray, limit: float, min_area: int, image_size: tuple[int, int],
                refine: Refiner | None) -> tuple[np.ndarray, float] | None:
    """Every kept component of one label as one mask at the image's size, and its score:
    the mean probability inside, or SAM's mean predicted IoU when refined."""
    components, count = mask_components(prob > limit, min_area)
    if count == 0:
        return None
    if refine is not None:
        xyxy, _ = component_boxes(prob, limit, min_area)
        refined = refine(scale_boxes(xyxy, prob.shape, image_size))
        mask = np.zeros(image_size, dtype=bool)
        for part, _ in refined:
            mask |= part
        if mask.any():
            return mask, float(np.mean([score for _, score in refined]))
    kept = components > 0
    return resize_mask(kept, image_size), float(prob[kept].mean())
