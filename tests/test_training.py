"""The classifier learning loop in-process: labels → heads → a new version → predictions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_backend.jobs.kinds import TrainRequest
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.models.classifier.training import targets_for, train_classifier

from conftest import DIGITS_CONFIG, hosted_digit_tasks
from fakes import FakeLabelStudioAPI, choice_task


def _project(image_host: Any, count: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Hosted digit tasks and their true labels (from their annotations)."""
    tasks = hosted_digit_tasks(image_host, count)
    labels = np.array([int(t["annotations"][0]["result"][0]["value"]["choices"][0])
                       for t in tasks])
    return tasks, labels


def test_targets_for_single_and_multiple() -> None:
    (single,) = parse_label_config(DIGITS_CONFIG).for_family(ModelFamily.CLASSIFIER)
    results = [choice_task(1, "x", "digit", ["3"])["annotations"][0]["result"], [],
               choice_task(2, "x", "other", ["4"])["annotations"][0]["result"],
               choice_task(3, "x", "digit", ["not-a-label"])["annotations"][0]["result"]]
    rows, y = targets_for(single, results)
    assert rows == [0] and y.tolist() == [3]


def test_train_then_predict_improves_and_versions_change(backend, image_host) -> None:
    client, runtime, jobs = backend
    tasks, labels = _project(image_host, 120)
    fake = FakeLabelStudioAPI(DIGITS_CONFIG, tasks[:80])
    runtime.ls_api = fake  # type: ignore[assignment]

    body = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks[80:]],
            "project": "7.1700000000", "label_config": DIGITS_CONFIG}
    before = client.post("/predict", json=body).get_json()["results"]
    assert all(r["result"] == [] for r in before)
    assert before[0]["model_version"].endswith("v0-untrained")

    outcome = train_classifier(runtime, TrainRequest(project=7, mode="full"))
    assert outcome.status == "trained" and outcome.n_labeled == 80
    setup = client.post("/setup", json={"project": "7.1700000000", "schema": DIGITS_CONFIG})
    assert setup.get_json()["model_version"] == outcome.version

    after = client.post("/predict", json=body).get_json()["results"]
    assert [r["model_version"] for r in after] == [outcome.version] * 40
    predicted = [int(r["result"][0]["value"]["choices"][0]) for r in after]
    accuracy = float(np.mean(np.array(predicted) == labels[80:]))
    assert accuracy > 0.5, accuracy  # random init backbone on 32 px digits, 80 labels
    assert all(0.0 <= r["score"] <= 1.0 for r in after)
    # The re-ranking job announces the version once the queue's predictions are written.
    assert fake.announced == []
    assert outcome.next_jobs == [{"name": "rerank", "payload": {"project": 7, "force": False},
                                  "key": "rerank:7"},
                                 {"name": "quality", "payload": {"project": 7},
                                  "key": "quality:7"}]

    # Nothing new: an incremental request is a no-op and keeps the version.
    again = train_classifier(runtime, TrainRequest(project=7, mode="incremental"))
    assert again.status == "skipped" and again.version == outcome.version


def test_incremental_update_uses_webhook_body_without_reexport(backend, image_host) -> None:
    client, runtime, jobs = backend
    tasks, _ = _project(image_host, 30)
    fake = FakeLabelStudioAPI(DIGITS_CONFIG, tasks[:20])
    runtime.ls_api = fake  # type: ignore[assignment]
    first = train_classifier(runtime, TrainRequest(project=7, mode="incremental"))
    assert fake.exports == 1
    new_task = tasks[20]
    payload = {"project": 7, "mode": "incremental", "label_config": DIGITS_CONFIG,
               "task": {"id": new_task["id"], "data": new_task["data"]},
               "annotation": new_task["annotations"][0]}
    second = train_classifier(runtime, TrainRequest.from_payload(payload))
    assert fake.exports == 1, "a recent full sync plus the event body is enough"
    assert second.status == "trained" and second.n_labeled == 21
    assert second.version != first.version


