"""HTTP layer behaviour: basic auth on every route, metrics, health without model loads."""

from __future__ import annotations

import base64

import pytest

from ml_backend.app import create_app

ROUTES = [("GET", "/health"), ("GET", "/"), ("POST", "/setup"), ("POST", "/predict"),
          ("POST", "/webhook"), ("POST", "/train"), ("GET", "/versions"), ("GET", "/metrics"),
          ("GET", "/jobs")]


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("method, path", ROUTES)
def test_basic_auth_guards_every_route(make_settings, method: str, path: str) -> None:
    app = create_app(make_settings(basic_auth_user="ls", basic_auth_pass="s3cret"),
                     warm_up=False)
    client = app.test_client()
    for headers in ({}, _basic("ls", "wrong"), _basic("other", "s3cret")):
        response = client.open(path, method=method, headers=headers, json={})
        assert response.status_code == 401, (path, headers)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    ok = client.open(path, method=method, headers=_basic("ls", "s3cret"), json={})
    assert ok.status_code != 401


def test_health_does_not_load_models_and_metrics_count_requests(make_settings) -> None:
    app = create_app(make_settings(), warm_up=False)
    client = app.test_client()
    health = client.get("/health").get_json()
    assert health["status"] == "UP"
    # Nothing loaded inline, and with no warm-up nothing is loading either.
    assert health["models"]["classifier"]["status"] == "not-loaded"
    client.post("/setup", json={"project": "3.1", "schema": "<View/>"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mlb_http_requests_total{endpoint="/health",status="200"} 1.0' in text
    assert 'mlb_http_requests_total{endpoint="/setup",status="422"} 1.0' in text
    assert "mlb_http_request_seconds_bucket" in text


def test_health_reports_degraded_random_init(make_settings) -> None:
    from ml_backend.runtime import Runtime

    runtime = Runtime(make_settings())
    runtime.warm_up()
    health = create_app(runtime=runtime, warm_up=False).test_client().get("/health").get_json()
    classifier = health["models"]["classifier"]
    assert classifier["status"] == "degraded" and classifier["weights"] == "random-init"
    assert "RESNET_CHECKPOINT" in classifier["warning"]


def test_missing_configured_checkpoint_is_a_clear_error(make_settings, tmp_path) -> None:
    from ml_backend.runtime import Runtime

    runtime = Runtime(make_settings(resnet_checkpoint=tmp_path / "nope.pt"))
    runtime.warm_up()
    status = runtime.classifier.status()
    assert status["status"] == "error" and "nope.pt does not exist" in status["error"]


def test_webhook_secret_is_required_when_set(make_settings) -> None:
    app = create_app(make_settings(webhook_secret="s3cret-hook"), warm_up=False)
    client = app.test_client()
    body = {"action": "SOMETHING_ELSE"}
    refused = client.post("/webhook", json=body)
    assert refused.status_code == 401 and "X-Webhook-Secret" in refused.get_json()["error"]
    assert client.post("/webhook", json=body,
                       headers={"X-Webhook-Secret": "wrong"}).status_code == 401
    ok = client.post("/webhook", json=body, headers={"X-Webhook-Secret": "s3cret-hook"})
    assert ok.status_code == 200 and ok.get_json()["status"] == "ignored"
    assert client.get("/health").status_code == 200  # other routes are not affected
