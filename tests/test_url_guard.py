"""Server-side request forgery: task image URLs may reach Label Studio's own origin, the
allowlist, and public addresses, nothing else. Cases for non-loopback ranges are decided by
the address check alone (no connection is ever attempted: the test process's socket layer
refuses anything but loopback anyway); live cases use a listener on 127.0.0.1 and assert it
received nothing."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask, redirect

from ml_backend.core.errors import ImageNotAllowed
from ml_backend.core.images import ImageLoader
from ml_backend.core.settings import Settings
from ml_backend.core.url_guard import AddressPolicy, numeric_address, refusal

from hostile_inputs import REFUSED_HOSTS, REFUSED_SCHEMES, Listener
from http_fixtures import wsgi_server  # noqa: F401  (fixture)


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_non_public_addresses_are_refused_in_every_spelling(host: str) -> None:
    policy = AddressPolicy.create(["http://ls.example:8080"], [], resolve=_no_dns)
    with pytest.raises(ImageNotAllowed, match="address"):
        policy.check_url(f"http://{host}/latest/meta-data/")


@pytest.mark.parametrize("url", REFUSED_SCHEMES)
def test_only_http_and_https_with_a_host(url: str) -> None:
    with pytest.raises(ImageNotAllowed):
        AddressPolicy.create([], [], resolve=_no_dns).check_url(url)


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"numeric host {host!r} must not be looked up")


def test_names_are_checked_by_what_they_resolve_to() -> None:
    answers = {"metadata.internal": ["169.254.169.254"], "cdn.example": ["93.184.216.34"],
               "mixed.example": ["93.184.216.34", "10.1.2.3"], "v6.example": ["::1"]}
    policy = AddressPolicy.create([], [], resolve=lambda host, port: answers[host])
    policy.check_url("https://cdn.example/a.png")  # public: fine (nothing is fetched here)
    for host in ("metadata.internal", "mixed.example", "v6.example"):
        with pytest.raises(ImageNotAllowed, match=host):
            policy.check_url(f"http://{host}/a.png")


def test_label_studio_and_the_allowlist_may_be_private() -> None:
    policy = AddressPolicy.create(
        ["http://127.0.0.1:8080"], ["minio.internal", "10.20.0.0/16", "db.local:9000"],
        resolve=lambda host, port: {"minio.internal": ["10.9.9.9"],
                                    "db.local": ["192.168.0.7"]}[host])
    policy.check_url("http://127.0.0.1:8080/data/upload/1/a.png")  # Label Studio itself
    policy.check_url("http://minio.internal/bucket/a.png")
    policy.check_url("http://10.20.3.4/a.png")
    policy.check_url("http://db.local:9000/a.png")
    for url in ("http://127.0.0.1:8081/a.png",  # same host, another port: not Label Studio
                "https://127.0.0.1:8080/a.png",  # another scheme
                "http://10.21.0.1/a.png", "http://db.local:9001/a.png"):
        with pytest.raises(ImageNotAllowed):
            policy.check_url(url)


def test_numeric_forms_and_refusal_reasons() -> None:
    assert numeric_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert numeric_address("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert numeric_address("cafe.example") is None
    assert refusal(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert refusal(ipaddress.ip_address("::ffff:10.0.0.1")) == "private (embedded in " \
        "::ffff:a00:1)"
    assert refusal(ipaddress.ip_address("8.8.8.8")) is None


@pytest.fixture
def listener() -> Iterator[Listener]:
    lis = Listener()
    yield lis
    lis.close()


def _loader(tmp_path: Path, ls_url: str | None, **kw: object) -> ImageLoader:
    settings = Settings(label_studio_url=ls_url, label_studio_api_key="k" if ls_url else None,
                        cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]
    return ImageLoader(settings)


def test_live_loopback_and_redirects_to_it_are_refused(tmp_path, wsgi_server,  # noqa: F811
                                                       listener: Listener) -> None:
    target = f"http://127.0.0.1:{listener.port}/secret.png"
    jumps = {"jump": target, "meta": "http://169.254.169.254/latest/meta-data/",
             "decimal": f"http://2130706433:{listener.port}/x.png",
             "gopher": f"gopher://127.0.0.1:{listener.port}/_x"}
    ls = Flask("ls")

    @ls.get("/data/upload/1/<name>.png")
    def jump(name: str) -> object:
        return redirect(jumps[name], 302)

    loader = _loader(tmp_path, wsgi_server(ls))
    for url in (target, f"http://[::ffff:127.0.0.1]:{listener.port}/x.png",
                f"http://0x7f.1:{listener.port}/x.png", "/data/upload/1/jump.png",
                "/data/upload/1/meta.png", "/data/upload/1/decimal.png",
                "/data/upload/1/gopher.png", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(ImageNotAllowed):
            loader.load(url)
    assert listener.accepted == 0


def test_dns_rebinding_is_stopped_at_connect_time(tmp_path, listener: Listener) -> None:
    """The name resolves to a public address for the check, then to loopback when the
    socket connects: the connection is refused before it is made."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    loader = _loader(tmp_path, None)
    loader._policy = AddressPolicy.create([], [], resolve=lambda host, port: next(answers))
    from ml_backend.core.url_guard import GuardedAdapter

    loader._session.mount("http://", GuardedAdapter(loader._policy))
    with pytest.raises(ImageNotAllowed, match="connect time"):
        loader.load(f"http://rebind.example:{listener.port}/x.png")
    assert listener.accepted == 0


def test_allowlisted_loopback_is_fetched(tmp_path, wsgi_server) -> None:  # noqa: F811
    from conftest import png_bytes

    app = Flask("cdn")

    @app.get("/a.png")
    def picture() -> object:
        return png_bytes(np.zeros((4, 4, 3), np.uint8)), 200, {"Content-Type": "image/png"}

    base = wsgi_server(app)
    with pytest.raises(ImageNotAllowed):
        _loader(tmp_path, None).load(f"{base}/a.png")
    fetched = _loader(tmp_path, None, image_url_allowlist=("127.0.0.0/8",)).load(f"{base}/a.png")
    assert fetched.pixels.shape == (4, 4, 3)
