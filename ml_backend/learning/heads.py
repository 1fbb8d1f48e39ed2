"""Learning as pure functions over arrays: linear heads on frozen embeddings, calibration.

A head maps an embedding ``x (D,)`` to per-class probabilities. Single-choice controls use a
softmax over classes; multiple-choice controls use one sigmoid per class. Probabilities are
calibrated with a temperature fitted on out-of-fold logits, so that ``score`` (the model's
confidence) means what it says; a temperature never changes the argmax (nor which side of 0.5
a sigmoid is on), so calibration cannot cost accuracy.

The head starts as a plain logistic regression: for single-choice controls it *is*
scikit-learn's default ``LogisticRegression()`` (raw features, ``C = 1``, i.e. an L2 of ``1/n``
on the mean loss, L-BFGS for at most 100 iterations), fitted by scikit-learn itself so that its
argmax is the baseline's exactly, early stopping included. It moves away from that only when
cross-validation, with enough labels per class to be trusted, says another strength is clearly
and significantly better: the head is never a worse learner than the baseline a user would try
first.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

DEFAULT_L2 = 1e-2
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
# Cross-validation picks a strength other than the baseline's only with at least this many
# labels in every class (fewer: its folds are too small to trust) ...
MIN_PER_CLASS_TO_CHOOSE = 10
# ... and only when that strength's out-of-fold accuracy beats the baseline's by this much, and
# by a margin a paired (McNemar) comparison of the two calls significant at 3 sigma (the
# benchmark on a hard set showed 5 labels a class and 2 sigma still switching for the worse).
MIN_ACCURACY_GAIN = 0.02
SIGNIFICANCE_SIGMAS = 3.0
# A class without labels gets zero weights and a bias this far below the lowest labeled
# class's: a small, finite probability (the queue's uncertainty needs finite logits).
ABSENT_CLASS_BIAS_OFFSET = 10.0


@dataclass(frozen=True)
class Regularisation:
    """How a head is regularised: ``standardise`` the features first or not, and the L2
    strength on the mean loss (None: ``1/n``, scikit-learn's ``C = 1``)."""

    standardise: bool
    l2: float | None

    def strength(self, n: int) -> float:
        return self.l2 if self.l2 is not None else 1.0 / max(n, 1)

    @property
    def is_baseline(self) -> bool:
        return not self.standardise and self.l2 is None


BASELINE = Regularisation(standardise=False, l2=None)
CANDIDATES = (BASELINE, *(Regularisation(True, v) for v in L2_GRID))


@dataclass(frozen=True)
class LinearHead:
    """A calibrated linear classifier over standardised embeddings.

    ``weight (D, C)``, ``bias (C,)``, ``mean``/``scale (D,)`` standardise inputs;
    probabilities are ``softmax(logits / temperature)`` or, when ``multiple``,
    ``sigmoid(logits / temperature)``.
    """

    labels: tuple[str, ...]
    multiple: bool
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    temperature: float = 1.0
    l2: float = DEFAULT_L2
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d, c = self.weight.shape
        if c != len(self.labels):
            raise ValueError(f"weight has {c} classes, labels has {len(self.labels)}")
        for name, arr, shape in (("bias", self.bias, (c,)), ("mean", self.mean, (d,)),
                                 ("scale", self.scale, (d,))):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def regularisation(self) -> Regularisation:
        """The regularisation it was fitted with (the baseline rule is kept as a rule)."""
        if self.stats.get("baseline", 0.0) > 0:
            return BASELINE
        return Regularisation(bool(self.stats.get("standardised", 1.0)), self.l2)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """``embeddings (N, D) float`` → raw logits ``(N, C)`` before temperature."""
        x = (np.asarray(embeddings, dtype=np.float32) - self.mean) / self.scale
        return x @ self.weight + self.bias

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """``embeddings (N, D)`` → calibrated probabilities ``(N, C)`` in [0, 1]."""
        return probabilities(self.logits(embeddings) / self.temperature, self.multiple)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer, labels=np.array(self.labels, dtype=object).astype(str),
            multiple=np.array(self.multiple), weight=self.weight, bias=self.bias,
            mean=self.mean, scale=self.scale, temperature=np.array(self.temperature),
            l2=np.array(self.l2),
            stats_keys=np.array(list(self.stats), dtype=str),
            stats_values=np.array(list(self.stats.values()), dtype=np.float64),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                labels=tuple(str(s) for s in z["labels"]), multiple=bool(z["multiple"]),
                weight=z["weight"], bias=z["bias"], mean=z["mean"], scale=z["scale"],
                temperature=float(z["temperature"]), l2=float(z["l2"]),
                stats=dict(zip((str(k) for k in z["stats_keys"]),
                               (float(v) for v in z["stats_values"]), strict=True)),
            )


