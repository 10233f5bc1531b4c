"""Responses API tools ↔ the chat path's function tools, and the model's calls back as items.

The chat path (and every template) knows one kind of tool: a function with JSON parameters. The
Responses API has more, and agents use them:

* ``function``: as is.
* ``namespace`` (Codex groups its multi-agent tools in one): each inner function is offered under
  the flat name ``<namespace>__<name>`` (Codex's own flat spelling); a call comes back as a
  ``function_call`` item with the inner ``name`` and the ``namespace``, as OpenAI returns it.
* ``custom`` (freeform input, such as Codex's ``apply_patch``): offered as a function taking one
  string, ``input``; the tool's grammar, when it has one, is shown in the description. A call
  comes back as a ``custom_tool_call`` item whose ``input`` is that string.
* ``local_shell`` (run by the client): a function with the exec action's fields; a call comes
  back as a ``local_shell_call`` item.
* Hosted tools (``web_search``, ``file_search``, ``code_interpreter``, ``image_generation``,
  ``mcp``, …) are left out under the rule shared with ``/v1/messages``
  (:mod:`trillama.api.provider_tools`); any other type is a 400.

Earlier calls sent back as input items (``function_call`` with a ``namespace``,
``custom_tool_call``, ``local_shell_call`` and their outputs) are turned into the same flat
function calls, so a conversation renders as the model saw it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping

import attrs

from trillama.api.openai.common import OpenAIError, json_type
from trillama.api.provider_tools import OPENAI_HOSTED, log_left_out

__all__ = ["CallShape", "ResponseTools", "flat_name", "response_tools", "call_item", "history_call",
           "SUPPORTED_TYPES"]

SUPPORTED_TYPES = ("function", "namespace", "custom", "local_shell")

_LOCAL_SHELL_PARAMETERS = {
    "type": "object",
    "properties": {
        "command": {"type": "array", "items": {"type": "string"},
                    "description": "The command and its arguments, e.g. [\"ls\", \"-la\"]."},
        "workdir": {"type": "string", "description": "Directory to run the command in."},
        "timeout_ms": {"type": "integer", "description": "Time limit in milliseconds."},
    },
    "required": ["command"],
}


@attrs.frozen
class CallShape:
    """How a call of one offered chat function goes back to the client."""

    kind: str  # "function", "custom" or "local_shell"
    name: str  # the tool's name as the client knows it (the inner name, for a namespace's function)
    namespace: str | None = None


@attrs.frozen
class ResponseTools:
    chat: list[dict[str, Any]] | None
    shapes: Mapping[str, CallShape] = attrs.Factory(dict)
    left_out: tuple[str, ...] = ()


def flat_name(namespace: str, name: str) -> str:
    """Codex's flat spelling of a namespaced tool: ``namespace__name`` (stray underscores trimmed)."""
    return f"{namespace.rstrip('_')}__{name.lstrip('_')}"


