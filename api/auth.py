"""Access control at the HTTP edge: who asks (API keys), what they may do (scopes, a model
allow-list), how much (per-key limits), and a refusal in the shape the asking client reads.

Without keys configured (no ``TRILLAMA_API_KEYS_FILE``, no ``TRILLAMA_API_KEY``) nothing here
runs on a request: trillama is as open as Ollama. With keys, every request but ``/``, ``/health``
and ``/ready`` (and CORS preflights, which carry no credentials) must present one, as
``Authorization: Bearer <key>`` (OpenAI's and Ollama's clients) or ``x-api-key: <key>``
(Anthropic's). Then, in this order:

1. an address that presented too many wrong keys lately waits (429), its key not even looked at;
2. no key → 401; several different keys → 401; a key that matches none → 401 (and counts
   against the address); both with ``WWW-Authenticate: Bearer``;
3. a key without the route's scope, or naming a model outside its allow-list → 403;
4. a key over its concurrency, requests-per-minute or tokens-per-minute limit → 429 with
   ``Retry-After``.

Refusals are answered in the route's own error shape (Ollama's ``{"error"}``, OpenAI's object
with ``invalid_api_key`` / ``insufficient_permissions`` / ``rate_limit_exceeded``, Anthropic's
``authentication_error`` / ``permission_error`` / ``rate_limit_error``), so each SDK raises its
own exception class. The key's id — never the key — goes to the access log (``key_id``), to
``/metrics`` and, as the *tenant*, to the model's queue, which is fair between keys
(``actors/model.py``). Denials are counted by reason.

A request's grant under its key's limits is released when its response has ended — for a
stream, after its last byte — by a thin ASGI wrapper (as ``api/health.py`` counts requests for
the drain), which also charges the tokens the request used to its key.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from quart import Blueprint, Response, current_app, request
from quart.wrappers.response import DataBody

from trillama.api import access
from trillama.api.errors import APIError, error_body
from trillama.api.streaming import json_response
from trillama.keys import ApiKey, KeyRing, KeySource
from trillama.logs import get_logger
from trillama.ratelimit import FailureBrake, KeyLimiter, Refusal

__all__ = ["install", "required_scope", "presented_keys", "OPEN", "ANY_KEY", "blueprint", "Gate"]

log = get_logger("trillama.api.auth")

blueprint = Blueprint("auth", __name__)

#: What a route needs: no key at all, any valid key, or a key with one scope.
OPEN = "open"
ANY_KEY = "any key"

_OPEN_RULES = frozenset({"/", "/health", "/ready"})
_ANY_KEY_RULES = frozenset({"/api/version", "/api/hello"})
_INFERENCE_RULES = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tags",
                              "/api/show", "/api/ps"})
_MANAGE_RULES = frozenset({"/api/create", "/api/copy", "/api/delete", "/api/pull", "/api/push",
                           "/api/blobs/<digest>"})
_ADMIN_RULES = frozenset({"/metrics", "/api/runners", "/api/keys"})

#: Body fields that name a model (``from`` is create's base model).
_MODEL_FIELDS = ("model", "name", "source", "destination", "from")
#: Listings narrowed to a key's allow-list: route → (list field, name field).
_LISTINGS = {"/api/tags": ("models", "name"), "/api/ps": ("models", "name"), "/v1/models": ("data", "id")}

_SCOPE_KEY = "trillama.grant"


def request_key_id() -> str | None:
    """The id of the key the current request was let in with; ``None`` when keys are off.

    What a key stores (``/v1/responses`` with ``store``) is its own: other keys see none of it.
    """
    held = request.scope.get(_SCOPE_KEY)
    return held[1].id if held is not None else None


def required_scope(rule: str | None) -> str:
    """What the route ``rule`` (Quart's matched rule; ``None`` for no match) needs.

    A matched route that no table names needs ``admin``: a route added later is closed until
    someone decides who may use it (a unit test lists every route of the app).
    """
    if rule is None:
        return ANY_KEY  # an unknown path: a 404 for a valid key, a 401 for anyone else
    if rule in _OPEN_RULES:
        return OPEN
    if rule in _ANY_KEY_RULES:
        return ANY_KEY
    if rule in _INFERENCE_RULES or rule.startswith("/v1/"):
        return "inference"
    if rule in _MANAGE_RULES:
        return "manage"
    return "admin"


def presented_keys(headers: Any) -> tuple[list[str], str | None]:
    """The keys a request presents, and a problem with how (an unsupported scheme), if any.

    An empty header (``Authorization: Bearer`` with nothing after it, as an SDK sends with an
    empty key) presents no key.
    """
    keys: list[str] = []
    problem = None
    for value in headers.getlist("Authorization"):
        scheme, _, token = value.strip().partition(" ")
        if not scheme or scheme.lower() == "bearer" and not token.strip():
            continue
        if scheme.lower() != "bearer":
            problem = "the Authorization header must be 'Bearer <API key>'"
            keys.append(value.strip())
        else:
            keys.append(token.strip())
    keys.extend(value.strip() for value in headers.getlist("x-api-key") if value.strip())
    return keys, problem


# ----------------------------------------------------------------------------- refusals
_OPENAI_DENIAL = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "insufficient_permissions"),
}


def _denial(status: int, message: str, reason: str, *, tokens: bool = False,
            headers: dict[str, str] | None = None) -> Response:
    """A refusal in the shape of the route's protocol; counted by ``reason``."""
    body = error_body(request.path, status, message)
    error = body.get("error")
    if isinstance(error, dict) and "code" in error:  # OpenAI's error object
        kind, code = _OPENAI_DENIAL.get(status, ("tokens" if tokens else "requests", "rate_limit_exceeded"))
        error["type"], error["code"] = kind, code
    access.note(error=message)
    gate: Gate = current_app.extensions["trillama.auth"]
    gate.denied.labels(reason).inc()
    return json_response(body, status=status, headers=headers)


def _unauthorized(message: str, reason: str, invalid: bool) -> Response:
    challenge = 'Bearer realm="trillama"' + (', error="invalid_token"' if invalid else "")
    return _denial(401, message, reason, headers={"WWW-Authenticate": challenge})


def _too_many(refusal: Refusal) -> Response:
    return _denial(429, refusal.message, refusal.reason, tokens=refusal.reason == "tokens_per_minute",
                   headers={"Retry-After": str(refusal.retry_after)})


# ----------------------------------------------------------------------------- the model allow-list
async def _models_named() -> list[str]:
    """The model names this request names: the path's, and a JSON body's model fields."""
    names: list[str] = []
    model = (request.view_args or {}).get("model")
    if isinstance(model, str):
        names.append(model)
    rule = request.url_rule.rule if request.url_rule is not None else ""
    if request.method in ("POST", "DELETE") and not rule.startswith("/api/blobs/"):
        from trillama.api.decode import read_json

        try:
            data = await read_json(request)  # cached: the route reads the same bytes
        except APIError:
            return names  # the route answers the bad body itself (400), and runs nothing
        if isinstance(data, dict):
            names += [data[f] for f in _MODEL_FIELDS if isinstance(data.get(f), str) and data[f]]
            if isinstance(data.get("modelfile"), str):
                names += _modelfile_from(data["modelfile"])
    return names


def _modelfile_from(text: str) -> list[str]:
    from trillama.store.modelfile import parse_modelfile

    try:
        base = parse_modelfile(text, require_from=False).from_
    except Exception:  # the route refuses a bad Modelfile itself
        return []
    return [base] if base else []


def _narrow_listing(body: Any, key: ApiKey, field: str, name: str) -> Any:
    if isinstance(body, dict) and isinstance(body.get(field), list):
        body[field] = [m for m in body[field] if not isinstance(m, dict) or key.allows_model(str(m.get(name, "")))]
    return body


# ----------------------------------------------------------------------------- the gate
class _KeyGauge:
    """Requests in flight per key, read at scrape time."""

    def __init__(self, gate: "Gate") -> None:
        self.gate = gate

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("trillama_key_requests_in_flight", "Requests in flight per API key id",
                                   labels=["key"])
        for key in self.gate.source.ring.keys:
            usage = self.gate.limiter.usage(key.id)
            family.add_metric([key.id], usage.in_flight if usage is not None else 0)
        yield family


class Gate:
    """The keys, the limiters and the counters of one app."""

    def __init__(self, source: KeySource, failures_per_minute: int, registry: Any) -> None:
        self.source = source
        self.limiter = KeyLimiter()
        self.brake = FailureBrake(failures_per_minute)
        self._known = set(source.ring.by_id)
        self.denied = Counter("trillama_auth_denied", "Requests refused by access control, by reason",
                              ["reason"], registry=registry)
        self.requests = Counter("trillama_key_requests", "Requests answered per API key id",
                                ["key", "status"], registry=registry)
        self.tokens = Counter("trillama_key_tokens", "Tokens processed per API key id", ["key", "kind"],
                              registry=registry)
        registry.register(_KeyGauge(self))

    def keys(self) -> KeyRing:
        """The keys in force (reloading a changed file); counters of removed keys are dropped."""
        ring = self.source.current()
        if set(ring.by_id) != self._known:
            self._known = set(ring.by_id)
            self.limiter.forget_except(self._known)
        return ring

    async def check(self) -> Response | None:
        """The before-request hook: ``None`` to let the request through, or the refusal."""
        rule = request.url_rule.rule if request.url_rule is not None else None
        need = required_scope(rule)
        if need == OPEN or request.method == "OPTIONS":
            return None
        presented, problem = presented_keys(request.headers)
        if not presented:
            return _unauthorized("missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                                 "missing_key", invalid=False)
        address = request.remote_addr
        braked = self.brake.refusal(address)
        if braked is not None:
            return _too_many(braked)
        ring = self.keys()
        if len(set(presented)) > 1:
            self.brake.failed(address)
            return _unauthorized("several different API keys sent; send one", "several_keys", invalid=True)
        key = ring.find(presented[0])
        if key is None:
            self.brake.failed(address)
            log.info("auth_failed", client=address, reason=problem or "invalid key")
            return _unauthorized(f"invalid API key{': ' + problem if problem else ''}",
                                 "invalid_key", invalid=True)
        access.note(key_id=key.id)
        held: list[Any] = [None, key, getattr(request, "access", None)]  # grant, key, access record
        request.scope[_SCOPE_KEY] = held
        if need != ANY_KEY and need not in key.scopes:
            return _denial(403, f"API key {key.id!r} lacks the {need!r} scope this route needs", "scope")
        if key.models:
            for name in await _models_named():
                if not key.allows_model(name):
                    return _denial(403, f"API key {key.id!r} may not use model {name!r}", "model")
        admitted = self.limiter.admit(key)
        if isinstance(admitted, Refusal):
            return _too_many(admitted)
        held[0] = admitted
        return None

    async def narrow(self, response: Response) -> Response:
        """The after-request hook: count the answer per key; narrow listings to the allow-list."""
        held = request.scope.get(_SCOPE_KEY)
        if held is None:
            return response
        grant, key, _ = held
        self.requests.labels(key.id, str(response.status_code)).inc()
        rule = request.url_rule.rule if request.url_rule is not None else None
        listing = rule in _LISTINGS and response.status_code == 200 and isinstance(response.response, DataBody)
        if grant is not None and key.models and listing:
            field, name = _LISTINGS[rule]
            body = _narrow_listing(json.loads(await response.get_data()), key, field, name)
            response.set_data(json.dumps(body))
        return response

    def finished(self, scope: dict) -> None:
        """The response has ended: release the grant, charge the tokens used."""
        held = scope.get(_SCOPE_KEY)
        if held is None:
            return
        grant, key, record = held
        if grant is None:  # refused after authentication: nothing was admitted
            return
        prompt = (record.prompt_tokens or 0) if record is not None else 0
        generated = (record.generated_tokens or 0) if record is not None else 0
        grant.finish(prompt + generated)
        if prompt:
            self.tokens.labels(key.id, "prompt").inc(prompt)
        if generated:
            self.tokens.labels(key.id, "generated").inc(generated)


@blueprint.route("/api/keys", methods=["GET"])
async def list_keys() -> Response:
    """The keys in force (ids, scopes, models, limits, requests in flight; never hashes)."""
    gate: Gate | None = current_app.extensions.get("trillama.auth")
    rows = []
    if gate is not None:
        for key in gate.keys().keys:
            usage = gate.limiter.usage(key.id)
            rows.append({"id": key.id, "scopes": sorted(key.scopes), "models": list(key.models),
                         "max_concurrent": key.limits.max_concurrent,
                         "requests_per_minute": key.limits.requests_per_minute,
                         "tokens_per_minute": key.limits.tokens_per_minute,
                         "created": key.created or None, "in_flight": usage.in_flight if usage else 0})
    return json_response({"keys": rows})


def install(app: Any, settings: Any) -> Gate | None:
    """Guard ``app`` with the keys ``settings`` configure; nothing (but ``/api/keys``) without keys.

    Call after the app's own first before-request hook (request ids, the access record) and
    before the drain gate, so a refusal is logged and an unauthenticated client learns nothing
    about the server's state.
    """
    app.register_blueprint(blueprint)
    source = KeySource.from_settings(settings)
    if source is None:
        return None
    gate = Gate(source, settings.auth_failures_per_minute, app.extensions["trillama.metrics"].registry)
    app.extensions["trillama.auth"] = gate
    app.before_request(gate.check)
    app.after_request(gate.narrow)
    inner = app.asgi_app

    async def releasing_asgi_app(scope: dict, receive: Any, send: Any) -> None:
        try:
            await inner(scope, receive, send)
        finally:
            gate.finished(scope)

    app.asgi_app = releasing_asgi_app
    return gate
