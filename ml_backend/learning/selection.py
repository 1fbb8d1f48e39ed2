"""Which unlabeled task to label next: uncertainty scores and batch selection, as pure
functions over arrays (modAL's split: scoring apart from selection).

Uncertainties are oriented so that larger = more informative, in [0, 1]. Selectors return
indices into the candidate arrays, most informative first, and take an explicit
``np.random.Generator`` so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import numpy as np


class Strategy(str, Enum):
    RANDOM = "random"
    LEAST_CONFIDENCE = "least_confidence"
    MARGIN = "margin"
    ENTROPY = "entropy"
    RANKED_BATCH = "ranked_batch"  # margin uncertainty + diversity (modAL's ranked batch)

    @classmethod
    def parse(cls, value: str) -> Strategy:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown strategy {value!r}; choose one of: {allowed}") from None


def _check(proba: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"proba must be (N, C) with C >= 1, got shape {p.shape}")
    return p


def least_confidence(proba: np.ndarray, multiple: bool = False) -> np.ndarray:
    """``1 - max p`` rescaled to [0, 1] (``(N,)``); multiple choice: mean over classes of
    ``1 - max(p, 1 - p)``, rescaled."""
    p = _check(proba)
    if multiple:
        return 2.0 * (1.0 - np.maximum(p, 1.0 - p)).mean(axis=1)
    c = p.shape[1]
    return (1.0 - p.max(axis=1)) * (c / (c - 1)) if c > 1 else np.zeros(len(p))


def margin(proba: np.ndarray, multiple: bool = False) -> np.ndarray:
    """``1 - (p_top1 - p_top2)`` (``(N,)``); multiple choice: mean of ``1 - |2p - 1|``."""
    p = _check(proba)
    if multiple:
        return (1.0 - np.abs(2.0 * p - 1.0)).mean(axis=1)
    if p.shape[1] == 1:
        return np.zeros(len(p))
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy(proba: np.ndarray, multiple: bool = False) -> np.ndarray:
    """Shannon entropy normalised by its maximum (``(N,)``); multiple choice: mean binary
    entropy."""
    p = np.clip(_check(proba), 1e-12, 1.0)
    if multiple:
        q = np.clip(1.0 - p, 1e-12, 1.0)
        return (-(p * np.log2(p) + q * np.log2(q))).mean(axis=1)
    c = p.shape[1]
    return -(p * np.log(p)).sum(axis=1) / np.log(c) if c > 1 else np.zeros(len(p))


SCORES: dict[str, Callable[[np.ndarray, bool], np.ndarray]] = {
    Strategy.LEAST_CONFIDENCE.value: least_confidence,
    Strategy.MARGIN.value: margin,
    Strategy.ENTROPY.value: entropy,
}
# The uncertainty each strategy ranks by (and writes as ``score = 1 - uncertainty``): ranked
# batch adds diversity to margin; random order still writes margin scores for inspection.
SCORE_OF: dict[Strategy, str] = {
    Strategy.LEAST_CONFIDENCE: "least_confidence",
    Strategy.MARGIN: "margin",
    Strategy.ENTROPY: "entropy",
    Strategy.RANKED_BATCH: "margin",
    Strategy.RANDOM: "margin",
}


def uncertainty_table(proba: np.ndarray, multiple: bool = False) -> dict[str, np.ndarray]:
    """Every uncertainty score of each row of ``proba (N, C)``, by name (each ``(N,)``)."""
    return {name: fn(proba, multiple) for name, fn in SCORES.items()}


def task_uncertainty(strategy: Strategy, tables: list[dict[str, np.ndarray]]) -> np.ndarray:
    """One uncertainty per task from its controls' tables: the least certain control decides
    how informative the task is."""
    if not tables:
        raise ValueError("no control to score")
    return np.max([table[SCORE_OF[strategy]] for table in tables], axis=0)


def detection_uncertainty(box_scores: Sequence[np.ndarray], k: int = 3,
                          confident: float = 0.5) -> np.ndarray:
    """One uncertainty in [0, 1] per image from its boxes' confidences: the mean of the
    ``k`` largest per-box uncertainties ``1 - |2s - 1|`` (a box at 0.5 is a coin flip). An
    image with no box at or above ``confident`` counts as fully uncertain: the model found
    nothing it believes in, which is what an annotator should look at."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = np.ones(len(box_scores))
    for i, scores in enumerate(box_scores):
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.size and s.max() >= confident:
            per_box = 1.0 - np.abs(2.0 * np.clip(s, 0.0, 1.0) - 1.0)
            out[i] = float(np.sort(per_box)[::-1][:k].mean())
    return out


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first; ties broken at random."""
    scores = np.asarray(scores, dtype=np.float64)
    k = max(0, min(k, len(scores)))
    tiebreak = rng.random(len(scores))
    order = np.lexsort((tiebreak, -scores))
    return order[:k]


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def ranked_batch(uncertainty: np.ndarray, embeddings: np.ndarray,
                 labeled_embeddings: np.ndarray, k: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """Ranked batch-mode sampling (Cardoso et al. 2017, as in modAL): pick one at a time the
    candidate maximising ``α (1 - max cosine similarity to labeled ∪ picked) + (1 - α) u``
    (cosine of mean-centred embeddings)
    with ``α = n_unlabeled / (n_unlabeled + n_labeled)`` (the first pick of a project with
    nothing labeled is the most uncertain). Near-duplicates of something already picked
    score low, so one batch does not repeat itself."""
    u = np.asarray(uncertainty, dtype=np.float64)
    if len(u) != len(embeddings):
        raise ValueError(f"{len(u)} uncertainties for {len(embeddings)} embeddings")
    # Centre first: CNN features are non-negative, so raw cosine similarities all sit near 1
    # and would hide which images are really alike.
    labeled_raw = np.asarray(labeled_embeddings, dtype=np.float64).reshape(
        -1, np.shape(embeddings)[1])
    centre = np.concatenate([np.asarray(embeddings, dtype=np.float64), labeled_raw]).mean(
        axis=0) if len(u) else 0.0
    x = _normalise_rows(np.asarray(embeddings, dtype=np.float64) - centre)
    k = max(0, min(k, len(u)))
    n_labeled = len(labeled_raw)
    alpha = len(u) / (len(u) + n_labeled) if len(u) + n_labeled else 1.0
    if n_labeled:
        similarity = (x @ _normalise_rows(labeled_raw - centre).T).max(axis=1)
    else:
        similarity = np.zeros(len(u))
    picked: list[int] = []
    available = np.ones(len(u), dtype=bool)
    noise = rng.random(len(u)) * 1e-9  # reproducible tie-breaking
    for step in range(k):
        if step == 0 and n_labeled == 0:
            score = u + noise  # nothing to be diverse from yet: the most uncertain first
        else:
            score = alpha * (1.0 - similarity) + (1.0 - alpha) * u + noise
        score[~available] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        similarity = np.maximum(similarity, x @ x[best])
    return np.array(picked, dtype=np.int64)


def select(strategy: Strategy, uncertainty: np.ndarray, k: int, rng: np.random.Generator,
           embeddings: np.ndarray | None = None, labeled_embeddings: np.ndarray | None = None,
           random_share: float = 0.0) -> np.ndarray:
    """The next ``k`` candidates (indices), most informative first, given their
    ``uncertainty (N,)`` under ``strategy``'s score. ``random_share`` of the batch (rounded
    down) is drawn uniformly from the rest, as a hedge against a biased model and for
    unbiased evaluation; those go last."""
    n = len(uncertainty)
    k = max(0, min(k, n))
    n_random = int(k * random_share) if strategy is not Strategy.RANDOM else k
    n_model = k - n_random
    chosen: np.ndarray = np.zeros(0, dtype=np.int64)
    if n_model:
        if strategy is Strategy.RANKED_BATCH:
            if embeddings is None:
                raise ValueError("ranked_batch needs the candidates' embeddings")
            labeled = (labeled_embeddings if labeled_embeddings is not None
                       else np.zeros((0, embeddings.shape[1])))
            chosen = ranked_batch(uncertainty, embeddings, labeled, n_model, rng)
        else:
            chosen = top_k(uncertainty, n_model, rng)
    if n_random:
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=n_random, replace=False)])
    return chosen.astype(np.int64)


# Scores reach Label Studio rounded to 6 decimals (labelstudio.results): the batch's steps
# must stay this far apart to keep their order.
SCORE_RESOLUTION = 1e-6


def queue_scores(first: np.ndarray, confidence: np.ndarray,
                 resolution: float = SCORE_RESOLUTION) -> np.ndarray:
    """The scores to write so that sorting ascending (Label Studio's Data Manager) lists the
    selected batch ``first`` in the selector's order, then every other task by ``confidence``.

    The others keep their confidence (clipped to [floor, 1]); the batch gets evenly spaced
    values in ``[0, floor)``, where floor is the lowest confidence among the others, raised
    where needed so that the batch's steps are at least two ``resolution`` apart (a nearly
    uniform model has confidences near 0, and rounding would otherwise merge the steps)."""
    scores = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    first = np.asarray(first, dtype=np.int64)
    if len(np.unique(first)) != len(first):
        raise ValueError("the batch lists a task twice")
    rest = np.ones(len(scores), dtype=bool)
    rest[first] = False
    floor = max(float(scores[rest].min()) if rest.any() else 1.0,
                resolution * max(2 * len(first), 1))
    scores[rest] = np.maximum(scores[rest], floor)
    scores[first] = floor * np.arange(len(first)) / max(len(first), 1)
    return scores


def probability_map_uncertainty(probability: np.ndarray, floor: float = 0.05) -> float:
    """How unsure a per-pixel probability map ``(..., H, W)`` is, in [0, 1]: the mean of
    ``1 - |2p - 1|`` over the pixels where the model sees anything (``p >= floor``); 0
    when it sees nothing. Background is excluded so that a small, doubtful object is not
    averaged away by a large sure-empty area."""
    p = np.asarray(probability, dtype=np.float64)
    seen = p[p >= floor]
    if seen.size == 0:
        return 0.0
    return float((1.0 - np.abs(2.0 * seen - 1.0)).mean())