def probabilities(logits: np.ndarray, multiple: bool) -> np.ndarray:
    """Logits ``(N, C)`` → softmax rows (single choice) or element-wise sigmoid (multiple)."""
    z = np.asarray(logits, dtype=np.float64)
    if multiple:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confidence(proba: np.ndarray, multiple: bool) -> np.ndarray:
    """Per-row confidence in [0, 1]: the top class probability (single choice) or the mean
    certainty ``max(p, 1 - p)`` over classes (multiple choice)."""
    p = np.asarray(proba, dtype=np.float64)
    if multiple:
        return np.maximum(p, 1.0 - p).mean(axis=1)
    return p.max(axis=1)


def _targets(y: np.ndarray, n_classes: int, multiple: bool) -> np.ndarray:
    """Targets as a float matrix ``(N, C)``: one-hot rows (single choice) or 0/1 labels."""
    if multiple:
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"multi-label targets must be (N, {n_classes}), got {y.shape}")
        return y.astype(np.float64)
    if y.ndim != 1:
        raise ValueError(f"single-label targets must be (N,) class indices, got {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    onehot = np.zeros((len(y), n_classes))
    onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return onehot


def _loss_and_grad(params: np.ndarray, x: np.ndarray, t: np.ndarray, multiple: bool,
                   l2: float) -> tuple[float, np.ndarray]:
    d, c = x.shape[1], t.shape[1]
    w, b = params[:d * c].reshape(d, c), params[d * c:]
    z = x @ w + b
    n = max(len(x), 1)
    if multiple:
        loss = float(np.sum(np.logaddexp(0.0, z) - t * z)) / n
        residual = 1.0 / (1.0 + np.exp(-z)) - t
    else:
        z_max = z.max(axis=1, keepdims=True)
        lse = z_max[:, 0] + np.log(np.exp(z - z_max).sum(axis=1))
        loss = float(np.sum(lse - (t * z).sum(axis=1))) / n
        residual = np.exp(z - lse[:, None]) - t
    # Bias penalised lightly so classes with no examples keep finite logits.
    loss += 0.5 * l2 * (float(np.sum(w * w)) + 1e-2 * float(np.sum(b * b)))
    grad_w = x.T @ residual / n + l2 * w
    grad_b = residual.sum(axis=0) / n + 1e-2 * l2 * b
    return loss, np.concatenate([grad_w.ravel(), grad_b])


def _default_logistic_regression(x: np.ndarray, t: np.ndarray
                                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """Weights ``(D, C)`` and bias ``(C,)`` of scikit-learn's ``LogisticRegression()`` fitted
    on raw ``x (N, D)`` with one-hot ``t (N, C)``; None with fewer than two classes labeled
    (scikit-learn refuses those)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y = t.argmax(axis=1)
    present = np.unique(y)
    if len(present) < 2:
        return None
    with warnings.catch_warnings():
        # Its default 100 iterations are part of the baseline (early stopping regularises).
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression().fit(x.astype(np.float64), y)
    coef, intercept = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    if len(present) == 2:  # one logit z for the second class: softmax([-z/2, z/2]) = sigmoid(z)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-0.5, 0.5]) * intercept[0]
    d, c = x.shape[1], t.shape[1]
    w = np.zeros((d, c))
    b = np.full(c, intercept.min() - ABSENT_CLASS_BIAS_OFFSET)
    w[:, present], b[present] = coef.T, intercept
    return w, b


def _fit_linear(x: np.ndarray, t: np.ndarray, multiple: bool, l2: float,
                init: tuple[np.ndarray, np.ndarray] | None, max_iter: int,
                baseline: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised logistic regression (L-BFGS) on ``x (N, D)`` with float targets
    ``t (N, C)``; with ``baseline`` (single choice), scikit-learn's ``LogisticRegression()``
    itself. NumPy + SciPy: small problems like this run fastest single-threaded, without
    contending with inference for the cores."""
    from scipy.optimize import minimize

    if baseline and not multiple:
        fitted = _default_logistic_regression(x, t)
        if fitted is not None:
            return fitted

    d, c = x.shape[1], t.shape[1]
    start = np.zeros(d * c + c)
    if init is not None and init[0].shape == (d, c):
        start = np.concatenate([init[0].ravel(), init[1]]).astype(np.float64)
    if max_iter <= 0:  # SciPy would still take one step
        return start[:d * c].reshape(d, c), start[d * c:]
    result = minimize(_loss_and_grad, start, args=(x.astype(np.float64), t, multiple, l2),
                      jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return result.x[:d * c].reshape(d, c), result.x[d * c:]


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0).astype(np.float32)
    scale = x.std(axis=0).astype(np.float32)
    scale[scale < 1e-6] = 1.0
    return mean, scale


def fold_ids(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Assign ``n`` items to ``k`` folds at random, balanced in size."""
    return rng.permutation(np.arange(n) % k)


def out_of_fold_logits(x: np.ndarray, t: np.ndarray, multiple: bool, l2: float, k: int,
                       rng: np.random.Generator, max_iter: int = 50, baseline: bool = False
                       ) -> np.ndarray:
    """Logits for each row from a head trained without that row's fold: ``(N, C)``."""
    return _out_of_fold(x, t, multiple, l2, fold_ids(len(x), k, rng), max_iter, baseline)


def nll(logits: np.ndarray, y: np.ndarray, multiple: bool) -> float:
    """Mean negative log-likelihood of targets under ``logits`` (per element for multiple
    choice, per row for single choice)."""
    z = np.asarray(logits, dtype=np.float64)
    if multiple:
        return float(np.mean(np.logaddexp(0.0, z) - np.asarray(y, dtype=np.float64) * z))
    z_max = z.max(axis=1, keepdims=True)
    lse = z_max[:, 0] + np.log(np.exp(z - z_max).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), np.asarray(y, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, multiple: bool) -> float:
    """The temperature T > 0 minimising NLL of ``logits / T`` (golden search on log T)."""
    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits / np.exp(a), y, multiple), nll(logits / np.exp(b), y, multiple)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits / np.exp(a), y, multiple)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits / np.exp(b), y, multiple)
    return float(np.exp((lo + hi) / 2.0))


