"""The model-actor path, seen from ``/v1/messages``: lease, render, run, parse.

This is the same path ``/api/chat`` takes (``model_lease`` → ``build_chat_prompt`` →
``job_from_options`` → ``run_job`` → the prompt's output parser); only its output is shaped for
Anthropic: :class:`Delta` values (text, thinking, whole tool calls) and one closing
:class:`Finish` with the runner's counts and the stop sequence that ended the answer, if any.

``count_tokens`` renders the prompt exactly as a generation would (same truncation to the
context) and counts it the way the runner will tokenize it, so the count equals the request's
``prompt_eval_count`` when nothing of it is cached.
"""

from __future__ import annotations

import secrets
from contextlib import aclosing
from typing import Any, AsyncIterator, Mapping

import attrs

from trillama.actors.model import Lease
from trillama.actors.prompt.truncate import IMAGE_TOKENS
from trillama.actors.runner.messages import PROMPT_TOO_LONG, Done, Piece
from trillama.actors.sampling import job_from_options
from trillama.api.anthropic.plan import Plan
from trillama.api.completion import Timer, model_lease, run_job
from trillama.api.errors import APIError
from trillama.api.prompting import ChatPrompt, build_chat_prompt

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
    """The end of the answer: the runner's final event and the stop sequence that matched."""

    done: Done
    stop_sequence: str | None = None


async def _render(plan: Plan, lease: Lease) -> tuple[ChatPrompt, int]:
    num_ctx = lease.num_ctx_for(plan.options.get("num_ctx"))
    prompt = await build_chat_prompt(plan.record, plan.messages, tools=plan.tools, think=plan.think,
                                     truncate=True, num_ctx=num_ctx, count_tokens=lease.tokenize)
    return prompt, num_ctx


async def _token_count(lease: Lease, text: str, num_ctx: int) -> int:
    """The prompt's length as the runner builds it: the text's tokens (special tokens parsed, as
    the runner parses them), plus BOS when the model adds one and the text does not start with it.

    Bounded by the context, as a generation is: a prompt the model could not read is the same 400
    here as on ``/v1/messages``, and a huge message never costs the runner memory in proportion
    to its length (issue 12).
    """
    tokens = await lease.tokenize(text, num_ctx, add_special=False)
    if tokens is None:
        raise APIError(400, PROMPT_TOO_LONG)
    runner = lease.actor.runner
    if runner is not None and runner.facts is not None and runner.facts.add_bos:
        bos = (await lease.tokenize("", add_special=True))[:1]
        if bos and tokens[:1] != bos:
            return len(tokens) + 1
    return len(tokens)


async def count_prompt_tokens(plan: Plan, timer: Timer) -> int:
    """The number of prompt tokens ``plan`` would make the model read (images as Ollama counts them)."""
    async with model_lease(plan.record, plan.options, plan.keep_alive, timer) as lease:
        prompt, num_ctx = await _render(plan, lease)
        return await _token_count(lease, prompt.text, num_ctx) + IMAGE_TOKENS * len(prompt.images)


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
        job = job_from_options(plan.options, prompt=prompt.text, grammar=plan.grammar, num_ctx=num_ctx,
                               images=prompt.images)
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
            out = Delta(text=message.get("content") or "", thinking=message.get("thinking") or "",
                        tool_uses=tuple(uses))
            return out if (out.text or out.thinking or out.tool_uses) else None

        async with aclosing(run_job(lease, job)) as events:
            async for event in events:
                if isinstance(event, Piece):
                    emitted.append(event.text)
                    for message in parser.feed(event.text):
                        if (item := delta(message)) is not None:
                            yield item
                else:
                    for message in parser.flush():
                        if (item := delta(message)) is not None:
                            yield item
                    yield Finish(done=event, stop_sequence=await _stop_sequence(lease, event, "".join(emitted),
                                                                                plan.stop))
                    return
