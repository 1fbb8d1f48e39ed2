"""Effort accounting on hand-computed cases (the same rules count for the effort benchmark
and the per-project report)."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.reporting.effort import (
    CostModel,
    Effort,
    box_effort,
    box_iou,
    class_effort,
    mask_effort,
    match_boxes,
)

BOX = np.array([[10.0, 10.0, 50.0, 50.0]])


def test_classes() -> None:
    assert class_effort(None, "cat").seconds == 3.0  # picked by hand
    assert class_effort("cat", "cat").seconds == 1.0  # a correct pre-label: confirmed
    assert class_effort("dog", "cat").seconds == 3.0  # a wrong one: changed
    assert class_effort("cat", "cat").untouched and not class_effort("dog", "cat").untouched


def test_a_perfect_pre_box_costs_the_accept_cost() -> None:
    effort = box_effort(BOX, ["car"], BOX, ["car"])
    assert effort.seconds == 1.0 and effort.counts == {"accepted": 1} and effort.untouched


def test_a_missing_box_costs_a_draw_and_a_false_one_a_delete() -> None:
    assert box_effort(np.zeros((0, 4)), [], BOX, ["car"]).seconds == 7.0
    effort = box_effort(BOX, ["car"], np.zeros((0, 4)), [])
    assert effort.seconds == 1.0 and effort.counts == {"deleted": 1}


def test_a_loose_box_is_adjusted_and_a_far_one_replaced() -> None:
    loose = np.array([[10.0, 10.0, 50.0, 60.0]])  # IoU 0.8
    assert box_iou(loose, BOX)[0, 0] == pytest.approx(0.8)
    assert box_effort(loose, ["car"], BOX, ["car"]).counts == {"adjusted": 1}
    far = np.array([[30.0, 30.0, 70.0, 70.0]])  # IoU 400 / 2800 < 0.5
    effort = box_effort(far, ["car"], BOX, ["car"])
    assert effort.counts == {"deleted": 1, "drawn": 1} and effort.seconds == 8.0


def test_a_wrong_label_on_a_good_box_is_changed() -> None:
    effort = box_effort(BOX, ["bus"], BOX, ["car"])
    assert effort.counts == {"accepted": 1, "changed": 1} and effort.seconds == 4.0


def test_matching_is_one_to_one_and_maximises_overlap() -> None:
    truth = np.array([[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 18.0, 10.0]])
    predicted = np.array([[7.0, 0.0, 17.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert sorted((p, t) for p, t, _ in match_boxes(predicted, truth)) == [(0, 1), (1, 0)]


def test_masks_and_costs_are_options() -> None:
    assert mask_effort(None).seconds == 79.0
    assert mask_effort(3).seconds == 6.0 and mask_effort(3).counts == {"clicked": 3}
    assert mask_effort(21).seconds == 79.0  # beyond the cap: drawn by hand
    traditional = CostModel(draw_box_s=34.5)
    assert box_effort(np.zeros((0, 4)), [], BOX, ["car"], traditional).seconds == 34.5
    total = Effort()
    total += class_effort(None, "a")
    total += box_effort(BOX, ["car"], BOX, ["car"])
    assert total.seconds == 4.0 and total.counts == {"picked": 1, "accepted": 1}