def test_webhook_trains_in_background(backend, image_host) -> None:
    client, runtime, jobs = backend
    tasks, _ = _project(image_host, 25)
    runtime.ls_api = FakeLabelStudioAPI(DIGITS_CONFIG, tasks)  # type: ignore[assignment]
    # Label Studio's webhooks carry the project's config: a Choices-only project trains
    # only the classifier.
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {
        "id": 7, "label_config": DIGITS_CONFIG}})
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    assert jobs.wait_idle(120)
    records = {r["name"]: r for r in jobs.recent()}
    assert sorted(records) == ["quality", "rerank", "train"]
    assert records["quality"]["status"] == "finished", records["quality"]
    assert records["train"]["status"] == "finished", records
    assert runtime.store.latest(7).name == records["train"]["result"]["version"]
    # Nothing unlabeled in this project: the queue is empty, but the version is announced.
    assert records["rerank"]["result"]["scored"] == 0
    assert runtime.ls_api.announced == [(7, records["train"]["result"]["version"])]


def test_full_training_with_backbone_finetune(make_settings, image_host) -> None:
    from ml_backend.runtime import Runtime

    runtime = Runtime(make_settings(label_studio_url=image_host.url, finetune_min_labels=20,
                                    finetune_epochs=1))
    tasks, _ = _project(image_host, 90)
    runtime.ls_api = FakeLabelStudioAPI(DIGITS_CONFIG, tasks)  # type: ignore[assignment]
    outcome = train_classifier(runtime, TrainRequest(project=7, mode="full"))
    assert outcome.status == "trained"
    manifest = runtime.store.latest(7).manifest
    report = manifest["backbone"]["finetune"]
    assert report["control"] == "digit" and report["n_val"] >= 10
    # The tuned backbone is kept only when it beats the frozen one on held-out tasks.
    assert report["kept"] == (report["val_accuracy_tuned"] > report["val_accuracy_frozen"])
    model = runtime.classifier.model(7)
    assert model is not None
    if report["kept"]:
        assert manifest["backbone"]["file"] == "backbone.pt"
        assert model.embedder.digest.startswith(manifest["backbone"]["digest"])
    else:
        assert "file" not in manifest["backbone"]
        assert model.embedder.digest.startswith(runtime.classifier.base_weights().digest)
    # An incremental update keeps the version's backbone and is a no-op when nothing changed.
    again = train_classifier(runtime, TrainRequest(project=7, mode="incremental"))
    assert again.status == "skipped"
    tasks.append(choice_task(99, tasks[0]["data"]["image"], "digit", ["3"]))
    runtime.ls_api = FakeLabelStudioAPI(DIGITS_CONFIG, tasks)  # type: ignore[assignment]
    updated = train_classifier(runtime, TrainRequest(project=7, mode="incremental"))
    assert updated.status == "trained"
    assert runtime.store.latest(7).manifest["backbone"].get("file") == \
        manifest["backbone"].get("file")
    assert runtime.classifier.model(7).embedder.digest == model.embedder.digest


def test_incremental_updates_rechoose_regularisation_when_labels_double() -> None:
    from ml_backend.learning.heads import BASELINE, LinearHead, Regularisation
    from ml_backend.models.classifier.training import _reusable_regularisation

    def head(chosen_at: float, **stats: float) -> LinearHead:
        return LinearHead(("a", "b"), False, np.zeros((2, 2)), np.zeros(2), np.zeros(2),
                          np.ones(2), l2=0.1, stats={"l2_chosen_at_n": chosen_at, **stats})

    assert _reusable_regularisation(None, 20) is None
    # A head saved before the baseline rule: standardised features, its fixed strength.
    assert _reusable_regularisation(head(20), 39) == Regularisation(True, 0.1)
    assert _reusable_regularisation(head(20), 40) is None
    assert _reusable_regularisation(head(0), 25) is None  # never chosen yet
    # The baseline is reused as its rule (1/n at every size), not as the number it gave.
    assert _reusable_regularisation(head(20, baseline=1.0), 30) == BASELINE
