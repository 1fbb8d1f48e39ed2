"""A detector's confidence calibration: which boxes are right, the isotonic fit, its record."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from ml_backend.core.detections import Detections, LabeledBoxes
from ml_backend.models.detector.calibration import (
    ConfidenceCalibration,
    fit_calibration,
    right_boxes,
)

BOX = [10.0, 10.0, 30.0, 30.0]
OTHER = [60.0, 60.0, 90.0, 90.0]
NUDGED = [12.0, 10.0, 32.0, 30.0]  # IoU 0.82 with BOX
AWAY = [20.0, 10.0, 40.0, 30.0]  # IoU 0.33 with BOX


def _predicted(rows: Sequence[Sequence[float]], labels: Sequence[str], scores: Sequence[float]
               ) -> Detections:
    return Detections(np.array(rows, dtype=np.float64).reshape(-1, 4), tuple(labels),
                      np.array(scores, dtype=np.float64), 100, 100)


def _truth(rows: Sequence[Sequence[float]], labels: Sequence[str]) -> LabeledBoxes:
    return LabeledBoxes(np.array(rows, dtype=np.float64), tuple(labels))


def test_right_boxes_as_detection_precision_counts_them() -> None:
    truth = _truth([BOX, OTHER], ["a", "b"])
    predicted = _predicted([NUDGED, BOX, OTHER, AWAY, OTHER],
                           ["a", "a", "a", "b", "b"], [0.5, 0.9, 0.8, 0.7, 0.3])
    # BOX (0.9) claims the object first, so NUDGED (0.5) is a second box on it: wrong.
    # OTHER labelled "a" is the wrong class; AWAY overlaps too little; OTHER "b" is right.
    assert right_boxes(predicted, truth).tolist() == [False, True, False, False, True]


def test_nothing_is_right_without_boxes_on_either_side() -> None:
    assert right_boxes(_predicted([], [], []), _truth([BOX], ["a"])).tolist() == []
    assert right_boxes(_predicted([BOX], ["a"], [0.9]), _truth([], [])).tolist() == [False]


def _images(right_at: dict[float, tuple[int, int]]) -> tuple[list[Detections],
                                                             list[LabeledBoxes]]:
    """One image per box: at each confidence, ``(right, wrong)`` boxes."""
    predictions, truths = [], []
    for confidence, (right, wrong) in right_at.items():
        for k in range(right + wrong):
            predictions.append(_predicted([BOX], ["a"], [confidence]))
            truths.append(_truth([BOX] if k < right else [OTHER], ["a"]))
    return predictions, truths


def test_the_fit_is_the_share_of_right_boxes_and_only_rises() -> None:
    predictions, truths = _images({0.1: (1, 9), 0.3: (6, 4), 0.4: (4, 6), 0.6: (10, 0)})
    calibration = fit_calibration(predictions, truths)
    assert calibration is not None
    assert (calibration.n_boxes, calibration.n_right, calibration.n_images) == (40, 21, 40)
    got = calibration(np.array([0.1, 0.3, 0.4, 0.6, 0.95]))
    # 0.3 and 0.4 break the order (0.6 then 0.4): pooled to 0.5; flat above the knots.
    assert np.allclose(got, [0.1, 0.5, 0.5, 1.0, 1.0])
    # Below the weakest box measured it falls to 0 at confidence 0.
    assert np.allclose(calibration(np.array([0.0, 0.05])), [0.0, 0.05])
    assert np.all(np.diff(calibration(np.linspace(0, 1, 101))) >= 0)


def test_boxes_weaker_than_any_measured_are_not_carried_up() -> None:
    # Every held-out box from 0.05 up was right; a 0.01 box was never seen.
    predictions, truths = _images({0.05: (5, 0), 0.5: (10, 0)})
    calibration = fit_calibration(predictions, truths)
    assert calibration is not None
    assert np.allclose(calibration(np.array([0.01, 0.05, 0.9])), [0.2, 1.0, 1.0])


def test_too_few_right_boxes_fit_nothing() -> None:
    predictions, truths = _images({0.2: (9, 30)})
    assert fit_calibration(predictions, truths) is None
    assert fit_calibration(predictions, truths, min_right=9) is not None
    assert fit_calibration([], []) is None


def test_a_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="1 images of predictions but 0 of true boxes"):
        fit_calibration([_predicted([BOX], ["a"], [0.5])], [])


def test_applied_keeps_the_boxes_and_maps_the_scores() -> None:
    calibration = ConfidenceCalibration((0.2, 0.6), (0.1, 0.9), 10, 5, 3)
    predicted = _predicted([BOX, OTHER], ["a", "b"], [0.4, 0.7])
    applied = calibration.applied(predicted)
    assert np.allclose(applied.scores, [0.5, 0.9])
    assert applied.labels == predicted.labels and np.array_equal(applied.xyxy, predicted.xyxy)
    assert (applied.width, applied.height) == (100, 100)


def test_the_record_is_json_and_reads_back() -> None:
    predictions, truths = _images({0.1: (2, 8), 0.5: (8, 2), 0.8: (10, 0)})
    calibration = fit_calibration(predictions, truths)
    assert calibration is not None
    record = json.loads(json.dumps(calibration.as_meta()))
    assert ConfidenceCalibration.from_meta(record) == calibration


@pytest.mark.parametrize("record, error", [
    ({"confidence": [0.5], "precision": [], "n_boxes": 1, "n_right": 1, "n_images": 1},
     ValueError),
    ({"confidence": [0.5, 0.2], "precision": [0.1, 0.2], "n_boxes": 1, "n_right": 1,
      "n_images": 1}, ValueError),
    ({"confidence": [0.2, 0.5], "precision": [0.3, 0.2], "n_boxes": 1, "n_right": 1,
      "n_images": 1}, ValueError),
    ({"confidence": [0.5], "precision": [0.5]}, KeyError),
])
def test_a_broken_record_is_refused(record: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ConfidenceCalibration.from_meta(record)
