"""The model-actor path, seen from ``/v1/messages``: lease, render, run, parse.

This is the same path ``/api/chat`` takes (``model_lease`` → ``build_chat_prompt`` →
``job_from_options`` → ``run_job`` → the prompt's output parser); only its output is shaped for
Anthropic: :class:`Delta` values (text, thinking, whole tool calls) and one closing
:class:`Finish` with the runner's counts and the stop sequence that ended the answer, if any.

``count_tokens`` renders the prompt exactly as a generation would (the whole conversation: this
route never truncates) and counts it the way the runner will tokenize it, so the count equals the
request's ``prompt_eval_count`` when nothing of it is cached, and is returned also when it is more
than the context holds.
"""

from __future__ import annotations

import secrets
from contextlib import aclosing
from typing import Any, AsyncIterator, Mapping

import attrs

from trillama.actors.model import Lease
from trillama.actors.prompt.truncate import IMAGE_TOKENS
from trillama.actors.runner.messages import Done, Piece
from trillama.actors.sampling import job_from_options
from trillama.api.anthropic.plan import Plan
from trillama.api.completion import Timer, model_lease, run_job
from trillama.api.context_limit import context_full, count_text_tokens
from trillama.api.prompting import ChatPrompt
from trillama.api.system_messages import render_conversation

__all__ = ["Delta", "Finish", "ToolUse", "message_events", "count_prompt_tokens", "new_tool_use_id",
           "matched_stop"]


def new_tool_use_id() -> str:
    """``toolu_`` and 24 hex digits, the shape of Anthropic's tool-use ids."""
    return "toolu_" + secrets.token_hex(12)


@attrs.frozen
class ToolUse:
    id: str
    name: str
    input: Mapping[str, Any]


@attrs.frozen
class Delta:
    """One step of the answer, already split by the output parser."""

    text: str = ""
    thinking: str = ""
    tool_uses: tuple[ToolUse, ...] = ()


@attrs.frozen
class Finish:
    """The end of the answer: the runner's final event, the stop sequence that matched, and whether
    it stopped because the context was full (not because ``max_tokens`` ran out)."""

    done: Done
    stop_sequence: str | None = None
    context_full: bool = False


async def _render(plan: Plan, lease: Lease) -> tuple[ChatPrompt, int]:
    """The whole conversation as the prompt, never truncated: a prompt longer than the context is
    Anthropic's ``prompt is too long`` error (agents compact the conversation when they get it),
    not an answer to a conversation whose beginning was silently cut."""
    num_ctx = lease.num_ctx_for(plan.options.get("num_ctx"))
    prompt = await render_conversation(plan.record, plan.messages, tools=plan.tools, think=plan.think,
                                       truncate=False, num_ctx=num_ctx, count_tokens=lease.tokenize)
    return prompt, num_ctx


async def count_prompt_tokens(plan: Plan, timer: Timer) -> int:
    """The number of prompt tokens ``plan`` would make the model read (images as Ollama counts
    them), also when that is more than the context holds, as Anthropic's count does."""
    async with model_lease(plan.record, plan.options, plan.keep_alive, timer) as lease:
        prompt, _ = await _render(plan, lease)
        tokens, _ = await count_text_tokens(lease, prompt.text)
        return tokens + IMAGE_TOKENS * len(prompt.images)


def matched_stop(generated: str, emitted: str, stops: tuple[str, ...]) -> str | None:
    """Which stop sequence ended an answer whose text the runner cut at ``emitted``.

    The runner stops *before* a stop sequence and reports only ``done_reason: stop``, the same as
    an end-of-turn token. The generated tokens (``Done.context``) still hold the matched text, so
    the sequence is the one that starts where the emitted text ends; none means end of turn.
    """
    rest = generated[len(emitted):] if generated.startswith(emitted) else generated
    found = [s for s in stops if rest.startswith(s)]
    if found:
        return max(found, key=len)
    positions = [(at, s) for s in stops if (at := rest.find(s)) >= 0]
    return min(positions)[1] if positions else None


async def _stop_sequence(lease: Lease, done: Done, emitted: str, stops: tuple[str, ...]) -> str | None:
    if done.done_reason != "stop" or not stops or not done.eval_count:
        return None
    generated = await lease.detokenize(list(done.context[-done.eval_count:]))
    return matched_stop(generated, emitted, stops)


async def message_events(plan: Plan, timer: Timer) -> AsyncIterator[Delta | Finish]:
    """The answer to ``plan`` as deltas, ending with :class:`Finish`."""
    async with model_lease(plan.record, plan.options, plan.keep_alive, timer) as lease:
        prompt, num_ctx = await _render(plan, lease)
        # No context shift: a full context ends the answer (model_context_window_exceeded) rather
        # than silently dropping the start of the conversation to go on.
        job = job_from_options(plan.options, prompt=prompt.text, grammar=plan.grammar, num_ctx=num_ctx,
                               images=prompt.images, shift=False)
        parser = prompt.output_parser()
        emitted: list[str] = []
        calls = 0

        def delta(message: Mapping[str, Any]) -> Delta | None:
            nonlocal calls
            uses = []
            for call in message.get("tool_calls") or ():
                if plan.choice.single and calls >= 1:
                    continue  # disable_parallel_tool_use: the first call only
                calls += 1
                fn = call["function"]
                uses.append(ToolUse(id=new_tool_use_id(), name=fn["name"], input=dict(fn.get("arguments") or {})))
            thinking = "" if plan.hide_thinking else message.get("thinking") or ""
            out = Delta(text=message.get("content") or "", thinking=thinking, tool_uses=tuple(uses))
            return out if (out.text or out.thinking or out.tool_uses) else None

        async with aclosing(run_job(lease, job)) as events:
            async for event in events:
                if isinstance(event, Piece):
                    emitted.append(event.text)
                    for message in parser.feed(event.text):
                        if (item := delta(message)) is not None:
                            yield item
                else:
                    cut_call = (parser.tools is not None and parser.tools.in_call
                                and (event.done_reason == "length" or plan.choice.forced))
                    for message in parser.flush():
                        if cut_call:  # an unfinished call (cut by the limit): no template markup as text
                            message = {**message, "content": ""}
                        if (item := delta(message)) is not None:
                            yield item
                    yield Finish(done=event, stop_sequence=await _stop_sequence(lease, event, "".join(emitted),
                                                                                plan.stop),
                                 context_full=context_full(event, plan.options.get("num_predict")))
                    return
