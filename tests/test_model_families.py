"""The runtime composes model families through one small interface: every family reports
its status and warms up the same way, and the batch families are the one path of
``/predict``, pre-annotation and re-ranking. A fifth family is one registration."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_backend.core.task_images import ImageBatch
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily
from ml_backend.labelstudio.results import classification_outputs
from ml_backend.learning.selection import Strategy
from ml_backend.models.family import BatchFamily, Family, FamilyScores

from conftest import DIGITS_CONFIG, hosted_digit_tasks


class ConstantClassifier:
    """A toy family: every task it can read is a "7", with confidence 0.9."""

    name = "constant"
    kind = ModelFamily.CLASSIFIER

    def __init__(self) -> None:
        self.warmed = False
        self.batches: list[int] = []

    def status(self) -> dict[str, Any]:
        return {"status": "ready", "answers": "7"}

    def warm_up(self) -> None:
        self.warmed = True

    def version_prefix(self) -> str:
        return "constant"

    def score_batch(self, batch: ImageBatch, controls: tuple[ControlSpec, ...],
                    project: int | None, strategy: Strategy) -> FamilyScores | None:
        self.batches.append(len(batch))
        rows = [row for chunk in batch.chunks(controls[0].value_key, 4) for row, _ in chunk]
        probas = {}
        for control in controls:
            p = np.full((len(rows), len(control.labels)), 0.1 / (len(control.labels) - 1))
            p[:, control.labels.index("7")] = 0.9
            probas[control.name] = p
        outputs = dict(zip(rows, classification_outputs(controls, probas, strategy),
                           strict=True))
        return FamilyScores(self.kind, "constant-v1-x", controls, outputs,
                            {r: {"margin": o[1]} for r, o in outputs.items()})


def test_the_shipped_families_share_one_interface(backend) -> None:
    _, runtime, _ = backend
    assert [f.name for f in runtime.families] == ["classifier", "detector", "sam", "clipseg"]
    assert all(isinstance(f, Family) for f in runtime.families)
    assert [f.name for f in runtime.batch_families()] == ["classifier", "detector"]
    assert set(runtime.status()) == {"classifier", "detector", "sam", "clipseg"}


def test_a_fifth_family_is_one_registration(backend, image_host) -> None:
    client, runtime, _ = backend
    toy = runtime._register(ConstantClassifier())
    assert isinstance(toy, BatchFamily)

    runtime.warm_up()
    assert toy.warmed
    assert client.get("/health").get_json()["models"]["constant"] == {"status": "ready",
                                                                      "answers": "7"}
    assert runtime.is_our_version("constant-v3-20260101")

    tasks = [{"id": t["id"], "data": t["data"]} for t in hosted_digit_tasks(image_host, 3)]
    tasks.append({"id": 99, "data": {"image": "/data/upload/7/missing.png"}})
    response = client.post("/predict", json={"tasks": tasks, "label_config": DIGITS_CONFIG,
                                             "project": "7.1700000000"})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    # /predict went through the toy's batch path: its Choices, with its confidence ...
    for result in results[:3]:
        assert result["result"][0]["value"]["choices"] == ["7"]
        assert result["score"] > 0.5
    # ... and the task whose image is missing got an empty prediction, alone.
    assert results[3]["result"] == []
    assert toy.batches == [4]
