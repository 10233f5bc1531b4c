"""The non-streaming answer: one ``message`` object, and the pieces streaming shares with it.

``usage`` follows Anthropic's arithmetic: ``input_tokens`` are the prompt tokens the model
evaluated for this request, ``cache_read_input_tokens`` the ones it reused from the runner's
prefix cache (their sum is the whole prompt, what ``count_tokens`` returns), and
``cache_creation_input_tokens`` is always 0 (caching here costs nothing extra).
"""

from __future__ import annotations

import secrets
from contextlib import aclosing
from typing import Any, AsyncIterator

from trillama.actors.runner.messages import Done
from trillama.api.anthropic.run import Delta, Finish, ToolUse
from trillama.api.errors import APIError

__all__ = ["new_message_id", "stop_reason", "usage", "message_shell", "tool_use_block", "collect_message"]


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(finish: Finish, tool_use: bool) -> str:
    """``tool_use`` when the answer called a tool; else the runner's reason in Anthropic's words:
    ``model_context_window_exceeded`` when the context filled up before ``max_tokens`` ran out."""
    if tool_use:
        return "tool_use"
    if finish.stop_sequence is not None:
        return "stop_sequence"
    if finish.context_full:
        return "model_context_window_exceeded"
    return "max_tokens" if finish.done.done_reason == "length" else "end_turn"


def usage(done: Done | None) -> dict[str, int]:
    if done is None:
        return {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "output_tokens": 0}
    return {"input_tokens": done.prompt_eval_count, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": done.cached_count, "output_tokens": done.eval_count}


def message_shell(ident: str, model: str) -> dict[str, Any]:
    """A ``message`` with no content yet (``message_start`` sends it; the final one fills it)."""
    return {"id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage(None)}


def tool_use_block(use: ToolUse, *, empty: bool = False) -> dict[str, Any]:
    return {"type": "tool_use", "id": use.id, "name": use.name, "input": {} if empty else dict(use.input)}


async def collect_message(events: AsyncIterator[Delta | Finish], *, model: str) -> dict[str, Any]:
    """Read the whole answer; consecutive text (or thinking) deltas make one block."""
    blocks: list[dict[str, Any]] = []
    finish: Finish | None = None
    called = False

    def extend(kind: str, text: str) -> None:
        if blocks and blocks[-1]["type"] == kind:
            blocks[-1][kind] += text
        else:
            blocks.append({"type": kind, kind: text, **({"signature": ""} if kind == "thinking" else {})})

    async with aclosing(events):  # type: ignore[type-var]
        async for item in events:
            if isinstance(item, Finish):
                finish = item
                break
            if item.thinking:
                extend("thinking", item.thinking)
            if item.text:
                extend("text", item.text)
            for use in item.tool_uses:
                called = True
                blocks.append(tool_use_block(use))
    if finish is None:
        raise APIError(500, "model runner ended the request without a result")
    body = message_shell(new_message_id(), model)
    body.update(content=blocks, stop_reason=stop_reason(finish, called), stop_sequence=finish.stop_sequence,
                usage=usage(finish.done))
    return body
