"""Ollama's chat truncation: drop the oldest messages until the rendered prompt fits the context.

System messages are never dropped (those from the dropped part are kept, in order, ahead of the
rest) and the last message is always kept, even if it alone is too long; the caller then decides
whether that is a 400. Each candidate is rendered and tokenised in full, as Ollama does, because
templates add text around every message and only the real tokenizer knows the count.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence

import attrs

from trillama.actors.prompt.messages import Message
from trillama.logs import get_logger

__all__ = ["Truncation", "truncate_messages", "IMAGE_TOKENS"]

log = get_logger(__name__)

IMAGE_TOKENS = 768  # what Ollama counts per image for a model with a vision projector

CountTokens = Callable[[str], "int | Awaitable[int]"]


@attrs.frozen
class Truncation:
    messages: tuple[Message, ...]
    prompt: str
    tokens: int  # tokens of ``prompt`` plus the image allowance
    dropped: int  # non-system messages left out


async def truncate_messages(
    messages: Sequence[Message],
    count_tokens: CountTokens,
    limit: int,
    *,
    render: Callable[[Sequence[Message]], str],
    image_tokens: int = 0,
) -> Truncation:
    """Keep the longest suffix of ``messages`` (plus earlier system messages) that fits ``limit``.

    ``count_tokens`` may be a plain function or a coroutine function (e.g. a call into the model
    actor's tokenizer); ``render`` turns a message list into the prompt text. ``image_tokens`` is
    added per image in the kept messages (pass :data:`IMAGE_TOKENS` for vision models).
    """
    msgs = list(messages)
    last = len(msgs) - 1
    if last < 0:
        prompt = render([])
        return Truncation((), prompt, await _count(count_tokens, prompt), 0)
    chosen: list[Message] = msgs
    prompt = ""
    tokens = 0
    start = 0
    for start in range(len(msgs)):
        system = [m for m in msgs[:start] if m.role == "system"]
        chosen = system + msgs[start:]
        prompt = render(chosen)
        tokens = await _count(count_tokens, prompt)
        tokens += image_tokens * sum(len(m.images) for m in msgs[start:])
        if tokens <= limit or start == last:
            break
    dropped = len(msgs) - len(chosen)
    if dropped:
        log.debug("chat_truncated", dropped=dropped, kept=len(chosen), tokens=tokens, limit=limit)
    return Truncation(tuple(chosen), prompt, tokens, dropped)


async def _count(count_tokens: CountTokens, prompt: str) -> int:
    result = count_tokens(prompt)
    if inspect.isawaitable(result):
        result = await result
    return int(result)  # type: ignore[arg-type]
