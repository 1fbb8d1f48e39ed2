"""Learning as pure functions over arrays: linear heads on frozen embeddings, calibration.

A head maps an embedding ``x (D,)`` to per-class probabilities. Single-choice controls use a
softmax over classes; multiple-choice controls use one sigmoid per class. Probabilities are
calibrated with a temperature fitted on out-of-fold logits, so that ``score`` (the model's
confidence) means what it says.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

DEFAULT_L2 = 1e-2
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


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


def _targets(y: np.ndarray, n_classes: int, multiple: bool) -> torch.Tensor:
    if multiple:
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"multi-label targets must be (N, {n_classes}), got {y.shape}")
        return torch.as_tensor(y, dtype=torch.float32)
    if y.ndim != 1:
        raise ValueError(f"single-label targets must be (N,) class indices, got {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    return torch.as_tensor(y, dtype=torch.long)


def _fit_linear(x: np.ndarray, t: torch.Tensor, n_classes: int, multiple: bool, l2: float,
                init: tuple[np.ndarray, np.ndarray] | None, max_iter: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised logistic regression with L-BFGS on standardised ``x (N, D)``."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    d = xt.shape[1]
    w = torch.zeros(d, n_classes, dtype=torch.float32)
    b = torch.zeros(n_classes, dtype=torch.float32)
    if init is not None and init[0].shape == (d, n_classes):
        w = torch.as_tensor(init[0], dtype=torch.float32).clone()
        b = torch.as_tensor(init[1], dtype=torch.float32).clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")
    n = max(len(xt), 1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        z = xt @ w + b
        if multiple:
            loss = F.binary_cross_entropy_with_logits(z, t, reduction="sum") / n
        else:
            loss = F.cross_entropy(z, t, reduction="sum") / n
        # Bias penalised lightly so classes with no examples keep finite logits.
        loss = loss + 0.5 * l2 * (w.pow(2).sum() + 1e-2 * b.pow(2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0).astype(np.float32)
    scale = x.std(axis=0).astype(np.float32)
    scale[scale < 1e-6] = 1.0
    return mean, scale


def fold_ids(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Assign ``n`` items to ``k`` folds at random, balanced in size."""
    return rng.permutation(np.arange(n) % k)


def out_of_fold_logits(x: np.ndarray, t: torch.Tensor, n_classes: int, multiple: bool,
                       l2: float, k: int, rng: np.random.Generator, max_iter: int = 50
                       ) -> np.ndarray:
    """Logits for each row from a head trained without that row's fold: ``(N, C)``."""
    folds = fold_ids(len(x), k, rng)
    out = np.zeros((len(x), n_classes), dtype=np.float64)
    for fold in range(k):
        test = folds == fold
        w, b = _fit_linear(x[~test], t[torch.as_tensor(~test)], n_classes, multiple, l2,
                           None, max_iter)
        out[test] = x[test] @ w + b
    return out


def nll(logits: np.ndarray, y: np.ndarray, multiple: bool) -> float:
    """Mean negative log-likelihood of targets under ``logits``."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    if multiple:
        return float(F.binary_cross_entropy_with_logits(z, torch.as_tensor(y, dtype=z.dtype)))
    return float(F.cross_entropy(z, torch.as_tensor(y, dtype=torch.long)))


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
             multiple: bool, *, l2: float | None = None, previous: LinearHead | None = None,
             calibrate: bool = True, seed: int = 0, max_iter: int = 100) -> LinearHead:
    """Fit a calibrated head.

    ``embeddings (N, D) float``; ``targets`` are class indices ``(N,)`` for single choice or a
    0/1 matrix ``(N, C)`` for multiple choice. ``l2=None`` picks the strength by 5-fold
    cross-validated NLL over :data:`L2_GRID`; otherwise ``previous.l2`` or the given value is
    used. ``previous`` warm-starts the optimiser (the incremental update).
    """
    x_raw = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(targets)
    if x_raw.ndim != 2 or len(x_raw) != len(y):
        raise ValueError(f"embeddings (N, D) and targets (N, …) disagree: {x_raw.shape} vs "
                         f"{y.shape}")
    if len(x_raw) == 0:
        raise ValueError("cannot fit a head on zero examples")
    n_classes = len(labels)
    t = _targets(y, n_classes, multiple)
    mean, scale = _standardiser(x_raw)
    x = (x_raw - mean) / scale
    rng = np.random.default_rng(seed)
    k = min(5, len(x))
    can_validate = k >= 2 and len(x) >= 10
    stats: dict[str, float] = {"n": float(len(x))}

    if l2 is None and can_validate:
        scores = {}
        for candidate in L2_GRID:
            oof = out_of_fold_logits(x, t, n_classes, multiple, candidate, k, rng)
            scores[candidate] = nll(oof, y, multiple)
        l2 = min(scores, key=scores.__getitem__)
    elif l2 is None:
        l2 = previous.l2 if previous is not None else DEFAULT_L2

    temperature = 1.0
    if calibrate and can_validate:
        oof = out_of_fold_logits(x, t, n_classes, multiple, l2, k, rng)
        temperature = fit_temperature(oof, y, multiple)
        calibrated = probabilities(oof / temperature, multiple)
        stats["cv_nll"] = nll(oof / temperature, y, multiple)
        if not multiple:
            stats["cv_accuracy"] = float((calibrated.argmax(axis=1) == y).mean())

    init = None
    if previous is not None and previous.labels == tuple(labels):
        init = (previous.weight, previous.bias)
    w, b = _fit_linear(x, t, n_classes, multiple, l2, init, max_iter)
    return LinearHead(labels=tuple(labels), multiple=multiple, weight=w.astype(np.float32),
                      bias=b.astype(np.float32), mean=mean, scale=scale,
                      temperature=temperature, l2=float(l2), stats=stats)
