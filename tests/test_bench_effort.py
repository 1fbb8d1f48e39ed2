"""The effort benchmark's accounting on hand-computed cases: what a pre-label costs as Label
Studio result JSON (the pools' own truth results), and the SAM clicker against stand-in
models whose answers are known."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.reporting.effort import DEFAULT_COSTS
from ml_backend.reporting.regions import compare_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench = importlib.import_module("bench_effort")


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pools")
    return {name: bench.make_pool(name, root, 6, 2, seed=3) for name in bench.POOLS}


def test_pools_hold_the_truth(pools: dict[str, Any]) -> None:
    digits, shapes, masks = pools["digits"], pools["shapes"], pools["masks"]
    assert len(digits.tasks) == 6 and len(digits.heldout) == 2
    assert all(t.truth_result[0]["value"]["choices"] == [str(t.truth)] for t in digits.tasks)
    for task in shapes.tasks:
        assert len(task.truth_result) == len(task.truth.labels) >= 1
    for task in masks.tasks:
        assert len(task.truth_result) == len(task.truth.masks)
        assert all(m.any() for m in task.truth.masks)


def test_a_perfect_pre_label_costs_the_accept_cost(pools: dict[str, Any]) -> None:
    for task in pools["digits"].tasks:
        cmp = compare_results(task.truth_result, task.truth_result)
        assert (cmp.fixing_s, cmp.manual_s, cmp.untouched) == (1.0, 3.0, True)
    for task in pools["shapes"].tasks:
        n = len(task.truth_result)
        cmp = compare_results(task.truth_result, task.truth_result)
        assert (cmp.fixing_s, cmp.manual_s, cmp.accepted) == (1.0 * n, 7.0 * n, n)
    for task in pools["masks"].tasks:
        n = len(task.truth_result)
        cmp = compare_results(task.truth_result, task.truth_result)
        assert (cmp.fixing_s, cmp.manual_s, cmp.accepted) == (1.0 * n, 79.0 * n, n)


def test_missing_and_wrong_pre_labels(pools: dict[str, Any]) -> None:
    task = pools["shapes"].tasks[0]
    n = len(task.truth_result)
    assert compare_results([], task.truth_result).fixing_s == 7.0 * n  # every box drawn
    assert compare_results(None, task.truth_result).fixing_s == 7.0 * n  # no pre-label
    extra = [*task.truth_result, {**task.truth_result[0], "value": {
        "x": 0.0, "y": 0.0, "width": 1.0, "height": 1.0, "rectanglelabels": ["circle"]}}]
    assert compare_results(extra, task.truth_result).fixing_s == 1.0 * n + 1.0  # one deleted
    digit = pools["digits"].tasks[0]
    wrong = bench._choice_result(str((digit.truth + 1) % 10))
    cmp = compare_results(wrong, digit.truth_result)
    assert (cmp.fixing_s, cmp.untouched) == (3.0, False)


def test_manual_arm_costs_every_object_by_hand(pools: dict[str, Any]) -> None:
    for name, per_object in (("digits", 3.0), ("shapes", 7.0), ("masks", 79.0)):
        pool = pools[name]
        run = bench.manual_arm(pool, 0, DEFAULT_COSTS, None)
        assert sorted(run.order) == list(range(len(pool.tasks)))
        objects = sum(len(t.truth_result) for t in pool.tasks)
        assert sum(run.seconds) == pytest.approx(per_object * objects)
        summary = bench.arm_summary(run, None)
        assert summary["hours_total"] == round(per_object * objects / 3600, 4)
        assert summary["accepted_without_edit_share"] == 0.0


def test_next_click_goes_to_the_middle_of_the_largest_error() -> None:
    truth = np.zeros((40, 60), bool)
    truth[10:30, 10:50] = True
    x, y, positive = bench.next_click(truth, None)
    assert positive and 25 <= x <= 34 and 15 <= y <= 24
    spill = truth.copy()
    spill[0:40, 50:60] = True  # the mask spills 10 px to the right: a negative click there
    x, y, positive = bench.next_click(truth, spill)
    assert not positive and x >= 50


def test_clicker_counts_clicks_to_iou_0_9() -> None:
    truth = np.zeros((40, 60), bool)
    truth[10:30, 10:50] = True
    seen: list[list[dict[str, Any]]] = []

    def sam(points: list[dict[str, Any]]) -> list[np.ndarray]:
        seen.append(list(points))
        return [np.zeros_like(truth) if len(points) == 1 else truth]

    assert bench.clicks_to_target(sam, truth, 20) == 2  # a miss, then exact
    assert [len(p) for p in seen] == [1, 2] and seen[1][1]["is_positive"]
    answers = iter([np.zeros_like(truth), truth])
    assert bench.clicks_to_target(lambda points: [next(answers)], truth, 20) == 2
    never = bench.clicks_to_target(lambda points: [], truth, 20)
    assert never is None  # drawn by hand: a polygon
    assert bench.mask_effort(never, DEFAULT_COSTS).seconds == 79.0
    assert bench.mask_effort(2, DEFAULT_COSTS).seconds == 4.0


def test_interactive_answer_masks_are_found_and_decoded() -> None:
    from ml_backend.labelstudio.rle import mask_to_rle

    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    body = {"data": {"result": [{"type": "brushlabels", "value": {
        "format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Object"]}}]}}
    [found] = bench._answer_masks(body, 8, 10)
    assert (found == mask).all()