def fit_head(embeddings: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
             multiple: bool, *, l2: float | None = None,
             regularisation: Regularisation | None = None, previous: LinearHead | None = None,
             calibrate: bool = True, seed: int = 0, max_iter: int = 100) -> LinearHead:
    """Fit a calibrated head.

    ``embeddings (N, D) float``; ``targets`` are class indices ``(N,)`` for single choice or a
    0/1 matrix ``(N, C)`` for multiple choice. The regularisation: ``regularisation`` if
    given, else a fixed ``l2`` on standardised features if given, else chosen (see
    :func:`choose_regularisation`). ``previous`` warm-starts the optimiser (the incremental
    update).
    """
    if regularisation is None and l2 is not None:
        regularisation = Regularisation(standardise=True, l2=l2)
    # Heads are small: one BLAS thread is several times faster than two on a busy machine,
    # and leaves the other core to inference.
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_head(embeddings, targets, labels, multiple, regularisation=regularisation,
                         previous=previous, calibrate=calibrate, seed=seed, max_iter=max_iter)


def _min_class_count(y: np.ndarray, n_classes: int, multiple: bool) -> int:
    """The fewest labels any class has (for multiple choice: positives or negatives)."""
    if multiple:
        positives = y.sum(axis=0)
        return int(min(positives.min(), (len(y) - positives).min()))
    return int(np.bincount(y.astype(np.int64), minlength=n_classes).min())


