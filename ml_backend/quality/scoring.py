"""Data quality as pure functions over arrays (modAL style: scoring apart from selection).

- Label errors: out-of-fold probabilities ``(N, C)`` and the given labels ``(N,)`` → a
  label-quality score per row in [0, 1] (low: the label is suspect) and the rows cleanlab
  flags as issues.
- Near-duplicates: embeddings ``(N, D)`` and pixel fingerprints → groups, and which member
  of each group to keep.
- Find similar: exact cosine nearest neighbours.
"""

from __future__ import annotations

import numpy as np

from ml_backend.quality.fingerprints import Fingerprints, fingerprint_pairs

# A near-duplicate pair by embedding alone: centred cosine at least this (see
# :func:`duplicate_pairs`). Raw pooled ReLU features all point one way (two different digits
# have cosine 0.98 on the random-init backbone), hence the centring on the project's mean.
DUPLICATE_SURE_COSINE = 0.99


def _present_classes(labels: np.ndarray, pred_probs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered over the classes that have labels, and the probabilities of those
    classes renormalised: cleanlab needs every column to be a labeled class."""
    present = np.unique(labels)
    remap = np.full(pred_probs.shape[1], -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    probs = pred_probs[:, present]
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    return remap[labels], probs


def _check(pred_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(pred_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or y.shape != (len(probs),):
        raise ValueError(f"pred_probs must be (N, C) and labels (N,), got {probs.shape} and "
                         f"{y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {y.min()}..{y.max()}")
    return probs, y


def label_quality_scores(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,)`` in [0, 1]: cleanlab's self-confidence (the out-of-fold probability of the given
    label, ``cleanlab.rank.get_label_quality_scores``); the lowest are the likeliest errors.
    With fewer than two labeled classes nothing can be suspected: every score is 1."""
    from cleanlab.rank import get_label_quality_scores

    probs, y = _check(pred_probs, labels)
    if len(np.unique(y)) < 2:
        return np.ones(len(y))
    y, probs = _present_classes(y, probs)
    return np.asarray(get_label_quality_scores(y, probs, method="self_confidence"),
                      dtype=np.float64)


def label_issues(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,) bool``: the rows cleanlab's confident learning flags as label issues
    (``cleanlab.filter.find_label_issues``, pruned by noise rate)."""
    from cleanlab.filter import find_label_issues

    probs, y = _check(pred_probs, labels)
    if len(np.unique(y)) < 2:
        return np.zeros(len(y), dtype=bool)
    y, probs = _present_classes(y, probs)
    return np.asarray(find_label_issues(y, probs, filter_by="prune_by_noise_rate",
                                        n_jobs=1), dtype=bool)


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest(unit: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine search: the ``k`` rows of ``unit (N, D)`` (unit rows) most similar to
    ``query (D,)``, best first, as ``(indices (k,), similarities (k,))``; ``exclude`` (the
    query's own row) is left out. One matrix-vector product and a partial sort."""
    sims = unit @ normalise(np.asarray(query)[None, :])[0]
    if exclude is not None:
        sims[exclude] = -np.inf
    k = max(0, min(k, len(sims) - (exclude is not None)))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.lexsort((top, -sims[top]))]
    return top.astype(np.int64), sims[top].astype(np.float64)


def centre(embeddings: np.ndarray) -> np.ndarray:
    """``(N, D)`` embeddings minus their mean row (float32)."""
    x = np.asarray(embeddings, dtype=np.float32)
    return x - x.mean(axis=0, keepdims=True) if len(x) else x


def embedding_pairs(embeddings: np.ndarray, min_cosine: float = DUPLICATE_SURE_COSINE,
                    block: int = 1024) -> np.ndarray:
    """``(P, 2)`` index pairs ``i < j`` whose embeddings (centre them first: :func:`centre`)
    have cosine at least ``min_cosine``; ``block`` rows at a time (memory ``block × N``)."""
    unit = normalise(embeddings)
    found: list[np.ndarray] = []
    for start in range(0, len(unit), block):
        rows, cols = np.nonzero(unit[start:start + block] @ unit.T >= min_cosine)
        rows = rows + start
        keep = cols > rows
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)


def duplicate_pairs(prints: Fingerprints, embeddings: np.ndarray | None = None,
                    sure_cosine: float = DUPLICATE_SURE_COSINE) -> np.ndarray:
    """``(P, 2)`` index pairs ``i < j`` that are near-duplicates, sorted: the same picture by
    its pixel fingerprints (resized, re-encoded, brightened, cropped a few per cent:
    :func:`~ml_backend.quality.fingerprints.fingerprint_pairs`), or, given ``embeddings``
    (centred), the same content by embedding (cosine ≥ ``sure_cosine``: a pretrained
    backbone also sees larger crops and edits the pixels miss). Give no embeddings from a
    random-init backbone: on shape scenes its centred cosine passes 0.99 for hundreds of
    different images (docs/quality.md)."""
    found = [fingerprint_pairs(prints)]
    if embeddings is not None:
        if len(embeddings) != len(prints):
            raise ValueError(f"{len(embeddings)} embeddings but {len(prints)} fingerprints")
        found.append(embedding_pairs(embeddings, sure_cosine))
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def groups_from_pairs(n: int, pairs: np.ndarray) -> np.ndarray:
    """``(N,)`` group number per row (union-find over ``pairs``, transitively): the smallest
    member index of its group; a row with no pair is its own group."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i, j in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def duplicates_to_mark(groups: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """``(N,) int``: for every member of a group but the one kept, the row it duplicates
    (the kept one); ``-1`` for rows kept. The kept member is the first annotated one (its
    label already covers the group), else the first row. Annotated rows are never marked:
    a marked row only leaves the unlabeled queue."""
    groups = np.asarray(groups, dtype=np.int64)
    annotated = np.asarray(annotated, dtype=bool)
    marks = np.full(len(groups), -1, dtype=np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(members) < 2:
            continue
        labeled = members[annotated[members]]
        keep = int(labeled[0]) if len(labeled) else int(members[0])
        for row in members:
            if row != keep and not annotated[row]:
                marks[row] = keep
    return marks
