"""Uncertainty scores and selectors on hand-made arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.learning.selection import (
    Strategy,
    entropy,
    least_confidence,
    margin,
    queue_scores,
    ranked_batch,
    select,
    task_uncertainty,
    top_k,
    uncertainty_table,
)

P = np.array([
    [1.0, 0.0, 0.0],    # certain
    [0.5, 0.5, 0.0],    # torn between two
    [1 / 3, 1 / 3, 1 / 3],  # no idea
    [0.6, 0.3, 0.1],
])


@pytest.mark.parametrize("fn, expected", [
    (least_confidence, [0.0, 0.75, 1.0, 0.6]),
    (margin, [0.0, 1.0, 1.0, 0.7]),
    (entropy, [0.0, np.log(2) / np.log(3), 1.0,
               -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(3)]),
])
def test_single_choice_uncertainty_known_values(fn, expected) -> None:
    np.testing.assert_allclose(fn(P), expected, atol=1e-9)


def test_multiple_choice_uncertainty() -> None:
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.5]])
    np.testing.assert_allclose(least_confidence(p, True), [0.0, 1.0, 0.6])
    np.testing.assert_allclose(margin(p, True), [0.0, 1.0, 0.6])
    np.testing.assert_allclose(entropy(p, True)[:2], [0.0, 1.0], atol=1e-9)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        margin(np.array([0.2, 0.8]))
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        Strategy.parse("best")


def test_top_k_orders_and_breaks_ties_reproducibly() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.0])
    a = top_k(scores, 3, np.random.default_rng(1))
    b = top_k(scores, 3, np.random.default_rng(1))
    assert a.tolist() == b.tolist()
    assert set(a[:2].tolist()) == {1, 3} and a[2] == 2
    assert top_k(scores, 10, np.random.default_rng(0)).tolist()[-1] == 4


def test_ranked_batch_does_not_pick_duplicates_twice() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 16))
    # Candidates 0-3 are copies of one very uncertain image; 4-7 are distinct, less so.
    embeddings = np.concatenate([np.repeat(base[:1], 4, axis=0), base[1:5]])
    uncertainty = np.array([0.99, 0.99, 0.99, 0.99, 0.6, 0.6, 0.6, 0.6])
    labeled = rng.normal(size=(8, 16))
    batch = ranked_batch(uncertainty, embeddings, labeled, 4, np.random.default_rng(0))
    assert len(set(batch.tolist()) & {0, 1, 2, 3}) == 1
    assert batch[0] in {0, 1, 2, 3}  # the most uncertain still comes first
    # With nothing labeled yet, the first pick is the most uncertain, then diversity.
    fresh = ranked_batch(uncertainty, embeddings, np.zeros((0, 16)), 4,
                         np.random.default_rng(0))
    assert fresh[0] in {0, 1, 2, 3} and len(set(fresh.tolist()) & {0, 1, 2, 3}) == 1
    # Pure uncertainty would take all four copies.
    assert set(top_k(uncertainty, 4, np.random.default_rng(0)).tolist()) == {0, 1, 2, 3}


def test_ranked_batch_avoids_what_is_already_labeled() -> None:
    rng = np.random.default_rng(3)
    labeled = rng.normal(size=(3, 8))
    candidates = np.concatenate([labeled[:1] * 2.0, rng.normal(size=(1, 8))])
    batch = ranked_batch(np.array([0.9, 0.8]), candidates, labeled, 1, rng)
    assert batch.tolist() == [1]


def test_select_random_share_and_uniqueness() -> None:
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), size=50)
    chosen = select(Strategy.MARGIN, margin(proba), 10, rng, random_share=0.2)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    by_margin = top_k(margin(proba), 8, np.random.default_rng(0))
    assert chosen[:8].tolist() == by_margin.tolist()
    with pytest.raises(ValueError, match="embeddings"):
        select(Strategy.RANKED_BATCH, margin(proba), 5, rng)


def test_queue_scores_sort_batch_first_then_by_confidence() -> None:
    confidence = np.array([0.9, 0.2, 0.6, 0.4, 0.8, 0.3])
    batch = np.array([4, 1, 0])  # the selector's pick, in its order (not by confidence)
    scores = queue_scores(batch, confidence)
    assert np.argsort(scores, kind="stable").tolist() == [4, 1, 0, 5, 3, 2]
    np.testing.assert_allclose(scores[[2, 3, 5]], confidence[[2, 3, 5]])
    assert scores.min() >= 0 and scores.max() <= 1
    # A zero confidence outside the batch still sorts after the batch.
    scores = queue_scores(np.array([1, 0]), np.array([0.5, 0.7, 0.0]))
    assert np.argsort(scores, kind="stable").tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="twice"):
        queue_scores(np.array([1, 1]), confidence)


def test_task_uncertainty_takes_the_least_certain_control() -> None:
    sure = uncertainty_table(np.array([[0.99, 0.01], [0.5, 0.5]]))
    torn = uncertainty_table(np.array([[0.5, 0.5], [0.9, 0.1]]))
    np.testing.assert_allclose(task_uncertainty(Strategy.MARGIN, [sure, torn]), [1.0, 1.0])
    np.testing.assert_allclose(task_uncertainty(Strategy.LEAST_CONFIDENCE, [sure]), [0.02, 1.0])
    assert set(sure) == {"least_confidence", "margin", "entropy"}
    # Ranked batch and random write margin scores.
    np.testing.assert_allclose(task_uncertainty(Strategy.RANKED_BATCH, [sure]), sure["margin"])
    with pytest.raises(ValueError):
        task_uncertainty(Strategy.MARGIN, [])


def test_queue_scores_keep_the_batch_order_after_rounding_when_confidence_is_near_zero() -> None:
    """A nearly uniform model: every confidence far below the 6 decimals Label Studio gets."""
    confidence = np.full(20, 1e-8)
    first = np.array([7, 3, 11, 0, 5])
    written = np.round(queue_scores(first, confidence), 6)
    order = np.argsort(written, kind="stable")
    assert order[:len(first)].tolist() == first.tolist()
    assert len(set(written[first].tolist())) == len(first)
    assert np.all(written[np.setdiff1d(np.arange(20), first)] > written[first].max())
