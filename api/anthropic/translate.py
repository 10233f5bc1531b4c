"""Anthropic Messages bodies → what the native chat path renders: messages, tools, tool choice, think.

Pure functions, no model and no HTTP: each takes the JSON value of one request field and returns
the native value (the dicts :func:`~trillama.api.prompting.build_chat_prompt` renders, the
OpenAI-style tool list the templates and the tool-call grammar take), or raises a 400
:class:`~trillama.api.errors.APIError` whose message names the offending field by its JSON path
(``messages.2.content.0``), the way Anthropic's own validation errors do.

Anthropic's block model maps onto native messages like this:

* ``system`` (a string or text blocks) becomes the first ``system`` message. A ``role: "system"``
  message inside ``messages`` (Claude Code's mid-conversation instructions) becomes a native system
  message where it stands (:mod:`trillama.api.system_messages` keeps its text in the prompt even
  when the template cannot show it there); its ``tool_addition``/``tool_removal`` blocks change the
  tools offered.
* A user turn's ``tool_result`` blocks become native ``tool`` messages (one per result, in order,
  before the turn's own text), with ``tool_name`` taken from the earlier ``tool_use`` of the same
  id. A result whose id no earlier ``tool_use`` has is refused: a template cannot render it and the
  model would answer a question nobody asked.
* An assistant turn's ``tool_use`` blocks become ``tool_calls``; its ``thinking`` blocks become
  ``thinking``; ``redacted_thinking`` is dropped (it is opaque to any model but Anthropic's).
* Text blocks of one turn are joined by a blank line (Claude Code sends reminders and the prompt
  as separate blocks; run together, they would read as one sentence). ``document`` blocks with a
  text source and ``search_result`` blocks are text too; a ``tool_reference`` block in a tool
  result loads a deferred tool (``defer_loading``), as Anthropic's tool search does.
* ``cache_control`` may sit on any block and is ignored: the runner's prefix cache needs no hints.
* A block type this server does not take is refused in Anthropic's own words (``Input tag 'x'
  found using 'type' does not match any of the expected tags: …``), so clients' fallbacks work.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

import attrs

from trillama.api.decode import json_type_name
from trillama.api.errors import APIError
from trillama.api.provider_tools import anthropic_client_tool, anthropic_tool_kind, log_left_out
from trillama.logs import get_logger

__all__ = ["ToolChoice", "ToolEvents", "ToolSet", "system_text", "native_messages", "native_tools", "tool_set",
           "parse_tool_choice", "think_value", "stop_sequences", "output_schema"]

log = get_logger("trillama.api.anthropic")

_USER_BLOCKS = ("text", "image", "document", "search_result", "tool_result")
_ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
_SYSTEM_BLOCKS = ("text", "tool_addition", "tool_removal")
_RESULT_BLOCKS = ("text", "image", "document", "search_result", "tool_reference")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "max", "max": "max"}


def _kind(value: Any) -> str:
    return json_type_name(value)  # JSON Schema's names, as Anthropic's errors use them


def _bad(path: str, message: str) -> APIError:
    return APIError(400, f"{path}: {message}")


# ----------------------------------------------------------------------------- system
def system_text(system: Any) -> str | None:
    """``system`` as one string; text blocks joined by a blank line; ``None`` when absent or empty."""
    if system is None:
        return None
    if isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise _bad("system", f"expected a string or an array of text blocks, got {_kind(system)}")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"system.{i}", "only text blocks ({\"type\": \"text\", \"text\": ...}) are allowed here")
        texts.append(block["text"])
    return "\n\n".join(t for t in texts if t) or None


# ----------------------------------------------------------------------------- messages
@attrs.define
class ToolEvents:
    """What a conversation says about its tools besides calling them: the deferred tools a tool
    search loaded (``tool_reference`` blocks) and the tools added or removed mid-conversation
    (``tool_addition`` / ``tool_removal`` blocks in a system message), in order."""

    referenced: set[str] = attrs.Factory(set)
    changes: list[tuple[str, Any]] = attrs.Factory(list)  # ("add", definition) or ("remove", name)


def _unknown_tag(path: str, kind: Any, expected: tuple[str, ...]) -> APIError:
    """Anthropic's own words for a block type it does not take (clients match on them)."""
    tags = ", ".join(f"'{t}'" for t in expected)
    return _bad(path, f"Input tag '{kind}' found using 'type' does not match any of the expected tags: {tags}")


