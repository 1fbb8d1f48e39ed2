"""The cold-start order: k-means clusters, most typical member first, every cluster covered
before one repeats, deterministic under a seed."""

from __future__ import annotations

import numpy as np

from ml_backend.learning.cold_start import (
    cold_start_clusters,
    coverage_order,
    coverage_select,
    typicality,
)


def blobs(sizes: list[int], seed: int = 0, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(len(sizes), 8))
    x = np.concatenate([c + rng.normal(scale=spread, size=(n, 8))
                        for c, n in zip(centres, sizes, strict=True)])
    return x, np.repeat(np.arange(len(sizes)), sizes)


def test_every_cluster_comes_once_before_any_repeats() -> None:
    sizes = [120, 60, 30, 15, 8]
    x, truth = blobs(sizes)
    order, clusters = coverage_order(x, n_clusters=5, seed=1)
    assert sorted(order.tolist()) == list(range(len(x)))  # a permutation of the pool
    # The first five rows are one of each blob: the data's every mode, before any repeat.
    assert sorted(truth[order[:5]].tolist()) == [0, 1, 2, 3, 4]
    # Largest cluster first.
    assert truth[order[0]] == 0
    # Round robin: cluster sizes bound how far each cluster's members spread.
    seen: dict[int, int] = {}
    for position, row in enumerate(order):
        round_ = seen.get(int(clusters[row]), 0)
        assert position >= sum(min(round_, int((clusters == c).sum())) for c in set(clusters))
        seen[int(clusters[row])] = round_ + 1


def test_an_upload_sorted_by_class_still_gets_a_covering_first_batch() -> None:
    """The demo's digits came sorted by class: task-id order gave ten zeros first."""
    x, truth = blobs([40] * 10, seed=3)
    first, scores = coverage_select(x, 10, seed=0)
    assert sorted(truth[first].tolist()) == list(range(10))
    assert np.argsort(scores, kind="stable")[:10].tolist() == first.tolist()
    assert np.all((scores >= 0) & (scores < 1))


def test_the_first_pick_of_a_cluster_is_its_most_typical_member() -> None:
    x, _ = blobs([50], seed=2)
    outlier = np.full((1, 8), 50.0)
    order, _ = coverage_order(np.concatenate([x, outlier]), n_clusters=1)
    assert order[-1] == 50  # the outlier comes last
    dense = typicality(x)
    assert order[0] == int(np.argmax(dense))


def test_deterministic_under_a_seed() -> None:
    x, _ = blobs([30, 30, 30], seed=5, spread=3.0)
    a, _ = coverage_order(x, 6, seed=7)
    b, _ = coverage_order(x, 6, seed=7)
    assert a.tolist() == b.tolist()


def test_small_pools_and_cluster_counts() -> None:
    assert coverage_order(np.zeros((0, 4)), 5)[0].tolist() == []
    assert coverage_order(np.ones((1, 4)), 5)[0].tolist() == [0]
    order, clusters = coverage_order(np.eye(3), 10)  # more clusters asked than rows
    assert sorted(order.tolist()) == [0, 1, 2] and len(set(clusters.tolist())) == 3
    assert cold_start_clusters(5, 10, 10) == 5
    assert cold_start_clusters(1000, 10, 10) == 20
    assert cold_start_clusters(1000, 30, 10) == 60
