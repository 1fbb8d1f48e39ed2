"""Label config parsing and routing: which control of a project goes to which model family.

Parsing uses label-studio-sdk's ``LabelInterface``; the rest of the backend sees only the small
frozen :class:`ControlSpec` records built here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from types import MappingProxyType

from ml_backend.core.errors import UnsupportedConfig


class ModelFamily(str, Enum):
    CLASSIFIER = "classifier"
    DETECTOR = "detector"
    SEGMENTER = "segmenter"
    TEXT_SEGMENTER = "clipseg"


# Control tag → model family, for controls attached to an <Image>. Later families register here.
ROUTES: Mapping[str, ModelFamily] = MappingProxyType({
    "Choices": ModelFamily.CLASSIFIER,
    "RectangleLabels": ModelFamily.DETECTOR,
    "BrushLabels": ModelFamily.SEGMENTER,
    "PolygonLabels": ModelFamily.SEGMENTER,
})
IMAGE_OBJECT_TAGS = frozenset({"Image"})
# ``model="clipseg"`` on one of these sends it to CLIPSeg only (text-prompted zero-shot boxes
# or masks); without it, CLIPSeg fills in where no detector is trained and pre-labels masks.
TEXT_PROMPTED_TAGS = frozenset({"RectangleLabels", "BrushLabels", "PolygonLabels"})
# Smart tools (``smart="true"``): the annotator's clicks and boxes with these are prompts
# for a mask, sent in the interactive /predict ``context``.
PROMPT_TAGS = frozenset({"KeyPointLabels", "RectangleLabels"})


@dataclass(frozen=True)
class ControlSpec:
    """One control tag of a label config, as the adapters need it.

    ``value_key`` is the task data key holding the image URL (``$image`` → ``image``).
    ``label_attrs`` keeps each label's raw XML attributes (e.g. ``hint``, ``predicted_values``).
    """

    name: str
    tag: str
    to_name: str
    object_tag: str
    value_key: str
    labels: tuple[str, ...]
    multiple: bool = False
    attrs: Mapping[str, str] = field(default_factory=dict)
    label_attrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def result_type(self) -> str:
        """The ``type`` of this control's regions in Label Studio JSON (``choices`` …)."""
        return self.tag.lower()

    @property
    def model(self) -> str:
        """The ``model`` attribute, lower case: which family serves the control when it
        names one (``clipseg``, ``yolo``, ``sam``), else ""."""
        return self.attrs.get("model", "").strip().lower()

    @property
    def smart(self) -> bool:
        return self.attrs.get("smart", "").strip().lower() == "true" or \
            self.attrs.get("smartOnly", "").strip().lower() == "true"


@dataclass(frozen=True)
class ParsedConfig:
    """Every control of a config, plus the routed subset and what was left unserved."""

    controls: tuple[ControlSpec, ...]
    routed: Mapping[ModelFamily, tuple[ControlSpec, ...]]
    unserved: tuple[str, ...]
    digest: str
    prompts: tuple[ControlSpec, ...] = ()  # smart tools feeding segmenter controls
    text_inputs: tuple[ControlSpec, ...] = ()  # TextAreas on images: typed CLIPSeg prompts

    def for_family(self, family: ModelFamily) -> tuple[ControlSpec, ...]:
        return self.routed.get(family, ())


def config_digest(xml: str) -> str:
    return hashlib.sha256(xml.encode("utf-8")).hexdigest()[:16]


def _control_spec(control: object) -> list[ControlSpec]:
    attrs = {str(k): str(v) for k, v in (getattr(control, "attr", None) or {}).items()}
    labels = tuple(getattr(control, "labels", None) or ())
    label_attrs = {
        name: {str(k): str(v) for k, v in (tag.attr or {}).items()}
        for name, tag in (getattr(control, "labels_attrs", None) or {}).items()
    }
    multiple = bool(getattr(control, "is_multiple_choice", False))
    specs = []
    for obj in getattr(control, "objects", None) or ():
        value = str(getattr(obj, "value", "") or "")
        specs.append(ControlSpec(
            name=str(control.name),  # type: ignore[attr-defined]
            tag=str(control.tag),  # type: ignore[attr-defined]
            to_name=str(obj.name),
            object_tag=str(obj.tag),
            value_key=value[1:] if value.startswith("$") else value,
            labels=labels,
            multiple=multiple,
            attrs=MappingProxyType(attrs),
            label_attrs=MappingProxyType(label_attrs),
        ))
    return specs


@lru_cache(maxsize=256)
def parse_label_config(xml: str) -> ParsedConfig:
    """Parse ``xml`` and route its controls. Raises :class:`UnsupportedConfig` when the XML is
    invalid or no control can be served."""
    if not isinstance(xml, str) or not xml.strip():
        raise UnsupportedConfig("label config is empty")
    # Imported here: the SDK pulls in heavy dependencies that the HTTP layer's import
    # (and `ml-backend --help`) should not pay for.
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several unrelated types for bad XML
        raise UnsupportedConfig(f"label config is not valid XML: {exc}") from exc

    controls: list[ControlSpec] = []
    for control in interface.controls:
        controls.extend(_control_spec(control))
    routed: dict[ModelFamily, list[ControlSpec]] = {}
    unserved: list[str] = []
    prompts: list[ControlSpec] = []
    text_inputs: list[ControlSpec] = []
    mask_images = {c.to_name for c in controls
                   if ROUTES.get(c.tag) is ModelFamily.SEGMENTER and c.labels}
    for spec in controls:
        # A smart keypoint or rectangle tool on an image that has a mask control prompts
        # that mask (it is not a detection control to train).
        if spec.tag in PROMPT_TAGS and spec.smart and spec.to_name in mask_images:
            prompts.append(spec)
            continue
        if spec.tag == "TextArea" and spec.object_tag in IMAGE_OBJECT_TAGS:
            text_inputs.append(spec)
            continue
        if spec.tag == "Number" and "threshold" in spec.name.lower():
            continue  # a CLIPSeg threshold the annotator sets (see text_prompting)
        family = ROUTES.get(spec.tag)
        if spec.model == "clipseg" and spec.tag in TEXT_PROMPTED_TAGS:
            family = ModelFamily.TEXT_SEGMENTER
        if family is None or spec.object_tag not in IMAGE_OBJECT_TAGS or not spec.labels:
            unserved.append(f"{spec.tag} '{spec.name}' on {spec.object_tag or '?'}")
            continue
        routed.setdefault(family, []).append(spec)
    if not routed:
        found = ", ".join(unserved) or "no controls"
        served = ", ".join(f"{tag} on Image" for tag in ROUTES)
        raise UnsupportedConfig(
            f"nothing in this label config can be served: found {found}; this backend serves "
            f"{served}"
        )
    return ParsedConfig(
        controls=tuple(controls),
        routed=MappingProxyType({k: tuple(v) for k, v in routed.items()}),
        unserved=tuple(unserved),
        digest=config_digest(xml),
        prompts=tuple(prompts),
        text_inputs=tuple(text_inputs),
    )
