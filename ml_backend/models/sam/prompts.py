"""From an interactive request's ``context`` (smart-tool clicks and boxes) to a SAM prompt
and the control its mask goes to. Pure functions over the parsed config and JSON.

Which control gets the mask (``BrushLabels`` or ``PolygonLabels`` on the clicked image):
1. only controls that have the clicked label are candidates;
2. one candidate: that one;
3. several (a config with both a brush and a polygon control for the label): the one
   nearest to the smart tool in the config, the tool's neighbour being the control it was
   placed with; at equal distance the brush (a mask is lossless, a polygon is simplified).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.errors import BadRequest
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, ParsedConfig
from ml_backend.models.sam.model import SamPrompt


@dataclass(frozen=True)
class PromptRegion:
    """One smart-tool region of the context, in percent of the image."""

    control: ControlSpec
    label: str | None
    kind: str  # "point" | "box"
    xy: tuple[float, float]  # point, or the box's top-left corner
    size: tuple[float, float] = (0.0, 0.0)  # box width, height
    positive: bool = True


@dataclass(frozen=True)
class ClickRequest:
    """What one interactive request asks for: the mask of ``label`` on the image under
    ``target.value_key``, prompted by ``points`` and at most one ``box``."""

    target: ControlSpec
    label: str
    points: tuple[PromptRegion, ...]
    box: PromptRegion | None

    def prompt(self, width: int, height: int) -> SamPrompt:
        """The prompt in pixels of a ``width`` x ``height`` image."""
        scale = np.array([width / 100.0, height / 100.0])
        points = np.array([p.xy for p in self.points], dtype=np.float64).reshape(-1, 2) * scale
        positive = np.array([p.positive for p in self.points], dtype=bool)
        box = None
        if self.box is not None:
            x, y = self.box.xy
            w, h = self.box.size
            box = np.array([x, y, x + w, y + h], dtype=np.float64) * np.tile(scale, 2)
        return SamPrompt(points, positive, box)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise BadRequest(f"interactive context: {what} must be a number, got {value!r}")
    return float(value)


def _label_of(region: dict[str, Any], control: ControlSpec) -> str | None:
    value = region.get("value") or {}
    for key in (control.result_type, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def prompt_regions(context: Any, parsed: ParsedConfig) -> list[PromptRegion]:
    """The context's keypoints and rectangles drawn with the config's smart tools, in
    order. Other regions (a TextArea's text, manual regions) are ignored here."""
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return []
    tools = {c.name: c for c in parsed.prompts}
    out: list[PromptRegion] = []
    for region in context["result"]:
        if not isinstance(region, dict):
            raise BadRequest("interactive context: every result item must be an object")
        control = tools.get(str(region.get("from_name")))
        if control is None:
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise BadRequest(f"interactive context: region of '{control.name}' has no value")
        xy = (_number(value.get("x"), "x"), _number(value.get("y"), "y"))
        label = _label_of(region, control)
        positive = region.get("is_positive", True) is not False
        if control.tag == "KeyPointLabels":
            out.append(PromptRegion(control, label, "point", xy, positive=positive))
        else:
            size = (_number(value.get("width"), "width"), _number(value.get("height"), "height"))
            if size[0] <= 0 or size[1] <= 0:
                raise BadRequest("interactive context: a box needs a positive width and height")
            out.append(PromptRegion(control, label, "box", xy, size, positive))
    return out


def click_request(context: Any, parsed: ParsedConfig) -> ClickRequest | None:
    """The request the context's last smart region asks for, or None when it has none.

    Every keypoint of the clicked label (positive and negative) and its last box are the
    prompt. Raises BadRequest when no mask control can take that label."""
    regions = prompt_regions(context, parsed)
    if not regions:
        return None
    last = regions[-1]
    same = [r for r in regions
            if r.label == last.label and r.control.to_name == last.control.to_name]
    target = choose_target(last.control, last.label, parsed)
    label = last.label if last.label in target.labels else target.labels[0]
    boxes = [r for r in same if r.kind == "box"]
    return ClickRequest(target, label, tuple(r for r in same if r.kind == "point"),
                        boxes[-1] if boxes else None)


def choose_target(tool: ControlSpec, label: str | None, parsed: ParsedConfig) -> ControlSpec:
    """The mask control a smart ``tool``'s region with ``label`` feeds (rule in the module
    docstring)."""
    on_image = [c for c in parsed.for_family(ModelFamily.SEGMENTER)
                if c.to_name == tool.to_name]
    if not on_image:
        raise BadRequest(f"smart tool '{tool.name}' is on '{tool.to_name}', which has no "
                         "BrushLabels or PolygonLabels control to put a mask in")
    candidates = [c for c in on_image if label is None or label in c.labels]
    if not candidates:
        names = ", ".join(f"'{c.name}'" for c in on_image)
        raise BadRequest(f"label {label!r} of smart tool '{tool.name}' is in none of the mask "
                         f"controls on '{tool.to_name}' ({names}); add it to one")
    return nearest(tool, candidates, parsed.controls)


def nearest(tool: ControlSpec, candidates: Sequence[ControlSpec],
            order: Sequence[ControlSpec]) -> ControlSpec:
    names = [c.name for c in order]
    here = names.index(tool.name) if tool.name in names else 0

    def distance(control: ControlSpec) -> tuple[int, int]:
        where = names.index(control.name) if control.name in names else len(names)
        return abs(where - here), 0 if control.tag == "BrushLabels" else 1

    return min(candidates, key=distance)