def _invalid(message: str, param: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _function(tool: Mapping[str, Any], where: str, name: str | None = None) -> dict[str, Any]:
    own = tool.get("name")
    if not isinstance(own, str) or not own:
        raise _invalid(f"Missing required parameter: '{where}.name'.", f"{where}.name", "missing_required_parameter")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise _invalid(f"Invalid type for '{where}.parameters': expected an object.", f"{where}.parameters",
                       "invalid_type")
    function: dict[str, Any] = {"name": name or own}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if parameters is not None:
        function["parameters"] = dict(parameters)
    return {"type": "function", "function": function}


def _custom(tool: Mapping[str, Any], where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"Missing required parameter: '{where}.name'.", f"{where}.name", "missing_required_parameter")
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    fmt = tool.get("format")
    about = "The tool's whole input, as free text."
    if isinstance(fmt, Mapping) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax") or "lark"
        about = f"The tool's whole input, as text that follows this {syntax} grammar:\n{fmt['definition']}"
    elif fmt is not None and not (isinstance(fmt, Mapping) and fmt.get("type") in ("text", "grammar")):
        raise _invalid("Invalid value for 'format': expected {\"type\": \"text\"} or {\"type\": \"grammar\", "
                       "\"syntax\": ..., \"definition\": ...}.", f"{where}.format")
    function = {"name": name, "parameters": {"type": "object", "properties": {
        "input": {"type": "string", "description": about}}, "required": ["input"]}}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def response_tools(raw: Any) -> ResponseTools:
    """``tools`` of a Responses request as chat function tools, and how each one's calls go back."""
    if raw is None:
        return ResponseTools(None)
    if not isinstance(raw, list):
        raise _invalid(f"Invalid type for 'tools': expected an array, but got {json_type(raw)}.", "tools",
                       "invalid_type")
    chat: list[dict[str, Any]] = []
    shapes: dict[str, CallShape] = {}
    left_out: list[str] = []
    for index, tool in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(tool, Mapping):
            raise _invalid(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        kind = tool.get("type")
        if kind == "function":
            function = _function(tool, where)
            shapes[function["function"]["name"]] = CallShape("function", function["function"]["name"])
            chat.append(function)
        elif kind == "namespace":
            namespace, inner = tool.get("name"), tool.get("tools")
            if not isinstance(namespace, str) or not namespace:
                raise _invalid(f"Missing required parameter: '{where}.name'.", f"{where}.name",
                               "missing_required_parameter")
            if not isinstance(inner, list):
                raise _invalid(f"Invalid type for '{where}.tools': expected an array.", f"{where}.tools",
                               "invalid_type")
            for position, member in enumerate(inner):
                at = f"{where}.tools[{position}]"
                if not isinstance(member, Mapping) or member.get("type", "function") != "function":
                    raise _invalid(f"Invalid value for '{at}.type': a namespace holds function tools.", f"{at}.type")
                own = member.get("name")
                flat = flat_name(namespace, own) if isinstance(own, str) and own else None
                function = _function(member, at, flat)
                shapes[function["function"]["name"]] = CallShape("function", str(own), namespace)
                chat.append(function)
        elif kind == "custom":
            function = _custom(tool, where)
            shapes[function["function"]["name"]] = CallShape("custom", function["function"]["name"])
            chat.append(function)
        elif kind == "local_shell":
            chat.append({"type": "function", "function": {
                "name": "local_shell", "description": "Run a command on the user's machine and see its output.",
                "parameters": _LOCAL_SHELL_PARAMETERS}})
            shapes["local_shell"] = CallShape("local_shell", "local_shell")
        elif kind in OPENAI_HOSTED:
            left_out.append(str(kind))
        else:
            supported = ", ".join(f"'{t}'" for t in (*SUPPORTED_TYPES, *sorted(OPENAI_HOSTED)))
            raise _invalid(f"Invalid value: {json.dumps(kind)}. Supported values are: {supported}.", f"{where}.type")
    names = [t["function"]["name"] for t in chat]
    for position, name in enumerate(names):
        if name in names[:position]:
            raise _invalid(f"Duplicate tool name: '{name}'.", "tools")
    log_left_out("openai", tuple(left_out))
    return ResponseTools(chat or None, shapes, tuple(left_out))


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _custom_input(arguments: str) -> str:
    """A custom tool's input from the call's JSON arguments (``{"input": "..."}``)."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict):
        value = parsed.get("input")
        if isinstance(value, str):
            return value
        strings = [v for v in parsed.values() if isinstance(v, str)]
        if len(parsed) == 1 and strings:
            return strings[0]
    return arguments


def call_item(call_id: str, name: str, arguments: str, shapes: Mapping[str, CallShape]) -> dict[str, Any]:
    """The output item for one call the model made (``arguments`` a JSON string), in its tool's shape."""
    shape = shapes.get(name) or CallShape("function", name)
    if shape.kind == "custom":
        return {"id": _item_id("ctc"), "type": "custom_tool_call", "status": "completed", "call_id": call_id,
                "name": shape.name, "input": _custom_input(arguments)}
    if shape.kind == "local_shell":
        try:
            args = json.loads(arguments) if arguments else {}
        except json.JSONDecodeError:
            args = {}
        command = args.get("command") if isinstance(args, dict) else None
        if isinstance(command, str):
            command = ["bash", "-lc", command]
        action: dict[str, Any] = {"type": "exec", "command": list(command or []), "timeout_ms": None,
                                  "working_directory": None, "env": {}, "user": None}
        if isinstance(args, dict):
            if isinstance(args.get("timeout_ms"), int):
                action["timeout_ms"] = args["timeout_ms"]
            if isinstance(args.get("workdir"), str):
                action["working_directory"] = args["workdir"]
        return {"id": _item_id("lsh"), "type": "local_shell_call", "status": "completed", "call_id": call_id,
                "action": action}
    item = {"id": _item_id("fc"), "type": "function_call", "status": "completed", "call_id": call_id,
            "name": shape.name, "arguments": arguments}
    if shape.namespace is not None:
        item["namespace"] = shape.namespace
    return item


def history_call(item: Mapping[str, Any], where: str) -> tuple[str, str, str] | None:
    """An earlier call sent back as an input item → ``(call_id, flat name, JSON arguments)``;
    ``None`` for an item that is not a call."""
    kind = item.get("type")
    if kind == "function_call":
        name, namespace = item.get("name"), item.get("namespace")
        if isinstance(namespace, str) and namespace and isinstance(name, str) and name:
            name = flat_name(namespace, name)
        return str(item.get("call_id") or ""), str(name or ""), item.get("arguments", "")
    if kind == "custom_tool_call":
        value = item.get("input", "")
        if not isinstance(value, str):
            raise _invalid(f"Invalid type for '{where}.input': expected a string.", f"{where}.input", "invalid_type")
        return str(item.get("call_id") or ""), str(item.get("name") or ""), json.dumps({"input": value})
    if kind == "local_shell_call":
        action = item.get("action") if isinstance(item.get("action"), Mapping) else {}
        args: dict[str, Any] = {"command": list(action.get("command") or [])}
        if action.get("working_directory"):
            args["workdir"] = action["working_directory"]
        if action.get("timeout_ms"):
            args["timeout_ms"] = action["timeout_ms"]
        return str(item.get("call_id") or ""), "local_shell", json.dumps(args)
    return None