def _image(block: Mapping[str, Any], path: str) -> bytes:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _bad(f"{path}.source", "an image block needs a 'source' object")
    kind = source.get("type")
    if kind in ("url", "file"):
        raise _bad(f"{path}.source", f"image source type '{kind}' is not supported; send the image as base64 "
                                     "({\"type\": \"base64\", \"media_type\": ..., \"data\": ...})")
    if kind != "base64":
        raise _bad(f"{path}.source.type", f"unknown image source type {kind!r} (expected 'base64')")
    media = source.get("media_type")
    if media not in _IMAGE_TYPES:
        raise _bad(f"{path}.source.media_type", f"{media!r} is not one of {', '.join(_IMAGE_TYPES)}")
    data = source.get("data")
    if not isinstance(data, str):
        raise _bad(f"{path}.source.data", "expected base64 text")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{path}.source.data", "invalid base64 data") from None


def _text(block: Mapping[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{path}.text", f"expected a string, got {_kind(text)}")
    return text


def _text_blocks(content: Any, path: str) -> str:
    """A string, or text blocks joined by a blank line (a document's or search result's content)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(path, f"expected a string or an array of text blocks, got {_kind(content)}")
    texts = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind != "text":
            raise _unknown_tag(f"{path}.{i}", kind, ("text",))
        texts.append(_text(block, f"{path}.{i}"))
    return "\n\n".join(texts)


def _document(block: Mapping[str, Any], path: str) -> str:
    """A ``document`` block with a text source (plain text, or text blocks) as the text it holds,
    under its title; PDFs and files cannot be read by a local text model."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _bad(f"{path}.source", "a document block needs a 'source' object")
    kind = source.get("type")
    if kind == "text":
        data = source.get("data")
        if not isinstance(data, str):
            raise _bad(f"{path}.source.data", f"expected a string, got {_kind(data)}")
        body = data
    elif kind == "content":
        body = _text_blocks(source.get("content"), f"{path}.source.content")
    elif kind in ("base64", "url", "file"):
        raise _bad(f"{path}.source", f"document source type '{kind}' is not supported here (no PDF reader); "
                                     "send the document's text ({\"type\": \"text\", \"media_type\": "
                                     "\"text/plain\", \"data\": ...})")
    else:
        raise _unknown_tag(f"{path}.source", kind, ("text", "content", "base64", "url", "file"))
    parts = [p for p in (block.get("title"), body, block.get("context")) if isinstance(p, str) and p]
    return "\n\n".join(parts)


def _search_result(block: Mapping[str, Any], path: str) -> str:
    title, source = block.get("title"), block.get("source")
    head = " — ".join(p for p in (title, source) if isinstance(p, str) and p)
    body = _text_blocks(block.get("content", []), f"{path}.content")
    return f"{head}\n{body}" if head else body


def _tool_result_content(content: Any, path: str, events: ToolEvents) -> tuple[str, list[bytes]]:
    """A ``tool_result``'s ``content``: absent, a string, or text, image, document, search result
    and ``tool_reference`` blocks (a tool search's answer: the deferred tools it loaded)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{path}.content", f"expected a string or an array of blocks, got {_kind(content)}")
    texts: list[str] = []
    images: list[bytes] = []
    for i, block in enumerate(content):
        where = f"{path}.content.{i}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "image":
            images.append(_image(block, where))
        elif kind == "document":
            texts.append(_document(block, where))
        elif kind == "search_result":
            texts.append(_search_result(block, where))
        elif kind == "tool_reference":
            name = block.get("tool_name")
            if not isinstance(name, str) or not name:
                raise _bad(f"{where}.tool_name", "a tool_reference block needs the 'tool_name' it loads")
            events.referenced.add(name)
            texts.append(f"Tool {name} is loaded and can be called now.")
        else:
            raise _unknown_tag(where, kind, _RESULT_BLOCKS)
    return "\n\n".join(texts), images


def _blocks(content: Any, path: str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(path, f"expected a string or an array of content blocks, got {_kind(content)}")
    for i, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise _bad(f"{path}.{i}", "each content block must be an object with a string 'type'")
    return content


def _user_turn(blocks: list[Mapping[str, Any]], path: str, calls: dict[str, str],
               events: ToolEvents) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    images: list[bytes] = []
    for i, block in enumerate(blocks):
        where, kind = f"{path}.{i}", block["type"]
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "image":
            images.append(_image(block, where))
        elif kind == "document":
            texts.append(_document(block, where))
        elif kind == "search_result":
            texts.append(_search_result(block, where))
        elif kind == "tool_result":
            ident = block.get("tool_use_id")
            if not isinstance(ident, str) or not ident:
                raise _bad(f"{where}.tool_use_id", "a tool_result block needs the 'tool_use_id' it answers")
            if ident not in calls:
                raise _bad(where, f"tool_result names tool_use_id {ident!r}, but no earlier assistant tool_use "
                                  "block has that id")
            text, result_images = _tool_result_content(block.get("content"), where, events)
            if block.get("is_error") is True:
                text = f"Error: {text}" if text else "Error"
            message: dict[str, Any] = {"role": "tool", "content": text, "tool_name": calls[ident],
                                       "tool_call_id": ident}
            if result_images:
                message["images"] = result_images
            out.append(message)
        elif kind in _ASSISTANT_BLOCKS:
            raise _bad(where, f"a {kind} block belongs in an assistant message, not a user message")
        else:
            raise _unknown_tag(where, kind, _USER_BLOCKS)
    if texts or images or not out:
        message = {"role": "user", "content": "\n\n".join(texts)}
        if images:
            message["images"] = images
        out.append(message)
    return out


def _assistant_turn(blocks: list[Mapping[str, Any]], path: str, calls: dict[str, str]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        where, kind = f"{path}.{i}", block["type"]
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "thinking":
            value = block.get("thinking")
            if not isinstance(value, str):
                raise _bad(f"{where}.thinking", f"expected a string, got {_kind(value)}")
            thinking.append(value)
        elif kind == "redacted_thinking":
            continue
        elif kind == "tool_use":
            ident, name, args = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(ident, str) or not ident:
                raise _bad(f"{where}.id", "a tool_use block needs a string 'id'")
            if not isinstance(name, str) or not name:
                raise _bad(f"{where}.name", "a tool_use block needs a string 'name'")
            if not isinstance(args, Mapping):
                raise _bad(f"{where}.input", f"expected an object, got {_kind(args)}")
            calls[ident] = name
            tool_calls.append({"id": ident, "function": {"index": len(tool_calls), "name": name,
                                                         "arguments": dict(args)}})
        elif kind in _USER_BLOCKS:
            raise _bad(where, f"a {kind} block belongs in a user message, not an assistant message")
        else:
            raise _unknown_tag(where, kind, _ASSISTANT_BLOCKS)
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if thinking:
        message["thinking"] = "\n\n".join(thinking)
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _system_turn(blocks: list[Mapping[str, Any]], path: str, events: ToolEvents) -> dict[str, Any] | None:
    """A ``role: "system"`` message inside ``messages`` (Claude Code's mid-conversation system
    messages): its text becomes a native system message where it stands; ``tool_addition`` and
    ``tool_removal`` blocks change the tools offered from here on."""
    texts: list[str] = []
    for i, block in enumerate(blocks):
        where, kind = f"{path}.{i}", block["type"]
        if kind == "text":
            texts.append(_text(block, where))
        elif kind in ("tool_addition", "tool_removal"):
            tool = block.get("tool")
            if not isinstance(tool, Mapping):
                raise _bad(f"{where}.tool", f"expected an object, got {_kind(tool)}")
            if kind == "tool_addition":
                definition = tool.get("definition")
                if tool.get("type") != "tool_definition" or not isinstance(definition, Mapping):
                    raise _bad(f"{where}.tool", "expected {\"type\": \"tool_definition\", \"definition\": {...}}")
                events.changes.append(("add", (f"{where}.tool.definition", dict(definition))))
            else:
                name = tool.get("name")
                if tool.get("type") != "tool_reference" or not isinstance(name, str) or not name:
                    raise _bad(f"{where}.tool", "expected {\"type\": \"tool_reference\", \"name\": ...}")
                events.changes.append(("remove", name))
        else:
            raise _unknown_tag(where, kind, _SYSTEM_BLOCKS)
    text = "\n\n".join(t for t in texts if t)
    return {"role": "system", "content": text} if text else None


def native_messages(raw: Any, system: Any = None, events: ToolEvents | None = None) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as native chat messages (see the module docstring); what the
    conversation says about its tools goes into ``events``."""
    events = events if events is not None else ToolEvents()
    if raw is None:
        raise _bad("messages", "field required")
    if not isinstance(raw, list):
        raise _bad("messages", f"expected an array of messages, got {_kind(raw)}")
    if not raw:
        raise _bad("messages", "at least one message is required")
    out: list[dict[str, Any]] = []
    text = system_text(system)
    if text:
        out.append({"role": "system", "content": text})
    calls: dict[str, str] = {}  # tool_use id -> tool name, from the assistant turns seen so far
    for i, message in enumerate(raw):
        path = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise _bad(path, f"expected an object, got {_kind(message)}")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise _bad(f"{path}.role", f"Unexpected role {role!r}: an input message role must be 'user', "
                                       "'assistant' or 'system'")
        if "content" not in message:
            raise _bad(f"{path}.content", "field required")
        blocks = _blocks(message["content"], f"{path}.content")
        if role == "user":
            out.extend(_user_turn(blocks, f"{path}.content", calls, events))
        elif role == "assistant":
            out.append(_assistant_turn(blocks, f"{path}.content", calls))
        elif (turn := _system_turn(blocks, f"{path}.content", events)) is not None:
            out.append(turn)
    if all(m["role"] == "system" for m in out):
        raise _bad("messages", "at least one user or assistant message is required")
    return out


# ----------------------------------------------------------------------------- tools
@attrs.frozen
class ToolSet:
    """The tools the model is shown, and the ones left out under the provider-tool rule."""

    tools: list[dict[str, Any]] | None
    left_out: tuple[str, ...] = ()
    #: deferred tools (``defer_loading``) no tool search has loaded yet: not shown, not callable
    deferred: tuple[str, ...] = ()


def _function(tool: Mapping[str, Any], path: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"{path}.name", "a tool needs a non-empty string 'name'")
    schema = tool.get("input_schema")
    if not isinstance(schema, Mapping):
        raise _bad(f"{path}.input_schema", f"expected a JSON schema object, got {_kind(schema)}")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{path}.description", f"expected a string, got {_kind(description)}")
    function: dict[str, Any] = {"name": name, "parameters": dict(schema)}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def tool_set(raw: Any, events: ToolEvents | None = None) -> ToolSet:
    """``tools`` (and the conversation's tool events) as the function tools the model is shown.

    Custom tools become function tools. Anthropic-defined tools the client runs (``bash_…``,
    ``text_editor_…``, ``memory_…``, ``computer_…``) become function tools with their documented
    parameters; server tools are left out (the rule in :mod:`trillama.api.provider_tools`). A tool
    with ``defer_loading`` is shown only once a ``tool_reference`` block has loaded it, as
    Anthropic's tool search does.
    """
    events = events if events is not None else ToolEvents()
    if raw is not None and not isinstance(raw, list):
        raise _bad("tools", f"expected an array of tools, got {_kind(raw)}")
    named: dict[str, tuple[dict[str, Any], bool]] = {}  # name -> (function tool, deferred)
    left_out: list[str] = []
    for i, tool in enumerate(raw or ()):
        path = f"tools.{i}"
        if not isinstance(tool, Mapping):
            raise _bad(path, f"expected an object, got {_kind(tool)}")
        kind = tool.get("type")
        category = anthropic_tool_kind(kind)
        if category == "hosted":
            left_out.append(str(tool.get("name") or kind))
            continue
        if category == "unknown":
            raise _bad(f"{path}.type", f"unknown tool type {kind!r}: a tool is a custom tool (no 'type', or "
                                       "'custom'), an Anthropic-defined client tool (bash_…, text_editor_…, "
                                       "memory_…, computer_…) or a server tool")
        if category == "client":
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(f"{path}.name", "a tool needs a non-empty string 'name'")
            spec = anthropic_client_tool(kind)
            function = {"type": "function", "function": {"name": name, "description": spec.description,
                                                         "parameters": dict(spec.parameters)}}
        else:
            function = _function(tool, path)
        name = function["function"]["name"]
        if name in named:
            raise _bad(f"{path}.name", f"tool names must be unique; {name!r} appears twice")
        named[name] = (function, tool.get("defer_loading") is True)
    for change, value in events.changes:
        if change == "add":
            where, definition = value
            function = _function(definition, where)
            named[function["function"]["name"]] = (function, definition.get("defer_loading") is True)
        else:
            named.pop(value, None)
    shown = [f for name, (f, deferred) in named.items() if not deferred or name in events.referenced]
    deferred = tuple(name for name, (_, d) in named.items() if d and name not in events.referenced)
    log_left_out("anthropic", tuple(left_out))
    return ToolSet(tools=shown or None, left_out=tuple(left_out), deferred=deferred)


def native_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Anthropic tools as the OpenAI-style function tools templates and grammars take (see :func:`tool_set`)."""
    return tool_set(raw).tools


@attrs.frozen
class ToolChoice:
    """A parsed ``tool_choice``: ``mode`` is ``auto``, ``any``, ``tool`` or ``none``.

    ``single`` is ``disable_parallel_tool_use``: at most one ``tool_use`` block in the answer.
    """

    mode: str = "auto"
    name: str | None = None
    single: bool = False

    @property
    def forced(self) -> bool:
        return self.mode in ("any", "tool")


def parse_tool_choice(value: Any, tools: list[dict[str, Any]] | None, left_out: tuple[str, ...] = ()) -> ToolChoice:
    if value is None:
        return ToolChoice()
    if not isinstance(value, Mapping):
        raise _bad("tool_choice", f"expected an object like {{\"type\": \"auto\"}}, got {_kind(value)}")
    mode = value.get("type")
    if mode not in ("auto", "any", "tool", "none"):
        raise _bad("tool_choice.type", f"must be 'auto', 'any', 'tool' or 'none', got {mode!r}")
    single = value.get("disable_parallel_tool_use", False)
    if not isinstance(single, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", f"expected a boolean, got {_kind(single)}")
    name = None
    if mode == "tool":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name", "tool_choice of type 'tool' needs the tool's 'name'")
    if name is not None and name in left_out:
        raise _bad("tool_choice.name", f"{name!r} is a server tool: it runs on Anthropic's servers and cannot be "
                                       "called here")
    if mode in ("any", "tool") and not tools:
        raise _bad("tool_choice", f"tool_choice '{mode}' needs at least one tool in 'tools'")
    if name is not None and not any(t["function"]["name"] == name for t in tools or ()):
        raise _bad("tool_choice.name", f"no tool named {name!r} in 'tools'")
    return ToolChoice(mode=mode, name=name, single=single)


# ----------------------------------------------------------------------------- thinking, stops
def think_value(thinking: Any, output_config: Any = None) -> bool | str | None:
    """``thinking`` (and ``output_config.effort``) as native ``think``; ``None`` leaves the model's default."""
    if thinking is not None:
        if not isinstance(thinking, Mapping):
            raise _bad("thinking", f"expected an object like {{\"type\": \"enabled\"}}, got {_kind(thinking)}")
        kind = thinking.get("type")
        if kind in ("enabled", "adaptive"):
            budget = thinking.get("budget_tokens")
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
                raise _bad("thinking.budget_tokens", "expected a non-negative integer")
            return True
        if kind == "disabled":
            return False
        raise _bad("thinking.type", f"must be 'enabled', 'adaptive' or 'disabled', got {kind!r}")
    if isinstance(output_config, Mapping) and output_config.get("effort") is not None:
        effort = output_config["effort"]
        if effort not in _EFFORTS:
            raise _bad("output_config.effort", f"must be one of {', '.join(_EFFORTS)}, got {effort!r}")
        return _EFFORTS[effort]
    return None


def stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad("stop_sequences", "expected an array of strings")
    return tuple(s for s in value if s)


def output_schema(output_config: Any) -> dict[str, Any] | None:
    """``output_config.format`` (structured outputs: ``{"type": "json_schema", "schema": {...}}``)."""
    if output_config is None:
        return None
    if not isinstance(output_config, Mapping):
        raise _bad("output_config", f"expected an object, got {_kind(output_config)}")
    fmt = output_config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        raise _bad("output_config.format", "expected {\"type\": \"json_schema\", \"schema\": {...}}")
    schema = fmt.get("schema")
    if not isinstance(schema, Mapping):
        raise _bad("output_config.format.schema", f"expected a JSON schema object, got {_kind(schema)}")
    return dict(schema)
