"""Serve a WSGI app (e.g. a Flask app) on an ephemeral 127.0.0.1 port, for tests.

Usage::

    from http_fixtures import serve_app

    base_url, shutdown = serve_app(app)
    try:
        requests.get(f"{base_url}/path")
    finally:
        shutdown()

or, with the ``wsgi_server`` fixture (import it into the test module), which shuts every
server it started down after the test::

    from http_fixtures import wsgi_server  # noqa: F401

    def test_x(wsgi_server):
        base_url = wsgi_server(app)

Only loopback is ever bound; tests must not reach other hosts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

WSGIApp = Callable[..., Any]


def serve_app(app: WSGIApp) -> tuple[str, Callable[[], None]]:
    """Start ``app`` in a background thread on 127.0.0.1; return ``(base_url, shutdown)``."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="wsgi", daemon=True
    )
    thread.start()
    stopped = False

    def shutdown() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://127.0.0.1:{server.server_port}", shutdown


@pytest.fixture
def wsgi_server() -> Iterator[Callable[[WSGIApp], str]]:
    """A factory ``start(app) -> base_url``; all servers are shut down after the test."""
    shutdowns: list[Callable[[], None]] = []

    def start(app: WSGIApp) -> str:
        base_url, shutdown = serve_app(app)
        shutdowns.append(shutdown)
        return base_url

    yield start
    for shutdown in reversed(shutdowns):
        shutdown()