def _oof_correct(oof: np.ndarray, y: np.ndarray, multiple: bool) -> np.ndarray:
    """Which predictions are right: per row (single choice) or per row and class."""
    if multiple:
        return ((oof > 0) == (y > 0.5)).ravel()
    return oof.argmax(axis=1) == y


def choose_regularisation(x_raw: np.ndarray, y: np.ndarray, t: np.ndarray, multiple: bool,
                          rng: np.random.Generator, stats: dict[str, float]
                          ) -> Regularisation:
    """The baseline (a default logistic regression), unless every class has
    :data:`MIN_PER_CLASS_TO_CHOOSE` labels and a candidate's 5-fold out-of-fold accuracy
    beats the baseline's by :data:`MIN_ACCURACY_GAIN` (ties: lower NLL), significantly on
    the same rows (:func:`significantly_better`). Records what it measured in ``stats``."""
    if _min_class_count(y, t.shape[1], multiple) < MIN_PER_CLASS_TO_CHOOSE:
        return BASELINE
    folds = fold_ids(len(x_raw), 5, rng)
    mean, scale = _standardiser(x_raw)
    standardised = (x_raw - mean) / scale
    scored = []
    correct: dict[Regularisation, np.ndarray] = {}
    for candidate in CANDIDATES:
        x = standardised if candidate.standardise else x_raw
        oof = _out_of_fold(x, t, multiple, candidate.strength(len(x)), folds,
                           baseline=candidate.is_baseline)
        correct[candidate] = _oof_correct(oof, y, multiple)
        scored.append((float(correct[candidate].mean()), -nll(oof, y, multiple), candidate))
    baseline_accuracy = scored[0][0]
    best = max(scored, key=lambda s: (s[0], s[1]))
    stats["cv_baseline_accuracy"] = baseline_accuracy
    if best[0] >= baseline_accuracy + MIN_ACCURACY_GAIN and significantly_better(
            correct[best[2]], correct[BASELINE]):
        return best[2]
    return BASELINE


def significantly_better(candidate_correct: np.ndarray, baseline_correct: np.ndarray,
                         sigmas: float = SIGNIFICANCE_SIGMAS) -> bool:
    """Paired (McNemar) comparison of two classifiers' per-row correctness on the same rows:
    the candidate wins ``b`` rows the baseline loses and loses ``c``; better when ``b - c``
    exceeds ``sigmas`` standard deviations of it under "no difference" (``sqrt(b + c)``)."""
    wins = int(np.sum(candidate_correct & ~baseline_correct))
    losses = int(np.sum(~candidate_correct & baseline_correct))
    return wins - losses > sigmas * np.sqrt(wins + losses)


def _out_of_fold(x: np.ndarray, t: np.ndarray, multiple: bool, l2: float, folds: np.ndarray,
                 max_iter: int = 100, baseline: bool = False) -> np.ndarray:
    out = np.zeros(t.shape, dtype=np.float64)
    for fold in np.unique(folds):
        test = folds == fold
        w, b = _fit_linear(x[~test], t[~test], multiple, l2, None, max_iter, baseline)
        out[test] = x[test] @ w + b
    return out


