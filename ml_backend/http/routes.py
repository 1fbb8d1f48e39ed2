"""The HTTP layer (Flask): routing, auth, JSON in/out, error → status mapping, metrics.

It knows nothing of torch or models: it serves any :class:`EndpointService`, which
:mod:`ml_backend.app` wires to :class:`ml_backend.service.Backend`. A test walks the import
graph to keep it that way.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Protocol

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ml_backend.core.errors import BackendError, BadRequest
from ml_backend.core.jsonio import ArrayJSONProvider
from ml_backend.core.metrics import Metrics
from ml_backend.core.settings import WEBHOOK_SECRET_HEADER, Settings

log = logging.getLogger(__name__)


def _json_body() -> Any:
    """The request's JSON, or raise a 400 that says what is wrong with it."""
    if not request.get_data(cache=True):
        raise BadRequest("request body is empty; expected JSON")
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise BadRequest("request body is not valid JSON")
    return body


class EndpointService(Protocol):
    """What the routes call: each method takes a parsed JSON body (or path/query values) and
    returns a JSON-able dict, or raises an :mod:`ml_backend.core.errors` category.
    :class:`ml_backend.service.Backend` implements it."""

    def health(self) -> dict[str, Any]: ...
    def setup(self, body: Any) -> dict[str, Any]: ...
    def predict(self, body: Any) -> dict[str, Any]: ...
    def webhook(self, body: Any) -> dict[str, Any]: ...
    def train(self, body: Any) -> dict[str, Any]: ...
    def versions(self, project: Any) -> dict[str, Any]: ...
    def ranking(self, project: int, limit: int) -> dict[str, Any]: ...
    def rerank(self, project: int) -> dict[str, Any]: ...
    def preannotate(self, project: int) -> dict[str, Any]: ...
    def preannotation(self, project: int) -> dict[str, Any]: ...
    def report(self, project: int) -> dict[str, Any]: ...
    def export(self, project: int, body: Any) -> dict[str, Any]: ...
    def similar(self, project: int, task: int, k: int) -> dict[str, Any]: ...
    def recent_jobs(self) -> list[dict[str, Any]]: ...


def build_flask_app(service: EndpointService, settings: Settings, metrics: Metrics) -> Flask:
    """The Flask app serving ``service``: routes, basic auth and the webhook secret from
    ``settings``, request metrics into ``metrics``, errors mapped to status codes."""
    app = Flask("ml_backend")
    app.json = ArrayJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    @app.before_request
    def _start() -> Response | None:
        g.started = time.perf_counter()
        if settings.basic_auth_user and settings.basic_auth_pass:
            auth = request.authorization
            ok = (auth is not None and auth.type == "basic"
                  and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
                  and hmac.compare_digest(auth.password or "", settings.basic_auth_pass))
            if not ok:
                response = jsonify(error="authentication required")
                response.status_code = 401
                response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
                return response
        if settings.webhook_secret and request.path == "/webhook":
            given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
            if not hmac.compare_digest(given.encode(), settings.webhook_secret.encode()):
                response = jsonify(error=f"webhook needs the {WEBHOOK_SECRET_HEADER} header "
                                         "(WEBHOOK_SECRET)")
                response.status_code = 401
                return response
        return None

    @app.after_request
    def _record(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - g.started)
        return response

    @app.errorhandler(BackendError)
    def _backend_error(exc: BackendError) -> tuple[Response, int]:
        if exc.http_status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
        return jsonify(error=str(exc), kind=type(exc).__name__), exc.http_status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description, kind=type(exc).__name__), exc.code or 500

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("%s %s: unexpected error", request.method, request.path)
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(service.health())

    @app.post("/setup")
    def setup() -> Response:
        return jsonify(service.setup(_json_body()))

    @app.post("/predict")
    def predict() -> Response:
        return jsonify(service.predict(_json_body()))

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(service.webhook(_json_body()))

    @app.post("/train")
    def train() -> Response:
        return jsonify(service.train(_json_body()))

    @app.get("/versions")
    def versions() -> Response:
        return jsonify(service.versions(request.args.get("project")))

    @app.get("/ranking/<int:project>")
    def ranking(project: int) -> Response:
        return jsonify(service.ranking(project, request.args.get("limit", 50, type=int)))

    @app.post("/ranking/<int:project>")
    def rerank(project: int) -> Response:
        return jsonify(service.rerank(project))

    @app.post("/preannotate/<int:project>")
    def preannotate(project: int) -> Response:
        return jsonify(service.preannotate(project))

    @app.get("/preannotate/<int:project>")
    def preannotation(project: int) -> Response:
        return jsonify(service.preannotation(project))

    @app.get("/report/<int:project>")
    def report(project: int) -> Response:
        return jsonify(service.report(project))

    @app.post("/export/<int:project>")
    def export(project: int) -> Response:
        return jsonify(service.export(project, _json_body()))

    @app.get("/similar/<int:project>/<int:task>")
    def similar(project: int, task: int) -> Response:
        return jsonify(service.similar(project, task, request.args.get("k", 10, type=int)))

    @app.get("/jobs")
    def job_list() -> Response:
        return jsonify(jobs=service.recent_jobs())

    @app.get("/metrics")
    def metrics_route() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    return app
