"""The Quart application: routing, error shapes, CORS and request logging.

Handlers live in blueprints by audience: ``manage`` (the model store), ``registry`` (pull, push),
``inference`` (generate, chat, embed, ps) and ``openai`` (``/v1``). This module only wires them up.
"""

from __future__ import annotations

import time
import uuid

import structlog
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trillama import __version__
from trillama.api import anthropic, health, inference, manage, metrics, openai, registry
from trillama.api.metrics import Metrics
from trillama.api.context import Services
from trillama.api.cors import CorsPolicy
from trillama.api.hosts import host_allowed, is_loopback_bind
from trillama.api.errors import APIError, openai_error_body
from trillama.api.streaming import json_response
from trillama.logs import get_logger

__all__ = ["create_app"]

log = get_logger("trillama.api")


def _body_left_unread(req: object) -> bool:
    """Did the client announce a body that the handler never read to the end?"""
    headers = req.headers  # type: ignore[attr-defined]
    announced = headers.get("Content-Length", "0").strip() not in ("", "0") or (
        "chunked" in headers.get("Transfer-Encoding", "").lower())
    return announced and not req.body._complete.is_set()  # type: ignore[attr-defined]


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("trillama")
    # Generations and blob uploads can be long and large: no response timeout, no body cap.
    app.config.update(RESPONSE_TIMEOUT=None, BODY_TIMEOUT=None, MAX_CONTENT_LENGTH=None,
                      PROVIDE_AUTOMATIC_OPTIONS=False)
    app.extensions["trillama"] = services
    app.extensions["trillama.metrics"] = recorder = Metrics(services.scheduler)
    cors = CorsPolicy(services.settings.allowed_origins)
    guard_hosts = is_loopback_bind(services.settings.host)

    @app.before_request
    async def _start() -> Response | None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:12])
        request.environ_started = time.perf_counter()  # type: ignore[attr-defined]
        if guard_hosts and not host_allowed(request.headers.get("Host")):
            return Response("", status=403)
        if request.method == "OPTIONS":
            headers = cors.headers_for(request.headers.get("Origin"), preflight=True)
            return Response("", status=204 if headers or not request.headers.get("Origin") else 403,
                            headers=headers)
        return None

    @app.after_request
    async def _finish(response: Response) -> Response:
        if _body_left_unread(request):
            # Answered before the body was read (an early 4xx): a keep-alive connection would be
            # left with unread bytes and the client's next request would hang. Close it instead.
            response.headers["Connection"] = "close"
        for key, value in cors.headers_for(request.headers.get("Origin"), preflight=False).items():
            response.headers[key] = value
        started = getattr(request, "environ_started", None)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if started is not None:
            recorder.observe_request(request.method, route, response.status_code,
                                     time.perf_counter() - started)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1) if started else None,
        )
        return response

    @app.errorhandler(APIError)
    async def _api_error(exc: APIError) -> Response:
        body = openai_error_body(exc) if request.path.startswith("/v1/") else {"error": exc.message}
        return json_response(body, status=exc.status, headers=dict(exc.headers))

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        # Ollama (gin) answers unknown paths and wrong methods in plain text.
        code = exc.code or 500
        text = {404: "404 page not found", 405: "405 method not allowed"}.get(code, exc.description or "")
        return Response(text, status=code, content_type="text/plain")

    @app.route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return Response("Ollama is running", content_type="text/plain; charset=utf-8")

    @app.route("/api/version", methods=["GET", "HEAD"])
    async def version() -> Response:
        return json_response({"version": __version__})

    app.register_blueprint(manage.blueprint)
    app.register_blueprint(registry.blueprint)
    app.register_blueprint(inference.blueprint)
    app.register_blueprint(openai.blueprint)
    app.register_blueprint(anthropic.blueprint)
    app.register_blueprint(metrics.blueprint)
    health.install(app, services.lifecycle)
    return app
