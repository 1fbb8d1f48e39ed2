"""The HTTP layer (Flask): routing, auth, JSON in/out, error → status mapping, metrics.

It knows nothing of torch or models; :class:`ml_backend.http.service.Backend` does the work.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ml_backend.core.errors import BackendError, BadRequest
from ml_backend.core.jsonio import ArrayJSONProvider
from ml_backend.core.settings import WEBHOOK_SECRET_HEADER, Settings
from ml_backend.http.metrics import Metrics
from ml_backend.http.service import Backend, parse_project_id
from ml_backend.jobs.queues import InProcessQueue, JobQueue, JobRecord, RQQueue, publish_storage
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)


def _json_body() -> Any:
    """The request's JSON, or raise a 400 that says what is wrong with it."""
    if not request.get_data(cache=True):
        raise BadRequest("request body is empty; expected JSON")
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise BadRequest("request body is not valid JSON")
    return body


def create_app(settings: Settings | None = None, runtime: Runtime | None = None,
               jobs: JobQueue | None = None, warm_up: bool = True) -> Flask:
    """Build the app. Tests pass their own ``runtime``/``jobs``; production reads settings
    from the environment."""
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    runtime = runtime or Runtime(settings)
    metrics = Metrics()
    if jobs is None:
        if settings.redis_url:
            jobs = RQQueue.from_url(settings.redis_url)
            publish_storage(jobs.redis, settings.paths())
        else:
            def on_done(record: JobRecord) -> None:
                metrics.jobs.labels(name=record.name, status=record.status).inc()
                if record.started_at and record.ended_at:
                    metrics.job_seconds.labels(name=record.name).observe(
                        record.ended_at - record.started_at)

            jobs = InProcessQueue(runtime, on_done=on_done)
    backend = Backend(runtime, jobs, metrics)
    sam_counts = runtime.sam_embeddings.counts
    metrics.watch_caches({
        "classifier_embeddings": lambda: (runtime.embedding_cache.hits,
                                          runtime.embedding_cache.misses),
        "sam_embeddings": lambda: (sam_counts["memory"] + sam_counts["disk"]
                                   + sam_counts["waited"], sam_counts["computed"]),
    })
    # The SDK's config parser is slow to import; do it now so the first /setup stays fast.
    import label_studio_sdk.label_interface  # noqa: F401

    if warm_up:
        threading.Thread(target=runtime.warm_up, name="warm-up", daemon=True).start()

    app = Flask("ml_backend")
    app.json = ArrayJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["ml_backend"] = backend

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
        return jsonify(backend.health())

    @app.post("/setup")
    def setup() -> Response:
        return jsonify(backend.setup(_json_body()))

    @app.post("/predict")
    def predict() -> Response:
        return jsonify(backend.predict(_json_body()))

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(backend.webhook(_json_body()))

    @app.post("/train")
    def train() -> Response:
        return jsonify(backend.train(_json_body()))

    @app.get("/versions")
    def versions() -> Response:
        return jsonify(backend.versions(parse_project_id(request.args.get("project"))))

    @app.get("/ranking/<int:project>")
    def ranking(project: int) -> Response:
        return jsonify(backend.ranking(project, request.args.get("limit", 50, type=int)))

    @app.post("/ranking/<int:project>")
    def rerank(project: int) -> Response:
        return jsonify(backend.rerank(project))

    @app.post("/preannotate/<int:project>")
    def preannotate(project: int) -> Response:
        return jsonify(backend.preannotate(project))

    @app.get("/preannotate/<int:project>")
    def preannotation(project: int) -> Response:
        return jsonify(backend.preannotation(project))

    @app.get("/jobs")
    def job_list() -> Response:
        return jsonify(jobs=backend.jobs.recent())

    @app.get("/metrics")
    def metrics_route() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    return app
