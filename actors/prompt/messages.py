"""Chat messages and tool calls as the prompt layer sees them.

These are small frozen values so a conversation can be rendered several times (truncation renders
it once per candidate cut) without anyone mutating it. ``from_json``/``as_json`` exist for the
JSON edge in the API layer and for tests; they accept what Ollama's API accepts (``arguments`` as an
object, or as a JSON string the way OpenAI clients send it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["ToolCallFunction", "ToolCall", "Message"]


@attrs.frozen
class ToolCallFunction:
    name: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    index: int = 0


@attrs.frozen
class ToolCall:
    function: ToolCallFunction
    id: str = ""

    def as_json(self) -> dict[str, Any]:
        """The wire form Ollama sends: ``{"id", "function": {"index", "name", "arguments"}}``."""
        out: dict[str, Any] = {}
        if self.id:
            out["id"] = self.id
        out["function"] = {
            "index": self.function.index,
            "name": self.function.name,
            "arguments": dict(self.function.arguments),
        }
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolCall:
        fn = data.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                args = {}
        if not isinstance(args, Mapping):
            args = {}
        return cls(
            function=ToolCallFunction(
                name=str(fn.get("name") or ""), arguments=dict(args), index=int(fn.get("index") or 0)
            ),
            id=str(data.get("id") or ""),
        )


@attrs.frozen
class Message:
    """One chat message. ``images`` holds raw bytes or base64 text; the prompt only counts them."""

    role: str
    content: str = ""
    thinking: str = ""
    images: tuple[Any, ...] = attrs.field(default=(), converter=tuple, hash=False)
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), converter=tuple)
    tool_name: str = ""
    tool_call_id: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Message:
        calls = data.get("tool_calls") or ()
        return cls(
            role=str(data.get("role") or "").lower(),
            content=str(data.get("content") or ""),
            thinking=str(data.get("thinking") or ""),
            images=tuple(data.get("images") or ()),
            tool_calls=tuple(ToolCall.from_json(c) for c in calls),
            tool_name=str(data.get("tool_name") or ""),
            tool_call_id=str(data.get("tool_call_id") or ""),
        )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.thinking:
            out["thinking"] = self.thinking
        if self.images:
            out["images"] = list(self.images)
        if self.tool_calls:
            out["tool_calls"] = [c.as_json() for c in self.tool_calls]
        if self.tool_name:
            out["tool_name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out
