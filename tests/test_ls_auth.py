from __future__ import annotations

import base64
import json
import socket
import time
from types import SimpleNamespace

import pytest
import requests
from flask import Flask, jsonify, request

from ml_backend.core.errors import LabelStudioUnavailable
from ml_backend.labelstudio import auth as ls_auth
from ml_backend.labelstudio.auth import LabelStudioAuth, is_jwt, jwt_expiry, url_origin

from http_fixtures import wsgi_server  # noqa: F401


def make_jwt(payload: dict) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(payload)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "user_id": 1})
LEGACY = "0123456789abcdef0123456789abcdef01234567"


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies: loopback only
    return s


def refresh_app(tokens: list[str], status: int = 200) -> tuple[Flask, list[dict]]:
    """An app whose /api/token/refresh/ hands out ``tokens`` in turn; records request bodies."""
    app = Flask("refresh")
    calls: list[dict] = []

    @app.post("/api/token/refresh/")
    def refresh():  # type: ignore[no-untyped-def]
        calls.append(request.get_json())
        if status != 200:
            return jsonify({"detail": "Token is invalid or expired"}), status
        return jsonify({"access": tokens[min(len(calls), len(tokens)) - 1]})

    return app, calls


def test_is_jwt() -> None:
    assert is_jwt(PAT)
    assert not is_jwt(LEGACY)
    assert not is_jwt("a.b.c")
    assert not is_jwt("not base64!.eyJ4IjoxfQ.sig")
    assert jwt_expiry(make_jwt({"exp": 1234})) == 1234.0
    assert jwt_expiry(make_jwt({"user": 1})) is None


def test_legacy_key_sends_token() -> None:
    auth = LabelStudioAuth("http://ls.example:8080/", LEGACY, session())
    assert not auth.is_personal_access_token
    assert auth.headers() == {"Authorization": f"Token {LEGACY}"}
    assert LEGACY not in repr(auth)


def test_pat_refreshes_and_caches(wsgi_server) -> None:  # noqa: F811
    access1 = make_jwt({"token_type": "access", "exp": int(time.time()) + 300, "jti": "1"})
    access2 = make_jwt({"token_type": "access", "exp": int(time.time()) + 300, "jti": "2"})
    app, calls = refresh_app([access1, access2])
    base = wsgi_server(app)
    auth = LabelStudioAuth(base, PAT, session())
    assert auth.is_personal_access_token
    assert auth.headers() == {"Authorization": f"Bearer {access1}"}
    assert auth.headers() == {"Authorization": f"Bearer {access1}"}
    assert calls == [{"refresh": PAT}]
    auth.invalidate()
    assert auth.headers() == {"Authorization": f"Bearer {access2}"}
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("claims", "cached_for"),
    [({"exp": 1_000_300}, 270.0), ({}, 240.0), ({"exp": 1_000_010}, 5.0)],
)
def test_access_token_expiry(wsgi_server, monkeypatch, claims, cached_for) -> None:  # noqa: F811
    now = [1_000_000.0]
    monkeypatch.setattr(ls_auth, "time", SimpleNamespace(time=lambda: now[0]))
    app, calls = refresh_app([make_jwt({"token_type": "access", **claims})])
    auth = LabelStudioAuth(wsgi_server(app), PAT, session())
    auth.headers()
    now[0] += cached_for - 0.5
    auth.headers()
    assert len(calls) == 1
    now[0] += 1.0
    auth.headers()
    assert len(calls) == 2


def test_refresh_rejected_raises_without_leaking_token(wsgi_server) -> None:  # noqa: F811
    app, _ = refresh_app([], status=401)
    auth = LabelStudioAuth(wsgi_server(app), PAT, session())
    with pytest.raises(LabelStudioUnavailable, match="HTTP 401") as info:
        auth.headers()
    assert PAT not in str(info.value)


def test_refresh_unreachable_raises() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = LabelStudioAuth(f"http://127.0.0.1:{port}", PAT, session(), timeout_s=2)
    with pytest.raises(LabelStudioUnavailable, match="could not reach") as info:
        auth.headers()
    assert PAT not in str(info.value)


def test_refresh_without_access_field(wsgi_server) -> None:  # noqa: F811
    app = Flask("bad")
    app.post("/api/token/refresh/")(lambda: jsonify({"nope": 1}))
    auth = LabelStudioAuth(wsgi_server(app), PAT, session())
    with pytest.raises(LabelStudioUnavailable, match="no access"):
        auth.headers()


def test_is_label_studio_url() -> None:
    auth = LabelStudioAuth("http://LS.example", LEGACY, session())
    assert auth.is_label_studio_url("http://ls.example/data/upload/1/a.png")
    assert auth.is_label_studio_url("http://ls.example:80/x")
    assert not auth.is_label_studio_url("https://ls.example/x")
    assert not auth.is_label_studio_url("http://ls.example:8080/x")
    assert not auth.is_label_studio_url("http://ls.example.evil.com/x")
    assert not auth.is_label_studio_url("http://ls.example@evil.com/x")
    assert not auth.is_label_studio_url("http://ls.example:notaport/x")
    assert not auth.is_label_studio_url("/data/upload/1/a.png")
    secure = LabelStudioAuth("https://ls.example:443/", LEGACY, session())
    assert secure.is_label_studio_url("https://ls.example/x")
    assert url_origin("ftp://ls.example/x") is None


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        LabelStudioAuth("ls.example", LEGACY, session())
    with pytest.raises(ValueError):
        LabelStudioAuth("http://ls.example", "", session())
