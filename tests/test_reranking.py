"""rank_tasks (predictions and a selector order for a project's unlabeled tasks) and the
re-ranking job that writes them to Label Studio."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.core.errors import BackendError
from ml_backend.jobs.kinds import RerankRequest, TrainRequest
from ml_backend.learning.selection import Strategy
from ml_backend.models.classifier.training import train_classifier
from ml_backend.pipeline.prediction import predictor_for
from ml_backend.pipeline.ranking import rank_tasks, rerank_project, throttle_rerank

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
    version = train_classifier(runtime, TrainRequest(project=4, mode="incremental")).version
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
    u = [ranked.uncertainty[t]["margin"] for t in ranked.order]
    assert u == sorted(u, reverse=True)  # margin order throughout
    assert ranked.batch == ranked.order[:5]
    scores = [ranked.predictions[t]["score"] for t in ranked.order]
    assert scores == sorted(scores), "written scores sort in the selector's order"
    # Outside the batch, the score is the model's confidence as margin measures it.
    rest = ranked.order[5:]
    np.testing.assert_allclose([ranked.predictions[t]["score"] for t in rest],
                               [1 - ranked.uncertainty[t]["margin"] for t in rest], atol=1e-6)
    prediction = ranked.predictions[ranked.order[0]]
    assert prediction["model_version"] == version and prediction["result"][0]["type"] == "choices"
    meta = prediction["result"][0]["meta"]["uncertainty"]
    assert set(meta) == {"least_confidence", "margin", "entropy"}
    assert meta["margin"] == pytest.approx(ranked.uncertainty[ranked.order[0]]["margin"], abs=1e-4)


def test_the_queue_holds_what_predict_answers_from_one_batch_path(backend, trained_project,
                                                                  monkeypatch) -> None:
    client, _, _ = backend
    runtime, version, labeled, candidates = trained_project
    tasks = [*candidates, {"id": 999, "data": {"image": "/data/upload/4/missing.png"}}]
    predictor = predictor_for(runtime)
    batch_path, calls = predictor.score_tasks, []

    def spy(batch, *args, **kwargs):
        calls.append([t["id"] for t in batch])
        return batch_path(batch, *args, **kwargs)

    monkeypatch.setattr(predictor, "score_tasks", spy)
    # A batch of 0: every written score is the model's confidence, as /predict gives it.
    ranked = rank_tasks(runtime, 4, DIGITS_CONFIG, tasks, labeled, Strategy.MARGIN, 0, 0.0,
                        np.random.default_rng(0))
    served = client.post("/predict", json={"tasks": tasks, "project": "4.1",
                                           "label_config": DIGITS_CONFIG}).get_json()["results"]
    ids = [t["id"] for t in tasks]
    assert calls == [ids, ids], "re-ranking and /predict both predict through score_tasks"
    assert ranked.failed == [999] and served[-1]["result"] == []
    for task_id, prediction in zip(ids[:-1], served[:-1], strict=True):
        queued = ranked.predictions[task_id]
        assert (queued["result"], queued["model_version"]) == (prediction["result"], version)
        assert queued["score"] == pytest.approx(prediction["score"], abs=1e-6)
        assert ranked.uncertainty[task_id]["margin"] == pytest.approx(1 - prediction["score"],
                                                                      abs=1e-6)


def test_ranked_batch_does_not_repeat_an_image(trained_project) -> None:
    runtime, _, labeled, candidates = trained_project
    candidates = candidates[:20]
    # The image ranked batch sampling picks first (with 20 labels the uncertainties are
    # close together, so the diversity term decides which of the uncertain ones), shown by
    # two more tasks.
    rng = np.random.default_rng(0)
    top = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.RANKED_BATCH, 1,
                     0.0, rng).order[0]
    image = next(c["data"]["image"] for c in candidates if c["id"] == top)
    copies = {top, 201, 202}
    candidates += [{"id": 200 + k, "data": {"image": image}} for k in (1, 2)]
    by_margin = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.MARGIN,
                           8, 0.0, np.random.default_rng(0))
    assert copies <= set(by_margin.order[:8])  # uncertainty alone takes every copy
    diverse = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled,
                         Strategy.RANKED_BATCH, 8, 0.0, np.random.default_rng(0))
    assert len(copies & set(diverse.order[:8])) == 1


def test_untrained_project_is_an_error(backend) -> None:
    _, runtime, _ = backend
    with pytest.raises(BackendError, match="no trained model"):
        rank_tasks(runtime, 9, DIGITS_CONFIG, [], [], Strategy.MARGIN, 1, 0.0,
                   np.random.default_rng(0))


def test_random_share_lands_in_the_batch(trained_project) -> None:
    runtime, _, labeled, candidates = trained_project
    by_margin = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.MARGIN, 10,
                           0.0, np.random.default_rng(0))
    hedged = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, labeled, Strategy.MARGIN, 10,
                        0.2, np.random.default_rng(0))
    assert hedged.batch[:8] == by_margin.batch[:8]
    assert not set(hedged.batch[8:]) & set(by_margin.batch[:8])
    assert hedged.order[:10] == hedged.batch


def test_rerank_job_writes_the_queue_and_cleans_up(trained_project, image_host) -> None:
    runtime, version, labeled, candidates = trained_project
    fake = runtime.ls_api
    candidates.append({"id": 999, "data": {"image": "/data/upload/4/missing.png"}})
    fake.unlabeled = candidates
    # Predictions of an older version of ours and of someone else's model.
    fake.predictions = [{"task": 21, "result": [], "score": 0.5,
                         "model_version": "resnet18-v0-untrained"},
                        {"task": 21, "result": [], "score": 0.5, "model_version": "manual"}]
    outcome = rerank_project(runtime, RerankRequest(project=4))
    assert outcome["status"] == "ranked" and outcome["version"] == version
    assert outcome["scored"] == len(candidates) - 1 and outcome["failed"] == 1
    assert outcome["deleted_versions"] == ["resnet18-v0-untrained"]
    assert fake.announced[-1] == (4, version)
    written = [p for p in fake.predictions if p["model_version"] == version]
    assert len(written) == len(candidates)
    by_score = [p["task"] for p in sorted(written, key=lambda p: p["score"])]
    assert by_score[:10] == outcome["batch"], "Data Manager order = the selector's batch"
    assert by_score[-1] == 999, "a task whose image fails sorts last"
    assert {p["model_version"] for p in fake.predictions} == {version, "manual"}
    state = runtime.store.read_state(4, "ranking")
    assert state["version"] == version and [t["task"] for t in state["top"][:10]] == by_score[:10]

    again = rerank_project(runtime, RerankRequest(project=4))
    assert again["status"] == "skipped" and len(fake.predictions) == len(written) + 1
    forced = rerank_project(runtime, RerankRequest(project=4, force=True))
    assert forced["status"] == "ranked"
    # Re-ranking the same version replaces its predictions instead of adding a second set.
    assert len([p for p in fake.predictions if p["model_version"] == version]) == len(written)


def test_skipped_tasks_go_to_the_end_of_the_queue(trained_project) -> None:
    runtime, version, _, candidates = trained_project
    fake = runtime.ls_api
    fake.unlabeled = candidates
    top = rank_tasks(runtime, 4, DIGITS_CONFIG, candidates, [], Strategy.MARGIN, 10, 0.0,
                     np.random.default_rng(0)).batch[:2]
    fake.unlabeled = [{**c, "skipped": c["id"] in top} for c in candidates]
    outcome = rerank_project(runtime, RerankRequest(project=4))
    assert outcome["skipped"] == 2 and not set(top) & set(outcome["batch"])
    written = {p["task"]: p for p in fake.predictions if p["model_version"] == version}
    assert len(written) == len(candidates)
    assert all(written[t]["score"] == 1.0 and written[t]["result"] for t in top)
    others = [p["score"] for t, p in written.items() if t not in top]
    assert max(others) <= 1.0 and sorted(written, key=lambda t: written[t]["score"])[:10] \
        == outcome["batch"]


def test_task_deleted_during_a_rerank_costs_only_that_task(trained_project) -> None:
    runtime, version, _, candidates = trained_project
    fake = runtime.ls_api
    fake.unlabeled = candidates
    ghost = {"id": 555, "data": {"image": "/data/upload/4/25.png"}}
    real_read = fake.project_tasks
    reads = []

    def read_then_delete(project):
        labeled, unlabeled = real_read(project)
        reads.append(project)
        return (labeled, [*unlabeled, ghost]) if len(reads) == 1 else (labeled, unlabeled)

    fake.project_tasks = read_then_delete
    outcome = rerank_project(runtime, RerankRequest(project=4))
    assert outcome["status"] == "ranked" and len(reads) == 2
    tasks = [p["task"] for p in fake.predictions]
    assert sorted(tasks) == sorted(c["id"] for c in candidates), "no duplicates, no ghost"
    assert fake.announced[-1] == (4, version)


def test_training_chains_a_rerank_that_announces(backend, trained_project) -> None:
    client, runtime, jobs = backend
    fake = runtime.ls_api
    fake.unlabeled = trained_project[3]
    fake.tasks.append(choice_task(40, "/data/upload/4/39.png", "digit", ["3"]))
    response = client.post("/webhook", json={"action": "START_TRAINING",
                                             "project": {"id": 4}})
    assert response.status_code == 200
    assert jobs.wait_idle(60)
    names = [(j["name"], j["status"]) for j in jobs.recent()]
    assert ("rerank", "finished") in names, names
    latest = runtime.store.latest(4).name
    assert fake.announced[-1] == (4, latest)
    ranking = client.get("/ranking/4?limit=3").get_json()
    assert ranking["version"] == latest and len(ranking["top"]) == 3
    assert client.get("/ranking/77").status_code == 404


def test_rerank_throttle_waits_for_the_interval_and_the_last_duration(make_settings) -> None:
    import time

    settings = make_settings(rerank_min_interval_s=0.2)
    assert throttle_rerank(settings, None) == 0.0
    assert throttle_rerank(settings, {"ranked_at": time.time() - 5, "seconds": 1.0}) == 0.0
    assert 0.1 < throttle_rerank(settings, {"ranked_at": time.time(), "seconds": 0.0}) <= 0.2
    # A slow last re-rank spaces the next one by its own duration (at most half the time busy).
    assert 0.3 < throttle_rerank(settings, {"ranked_at": time.time(), "seconds": 0.4}) <= 0.4
    # RERANK_MAX_LOAD = 1: only the minimum interval.
    unlimited = make_settings(rerank_min_interval_s=0.0, rerank_max_load=1.0)
    assert throttle_rerank(unlimited, {"ranked_at": time.time(), "seconds": 5.0}) == 0.0


TWO_IMAGES = """<View>
  <Image name="front" value="$front"/><Image name="back" value="$back"/>
  <Choices name="front_digit" toName="front"><Choice value="low"/><Choice value="high"/></Choices>
  <Choices name="back_digit" toName="back"><Choice value="low"/><Choice value="high"/></Choices>
