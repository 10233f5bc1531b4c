"""Request bodies of ``/v1/messages`` and ``/v1/messages/count_tokens``, validated into a plan.

Every 4xx comes from here, before a model is leased: a bad request never loads a model and never
gets a 200 stream that then fails. The plan holds what the model-actor path needs, in the same
values ``/api/chat`` builds: the stored model, native messages, tools, ``think``, merged Ollama
options and the grammar that enforces a forced tool choice or ``output_config.format``.

Options are layered as on ``/api/chat``: Modelfile parameters, then Ollama ``options`` sent as an
extra body field, then the Anthropic fields the request set (``max_tokens`` → ``num_predict``,
``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` → ``stop``). Anthropic's defaults are not
imposed on top of a Modelfile's (Ollama does not either).
"""

from __future__ import annotations

from typing import Any

import attrs

from trillama.actors.structured import FormatError, grammar_for_format
from trillama.api.anthropic.translate import (
    ToolChoice,
    ToolEvents,
    native_messages,
    output_schema,
    parse_tool_choice,
    stop_sequences,
    think_value,
    tool_set,
)
from trillama.api.completion import (
    check_token_limit,
    coerce_request_options,
    parse_keep_alive_field,
    resolve_model,
    with_model_parameters,
)
from trillama.api.errors import APIError
from trillama.api.prompting import check_think, forced_tool_call, require_vision
from trillama.api.provider_tools import log_left_out
from trillama.logs import get_logger

__all__ = ["MessagesRequest", "CountTokensRequest", "Plan", "plan_messages", "plan_count"]

log = get_logger("trillama.api.anthropic")


@attrs.define
class _Conversation:
    """The fields ``messages`` and ``count_tokens`` share. Loose types (``Any``) where Anthropic
    allows several JSON shapes; :mod:`.translate` checks those by hand and names the path."""

    model: str = ""
    messages: Any = None
    system: Any = None
    tools: Any = None
    tool_choice: Any = None
    thinking: Any = None
    output_config: Any = None
    # Ollama's own knobs, as on /v1/chat/completions: extra body fields.
    options: dict[str, Any] | None = None
    keep_alive: Any = None


@attrs.define
class MessagesRequest(_Conversation):
    max_tokens: int | None = None
    stop_sequences: Any = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None  # accepted; nothing here needs a user id
    # Accepted and without effect here: the prompt is the conversation as sent (no server-side
    # clearing of old thinking or tool results), there is one service tier, and no code container.
    context_management: Any = None
    service_tier: Any = None
    container: Any = None
    #: Anthropic's MCP connector: its servers are called by Anthropic, so they are left out (the
    #: provider-tool rule)
    mcp_servers: Any = None


@attrs.define
class CountTokensRequest(_Conversation):
    # Fields of a Messages request that counting does not use: accepted (a client may count the
    # request it is about to send), but with their types checked, as Anthropic checks them.
    max_tokens: int | None = None
    stop_sequences: Any = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None


@attrs.frozen
class Plan:
    """A validated request: everything the model-actor path needs once a model is leased."""

    model: str
    record: Any
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    choice: ToolChoice
    think: bool | str | None
    options: dict[str, Any]
    keep_alive: float | None
    grammar: str | None
    stop: tuple[str, ...] = ()
    #: server tools left out (named in the answer's X-Trillama-Ignored-Tools header)
    left_out: tuple[str, ...] = ()
    #: ``thinking.display: "omitted"``: the model may think, the answer carries no thinking text
    hide_thinking: bool = False


def _check_range(name: str, value: float | int | None, low: float, high: float | None) -> None:
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise APIError(400, f"{name}: must be {bound}, got {value}")


def _think(req: _Conversation, record: Any) -> bool | str | None:
    """Anthropic's ``thinking`` as native ``think``.

    A request that asks for thinking from a model that cannot think is served without it rather
    than refused: Claude Code asks for thinking whatever the model, and Ollama relaxes the same way.
    """
    think = think_value(req.thinking, req.output_config)
    if think and "thinking" not in (record.capabilities or []):
        log.info("anthropic_thinking_ignored", model=req.model, reason="model cannot think")
        think = None
    return check_think(think, record, req.model)


def _plan(req: _Conversation, options: dict[str, Any]) -> Plan:
    events = ToolEvents()
    messages = native_messages(req.messages, req.system, events)
    offered = tool_set(req.tools, events)
    tools = offered.tools
    choice = parse_tool_choice(req.tool_choice, tools, offered.left_out)
    record = resolve_model(req.model, empty_status=400, empty_message="model: field required")
    keep_alive = parse_keep_alive_field(req.keep_alive)
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support chat')
    require_vision(record, any(m.get("images") for m in messages))
    if choice.mode == "none":
        tools = None  # the model is not told about tools, so it cannot call them
    if tools and "tools" not in caps:
        raise APIError(400, f"{record.name.display} does not support tools")
    think = _think(req, record)
    schema = output_schema(req.output_config)
    grammar = None
    if schema is not None and choice.forced:
        raise APIError(400, "output_config.format cannot be combined with a tool_choice that forces a tool call")
    if schema is not None:
        try:
            grammar = grammar_for_format(schema)
        except FormatError as exc:
            raise APIError(400, f"output_config.format.schema: {exc}") from None
    if choice.forced:
        assert tools is not None
        grammar, think = forced_tool_call(record, tools, choice.name, think)
    merged = with_model_parameters(record, {**coerce_request_options(req.options), **options})
    hide = isinstance(req.thinking, dict) and req.thinking.get("display") == "omitted"
    left_out = offered.left_out
    if isinstance(req, MessagesRequest) and isinstance(req.mcp_servers, list) and req.mcp_servers:
        left_out += tuple(str(s.get("name") or "mcp") if isinstance(s, dict) else "mcp" for s in req.mcp_servers)
        log_left_out("anthropic", left_out[len(offered.left_out):])
    return Plan(model=req.model, record=record, messages=messages, tools=tools, choice=choice, think=think,
                options=merged, keep_alive=keep_alive, grammar=grammar, stop=tuple(options.get("stop") or ()),
                left_out=left_out, hide_thinking=hide)


def plan_messages(req: MessagesRequest) -> Plan:
    if req.max_tokens is None:
        raise APIError(400, "max_tokens: field required")
    check_token_limit("max_tokens", req.max_tokens)
    if req.max_tokens < 1:
        raise APIError(400, f"max_tokens: must be at least 1, got {req.max_tokens}")
    _check_range("temperature", req.temperature, 0.0, 1.0)
    _check_range("top_p", req.top_p, 0.0, 1.0)
    _check_range("top_k", req.top_k, 0, None)
    stops = stop_sequences(req.stop_sequences)
    fields = {"num_predict": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
              "top_k": req.top_k, "stop": list(stops) or None}
    return _plan(req, {k: v for k, v in fields.items() if v is not None})


def plan_count(req: CountTokensRequest) -> Plan:
    stop_sequences(req.stop_sequences)  # its shape is checked by hand (it takes several)
    return _plan(req, {})
