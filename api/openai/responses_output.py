"""Chat deltas → Responses output items, as one reply object or as the streamed event sequence.

One :class:`ResponseBuilder` serves both modes, so a streamed reply's ``response.completed`` and a
non-streamed reply are the same object. It turns the deltas of the chat path into output items in
the order the model wrote them: a ``reasoning`` item (raw reasoning as ``reasoning_text``
content: this server shows a local model's thinking, it has no summariser), ``message`` items with
one ``output_text`` part, and one item per tool call in its tool's shape (``function_call``, with
the ``namespace`` for a namespace's function; ``custom_tool_call``; ``local_shell_call``). Streaming emits, per item,
``response.output_item.added`` … ``response.output_item.done`` with the part and text (or
arguments) events between, each numbered by ``sequence_number``, framed by ``response.created`` /
``response.in_progress`` and ``response.completed`` (or ``response.incomplete`` when the token
limit cut the answer short).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Mapping

import attrs

from trillama.actors.runner.messages import Done
from trillama.api.errors import APIError
from trillama.api.openai.chat import Delta
from trillama.api.openai.responses_tools import CallShape, call_item

__all__ = ["ReplyContext", "ResponseBuilder", "new_response_id", "response_usage"]


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@attrs.frozen
class ReplyContext:
    """What the reply echoes back from the request (OpenAI returns the effective settings)."""

    id: str
    model: str
    created_at: int
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    tools: Any = None
    tool_choice: Any = "auto"
    text: Any = None
    reasoning: Any = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool | None = None
    metadata: Any = None
    truncation: str | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    #: how each offered chat function's calls go back (namespace, custom, local shell)
    shapes: Mapping[str, CallShape] = attrs.Factory(dict)
    #: ``include: ["reasoning.encrypted_content"]``: reasoning items carry their text there too
    #: (in the clear: a local model's thinking has nothing to hide), so a client that resends the
    #: whole conversation (``store: false``) gives it back
    encrypted_reasoning: bool = False


def response_usage(done: Done) -> dict[str, Any]:
    """Responses ``usage``: the full prompt length, of which ``cached_tokens`` came from the slot."""
    prompt = done.prompt_eval_count + done.cached_count
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": done.cached_count},
            "output_tokens": done.eval_count, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + done.eval_count}


def _text_format(text: Any) -> dict[str, Any]:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    out: dict[str, Any] = {"format": dict(fmt) if isinstance(fmt, Mapping) else {"type": "text"}}
    if isinstance(text, Mapping) and isinstance(text.get("verbosity"), str):
        out["verbosity"] = text["verbosity"]
    return out


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseBuilder:
    """Accumulates one reply; every method returns the stream events it caused (possibly none)."""

    def __init__(self, ctx: ReplyContext) -> None:
        self.ctx = ctx
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self._open: dict[str, Any] | None = None  # the reasoning or message item being written
        self._pending_space = ""  # whitespace not yet known to start a message
        self._texts: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.usage: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.completed_at: int | None = None

    # ------------------------------------------------------------------ the reply object
    def response(self) -> dict[str, Any]:
        ctx = self.ctx
        reasoning = ctx.reasoning if isinstance(ctx.reasoning, Mapping) else {}
        return {
            "id": ctx.id, "object": "response", "created_at": ctx.created_at, "status": self.status,
            "background": False, "completed_at": self.completed_at, "error": self.error,
            "incomplete_details": self.incomplete_details, "instructions": ctx.instructions,
            "max_output_tokens": ctx.max_output_tokens, "max_tool_calls": None, "model": ctx.model,
            "output": [dict(item) for item in self.output],
            "parallel_tool_calls": ctx.parallel_tool_calls if ctx.parallel_tool_calls is not None else True,
            "previous_response_id": ctx.previous_response_id, "prompt_cache_key": ctx.prompt_cache_key,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "safety_identifier": None, "service_tier": "default", "store": ctx.store,
            "temperature": ctx.temperature if ctx.temperature is not None else 1.0,
            "text": _text_format(ctx.text), "tool_choice": ctx.tool_choice, "tools": list(ctx.tools or []),
            "top_logprobs": 0, "top_p": ctx.top_p if ctx.top_p is not None else 1.0,
            "truncation": ctx.truncation or "disabled", "usage": self.usage, "user": ctx.user,
            "metadata": dict(ctx.metadata or {}),
        }

    def assistant_message(self) -> dict[str, Any]:
        """This reply as the chat assistant turn a continued conversation renders."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._texts)}
        if self._reasoning:
            message["reasoning"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = [dict(c) for c in self._calls]
        return message

    @property
    def output_text(self) -> str:
        return "".join(self._texts)

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def feed(self, delta: Delta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if delta.reasoning:
            events += self._write("reasoning", delta.reasoning)
        if delta.content:
            if self._open is None or self._open["type"] != "message":
                if not delta.content.strip():
                    self._pending_space += delta.content
                else:
                    events += self._write("message", self._pending_space + delta.content)
                    self._pending_space = ""
            else:
                events += self._write("message", delta.content)
        for call in delta.tool_calls:
            events += self._close()
            events += self._function_call(call)
        return events

    def finish(self, done: Done) -> list[dict[str, Any]]:
        if not self.output and self._open is None:
            # An empty answer still is a message (clients read ``output_text``).
            events = self._write("message", self._pending_space)
        else:
            events = []
        incomplete = done.done_reason == "length"
        events += self._close(status="incomplete" if incomplete else "completed")
        self.usage = response_usage(done)
        self.completed_at = int(time.time())
        if incomplete:
            self.status = "incomplete"
            self.incomplete_details = {"reason": "max_output_tokens"}
            return events + [self._event("response.incomplete", response=self.response())]
        self.status = "completed"
        return events + [self._event("response.completed", response=self.response())]

    def fail(self, exc: APIError, code: str | None) -> list[dict[str, Any]]:
        """The events for a failure after the stream started: ``error``, then ``response.failed``."""
        self.status = "failed"
        self.error = {"code": code or "server_error", "message": exc.message}
        return [self._event("error", code=code, message=exc.message, param=None),
                self._event("response.failed", response=self.response())]

    # ------------------------------------------------------------------ items
    def _write(self, kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._open is not None and self._open["type"] != kind:
            events += self._close()
        index = len(self.output)
        if self._open is None:
            if kind == "message":
                item = {"id": _item_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                        "content": []}
                part = _output_text("")
            else:
                item = {"id": _item_id("rs"), "type": "reasoning", "summary": [], "content": [],
                        "status": "in_progress"}
                part = {"type": "reasoning_text", "text": ""}
            self._open = {"type": kind, "item": item, "text": []}
            events.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
        self._open["text"].append(text)
        item_id = self._open["item"]["id"]
        if kind == "message":
            self._texts.append(text)
            events.append(self._event("response.output_text.delta", item_id=item_id, output_index=index,
                                      content_index=0, delta=text, logprobs=[]))
        else:
            self._reasoning.append(text)
            events.append(self._event("response.reasoning_text.delta", item_id=item_id, output_index=index,
                                      content_index=0, delta=text))
        return events

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        if self._open is None:
            return []
        kind, item, text = self._open["type"], self._open["item"], "".join(self._open["text"])
        self._open = None
        index = len(self.output)
        if kind == "message":
            part = _output_text(text)
            done = self._event("response.output_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=text, logprobs=[])
        else:
            part = {"type": "reasoning_text", "text": text}
            done = self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=text)
        final = {**item, "status": status, "content": [part]}
        events = [done, self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                    content_index=0, part=part)]
        if kind == "reasoning":
            if self.ctx.encrypted_reasoning:
                final["encrypted_content"] = text
            if self._summarised():
                # No summariser here: the thinking itself is the summary a client asked for.
                summary = {"type": "summary_text", "text": text}
                final["summary"] = [summary]
                events += [self._event("response.reasoning_summary_part.added", item_id=item["id"],
                                       output_index=index, summary_index=0, part={"type": "summary_text", "text": ""}),
                           self._event("response.reasoning_summary_text.delta", item_id=item["id"],
                                       output_index=index, summary_index=0, delta=text),
                           self._event("response.reasoning_summary_text.done", item_id=item["id"],
                                       output_index=index, summary_index=0, text=text),
                           self._event("response.reasoning_summary_part.done", item_id=item["id"],
                                       output_index=index, summary_index=0, part=summary)]
        self.output.append(final)
        return events + [self._event("response.output_item.done", output_index=index, item=final)]

    def _summarised(self) -> bool:
        reasoning = self.ctx.reasoning if isinstance(self.ctx.reasoning, Mapping) else {}
        return reasoning.get("summary") in ("auto", "concise", "detailed")

    def _function_call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        fn = call["function"]
        arguments = fn.get("arguments") or "{}"
        final = call_item(call.get("id") or _item_id("call"), fn["name"], arguments, self.ctx.shapes)
        item = {**final, "status": "in_progress"}
        self._calls.append({"id": final["call_id"], "type": "function",
                            "function": {"name": fn["name"], "arguments": arguments}})
        index = len(self.output)
        self.output.append(final)
        events = [self._event("response.output_item.added", output_index=index, item=item)]
        if final["type"] == "function_call":
            item["arguments"] = ""
            events += [self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                   delta=arguments),
                       self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=index, name=final["name"], arguments=arguments)]
        elif final["type"] == "custom_tool_call":
            item["input"] = ""
            events += [self._event("response.custom_tool_call_input.delta", item_id=item["id"], output_index=index,
                                   delta=final["input"]),
                       self._event("response.custom_tool_call_input.done", item_id=item["id"],
                                   output_index=index, input=final["input"])]
        events.append(self._event("response.output_item.done", output_index=index, item=final))
        return events
