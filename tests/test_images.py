from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests
from flask import Flask, Response, redirect, request
from PIL import Image

from ml_backend.core import images
from ml_backend.core.errors import ImageError, ImageNotAllowed, ImageTooLarge
from ml_backend.core.images import ImageLoader, LoadedImage, decode_image
from ml_backend.core.settings import Settings

from hostile_inputs import BOMB_MEMORY_LIMIT_BYTES, measure_local_load, write_huge_png
from http_fixtures import wsgi_server  # noqa: F401

LEGACY = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(payload: dict) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(payload)}.c2ln"


def png_bytes(
    mode: str = "RGB", size: tuple[int, int] = (7, 5), color: object = (10, 20, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


IMG = png_bytes()
OTHER_IMG = png_bytes(color=(200, 100, 50))


@pytest.fixture(scope="session")
def huge_pngs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("huge")
    paths = {"100mp": root / "100mp.png", "200mp": root / "200mp.png"}
    write_huge_png(paths["100mp"], 10_000, 10_000)
    write_huge_png(paths["200mp"], 20_000, 10_000)
    return paths


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies: loopback only
    return s


class FakeLS:
    """A Label Studio stand-in: serves images, records (path, Authorization) per request."""

    def __init__(self, token: str | None = LEGACY) -> None:
        self.token = token
        self.seen: list[tuple[str, str | None]] = []
        self.files: dict[str, bytes] = {"/data/upload/1/a.png": IMG}
        self.app = Flask("fake-ls")
        self.app.before_request(self._record)
        self.app.get("/data/upload/<path:name>")(self._upload)
        self.app.get("/data/local-files/")(self._local)

    def _record(self) -> None:
        self.seen.append((request.full_path.rstrip("?"), request.headers.get("Authorization")))

    def _authorized(self) -> bool:
        return request.headers.get("Authorization") == f"Token {self.token}"

    def _upload(self, name: str) -> Response:
        if not self._authorized():
            return Response("unauthorized", 401)
        data = self.files.get(request.path)
        return Response(data, mimetype="image/png") if data else Response("missing", 404)

    def _local(self) -> Response:
        if not self._authorized():
            return Response("unauthorized", 401)
        return Response(IMG if request.args.get("d") == "sub/remote.png" else b"", 200)


def other_origin_app(seen: list[tuple[str, str | None]]) -> Flask:
    app = Flask("other")

    @app.get("/<path:name>")
    def any_file(name: str) -> Response:
        seen.append((request.path, request.headers.get("Authorization")))
        return Response(OTHER_IMG, mimetype="image/png")

    return app


def make_loader(
    tmp_path: Path, ls_url: str | None = None, key: str | None = LEGACY, **kw
) -> ImageLoader:
    # The stand-in servers here are loopback origins other than Label Studio's: allowlist
    # loopback (the address guard itself is tested in test_url_guard.py).
    kw.setdefault("image_url_allowlist", ("127.0.0.1",))
    settings = Settings(
        label_studio_url=ls_url,
        label_studio_api_key=key if ls_url else None,
        cache_dir=tmp_path / "cache",
        **kw,
    )
    return ImageLoader(settings, session=session())


def test_relative_upload_url_with_legacy_token(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls = FakeLS()
    loader = make_loader(tmp_path, wsgi_server(ls.app))
    loaded = loader.load("/data/upload/1/a.png")
    assert isinstance(loaded, LoadedImage)
    assert loaded.pixels.shape == (5, 7, 3) and loaded.pixels.dtype == np.uint8
    assert tuple(loaded.pixels[0, 0]) == (10, 20, 30)
    assert loaded.sha256 == hashlib.sha256(IMG).hexdigest()
    assert loaded.source == "/data/upload/1/a.png"
    assert ls.seen == [("/data/upload/1/a.png", f"Token {LEGACY}")]


def test_pat_flow_refreshes_after_401(tmp_path, wsgi_server) -> None:  # noqa: F811
    pat = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400})
    access = [make_jwt({"exp": int(time.time()) + 300, "jti": str(i)}) for i in range(3)]
    refreshes: list[dict] = []
    images_seen: list[str | None] = []
    app = Flask("ls-pat")

    @app.post("/api/token/refresh/")
    def refresh() -> dict:
        refreshes.append(request.get_json())
        return {"access": access[len(refreshes) - 1]}

    @app.get("/data/upload/1/a.png")
    def image() -> Response:
        images_seen.append(request.headers.get("Authorization"))
        if len(images_seen) == 1:  # the first access token is rejected once
            return Response("token expired", 401)
        ok = request.headers.get("Authorization") == f"Bearer {access[len(refreshes) - 1]}"
        return Response(IMG, mimetype="image/png") if ok else Response("no", 401)

    loader = make_loader(tmp_path, wsgi_server(app), key=pat)
    assert loader.load("/data/upload/1/a.png").pixels.shape == (5, 7, 3)
    assert refreshes == [{"refresh": pat}, {"refresh": pat}]
    assert images_seen == [f"Bearer {access[0]}", f"Bearer {access[1]}"]


def test_persistent_401_is_retried_once(tmp_path, wsgi_server, caplog) -> None:  # noqa: F811
    ls = FakeLS(token="something-else")
    loader = make_loader(tmp_path, wsgi_server(ls.app))
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageError, match="401") as info:
        loader.load("/data/upload/1/a.png")
    assert LEGACY not in str(info.value)
    assert LEGACY not in caplog.text  # the token is never logged, not even at DEBUG
    assert len(ls.seen) == 2


