"""A ``POST /v1/responses`` body → the chat request the one inference path already serves.

The Responses API is a different wire format over the same conversation: input items become chat
messages (``message`` parts, ``function_call`` as an assistant ``tool_calls`` entry,
``function_call_output`` as a ``tool`` message, ``reasoning`` as the next assistant turn's
reasoning), flat function tools become chat tools, ``text.format`` becomes ``response_format`` and
``reasoning.effort`` the chat's effort. :func:`plan_chat` then validates and plans it exactly as
it does ``/v1/chat/completions`` — including ``tool_choice`` enforced by a grammar — so there is
no second path to keep in step.

Everything wrong with a body is an :class:`~trillama.api.openai.common.OpenAIError` naming the
offending ``param``, raised before a model is touched.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping, Sequence

import attrs

from trillama.api.completion import check_token_limit
from trillama.api.openai.chat import ChatCompletionRequest, ChatPlan, plan_chat
from trillama.api.openai.common import OpenAIError, json_type
from trillama.api.openai.responses_tools import ResponseTools, flat_name, history_call, response_tools
from trillama.api.provider_tools import OPENAI_HOSTED

__all__ = ["ResponsesRequest", "ResponsePlan", "input_messages", "listed_items", "chat_tools", "chat_tool_choice",
           "chat_response_format", "plan_response"]

#: Item types this server reads; anything else is a 400 that lists them.
INPUT_ITEM_TYPES = ("message", "function_call", "function_call_output", "custom_tool_call",
                    "custom_tool_call_output", "local_shell_call", "local_shell_call_output", "reasoning",
                    "web_search_call")
#: Call items (an earlier answer's tool calls, sent back) and the items answering them.
_CALL_ITEMS = ("function_call", "custom_tool_call", "local_shell_call")
_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")
_ROLES = ("user", "assistant", "system", "developer")


@attrs.define
class ResponsesRequest:
    """The fields of ``POST /v1/responses`` (loose types are checked by hand, with ``param``)."""

    model: str = ""
    input: Any = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: Any = None
    reasoning: Any = None
    truncation: str | None = None
    metadata: Any = None
    background: bool | None = None
    include: Any = None
    user: str | None = None
    # Accepted and echoed: the runner's prefix cache needs no key (a conversation resent in full,
    # as with ``store: false``, reuses its slot's cached prefix anyway).
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    client_metadata: Any = None
    # Ollama's own knobs, accepted here as on the other /v1 routes.
    options: dict[str, Any] | None = None
    keep_alive: Any = None


@attrs.frozen
class ResponsePlan:
    """A validated request: the chat plan to run, and what the reply and the store need."""

    chat: ChatPlan
    #: the conversation without the instructions, as chat messages (what a continuation builds on)
    conversation: list[dict[str, Any]]
    #: the tool choice as the reply echoes it
    tool_choice: Any
    #: this turn's input items as ``GET /v1/responses/{id}/input_items`` lists them
    input_items: list[dict[str, Any]] = attrs.Factory(list)
    #: the offered tools: how each call goes back (namespace, custom, local shell), what was left out
    tools: ResponseTools = attrs.Factory(lambda: ResponseTools(None))


def _invalid(message: str, param: str | None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


# ----------------------------------------------------------------------------- input items
def _parts(content: Any, param: str, *, assistant: bool) -> str | list[dict[str, Any]]:
    """A message's ``content`` (a string or content parts) as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"Invalid type for '{param}': expected a string or an array of content parts, "
                       f"but got {json_type(content)}.", param, "invalid_type")
    out: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("refusal") if kind == "refusal" else part.get("text")
            if not isinstance(text, str):
                raise _invalid(f"Missing required parameter: '{where}.text'.", f"{where}.text",
                               "missing_required_parameter")
            out.append({"type": "text", "text": text})
        elif kind == "input_image" and not assistant:
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _invalid(f"'{where}' needs an 'image_url' (a base64 data URI); file ids are not supported.",
                               f"{where}.image_url")
            out.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "input_file":
            raise _invalid("file inputs are not supported", f"{where}.type")
        else:
            allowed = "'output_text', 'refusal'" if assistant else "'input_text', 'input_image'"
            raise _invalid(f"Invalid value: {json.dumps(kind)}. Supported values are: {allowed}.", f"{where}.type")
    return out


