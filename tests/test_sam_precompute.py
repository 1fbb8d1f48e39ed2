"""SAM embeddings: the shared store (threads, processes, bounds, damage), concurrent clicks
on different images, and precomputing before anyone clicks."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_sam import MIXED_CONFIG, interactive_body, keypoint

from ml_backend.jobs.kinds import RerankRequest, SamEmbedRequest, TrainRequest
from ml_backend.labelstudio.rle import rle_to_mask
from ml_backend.models.classifier.training import train_classifier
from ml_backend.models.sam.embeddings import SamEmbeddingStore, serialize
from ml_backend.models.sam.model import SamEmbedding
from ml_backend.models.sam.precompute import (
    merge_precompute_requests,
    precompute_project,
    precompute_request,
    precompute_sam_job,
)

from conftest import digit_images, load_capture, png_bytes
from fakes import FakeLabelStudioAPI, choice_task
from sam_fixture import HEIGHT, SEGMENTATION_CONFIG, WIDTH, square_scene

MODEL = "sam_test_model"


def embedding(value: float, size: tuple[int, int] = (8, 8)) -> SamEmbedding:
    return SamEmbedding(np.full((1, 256, 4, 4), value, dtype=np.float32), size, size)


def test_one_image_asked_by_many_threads_is_computed_once(tmp_path: Path) -> None:
    store = SamEmbeddingStore(tmp_path, 2**30, 2**30)
    calls = []

    def compute() -> SamEmbedding:
        calls.append(1)
        time.sleep(0.3)
        return embedding(1.0)

    sources: list[str] = []
    threads = [threading.Thread(target=lambda: sources.append(
        store.get_or_compute(MODEL, "a" * 64, compute).source)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(sources) == ["computed", "waited", "waited", "waited"]


def _compute_in_child(root: str, marker: str, queue: Any) -> None:
    store = SamEmbeddingStore(Path(root), 2**30, 2**30)

    def compute() -> SamEmbedding:
        with open(marker, "a") as fh:
            fh.write("x")
        time.sleep(0.5)
        return embedding(2.0)

    lookup = store.get_or_compute(MODEL, "b" * 64, compute)
    queue.put((lookup.source, float(lookup.embedding.features.mean())))


def test_processes_sharing_the_store_compute_an_image_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    marker = tmp_path / "computed"
    children = [context.Process(target=_compute_in_child,
                                args=(str(tmp_path / "store"), str(marker), queue))
                for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    results = sorted(queue.get(timeout=5) for _ in children)
    assert marker.read_text() == "x"
    assert [source for source, _ in results] == ["computed", "waited", "waited"]
    assert all(mean == 2.0 for _, mean in results)


def test_memory_is_bounded_and_disk_is_swept_least_recently_used(tmp_path: Path) -> None:
    one = embedding(0.0).nbytes
    store = SamEmbeddingStore(tmp_path, memory_bytes=2 * one, disk_bytes=10**9)
    for i in range(4):
        store.put(MODEL, f"{i:064x}", embedding(float(i)))
    assert store.stats()["in_memory"] == 2
    assert store.cached(MODEL, f"{0:064x}").source == "disk"  # evicted from memory only
    file_size = store.path(MODEL, f"{0:064x}").stat().st_size
    store.disk_bytes = 2 * file_size
    for i, age in [(1, 40), (2, 30), (3, 20), (0, 10)]:  # 0 was read last
        stamp = time.time() - age
        os.utime(store.path(MODEL, f"{i:064x}"), (stamp, stamp))
    assert store.sweep() == 2
    left = sorted(p.stem for p in tmp_path.glob("*/*/*.npz"))
    assert left == [f"{0:064x}", f"{3:064x}"]


def test_a_damaged_file_is_a_miss_and_is_recomputed(tmp_path: Path) -> None:
    store = SamEmbeddingStore(tmp_path, 0, 10**9)  # memory off: every read goes to disk
    path = store.path(MODEL, "c" * 64)
    path.parent.mkdir(parents=True)
    path.write_bytes(serialize(embedding(3.0))[:100])
    assert store.cached(MODEL, "c" * 64) is None and not path.exists()
    lookup = store.get_or_compute(MODEL, "c" * 64, lambda: embedding(3.0))
    assert lookup.source == "computed" and store.cached(MODEL, "c" * 64).source == "disk"


def test_bad_keys_never_reach_the_filesystem(tmp_path: Path) -> None:
    store = SamEmbeddingStore(tmp_path, 2**20, 2**20)
    for model, sha in [("../x", "a" * 64), (MODEL, "../../etc"), (MODEL, "")]:
        with pytest.raises(ValueError):
            store.path(model, sha)


def test_concurrent_clicks_on_different_images_never_mix(any_sam_app, docs) -> None:
    client, runtime, _ = any_sam_app
    rng = np.random.default_rng(1)
    urls = []
    for i in range(4):
        pixels = square_scene(WIDTH, HEIGHT)
        pixels[rng.integers(0, HEIGHT, 200), rng.integers(0, WIDTH, 200)] = (i * 60) % 255
        (docs / "set1" / f"mix{i}.png").write_bytes(png_bytes(pixels))
        urls.append(f"/data/local-files/?d=set1/mix{i}.png")
    click = [keypoint(60, 50, "Object")]

    def masks() -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(urls)

        def one(i: int) -> None:
            for _ in range(3):
                body = interactive_body(SEGMENTATION_CONFIG, click, urls[i])
                region = client.post("/predict", json=body).get_json()["results"][0]["result"]
                mask = rle_to_mask(region[0]["value"]["rle"], HEIGHT, WIDTH)
                assert out[i] is None or np.array_equal(out[i], mask)
                out[i] = mask

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [m for m in out if m is not None]

    concurrent = masks()
    assert len(concurrent) == len(urls)
    # Each image's mask, computed alone, is what it got while the others were in flight.
    segmenter = runtime.sam.segmenter()
    for url, got in zip(urls, concurrent, strict=True):
        data, _ = runtime.images.load_bytes(url)
        from ml_backend.core.images import decode_image

        alone = segmenter.segment(segmenter.embed(decode_image(data, 10**8)),
                                  interactive_prompt(WIDTH, HEIGHT))
        assert np.array_equal(alone.mask.astype(np.uint8) * 255, got)
    assert len({m.tobytes() for m in concurrent}) > 1  # the images do differ


def interactive_prompt(width: int, height: int) -> Any:
    from ml_backend.models.sam.model import SamPrompt

    return SamPrompt(np.array([[0.6 * width, 0.5 * height]]), np.array([True]))


def _tasks(docs: Path, count: int) -> list[dict[str, Any]]:
    tasks = []
    for i in range(count):
        pixels = square_scene(WIDTH, HEIGHT)
        pixels[0, i] = 255  # distinct bytes: one embedding per task
        (docs / "set1" / f"t{i}.png").write_bytes(png_bytes(pixels))
        tasks.append({"id": 100 + i, "data": {"image": f"/data/local-files/?d=set1/t{i}.png"}})
    return tasks


def _ready(runtime: Any, tasks: list[dict[str, Any]]) -> list[bool]:
    model_id = runtime.sam.segmenter().model_id
    return [runtime.sam.embeddings.is_ready(
        model_id, runtime.images.load_bytes(t["data"]["image"])[1]) for t in tasks]


def test_tasks_created_webhook_precomputes_embeddings(any_sam_app, docs) -> None:
    client, runtime, jobs = any_sam_app
    tasks = _tasks(docs, 3)
    body = load_capture("webhook_TASKS_CREATED.json")["body"]
    body = {**body, "tasks": tasks,
            "project": {**body["project"], "label_config": SEGMENTATION_CONFIG}}
    assert _ready(runtime, tasks) == [False] * 3
    response = client.post("/webhook", json=body)
    assert response.status_code == 200
    assert jobs.wait_idle(120)
    assert _ready(runtime, tasks) == [True] * 3
    # A click now finds the embedding (computed by the job, not by the click).
    counts_before = dict(runtime.sam.embeddings.counts)
    assert client.post("/predict", json=interactive_body(
        SEGMENTATION_CONFIG, [keypoint(50, 50, "Object")], tasks[1]["data"]["image"])
    ).status_code == 200
    assert runtime.sam.embeddings.counts["computed"] == counts_before["computed"]


def test_opening_a_task_precomputes_its_embedding(any_sam_app, docs) -> None:
    client, runtime, jobs = any_sam_app
    (task,) = _tasks(docs, 1)
    body = {"tasks": [task], "project": "3.17", "label_config": SEGMENTATION_CONFIG,
            "params": {"context": None}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200 and response.get_json()["results"][0]["result"] == []
    assert jobs.wait_idle(60)
    assert _ready(runtime, [task]) == [True]


def test_newest_request_goes_first_one_task_per_run(sam_app, docs) -> None:
    _, runtime, _ = sam_app
    tasks = _tasks(docs, 4)
    old = precompute_request(3, tasks[:3], ["image"])
    time.sleep(0.01)
    new = precompute_request(3, tasks[3:], ["image"])
    assert old is not None and new is not None
    merged = merge_precompute_requests(old, new)
    assert [t["id"] for r in merged.requests for t in r["tasks"]] == [103, 100, 101, 102]
    result = precompute_sam_job(runtime, merged)
    assert result["task"] == 103 and result["encoded"] == [{"key": "image",
                                                            "source": "computed"}]
    (follow,) = result["next_jobs"]
    assert [t["id"] for r in follow["payload"]["requests"] for t in r["tasks"]] == [100, 101,
                                                                                      102]
    assert follow["key"] == "sam_embed:3"


def test_a_broken_image_costs_only_its_task(sam_app, docs) -> None:
    _, runtime, _ = sam_app
    (docs / "set1" / "bad.png").write_bytes(b"broken")
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=set1/bad.png"}},
             *_tasks(docs, 1)]
    request = precompute_request(3, tasks, ["image"])
    assert request is not None
    result = precompute_sam_job(runtime, request)
    assert "decode" in result["encoded"][0]["error"]
    result = precompute_sam_job(runtime, SamEmbedRequest.from_payload(
        result["next_jobs"][0]["payload"]))
    assert result["encoded"][0]["source"] == "computed" and "next_jobs" not in result


def _mixed_project(image_host: Any, count: int) -> tuple[list[dict[str, Any]], Any]:
    pngs, labels = digit_images(count)
    tasks = []
    for i, (png, label) in enumerate(zip(pngs, labels, strict=True)):
        image_host.files[f"/data/upload/7/d{i}.png"] = png
        tasks.append(choice_task(i + 1, f"/data/upload/7/d{i}.png", "digit", [str(label)]))
    return tasks, labels


def test_rerank_precomputes_the_head_of_the_new_queue(make_settings, image_host,
                                                      tiny_sam) -> None:
    from ml_backend.jobs.queues import InProcessQueue
    from ml_backend.jobs.registry import job_registry
    from ml_backend.pipeline.ranking import rerank_project
    from ml_backend.runtime import Runtime

    from sam_fixture import TINY_SAM_TYPE

    settings = make_settings(label_studio_url=image_host.url, sam_checkpoint=tiny_sam,
                             sam_model_type=TINY_SAM_TYPE, sam_precompute_ahead=3)
    runtime = Runtime(settings)
    tasks, _ = _mixed_project(image_host, 50)
    fake = FakeLabelStudioAPI(MIXED_CONFIG, tasks[:40])
    fake.unlabeled = [{"id": t["id"], "data": t["data"]} for t in tasks[40:]]
    runtime.ls_api = fake  # type: ignore[assignment]
    assert train_classifier(runtime, TrainRequest(project=7, mode="full")).status == "trained"
    result = rerank_project(runtime, RerankRequest(project=7, force=True))
    (follow,) = result["next_jobs"]
    assert follow["name"] == "sam_embed" and follow["key"] == "sam_embed:7"
    head = runtime.store.read_state(7, "ranking")["top"][:3]
    (request,) = follow["payload"]["requests"]
    assert [t["id"] for t in request["tasks"]] == [row["task"] for row in head]

    # The project-wide command: queue order first, with a progress bar.
    out = io.StringIO()
    summary = precompute_project(runtime, 7, limit=4, out=out)
    assert summary["tasks"] == 4 and summary["images"] == {"computed": 4}
    assert "4/4" in out.getvalue()
    jobs = InProcessQueue(runtime, job_registry())
    try:
        jobs.submit(follow["name"], follow["payload"], follow["key"])
        assert jobs.wait_idle(60)
    finally:
        jobs.close()
    assert runtime.sam.embeddings.counts["computed"] == 4  # the head was already encoded


def test_the_precompute_command_fills_the_shared_disk_store_for_sam2_1(
        make_settings, image_host, tiny_sam2_1) -> None:
    """`ml-backend precompute` with a SAM 2.1 model: each unlabeled image encoded once, and
    another process (a fresh runtime on the same cache) reads them from disk, keyed by image
    hash and this model's digest."""
    from ml_backend.runtime import Runtime

    from sam_fixture import TINY_SAM2_1_TYPE

    settings = make_settings(label_studio_url=image_host.url, sam_checkpoint=tiny_sam2_1,
                             sam_model_type=TINY_SAM2_1_TYPE)
    tasks = []
    for i in range(3):
        pixels = square_scene(WIDTH, HEIGHT)
        pixels[0, i] = 255  # distinct bytes: one embedding per task
        image_host.files[f"/data/upload/7/s{i}.png"] = png_bytes(pixels)
        tasks.append({"id": i + 1, "data": {"image": f"/data/upload/7/s{i}.png"}})
    fake = FakeLabelStudioAPI(SEGMENTATION_CONFIG, [])
    fake.unlabeled = tasks
    runtime = Runtime(settings)
    runtime.ls_api = fake  # type: ignore[assignment]
    summary = precompute_project(runtime, 7, out=io.StringIO())
    assert summary["tasks"] == 3 and summary["images"] == {"computed": 3}
    other = Runtime(settings)
    other.ls_api = fake  # type: ignore[assignment]
    assert precompute_project(other, 7, out=io.StringIO())["images"] == {"disk": 3}
    assert other.sam.segmenter().model_id == runtime.sam.segmenter().model_id
    assert other.sam.segmenter().model_id.startswith("sam_sam2_1_hiera_16_1_1_2_1_")
