"""The streaming answer as Anthropic's event sequence.

``message_start``; then for each content block ``content_block_start``, its
``content_block_delta`` events (``thinking_delta``, ``text_delta``, or one ``input_json_delta``
with a tool call's whole input) and ``content_block_stop``; then ``message_delta`` (stop reason,
stop sequence, usage) and ``message_stop``. Blocks are numbered from 0 and never interleave:
thinking that follows text opens a new block, as Anthropic's API does.

``message_start`` is sent with the first piece of the answer (or its end), not before: until
then a failure (a prompt too long for the context, say) can still be a real HTTP error.
"""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any, AsyncIterator

from trillama.api.anthropic.reply import message_shell, new_message_id, stop_reason, tool_use_block, usage
from trillama.api.anthropic.run import Delta, Finish

__all__ = ["stream_events", "Event"]

Event = tuple[str, dict[str, Any]]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def stream_events(items: AsyncIterator[Delta | Finish], *, model: str) -> AsyncIterator[Event]:
    """``(event name, data)`` pairs for a stream of deltas ending in :class:`Finish`."""
    ident = new_message_id()
    started = False
    open_kind: str | None = None  # "text" or "thinking" while such a block is open
    index = -1
    called = False

    def start() -> list[Event]:
        nonlocal started
        if started:
            return []
        started = True
        return [("message_start", {"type": "message_start", "message": message_shell(ident, model)})]

    def close() -> list[Event]:
        nonlocal open_kind
        if open_kind is None:
            return []
        open_kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def open_block(block: dict[str, Any]) -> list[Event]:
        nonlocal index
        out = close()
        index += 1
        out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        return out

    def text_like(kind: str, text: str) -> list[Event]:
        nonlocal open_kind
        out: list[Event] = []
        if open_kind != kind:
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else \
                {"type": "text", "text": ""}
            out = open_block(block)
            open_kind = kind
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else \
            {"type": "text_delta", "text": text}
        out.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        return out

    async with aclosing(items):  # type: ignore[type-var]
        async for item in items:
            for event in start():
                yield event
            if isinstance(item, Finish):
                for event in close():
                    yield event
                yield ("message_delta", {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(item, called), "stop_sequence": item.stop_sequence},
                    "usage": usage(item.done),
                })
                yield ("message_stop", {"type": "message_stop"})
                return
            events: list[Event] = []
            if item.thinking:
                events += text_like("thinking", item.thinking)
            if item.text:
                events += text_like("text", item.text)
            for use in item.tool_uses:
                called = True
                events += open_block(tool_use_block(use, empty=True))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "input_json_delta", "partial_json": _json(dict(use.input))}}))
                events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            for event in events:
                yield event
