"""``GET /health`` (liveness), ``GET /ready`` (readiness) and the drain gate, for load balancers.

``/health`` answers 200 whenever the process serves HTTP: a liveness probe that fails means the
process is stuck and should be restarted, nothing less. ``/ready`` answers from the
:class:`~trillama.lifecycle.Lifecycle`: 503 with a small JSON reason while preloading, after a
preload failed, or while draining; 200 otherwise. ``GET /`` stays Ollama's ``Ollama is running``.

While draining, a request that would start work is answered 503 with ``Retry-After`` in the
route's own error shape, so a balancer (or a client) retries it on another replica. Requests are
counted in flight by a thin ASGI wrapper rather than in ``after_request``: a streamed response
is still running long after its headers left, and the drain must wait for its last byte.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, current_app, request

from trillama.api.errors import APIError
from trillama.api.streaming import json_response
from trillama.lifecycle import PROBE_PATHS, Lifecycle, is_work_request

__all__ = ["blueprint", "install", "DRAINING_MESSAGE"]

blueprint = Blueprint("health", __name__)

DRAINING_MESSAGE = "server is shutting down, please retry on another server"
#: Seconds a client is asked to wait before retrying a request refused while draining.
RETRY_AFTER = "1"


def _lifecycle() -> Lifecycle:
    return current_app.extensions["trillama.lifecycle"]


@blueprint.route("/health", methods=["GET", "HEAD"])
async def health() -> Response:
    return json_response({"status": "ok"})


@blueprint.route("/ready", methods=["GET", "HEAD"])
async def ready() -> Response:
    status, body = _lifecycle().readiness()
    return json_response(body, status=status)


@blueprint.before_app_request
async def _refuse_while_draining() -> None:
    if _lifecycle().draining and is_work_request(request.method, request.path):
        raise APIError(503, DRAINING_MESSAGE, headers={"Retry-After": RETRY_AFTER})


def install(app: Any, lifecycle: Lifecycle | None) -> Lifecycle:
    """Register the routes and the drain gate on ``app``; count its requests in ``lifecycle``.

    Without a lifecycle (an app built in a test) a fresh one is used: no preload, so ready.
    """
    lifecycle = lifecycle or Lifecycle()
    app.extensions["trillama.lifecycle"] = lifecycle
    app.register_blueprint(blueprint)
    inner = app.asgi_app

    async def counting_asgi_app(scope: dict, receive: Any, send: Any) -> None:
        # Only what was running when the drain began is waited for: later requests are refused
        # at once or are cheap reads, and a steady trickle of them must not hold the drain open.
        if scope.get("type") != "http" or scope.get("path") in PROBE_PATHS or lifecycle.draining:
            await inner(scope, receive, send)
            return
        lifecycle.request_started()
        try:
            await inner(scope, receive, send)
        finally:
            lifecycle.request_finished()

    app.asgi_app = counting_asgi_app
    return lifecycle