</View>"""


def test_each_control_is_ranked_on_its_own_image(backend, image_host) -> None:
    client, runtime, _ = backend
    pngs, labels = digit_images(40)
    for i, png in enumerate(pngs):
        image_host.files[f"/data/upload/6/{i}.png"] = png

    def task(i: int, j: int) -> dict:
        return {"id": 100 + i, "data": {"front": f"/data/upload/6/{i}.png",
                                        "back": f"/data/upload/6/{j}.png"}}

    def side(k: int) -> str:
        return "high" if labels[k] >= 5 else "low"

    labeled = []
    for i in range(24):
        j = 39 - i
        labeled.append({**task(i, j), "annotations": [{"id": i + 1, "updated_at": "1", "result": [
            {"from_name": "front_digit", "to_name": "front", "type": "choices",
             "value": {"choices": [side(i)]}},
            {"from_name": "back_digit", "to_name": "back", "type": "choices",
             "value": {"choices": [side(j)]}}]}]})
    runtime.ls_api = FakeLabelStudioAPI(TWO_IMAGES, labeled)  # type: ignore[assignment]
    assert train_classifier(runtime, TrainRequest(project=6, mode="full")).status == "trained"
    candidates = [task(i, 39 - i) for i in range(24, 32)]
    ranked = rank_tasks(runtime, 6, TWO_IMAGES, candidates, [], Strategy.MARGIN, 3, 0.0,
                        np.random.default_rng(0))
    served = client.post("/predict", json={"tasks": candidates, "project": "6.1",
                                           "label_config": TWO_IMAGES}).get_json()["results"]
    for candidate, prediction in zip(candidates, served, strict=True):
        queued = ranked.predictions[candidate["id"]]["result"]
        assert [(r["from_name"], r["value"], r["score"]) for r in queued] == \
            [(r["from_name"], r["value"], r["score"]) for r in prediction["result"]]
