"""``tools``, ``tool_choice``, ``response_format`` and reasoning effort, validated for ``/v1``.

``tool_choice`` is honoured, not advisory: :class:`ToolChoice` tells the chat path when to
constrain decoding with a tool-call grammar (see :mod:`trillama.actors.structured`).
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from trillama.api.errors import APIError
from trillama.api.openai.common import json_type

__all__ = ["ToolChoice", "check_tools", "parse_tool_choice", "ollama_format", "EFFORT", "think_value"]


@attrs.frozen
class ToolChoice:
    """A parsed ``tool_choice``: ``mode`` is ``none``, ``auto``, ``required`` or ``function``."""

    mode: str = "auto"
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "function")


# ----------------------------------------------------------------------------- chat: tools, format, think
def check_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise APIError(400, f"invalid type for 'tools' field: {json_type(tools)}")
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(400, "invalid tool: each tool needs a 'function' with a 'name'")
        if tool.get("type", "function") != "function":
            raise APIError(400, f"invalid tool type: {tool.get('type')!r} (only 'function' is supported)")
    return tools or None


def parse_tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    """Validate ``tool_choice`` against ``tools``; OpenAI's rules, with OpenAI-like messages."""
    if value is None:
        return ToolChoice("auto")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise APIError(400, f"invalid tool_choice: {value!r} (must be 'none', 'auto', 'required' or a function)")
        choice = ToolChoice(value)
    elif isinstance(value, Mapping):
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if value.get("type") != "function" or not isinstance(name, str) or not name:
            raise APIError(400, "invalid tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}")
        choice = ToolChoice("function", name)
    else:
        raise APIError(400, f"invalid type for 'tool_choice' field: {json_type(value)}")
    if choice.forced and not tools:
        raise APIError(400, "tool_choice requires 'tools' to be set")
    if choice.mode == "function" and not any(t["function"]["name"] == choice.name for t in tools or []):
        raise APIError(400, f"tool_choice names function {choice.name!r}, which is not in 'tools'")
    return choice


def ollama_format(value: Any) -> Any:
    """OpenAI's ``response_format`` → Ollama's ``format`` (``"json"``, a schema, or nothing)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise APIError(400, f"invalid type for 'response_format' field: {json_type(value)}")
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise APIError(400, "response_format json_schema needs a 'json_schema.schema' object")
        return dict(schema)
    raise APIError(400, f"invalid response_format type: {kind!r}")


EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
          "xhigh": "max", "ultra": "max"}


def think_value(reasoning_effort: Any, reasoning: Mapping[str, Any] | None) -> bool | str | None:
    """``reasoning_effort`` (chat) or ``reasoning.effort`` (both APIs) → the native ``think``."""
    effort = reasoning_effort
    if effort is None and reasoning:
        effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in EFFORT:
        raise APIError(400, f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                            '"xhigh", "ultra", "max", or "none")')
    return EFFORT[effort]

