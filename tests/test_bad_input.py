"""Bad input gets a clear 4xx or a per-task empty prediction, never a 500, and the server
keeps serving."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from ml_backend.jobs.kinds import TrainRequest
from ml_backend.models.classifier.training import train_classifier

from conftest import DIGITS_CONFIG, digit_images
from fakes import FakeLabelStudioAPI, choice_task


def huge_png(width: int, height: int) -> bytes:
    """A valid greyscale PNG header+data of ``width × height`` without allocating pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


@pytest.fixture
def trained(backend, image_host) -> Any:
    client, runtime, jobs = backend
    pngs, labels = digit_images(30)
    tasks = []
    for i, (png, label) in enumerate(zip(pngs, labels, strict=True)):
        image_host.files[f"/data/upload/1/ok{i}.png"] = png
        tasks.append(choice_task(i + 1, f"/data/upload/1/ok{i}.png", "digit", [str(label)]))
    runtime.ls_api = FakeLabelStudioAPI(DIGITS_CONFIG, tasks)  # type: ignore[assignment]
    version = train_classifier(runtime, TrainRequest(project=1, mode="incremental")).version
    return client, image_host, version


def _alive(client: Any) -> None:
    assert client.get("/health").get_json()["status"] == "UP"


@pytest.mark.parametrize("path, data, status, message", [
    ("/predict", b"{not json", 400, "not valid JSON"),
    ("/predict", b"", 400, "empty"),
    ("/predict", b"[1, 2]", 400, "JSON object"),
    ("/predict", b'{"label_config": "<View/>"}', 400, "'tasks'"),
    ("/predict", b'{"tasks": "abc"}', 400, "'tasks'"),
    ("/predict", b'{"tasks": [], "project": "abc"}', 400, "project must look like"),
    ("/setup", '{"project": "\u00b2.1", "schema": "<View/>"}'.encode(), 400,
     "project must look like"),
    ("/predict", b'{"tasks": [{"data": {}}]}', 400, "label_config"),
    ("/predict", b'{"tasks": [], "label_config": "<View><Text name=\\"t\\" value=\\"$t\\"/>'
                 b'</View>"}', 422, "nothing in this label config"),
    ("/predict", b'{"tasks": [], "label_config": "<View"}', 422, "not valid XML"),
    ("/setup", b'{"project": "1.2"}', 400, "schema"),
    ("/setup", b'{"project": "1.2", "schema": "<View><Header value=\\"x\\"/></View>"}', 422,
     "nothing in this label config"),
    ("/webhook", b'{"no_action": 1}', 400, "action"),
    ("/webhook", b'{"action": "START_TRAINING"}', 400, "no project"),
    ("/train", b'{"annotations": 5}', 400, "annotations"),
])
def test_malformed_requests_get_clear_4xx(backend, path: str, data: bytes, status: int,
                                          message: str) -> None:
    client, _, _ = backend
    response = client.post(path, data=data, content_type="application/json")
    assert response.status_code == status, response.get_data(as_text=True)
    assert message in response.get_json()["error"]
    assert "Traceback" not in response.get_data(as_text=True)
    _alive(client)


def test_unknown_webhook_action_is_acknowledged_and_ignored(backend) -> None:
    client, _, _ = backend
    response = client.post("/webhook", json={"action": "SOMETHING_NEW", "project": {"id": 1}})
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"


def test_request_too_large_is_413(make_settings, image_host) -> None:
    from ml_backend.app import create_app

    app = create_app(make_settings(max_request_bytes=1000), warm_up=False)
    response = app.test_client().post("/predict", data=b"x" * 5000,
                                      content_type="application/json")
    assert response.status_code == 413 and "error" in response.get_json()


def test_too_many_tasks(make_settings) -> None:
    from ml_backend.app import create_app

    client = create_app(make_settings(max_tasks_per_request=2), warm_up=False).test_client()
    response = client.post("/predict", json={"tasks": [{}, {}, {}],
                                             "label_config": DIGITS_CONFIG})
    assert response.status_code == 400 and "limit is 2" in response.get_json()["error"]


def test_bad_images_get_empty_predictions_and_others_still_predicted(trained) -> None:
    client, image_host, version = trained
    image_host.files["/data/upload/1/corrupt.png"] = b"\x89PNG\r\n\x1a\nthis is not a png"
    image_host.files["/data/upload/1/huge.png"] = huge_png(10_000, 10_000)  # 100 megapixels
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/ok0.png"}},
        {"id": 2, "data": {"image": "/data/upload/1/missing.png"}},       # 404
        {"id": 3, "data": {"image": "/data/upload/1/corrupt.png"}},       # undecodable
        {"id": 4, "data": {"image": "/data/upload/1/huge.png"}},          # 100 MP
        {"id": 5, "data": {}},                                             # no image
        {"id": 6, "data": {"image": "file:///etc/passwd"}},               # refused scheme
        "not even a task",
        {"id": 8, "data": {"image": "http://[::1/x.png"}},                 # malformed URL
        {"id": 9, "data": {"image": "http://127.0.0.1:99999/x.png"}},     # bad port
        {"id": 10, "data": {"image": "/data/upload/1/ok1.png"}},
    ]
    response = client.post("/predict", json={"tasks": tasks, "project": "1.5",
                                             "label_config": DIGITS_CONFIG})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    assert all(r["model_version"] == version for r in results)
    assert [bool(r["result"]) for r in results] == [True, False, False, False, False, False,
                                                    False, False, False, True]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'mlb_task_errors_total{reason="ImageTooLarge"} 1.0' in metrics
    _alive(client)


def test_huge_png_is_really_100_megapixels() -> None:
    from PIL import Image

    with Image.open(io.BytesIO(huge_png(10_000, 10_000))) as image:
        assert image.size == (10_000, 10_000)
    assert np.prod(image.size) == 100_000_000