def _fit_head(embeddings: np.ndarray, targets: np.ndarray, labels: tuple[str, ...],
              multiple: bool, *, regularisation: Regularisation | None,
              previous: LinearHead | None, calibrate: bool, seed: int, max_iter: int
              ) -> LinearHead:
    x_raw = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(targets)
    if x_raw.ndim != 2 or len(x_raw) != len(y):
        raise ValueError(f"embeddings (N, D) and targets (N, …) disagree: {x_raw.shape} vs "
                         f"{y.shape}")
    if len(x_raw) == 0:
        raise ValueError("cannot fit a head on zero examples")
    n_classes = len(labels)
    t = _targets(y, n_classes, multiple)
    rng = np.random.default_rng(seed)
    stats: dict[str, float] = {"n": float(len(x_raw))}
    if regularisation is None:
        regularisation = choose_regularisation(x_raw, y, t, multiple, rng, stats)
        stats["l2_chosen_at_n"] = float(len(x_raw))
    elif previous is not None:
        stats["l2_chosen_at_n"] = previous.stats.get("l2_chosen_at_n", 0.0)
    stats["baseline"] = float(regularisation.is_baseline)
    stats["standardised"] = float(regularisation.standardise)
    if regularisation.standardise:
        mean, scale = _standardiser(x_raw)
    else:
        mean = np.zeros(x_raw.shape[1], dtype=np.float32)
        scale = np.ones(x_raw.shape[1], dtype=np.float32)
    x = (x_raw - mean) / scale
    l2 = regularisation.strength(len(x))
    k = min(5, len(x))
    can_validate = k >= 2 and len(x) >= 10

    temperature = 1.0
    baseline = regularisation.is_baseline
    if calibrate and can_validate:
        oof = out_of_fold_logits(x, t, multiple, l2, k, rng, baseline=baseline)
        temperature = fit_temperature(oof, y, multiple)
        calibrated = probabilities(oof / temperature, multiple)
        stats["cv_nll"] = nll(oof / temperature, y, multiple)
        if not multiple:
            stats["cv_accuracy"] = float((calibrated.argmax(axis=1) == y).mean())

    init = None
    if previous is not None and previous.labels == tuple(labels) \
            and previous.mean.shape == mean.shape and not (baseline and not multiple):
        # The same function in the new standardisation: logits are unchanged at the start.
        ratio = (scale / previous.scale)[:, None]
        init = (previous.weight * ratio,
                previous.bias + ((mean - previous.mean) / previous.scale) @ previous.weight)
    w, b = _fit_linear(x, t, multiple, l2, init, max_iter, baseline)
    return LinearHead(labels=tuple(labels), multiple=multiple, weight=w.astype(np.float32),
                      bias=b.astype(np.float32), mean=mean, scale=scale,
                      temperature=temperature, l2=float(l2), stats=stats)


def out_of_fold_proba(embeddings: np.ndarray, targets: np.ndarray, n_classes: int,
                      regularisation: Regularisation = BASELINE, k: int = 5, seed: int = 0
                      ) -> np.ndarray:
    """Calibrated out-of-fold probabilities ``(N, C)`` of single-choice ``targets (N,)``:
    each row predicted by the production learner (the head :func:`fit_head` fits, with
    ``regularisation``, e.g. the trained head's :meth:`LinearHead.regularisation`) trained
    without that row's fold, then one temperature fitted on all folds' logits. What a
    label-error finder needs: no row is scored by a model that saw its own label."""
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(targets, dtype=np.int64)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"embeddings (N, D) and targets (N,) disagree: {x.shape} vs {y.shape}")
    k = min(k, len(x))
    if k < 2:
        raise ValueError(f"out-of-fold probabilities need at least 2 rows, got {len(x)}")
    if regularisation.standardise:
        mean, scale = _standardiser(x)
        x = (x - mean) / scale
    t = _targets(y, n_classes, multiple=False)
    with threadpool_limits(limits=1, user_api="blas"):
        logits = out_of_fold_logits(x, t, False, regularisation.strength(len(x)), k,
                                    np.random.default_rng(seed),
                                    baseline=regularisation.is_baseline)
    return probabilities(logits / fit_temperature(logits, y, False), False)