def _text_only(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


def _reasoning_text(item: Mapping[str, Any]) -> str:
    """A reasoning item's text: its raw ``content``, else its summary, else Ollama's plain-text
    ``encrypted_content`` (the only thing that can be done with it here)."""
    for field, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(field)
        if isinstance(parts, list):
            texts = [p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
            if texts:
                return "".join(texts)
    encrypted = item.get("encrypted_content")
    return encrypted if isinstance(encrypted, str) else ""


def _required_str(item: Mapping[str, Any], field: str, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or not value:
        raise _invalid(f"Missing required parameter: '{where}.{field}'.", f"{where}.{field}",
                       "missing_required_parameter")
    return value


def input_messages(raw: Any, known_calls: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``input`` (a string or items) → OpenAI chat messages.

    Consecutive assistant items (a message, then its function calls) become one assistant turn,
    as chat templates expect one turn per reply. A ``function_call_output`` must answer a call made
    earlier in the input or in ``known_calls`` (the calls of the stored conversation).
    """
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise _invalid(f"Invalid type for 'input': expected a string or an array of input items, "
                       f"but got {json_type(raw)}.", "input", "invalid_type")
    calls = set(known_calls)
    messages: list[dict[str, Any]] = []
    reasoning = ""

    def assistant_turn() -> dict[str, Any]:
        nonlocal reasoning
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": ""}
            messages.append(last)
        if reasoning:
            last["reasoning"] = last.get("reasoning", "") + reasoning
            reasoning = ""
        return last

    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise _invalid(f"Invalid type for '{where}': expected an object, but got {json_type(item)}.", where,
                           "invalid_type")
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"  # the short form {"role": ..., "content": ...}
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _invalid(f"Invalid value: {json.dumps(role)}. Supported values are: 'user', 'assistant', "
                               "'system' and 'developer'.", f"{where}.role")
            if "content" not in item:
                raise _invalid(f"Missing required parameter: '{where}.content'.", f"{where}.content",
                               "missing_required_parameter")
            content = _parts(item["content"], f"{where}.content", assistant=role == "assistant")
            if role == "assistant":
                turn = assistant_turn()
                turn["content"] += _text_only(content)
            else:
                messages.append({"role": role, "content": content})
        elif kind in _CALL_ITEMS:
            if kind != "local_shell_call":
                _required_str(item, "call_id", where)
                _required_str(item, "name", where)
            call_id, name, arguments = history_call(item, where)  # type: ignore[misc]
            call_id = call_id or str(item.get("id") or "")
            if not call_id:
                raise _invalid(f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id",
                               "missing_required_parameter")
            if not isinstance(arguments, str):
                raise _invalid(f"Invalid type for '{where}.arguments': expected a string of JSON.",
                               f"{where}.arguments", "invalid_type")
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise _invalid(f"'{where}.arguments' must be a JSON object.", f"{where}.arguments")
            turn = assistant_turn()
            turn.setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
            calls.add(call_id)
        elif kind in _OUTPUT_ITEMS:
            call_id = item.get("call_id") or (item.get("id") if kind == "local_shell_call_output" else None)
            if not isinstance(call_id, str) or not call_id:
                raise _invalid(f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id",
                               "missing_required_parameter")
            if call_id not in calls:
                raise _invalid(f"No tool call found for function call output with call_id {call_id}.",
                               f"{where}.call_id")
            output = item.get("output")
            if output is None:
                raise _invalid(f"Missing required parameter: '{where}.output'.", f"{where}.output",
                               "missing_required_parameter")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _parts(output, f"{where}.output", assistant=False)})
        elif kind == "web_search_call":
            continue  # a hosted tool's call from elsewhere: nothing of it can be shown or run here
        elif kind == "reasoning":
            reasoning += _reasoning_text(item)
        elif kind is None:
            raise _invalid(f"Missing required parameter: '{where}.type'.", f"{where}.type",
                           "missing_required_parameter")
        else:
            supported = ", ".join(f"'{t}'" for t in INPUT_ITEM_TYPES)
            raise _invalid(f"Invalid value: {json.dumps(kind)}. Supported values are: {supported}.",
                           f"{where}.type")
    if reasoning:  # reasoning with no reply after it still belongs to an assistant turn
        assistant_turn()
    return messages


_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
              "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "local_shell_call": "lsh",
              "local_shell_call_output": "lsho"}


def listed_items(raw: Any) -> list[dict[str, Any]]:
    """Validated ``input`` as OpenAI lists it back: full items, each with its ``type`` and an ``id``
    (the short forms — a bare string, ``{"role", "content"}``, string content — spelled out)."""
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    items = []
    for source in raw or ():
        item = dict(source)
        kind = item.setdefault("type", "message")
        if kind == "message":
            if isinstance(item.get("content"), str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": item["content"]}]
            item.setdefault("status", "completed")
        if not isinstance(item.get("id"), str) or not item["id"]:
            item["id"] = f"{_ID_PREFIX.get(kind, 'item')}_{secrets.token_hex(24)}"
        items.append(item)
    return items


def calls_in(conversation: Sequence[Mapping[str, Any]]) -> list[str]:
    """The call ids of a conversation's assistant tool calls."""
    return [call["id"] for message in conversation for call in message.get("tool_calls") or ()
            if isinstance(call.get("id"), str)]


# ----------------------------------------------------------------------------- tools, tool_choice, text
def chat_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Responses tools → chat tools (see :mod:`.responses_tools` for the kinds and the rule)."""
    return response_tools(raw).chat


def chat_tool_choice(raw: Any, tools: ResponseTools | None = None) -> Any:
    """``"none" | "auto" | "required" | {"type": "function" | "custom", "name": ...}`` → chat's
    tool_choice; a hosted tool is a 400 (it cannot be called here)."""
    if raw is None or raw in ("none", "auto", "required"):
        return raw
    if isinstance(raw, Mapping) and raw.get("type") in ("function", "custom"):
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("Missing required parameter: 'tool_choice.name'.", "tool_choice.name",
                           "missing_required_parameter")
        namespace = raw.get("namespace")
        if isinstance(namespace, str) and namespace:
            name = flat_name(namespace, name)
        return {"type": "function", "function": {"name": name}}
    if isinstance(raw, Mapping) and raw.get("type") in OPENAI_HOSTED:
        raise _invalid(f"tool_choice {json.dumps(raw.get('type'))} names a hosted tool, which runs on the API "
                       "provider's side and cannot be called here.", "tool_choice.type")
    raise _invalid("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                   "{\"type\": \"function\", \"name\": ...}.", "tool_choice")


def chat_response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` → chat's ``response_format``."""
    if text is None:
        return None
    if not isinstance(text, Mapping):
        raise _invalid(f"Invalid type for 'text': expected an object, but got {json_type(text)}.", "text",
                       "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise _invalid("Invalid type for 'text.format': expected an object.", "text.format", "invalid_type")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, Mapping):
            raise _invalid("Missing required parameter: 'text.format.schema'.", "text.format.schema",
                           "missing_required_parameter")
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name") or "response", "schema": dict(schema)}}
    raise _invalid(f"Invalid value: {json.dumps(kind)}. Supported values are: 'text', 'json_object' and "
                   "'json_schema'.", "text.format.type")


# ----------------------------------------------------------------------------- the plan
def plan_response(req: ResponsesRequest, history: Sequence[Mapping[str, Any]] = ()) -> ResponsePlan:
    """Validate ``req`` (continuing ``history``, a stored conversation) and plan it as a chat."""
    if req.instructions is not None and not isinstance(req.instructions, str):
        raise _invalid("Invalid type for 'instructions': expected a string.", "instructions", "invalid_type")
    check_token_limit("max_output_tokens", req.max_output_tokens)
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise _invalid(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, but got "
                       f"{req.max_output_tokens} instead.", "max_output_tokens", "integer_below_min_value")
    if req.background:
        raise _invalid("background responses are not supported", "background")
    if req.reasoning is not None and not isinstance(req.reasoning, Mapping):
        raise _invalid("Invalid type for 'reasoning': expected an object.", "reasoning", "invalid_type")
    if req.metadata is not None and not isinstance(req.metadata, Mapping):
        raise _invalid("Invalid type for 'metadata': expected an object.", "metadata", "invalid_type")
    if req.text is not None and isinstance(req.text, Mapping) and req.text.get("verbosity") is not None \
            and req.text.get("verbosity") not in ("low", "medium", "high"):
        raise _invalid(f"Invalid value: {json.dumps(req.text.get('verbosity'))}. Supported values are: 'low', "
                       "'medium' and 'high'.", "text.verbosity")
    new = input_messages(req.input, calls_in(history))
    conversation = [dict(m) for m in history] + new
    if not new:
        raise _invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    tools = response_tools(req.tools)
    chat = ChatCompletionRequest(
        model=req.model, messages=messages, tools=tools.chat, tool_choice=chat_tool_choice(req.tool_choice, tools),
        parallel_tool_calls=req.parallel_tool_calls, response_format=chat_response_format(req.text),
        reasoning={"effort": req.reasoning.get("effort")} if req.reasoning else None,
        max_completion_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p,
        options=req.options, keep_alive=req.keep_alive)
    # The whole conversation, never truncated, and no context shift while answering: a prompt over
    # the context is OpenAI's context_length_exceeded, not an answer to a silently cut conversation.
    planned = plan_chat(chat, truncate=False, shift=False, single_call=req.parallel_tool_calls is False)
    return ResponsePlan(chat=planned, conversation=conversation,
                        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
                        input_items=listed_items(req.input), tools=tools)