def test_no_credentials_to_other_origin(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls, seen = FakeLS(), []
    loader = make_loader(tmp_path, wsgi_server(ls.app))
    other = wsgi_server(other_origin_app(seen))  # same host, other port = other origin
    assert loader.load(f"{other}/pic.png").pixels[0, 0].tolist() == [200, 100, 50]
    assert seen == [("/pic.png", None)]
    assert ls.seen == []


def test_redirect_to_other_origin_drops_auth(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls, seen = FakeLS(), []
    other = wsgi_server(other_origin_app(seen))
    ls.app.get("/data/upload/redirect.png")(lambda: redirect(f"{other}/moved.png", 302))
    base = wsgi_server(ls.app)
    loader = make_loader(tmp_path, base)
    assert loader.load("/data/upload/redirect.png").pixels[0, 0].tolist() == [200, 100, 50]
    assert ls.seen == [("/data/upload/redirect.png", f"Token {LEGACY}")]
    assert seen == [("/moved.png", None)]


def test_redirect_back_to_ls_sends_no_auth(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls = FakeLS()
    base = wsgi_server(ls.app)
    bouncer = Flask("bouncer")
    bouncer.get("/x.png")(lambda: redirect(f"{base}/data/upload/1/a.png", 302))
    loader = make_loader(tmp_path, base)
    with pytest.raises(ImageError, match="401"):
        loader.load(f"{wsgi_server(bouncer)}/x.png")
    assert ls.seen == [("/data/upload/1/a.png", None)]


def test_too_many_redirects(tmp_path, wsgi_server) -> None:  # noqa: F811
    app = Flask("loop")
    app.get("/loop.png")(lambda: redirect("/loop.png", 302))
    with pytest.raises(ImageError, match="too many redirects"):
        make_loader(tmp_path).load(f"{wsgi_server(app)}/loop.png")


def test_not_found_and_corrupt(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls = FakeLS()
    ls.files["/data/upload/1/corrupt.png"] = b"\x89PNG\r\n\x1a\nthis is not really a png"
    loader = make_loader(tmp_path, wsgi_server(ls.app))
    with pytest.raises(ImageError, match=r"/data/upload/1/missing\.png.*404"):
        loader.load("/data/upload/1/missing.png")
    with pytest.raises(ImageError, match="could not decode") as info:
        loader.load("/data/upload/1/corrupt.png")
    assert not isinstance(info.value, ImageTooLarge)


def test_byte_limit_content_length_and_stream(tmp_path, wsgi_server) -> None:  # noqa: F811
    app = Flask("big")
    chunks_sent = [0]
    app.get("/sized.png")(lambda: Response(b"x" * 5000, mimetype="image/png"))

    @app.get("/stream.png")
    def stream() -> Response:
        def body():  # type: ignore[no-untyped-def]
            for _ in range(3200):  # 200 MiB if nobody stops reading
                chunks_sent[0] += 1
                yield b"x" * 65536

        return Response(body(), mimetype="image/png")

    base = wsgi_server(app)
    loader = make_loader(tmp_path, max_image_bytes=1000)
    with pytest.raises(ImageTooLarge, match="MAX_IMAGE_BYTES"):
        loader.load(f"{base}/sized.png")
    loader = make_loader(tmp_path, max_image_bytes=100_000)
    with pytest.raises(ImageTooLarge):
        loader.load(f"{base}/stream.png")
    time.sleep(0.2)
    assert chunks_sent[0] < 1000


def test_timeout(tmp_path, wsgi_server) -> None:  # noqa: F811
    app = Flask("slow")

    @app.get("/slow.png")
    def slow() -> Response:
        time.sleep(1.5)
        return Response(IMG)

    with pytest.raises(ImageError, match=r"timed out|failed"):
        make_loader(tmp_path, fetch_timeout_s=0.3).load(f"{wsgi_server(app)}/slow.png")


linux_only = pytest.mark.skipif(sys.platform != "linux",
                                reason="measures memory through /proc/self/status")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_100_megapixel_png_refused_without_decoding(huge_pngs) -> None:
    data = huge_pngs["100mp"].read_bytes()
    assert len(data) < 1_000_000
    with pytest.raises(ImageTooLarge, match="10000x10000"):
        decode_image(data, max_pixels=40_000_000, source="big.png")


@linux_only
def test_100_megapixel_png_costs_the_loader_no_memory(tmp_path, huge_pngs) -> None:
    # Measured in a fresh process: this one's peak memory has been set by earlier tests.
    load = measure_local_load(huge_pngs["100mp"], tmp_path / "cache", max_pixels=40_000_000)
    assert load.error is not None and "10000x10000" in load.error
    assert load.peak_growth_bytes < BOMB_MEMORY_LIMIT_BYTES, load


@linux_only
def test_the_load_measurement_sees_a_decode(tmp_path) -> None:
    # The bound above means something only if a decode would show: a 10 MP image, a tenth
    # of the bomb, must already measure over it.
    path = tmp_path / "docs" / "10mp.png"
    path.parent.mkdir()
    write_huge_png(path, 5_000, 2_000)
    load = measure_local_load(path, tmp_path / "cache", max_pixels=40_000_000)
    assert load.error is None
    assert load.peak_growth_bytes > BOMB_MEMORY_LIMIT_BYTES, load


def test_decompression_bomb_is_too_large(huge_pngs) -> None:
    # Over Pillow's own hard limit even when our limit is generous.
    with pytest.raises(ImageTooLarge):
        decode_image(huge_pngs["200mp"].read_bytes(), max_pixels=10**12)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("img", "fmt", "expected"),
    [
        (Image.new("RGBA", (4, 3), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # alpha on white
        (Image.new("RGBA", (4, 3), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (Image.new("LA", (4, 3), (50, 255)), "PNG", (50, 50, 50)),
        (Image.new("L", (4, 3), 77), "PNG", (77, 77, 77)),
        (Image.new("1", (4, 3), 1), "PNG", (255, 255, 255)),
        (Image.new("RGB", (4, 3), (1, 2, 3)).quantize(4), "PNG", (1, 2, 3)),
        (Image.new("RGB", (4, 3), (1, 2, 3)), "JPEG", None),
        (Image.new("CMYK", (4, 3), (0, 0, 0, 0)), "JPEG", None),
        (Image.new("I;16", (4, 3), 65535), "PNG", (255, 255, 255)),
        (Image.new("I;16", (4, 3), 512), "PNG", (2, 2, 2)),
        (Image.new("I", (4, 3), 40000), "TIFF", (156, 156, 156)),
        (Image.new("F", (4, 3), 0.5), "TIFF", (0, 0, 0)),
    ],
)
def test_modes_decode_to_rgb_uint8(img: Image.Image, fmt: str, expected) -> None:
    pixels = decode_image(_encode(img, fmt), max_pixels=1000)
    assert pixels.shape == (3, 4, 3) and pixels.dtype == np.uint8
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    if expected is not None:
        assert tuple(pixels[1, 2]) == expected


def test_palette_with_transparency_composites_on_white() -> None:
    img = Image.new("P", (4, 3), 0)
    img.putpalette([0, 0, 0, 9, 9, 9])
    img.info["transparency"] = 0
    assert tuple(decode_image(_encode(img), max_pixels=1000)[0, 0]) == (255, 255, 255)


def test_local_files_direct_read(tmp_path) -> None:
    root = tmp_path / "docroot"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a b.png").write_bytes(IMG)
    loader = make_loader(tmp_path, local_files_document_root=root)  # no LS, no network
    loaded = loader.load("/data/local-files/?d=sub%2Fa%20b.png")
    assert loaded.pixels.shape == (5, 7, 3)
    assert loaded.sha256 == hashlib.sha256(IMG).hexdigest()
    assert not (tmp_path / "cache" / "images").exists()  # local reads are not cached


def test_local_files_traversal_refused(tmp_path) -> None:
    root = tmp_path / "docroot"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(IMG)
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    loader = make_loader(tmp_path, local_files_document_root=root)
    for d in ("../../etc/passwd", "/etc/passwd", "..%2Fsecret.png", "link.png"):
        with pytest.raises(ImageNotAllowed, match="points outside"):
            loader.load(f"/data/local-files/?d={d}")


def test_upload_dir_direct_read_and_traversal(tmp_path) -> None:
    uploads = tmp_path / "media" / "upload"
    (uploads / "3").mkdir(parents=True)
    (uploads / "3" / "x y.png").write_bytes(IMG)
    (tmp_path / "secret.png").write_bytes(IMG)
    loader = make_loader(tmp_path, upload_dir=uploads)  # no LS, no network
    assert loader.load("/data/upload/3/x%20y.png").sha256 == hashlib.sha256(IMG).hexdigest()
    for path in ("../../secret.png", "3/..%2F..%2F..%2Fsecret.png"):
        with pytest.raises(ImageNotAllowed, match="points outside"):
            loader.load(f"/data/upload/{path}")


def test_local_files_falls_back_to_http(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls = FakeLS()
    root = tmp_path / "docroot"
    root.mkdir()
    loader = make_loader(tmp_path, wsgi_server(ls.app), local_files_document_root=root)
    assert loader.load("/data/local-files/?d=sub/remote.png").pixels.shape == (5, 7, 3)
    assert ls.seen == [("/data/local-files/?d=sub/remote.png", f"Token {LEGACY}")]
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        make_loader(tmp_path, local_files_document_root=root).load("/data/local-files/?d=x.png")


def test_cache_hit_does_no_network_io(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls = FakeLS()
    base = wsgi_server(ls.app)
    first = make_loader(tmp_path, base).load("/data/upload/1/a.png")
    again = make_loader(tmp_path, base).load("/data/upload/1/a.png")  # new loader, same dir
    assert len(ls.seen) == 1
    assert again.sha256 == first.sha256
    assert np.array_equal(again.pixels, first.pixels)
    assert len(list((tmp_path / "cache" / "images").glob("*.img"))) == 1


def test_cache_is_bounded(tmp_path, wsgi_server, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(images, "_SWEEP_EVERY_WRITES", 1)
    ls = FakeLS()
    for i in range(4):
        ls.files[f"/data/upload/1/{i}.png"] = png_bytes(color=(i, i, i))
    size = len(ls.files["/data/upload/1/0.png"])
    loader = make_loader(tmp_path, wsgi_server(ls.app), image_cache_bytes=int(size * 2.5))
    for i in range(4):
        loader.load(f"/data/upload/1/{i}.png")
        time.sleep(0.01)
    cached = list((tmp_path / "cache" / "images").glob("*.img"))
    assert len(cached) == 2
    loader.load("/data/upload/1/3.png")  # most recent: still cached
    assert len(ls.seen) == 4


def test_unsupported_and_unconfigured(tmp_path) -> None:
    loader = make_loader(tmp_path)
    for url in ("file:///etc/passwd", "ftp://example.com/a.png", "data/upload/1/a.png"):
        with pytest.raises(ImageNotAllowed):
            loader.load(url)
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        loader.load("/data/upload/1/a.png")
    with pytest.raises(ImageError, match="empty"):
        loader.load("  ")


def test_cloud_uri_goes_through_presign(tmp_path, wsgi_server) -> None:  # noqa: F811
    ls, seen, fileuris = FakeLS(), [], []
    other = wsgi_server(other_origin_app(seen))

    @ls.app.get("/tasks/<int:task_id>/presign/")
    def presign(task_id: int) -> Response:
        fileuris.append(base64.urlsafe_b64decode(request.args["fileuri"]).decode())
        return redirect(f"{other}/bucket/key.png?X-Amz-Signature=abc", 303)

    loader = make_loader(tmp_path, wsgi_server(ls.app))
    uri = "s3://bucket/dir/key with space.png"
    assert loader.load(uri, task_id=7).pixels[0, 0].tolist() == [200, 100, 50]
    assert fileuris == [uri]
    assert ls.seen[0][0].startswith("/tasks/7/presign/?fileuri=")
    assert ls.seen[0][1] == f"Token {LEGACY}"
    assert seen == [("/bucket/key.png", None)]
    with pytest.raises(ImageError, match="task id"):
        loader.load("gs://bucket/key.png")


def test_settings_limits_are_used(tmp_path) -> None:
    settings = replace(Settings(), cache_dir=tmp_path, max_image_pixels=10)
    with pytest.raises(ImageTooLarge):
        decode_image(IMG, settings.max_image_pixels)


def test_local_files_invalid_path(tmp_path) -> None:
    root = tmp_path / "docroot"
    root.mkdir()
    (root / "loop.png").symlink_to(root / "loop.png")
    loader = make_loader(tmp_path, local_files_document_root=root)
    for d in ("a%00b.png", "loop.png"):
        with pytest.raises(ImageError):
            loader.load(f"/data/local-files/?d={d}")
