"""Shared fixtures: an image host on loopback that serves task images the way Label Studio
does (``/data/upload/…``, ``/data/local-files/?d=…``), digit images, a backend app on a
tiny random-init ResNet, and a bounded wait for another thread's progress."""

from __future__ import annotations

import importlib.util
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from flask import Flask, Response, abort, request
from PIL import Image

from ml_backend.core.settings import Settings

import netguard
from app_fixture import AppParts, backend_app
from clipseg_fixture import clipseg_app, tiny_clipseg  # noqa: F401  (fixtures for every module)
from http_fixtures import serve_app
from sam_fixture import (  # noqa: F401
    any_sam_app,
    docs,
    sam2_1_app,
    sam_app,
    tiny_sam,
    tiny_sam2_1,
)


def pytest_configure(config: pytest.Config) -> None:
    netguard.install()


FIXTURES = Path(__file__).parent / "fixtures"
CAPTURES = FIXTURES / "captures"
DIGITS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/><Choice value="3"/>
    <Choice value="4"/><Choice value="5"/><Choice value="6"/><Choice value="7"/>
    <Choice value="8"/><Choice value="9"/>
  </Choices>
</View>"""


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout_s``.

    For waiting on a worker thread or process. A bare ``while not condition(): pass`` hangs
    the run forever when the condition never comes, and spins a core that the awaited worker
    needs (a 2-core CI runner has few to spare); the short sleep gives it up.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s} s for {what}, in vain", pytrace=False)
        time.sleep(0.005)


def load_capture(name: str) -> dict[str, Any]:
    return json.loads((CAPTURES / name).read_text())


def hosted_digit_tasks(host: ImageHost, count: int, project: int = 7) -> list[dict[str, Any]]:
    """``count`` digit images served by ``host`` under ``/data/upload/<project>/``, as tasks
    with their true label as a choices annotation (export format)."""
    from fakes import choice_task

    pngs, labels = digit_images(count)
    tasks = []
    for i, (png, label) in enumerate(zip(pngs, labels, strict=True)):
        path = f"/data/upload/{project}/d{i}.png"
        host.files[path] = png
        tasks.append(choice_task(i + 1, path, "digit", [str(label)]))
    return tasks


def load_script(path: Path) -> ModuleType:
    """A script under ``scripts/`` (not a package) imported from its file, for its functions."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images(count: int, size: int = 32) -> tuple[list[bytes], np.ndarray]:
    """``count`` load_digits images as grey PNG bytes (nearest-neighbour upscaled) + labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for image in digits.images[:count]:
        grey = (image / 16.0 * 255).astype(np.uint8)
        big = np.kron(grey, np.ones((size // 8, size // 8), dtype=np.uint8))
        out.append(png_bytes(big))
    return out, digits.target[:count]


class ImageHost:
    """A loopback server with Label Studio's image URL shapes. ``files`` maps a path such as
    ``/data/upload/1/a.png`` or ``/data/local-files/?d=set1/b.png`` to bytes; it counts hits
    and the Authorization headers it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.auth_headers: list[str | None] = []
        app = Flask("image-host")

        @app.route("/data/<path:rest>")
        def data(rest: str) -> Response:
            key = f"/data/{rest}"
            if request.query_string:
                key += "?" + request.query_string.decode()
            self.hits.append(key)
            self.auth_headers.append(request.headers.get("Authorization"))
            if key not in self.files:
                abort(404)
            return Response(self.files[key], mimetype="image/png")

        self.url, self._shutdown = serve_app(app)

    def close(self) -> None:
        self._shutdown()


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_dir": tmp_path / "models", "cache_dir": tmp_path / "cache",
            "classifier_image_size": 32, "label_studio_api_key": "test-legacy-key",
            "finetune_min_labels": 10_000, "rerank_min_interval_s": 0.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def backend(make_settings: Callable[..., Settings], image_host: ImageHost
            ) -> Iterator[AppParts]:
    """``(flask test client, runtime, job queue)`` on the tiny model, images from the host."""
    with backend_app(make_settings(label_studio_url=image_host.url)) as parts:
        yield parts
