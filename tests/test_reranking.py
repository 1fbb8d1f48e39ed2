"""rank_tasks: predictions and a selector order for a project's unlabeled tasks."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.ranking import Strategy
from ml_backend.reranking import rank_tasks
from ml_backend.training import train_classifier

from conftest import DIGITS_CONFIG, digit_images
from fakes import FakeLabelStudioAPI, choice_task


@pytest.fixture
def trained_project(backend, image_host):
    _, runtime, _ = backend
    pngs, labels = digit_images(40)
    for i, png in enumerate(pngs):
        image_host.files[f"/data/upload/4/{i}.png"] = png
    labeled = [choice_task(i + 1, f"/data/upload/4/{i}.png", "digit", [str(labels[i])])
               for i in range(20)]
    runtime.ls_api = FakeLabelStudioAPI(DIGITS_CONFIG, labeled)  # type: ignore[assignment]
    version = train_classifier(runtime, {"project": 4, "mode": "incremental"}).version
    candidates = [{"id": i + 1, "data": {"image": f"/data/upload/4/{i}.png"}}
                  for i in range(20, 40)]
    # Two candidates show the very same image as candidate 21.
    candidates += [{"id": 100 + k, "data": {"image": "/data/upload/4/20.png"}} for k in (1, 2)]
    return runtime, version, labeled, candidates


def test_uncertainty_order_and_predictions(trained_project) -> None:
    runtime, version, labeled, candidates = trained_project
    ranked = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.MARGIN, 5,
                        0.0, np.random.default_rng(0))
    assert ranked.version == version
    assert sorted(ranked.order) == sorted(c["id"] for c in candidates)
    u = [ranked.uncertainty[t] for t in ranked.order]
    assert u == sorted(u, reverse=True)  # margin order throughout
    prediction = ranked.predictions[ranked.order[0]]
    assert prediction["model_version"] == version and prediction["result"][0]["type"] == "choices"


def test_ranked_batch_does_not_repeat_an_image(trained_project) -> None:
    runtime, _, labeled, candidates = trained_project
    candidates = candidates[:20]
    rng = np.random.default_rng(0)
    top = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.MARGIN, 1,
                     0.0, rng).order[0]
    image = next(c["data"]["image"] for c in candidates if c["id"] == top)
    copies = {top, 201, 202}
    candidates += [{"id": 200 + k, "data": {"image": image}} for k in (1, 2)]
    by_margin = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.MARGIN,
                           8, 0.0, np.random.default_rng(0))
    assert copies <= set(by_margin.order[:3])  # uncertainty alone takes every copy
    diverse = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled,
                         Strategy.RANKED_BATCH, 8, 0.0, np.random.default_rng(0))
    assert len(copies & set(diverse.order[:8])) == 1


def test_untrained_project_is_an_error(backend) -> None:
    _, runtime, _ = backend
    with pytest.raises(RuntimeError, match="no trained model"):
        rank_tasks(runtime, 9, DIGITS_CONFIG, [], [], Strategy.MARGIN, 1, 0.0,
                   np.random.default_rng(0))
