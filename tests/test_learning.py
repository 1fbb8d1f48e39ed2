from __future__ import annotations

import numpy as np
import pytest

from ml_backend.learning.heads import (
    LinearHead,
    confidence,
    fit_head,
    fit_temperature,
    probabilities,
)


def blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centers])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return x.astype(np.float32), y


def test_probabilities_and_confidence_known_values() -> None:
    p = probabilities(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]), multiple=False)
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.75, 0.25]])
    np.testing.assert_allclose(confidence(p, multiple=False), [0.5, 0.75])
    sig = probabilities(np.array([[0.0, np.log(4.0)]]), multiple=True)
    np.testing.assert_allclose(sig, [[0.5, 0.8]])
    np.testing.assert_allclose(confidence(sig, multiple=True), [0.65])


def test_fit_head_separates_blobs_and_roundtrips() -> None:
    x, y = blobs(30, 3, 8, spread=0.3)
    head = fit_head(x, y, ("a", "b", "c"), multiple=False)
    assert (head.predict_proba(x).argmax(axis=1) == y).mean() > 0.98
    assert head.stats["cv_accuracy"] > 0.95
    again = LinearHead.from_bytes(head.to_bytes())
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), rtol=1e-6)
    assert again.labels == ("a", "b", "c") and again.l2 == head.l2


def test_calibration_makes_overlapping_classes_less_confident() -> None:
    x_easy, y_easy = blobs(40, 2, 4, spread=0.2, seed=1)
    x_hard, y_hard = blobs(40, 2, 4, spread=4.0, seed=1)
    easy = fit_head(x_easy, y_easy, ("a", "b"), multiple=False)
    hard = fit_head(x_hard, y_hard, ("a", "b"), multiple=False)
    assert confidence(hard.predict_proba(x_hard), False).mean() < \
        confidence(easy.predict_proba(x_easy), False).mean()
    # Calibrated: mean confidence on held-out-like data is close to accuracy.
    acc = (hard.predict_proba(x_hard).argmax(1) == y_hard).mean()
    assert abs(confidence(hard.predict_proba(x_hard), False).mean() - acc) < 0.15


def test_fit_temperature_recovers_scale() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2
    p = probabilities(true_logits, False)
    y = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, y, multiple=False)
    assert 2.5 < t < 3.5


def test_multi_label_head() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 0] + x[:, 1] > 0], axis=1).astype(np.float32)
    head = fit_head(x, y, ("p", "q", "r"), multiple=True)
    assert ((head.predict_proba(x) > 0.5) == y.astype(bool)).mean() > 0.9


@pytest.mark.parametrize("x, y, error", [
    (np.zeros((0, 3)), np.zeros(0, dtype=int), "zero examples"),
    (np.zeros((3, 3)), np.array([0, 1, 5]), "class indices"),
    (np.zeros((3, 3)), np.zeros(2, dtype=int), "disagree"),
    (np.zeros((3, 3)), np.zeros((3, 1)), "single-label targets"),
])
def test_fit_head_rejects_bad_input(x: np.ndarray, y: np.ndarray, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        fit_head(x, y, ("a", "b"), multiple=False)


def test_head_shape_validation() -> None:
    with pytest.raises(ValueError, match="classes"):
        LinearHead(("a",), False, np.zeros((2, 2)), np.zeros(2), np.zeros(2), np.ones(2))


def test_warm_start_is_the_same_function_under_new_standardisation() -> None:
    x, y = blobs(30, 3, 6, spread=0.5)
    head = fit_head(x, y, ("a", "b", "c"), multiple=False, l2=0.01, calibrate=False)
    shifted = np.concatenate([x, x[:5] * 3.0 + 7.0])  # new mean and scale
    again = fit_head(shifted, np.concatenate([y, y[:5]]), ("a", "b", "c"), multiple=False,
                     l2=0.01, previous=head, calibrate=False, max_iter=0)
    # With no iterations the warm start alone must reproduce the previous logits.
    np.testing.assert_allclose(again.logits(x), head.logits(x), rtol=1e-4, atol=1e-4)


def _sklearn_default(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(x, y).predict(x_test)


def test_with_few_labels_per_class_the_head_is_a_default_logistic_regression() -> None:
    """Too few labels per class to trust cross-validation: the baseline's behaviour, the same
    predictions as scikit-learn's ``LogisticRegression()`` on the same embeddings."""
    from ml_backend.learning.heads import MIN_PER_CLASS_TO_CHOOSE

    x, y = blobs(40, 4, 32, spread=2.5, seed=4)
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), MIN_PER_CLASS_TO_CHOOSE - 1,
                                       replace=False) for c in range(4)])
    test = np.setdiff1d(np.arange(len(y)), train)
    head = fit_head(x[train], y[train], ("a", "b", "c", "d"), multiple=False)
    assert head.stats["baseline"] == 1.0 and head.l2 == pytest.approx(1 / len(train))
    ours = head.predict_proba(x[test]).argmax(axis=1)
    # It is scikit-learn's own fit, so the argmax agrees everywhere.
    np.testing.assert_array_equal(ours, _sklearn_default(x[train], y[train], x[test]))


def test_baseline_head_with_two_classes_and_an_absent_one() -> None:
    """Two labeled classes (scikit-learn's one-logit binary model) inside a three-class
    config: the same argmax as ``LogisticRegression()``, and the unlabeled class gets a
    small, finite probability."""
    x, y = blobs(12, 2, 16, spread=3.0, seed=2)
    head = fit_head(x, y, ("a", "b", "never"), multiple=False)
    proba = head.predict_proba(x)
    np.testing.assert_array_equal(proba.argmax(axis=1), _sklearn_default(x, y, x))
    assert np.all(np.isfinite(head.logits(x))) and np.all(proba[:, 2] < 0.01)


@pytest.mark.parametrize("seed", range(4))
def test_the_head_is_never_a_worse_learner_than_the_baseline(seed: int) -> None:
    """Held-out accuracy on noisy, high-dimensional classes at several label counts."""
    x, y = blobs(120, 5, 64, spread=6.0, seed=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, pool = order[:200], order[200:]
    for n in (20, 40, 80, 160):
        train = pool[:n]
        if len(set(y[train])) < 5:
            continue
        head = fit_head(x[train], y[train], tuple("abcde"), multiple=False, seed=seed)
        ours = (head.predict_proba(x[test]).argmax(axis=1) == y[test]).mean()
        base = (_sklearn_default(x[train], y[train], x[test]) == y[test]).mean()
        assert ours >= base - 0.02, (n, ours, base)


def test_calibration_never_changes_the_argmax() -> None:
    x, y = blobs(30, 3, 8, spread=2.0, seed=6)
    calibrated = fit_head(x, y, ("a", "b", "c"), multiple=False)
    plain = fit_head(x, y, ("a", "b", "c"), multiple=False, calibrate=False,
                     regularisation=calibrated.regularisation())
    assert calibrated.temperature != 1.0
    np.testing.assert_array_equal(calibrated.predict_proba(x).argmax(axis=1),
                                  plain.predict_proba(x).argmax(axis=1))
