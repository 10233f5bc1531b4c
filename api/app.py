"""The Quart application: routing, error shapes, CORS and request logging.

Handlers live in blueprints by protocol: the native ones in ``api/ollama`` (``manage``: the model
store; ``registry``: pull, push; ``inference``: generate, chat, embed, ps), ``openai`` (``/v1``) and
``anthropic`` (``/v1/messages``), beside ``health`` and ``metrics``. This module only wires them up
and renders every error (the one handler; shapes and statuses by path prefix, ``api/errors.py``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import structlog
from quart import Response, request
from quart_trio.wrappers.request import TrioRequest
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trillama import OLLAMA_API_VERSION, __version__
from trillama.api import access, anthropic, auth, health, metrics, openai
from trillama.api.ollama import inference, manage, registry
from trillama.api.metrics import Metrics
from trillama.api.context import Services
from trillama.api.cors import CorsPolicy, refuse_cross_site
from trillama.api.hosts import host_allowed, is_loopback_bind
from trillama.api.errors import APIError, error_body, error_status, has_protocol_shape
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


#: Paths whose bodies stream to disk (blob uploads): exempt from the body size cap.
_STREAMED_BODY_PREFIXES = ("/api/blobs/",)


class _Request(TrioRequest):
    """Quart's request, with the body cap lifted for uploads that stream to disk.

    The cap must be decided when the body object is made, before any byte arrives: Quart's body
    drops data once it has decided a body is too large.
    """

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        if path.startswith(_STREAMED_BODY_PREFIXES):
            kwargs["max_content_length"] = None
        super().__init__(method, scheme, path, *args, **kwargs)


class _LoggedBody:
    """Wraps a response body so that ``on_close`` runs once the body has been sent (or abandoned)."""

    def __init__(self, inner: Any, on_close: Callable[[BaseException | None], None]) -> None:
        self._inner = inner
        self._on_close = on_close
        self._entered: Any = None

    async def __aenter__(self) -> "_LoggedBody":
        self._entered = await self._inner.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self._inner.__aexit__(exc_type, exc, tb)
        finally:
            self._on_close(exc)

    def __aiter__(self) -> Any:
        return self._entered.__aiter__()


def _unwrap_api_error(exc: BaseException) -> APIError | None:
    """The one :class:`APIError` inside (nested) exception groups, if that is all there is."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, APIError) else None


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("trillama")
    app.request_class = _Request
    # Generations and blob uploads can be long: no response or total body timeout (stalled reads
    # are hypercorn's job, trillama/http.py). JSON bodies are capped; blob uploads are exempt.
    app.config.update(RESPONSE_TIMEOUT=None, BODY_TIMEOUT=None,
                      MAX_CONTENT_LENGTH=services.settings.max_body_size or None,
                      PROVIDE_AUTOMATIC_OPTIONS=False)
    app.extensions["trillama"] = services
    app.extensions["trillama.metrics"] = recorder = Metrics(services.scheduler)
    cors = CorsPolicy(services.settings.allowed_origins)
    guard_hosts = is_loopback_bind(services.settings.host)

    @app.before_request
    async def _start() -> Response | None:
        request_id = uuid.uuid4().hex[:12]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        request.environ_started = time.perf_counter()  # type: ignore[attr-defined]
        request.access = access.begin(access.AccessRecord(  # type: ignore[attr-defined]
            request_id=request_id, method=request.method, path=request.path,
            client=request.remote_addr, user_agent=request.headers.get("User-Agent"),
            route=request.url_rule.rule if request.url_rule is not None else "unmatched"))
        request.scope[access.SCOPE_KEY] = request.access  # type: ignore[attr-defined]
        if guard_hosts and not host_allowed(request.headers.get("Host")):
            return Response("", status=403)
        refused = refuse_cross_site(cors, request.path, request.headers)
        if refused is not None:
            return refused
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
        record: access.AccessRecord | None = getattr(request, "access", None)
        if record is not None:
            response.headers["X-Request-Id"] = record.request_id
            record.route, record.status = route, response.status_code

            def closed(exc: BaseException | None) -> None:
                if exc is not None and record.error is None:
                    record.error = "client disconnected" if not isinstance(exc, Exception) else repr(exc)
                record.write()

            response.response = _LoggedBody(response.response, closed)
        return response

    @app.errorhandler(APIError)
    async def _api_error(exc: APIError) -> Response:
        access.note(error=exc.message)
        return json_response(error_body(request.path, exc.status, exc.message),
                             status=error_status(request.path, exc.status), headers=dict(exc.headers))

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code in (404, 405) and not has_protocol_shape(request.path):
            # Ollama (gin) answers unknown paths and wrong methods in plain text.
            text = {404: "404 page not found", 405: "405 method not allowed"}[code]
            return Response(text, status=code, content_type="text/plain")
        if code in (404, 405):  # under /v1: the protocol's error object, which its SDKs parse
            allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or ()))
            message = (f"Invalid URL ({request.method} {request.path})" if code == 404 else
                       f"{request.method} is not allowed for {request.path} (allowed: {allowed})")
            access.note(error=message)
            return json_response(error_body(request.path, code, message), status=code)
        message = {413: f"request body too large (the limit is {services.settings.max_body_size} bytes; "
                         "set TRILLAMA_MAX_BODY_SIZE to change it)",
                   408: "timed out reading the request body"}.get(code, exc.description or exc.name)
        access.note(error=message)
        return json_response(error_body(request.path, code, message), status=error_status(request.path, code))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        """Whatever escapes a handler still answers in the route's JSON shape, with the request id.

        The traceback goes to the log, tagged with the same request id, so an operator can find it
        from what the client saw.
        """
        inner = _unwrap_api_error(exc)
        if inner is not None:
            return await _api_error(inner)
        record = getattr(request, "access", None)
        request_id = record.request_id if record is not None else "?"
        log.error("unhandled_error", path=request.path, error=repr(exc), exc_info=exc)
        message = f"internal server error (request id {request_id}; the server log has the details)"
        access.note(error=repr(exc))
        return json_response(error_body(request.path, 500, message), status=error_status(request.path, 500))

    @app.route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return Response("Ollama is running", content_type="text/plain; charset=utf-8")

    @app.route("/api/version", methods=["GET", "HEAD"])
    async def version() -> Response:
        # The Ollama API level clients gate features on, and trillama's own version beside it.
        return json_response({"version": OLLAMA_API_VERSION, "trillama_version": __version__})

    app.register_blueprint(manage.blueprint)
    app.register_blueprint(registry.blueprint)
    app.register_blueprint(inference.blueprint)
    app.register_blueprint(openai.blueprint)
    app.register_blueprint(anthropic.blueprint)
    app.register_blueprint(metrics.blueprint)
    auth.install(app, services.settings)  # API keys, scopes, per-key limits (docs/security.md)
    health.install(app, services.lifecycle)
    app.asgi_app = access.log_unanswered(app.asgi_app)  # type: ignore[method-assign]
    return app
