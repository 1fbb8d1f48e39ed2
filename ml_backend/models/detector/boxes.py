"""From a detector's raw boxes to each ``RectangleLabels`` control's output and the image's
detection uncertainty: label mapping, per-control score thresholds, aggregation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ml_backend.core.detections import Detections, label_map
from ml_backend.core.settings import DEFAULT_DETECTOR_MIN_SCORE
from ml_backend.labelstudio.label_config import ControlSpec
from ml_backend.labelstudio.results import Boxes, Output
from ml_backend.learning.selection import detection_uncertainty
from ml_backend.models.detector.model import DetectorModel

log = logging.getLogger(__name__)

# Boxes down to this confidence inform the uncertainty even when too weak to be shown: an
# image whose best box sits at 0.2 is one the model is unsure about, not an empty one.
UNCERTAINTY_FLOOR = 0.05
DETECT_CHUNK = 8  # images per detector call: batched, but bounded in memory
# Boxes whose confidence reaches this count as found (see ranking.detection_uncertainty).
CONFIDENT = 0.5


def default_min_score(setting: float | None, tuned: float | None) -> float:
    """The threshold of controls without ``model_score_threshold``: ``DETECTOR_MIN_SCORE``
    when it is a number; under ``auto`` (None) the one the version's training chose for the
    least fix-up time (``tuned``), else the mAP default."""
    if setting is not None:
        return setting
    return tuned if tuned is not None else DEFAULT_DETECTOR_MIN_SCORE


def score_threshold(control: ControlSpec, default: float) -> float:
    """``model_score_threshold`` on the control (as Label Studio's YOLO backend reads it),
    else ``default``. A value that is not a number in [0, 1] is ignored with a warning."""
    raw = control.attrs.get("model_score_threshold")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        log.warning("control %s: model_score_threshold=%r is not a number in [0, 1]; using %s",
                    control.name, raw, default)
        return default
    return value


def control_boxes(control: ControlSpec, raw: Detections, threshold: float) -> Boxes:
    """``raw`` (model class names) restricted to the classes ``control`` maps, relabelled with
    its labels; boxes below ``threshold`` are dropped from the output but not from the
    uncertainty."""
    mapping = label_map(control.labels, control.label_attrs, set(raw.labels))
    keep = np.array([name in mapping for name in raw.labels], dtype=bool)
    scores = raw.scores[keep]
    uncertainty = float(detection_uncertainty([scores], confident=CONFIDENT)[0])
    shown = np.flatnonzero(keep)[raw.scores[keep] >= threshold]
    labels = tuple(mapping[raw.labels[i]] for i in shown)
    return Boxes(control, Detections(raw.xyxy[shown], labels, raw.scores[shown], raw.width,
                                     raw.height), uncertainty)


def detect_images(model: DetectorModel, controls: Sequence[ControlSpec],
                  images: Sequence[np.ndarray], default_threshold: float
                  ) -> list[list[Boxes]]:
    """Every control's boxes on each image (all ``controls`` read the same image), from one
    batched detector call."""
    thresholds = {c.name: score_threshold(c, default_threshold) for c in controls}
    floor = min([UNCERTAINTY_FLOOR, *thresholds.values()])
    raw = model.detector.detect(images, floor)
    return [[control_boxes(c, r, thresholds[c.name]) for c in controls] for r in raw]


def boxes_outputs(boxes: Sequence[Boxes]) -> tuple[list[Output], float]:
    """One image's boxes over its controls as task outputs, with the least certain control's
    uncertainty."""
    return list(boxes), max(b.uncertainty for b in boxes)


def unmapped_controls(model: DetectorModel, controls: Sequence[ControlSpec]
                      ) -> list[str]:
    """Controls none of whose labels the detector can predict (told once in the log)."""
    classes = model.detector.classes
    return [c.name for c in controls if not label_map(c.labels, c.label_attrs, classes)]
