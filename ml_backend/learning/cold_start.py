"""The queue before there is a model: an order that covers the data (pure functions).

Before the first head exists every task is equally uncertain, so an uncertainty order is no
order at all (Label Studio falls back to task ids: an upload sorted by class yields a first
batch of one class). Following TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a
Budget", ICML 2022), the pool is clustered with k-means on the embeddings and each cluster's
most *typical* member (the densest point: smallest mean distance to its nearest neighbours)
comes first, largest clusters first; then every cluster's second most typical member, and so
on. The first ``n_clusters`` tasks hence span the data, and none is an outlier.
"""

from __future__ import annotations

import numpy as np

TYPICALITY_NEIGHBOURS = 20  # as in TypiClust
_CHUNK = 1024  # rows of the distance matrix held at once


def cold_start_clusters(n_tasks: int, n_classes: int, batch_size: int) -> int:
    """How many clusters the first coverage round has: enough for every class twice and a
    full first batch, at most one per task."""
    return max(1, min(n_tasks, max(2 * n_classes, batch_size, 20)))


def typicality(x: np.ndarray, k: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """``x (N, D)`` → each row's typicality ``(N,)``: 1 / (mean Euclidean distance to its
    ``k`` nearest other rows); the higher, the denser its neighbourhood. One row: 1."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n <= 1:
        return np.ones(n)
    k = min(k, n - 1)
    squared = (x * x).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        block = x[start:start + _CHUNK]
        d2 = squared[start:start + _CHUNK, None] + squared[None, :] - 2.0 * block @ x.T
        d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf  # not self
        nearest = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
        out[start:start + len(block)] = 1.0 / (np.sqrt(nearest).mean(axis=1) + 1e-12)
    return out


def kmeans_labels(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster of each row ``(N,)`` by k-means (scikit-learn; deterministic under ``seed``)."""
    from sklearn.cluster import KMeans

    n_clusters = max(1, min(n_clusters, len(x)))
    if n_clusters == 1:
        return np.zeros(len(x), dtype=np.int64)
    model = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed)
    return model.fit_predict(np.asarray(x, dtype=np.float64)).astype(np.int64)


def coverage_order(embeddings: np.ndarray, n_clusters: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``embeddings (N, D)`` in coverage order, and each row's cluster.

    Round r lists the r-th most typical member of every cluster that still has one, clusters
    by size (largest first, ties by their first member's index): no cluster is repeated
    before every cluster has come once. Deterministic under ``seed``."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    clusters = kmeans_labels(x, n_clusters, seed)
    members = []
    for cluster in np.unique(clusters):
        rows = np.flatnonzero(clusters == cluster)
        typical = typicality(x[rows])
        members.append(rows[np.argsort(-typical, kind="stable")])
    members.sort(key=lambda rows: (-len(rows), int(rows.min())))
    order = [rows[r] for r in range(max(len(m) for m in members)) for rows in members
             if r < len(rows)]
    return np.asarray(order, dtype=np.int64), clusters


def coverage_select(embeddings: np.ndarray, n: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A modAL-style query: the ``n`` rows to label first (one per cluster of ``n``
    clusters, most typical member each) and every row's score (its position in the
    coverage order divided by N: lower comes first)."""
    order, _ = coverage_order(embeddings, n, seed)
    scores = np.empty(len(order))
    scores[order] = np.arange(len(order)) / max(len(order), 1)
    return order[:n], scores
