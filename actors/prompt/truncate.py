"""Ollama's chat truncation: drop the oldest messages until the rendered prompt fits the context.

System messages are never dropped (those from the dropped part are kept, in order, ahead of the
rest) and the last message is always kept, even if it alone is too long; the caller then decides
whether that is a 400. Each candidate is rendered and tokenised in full, as Ollama does, because
templates add text around every message and only the real tokenizer knows the count.

Which candidates: Ollama renders and counts one candidate per message (from the newest back),
and a first version here did the same from the oldest forward, so a conversation of ``n``
messages that does not fit cost ``n`` renders and ``n`` tokenizations of up to ``n`` messages each:
quadratic, 44 s for 1,000 short messages and hours for 10,000 (issue 24). The answer is the
first (oldest) cut whose prompt fits, and the token count only grows as messages are added, so
the cut is searched for instead: the whole conversation first (one render when it fits, the
common case), then the last message alone, then cuts predicted from the exact counts so far and
each message's length (a secant on "tokens per character"), halving the range when a prediction
does not, and galloping out from the fitting side if a prediction lands far past the limit. A
search takes a handful of renders, each about the size of the kept part plus the prediction's
error; the conversation itself is walked a few times in linear passes.
"""

from __future__ import annotations

import bisect
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence

import attrs

from trillama.actors.prompt.messages import Message
from trillama.logs import get_logger

__all__ = ["Truncation", "truncate_messages", "IMAGE_TOKENS"]

log = get_logger(__name__)

IMAGE_TOKENS = 768  # what Ollama counts per image for a model with a vision projector

#: Characters a message adds around its text in a typical template (role markers, separators).
_MESSAGE_OVERHEAD = 16

CountTokens = Callable[[str], "int | Awaitable[int]"]


@attrs.frozen
class Truncation:
    messages: tuple[Message, ...]
    prompt: str
    tokens: int  # tokens of ``prompt`` plus the image allowance
    dropped: int  # non-system messages left out
    #: candidates rendered and counted to find the cut (for tests and benchmarks)
    probes: int = 1


def _weight(message: Message) -> int:
    """About how much text a message puts in the prompt, in characters (only ratios matter)."""
    weight = len(message.content) + len(message.thinking) + _MESSAGE_OVERHEAD
    if message.tool_calls:
        weight += len(json.dumps([call.as_json() for call in message.tool_calls], default=str))
    return weight


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
    actor's tokenizer); a count above ``limit`` need only be some number above it, though an exact
    one up to twice the limit finds the cut in fewer renders (counts beyond that are taken as
    "too long" only). ``render`` turns a message
    list into the prompt text. ``image_tokens`` is added per image in the kept messages (pass
    :data:`IMAGE_TOKENS` for vision models).
    """
    msgs = list(messages)
    last = len(msgs) - 1
    if last < 0:
        prompt = render([])
        return Truncation((), prompt, await _count(count_tokens, prompt), 0)

    system_at = [i for i, m in enumerate(msgs) if m.role == "system"]
    # Suffix sums from each cut on: text weight of what the cut keeps (system messages excluded:
    # they are kept wherever the cut is) and its images.
    weight_from = [0] * (len(msgs) + 1)
    images_from = [0] * (len(msgs) + 1)
    for i in range(last, -1, -1):
        m = msgs[i]
        weight_from[i] = weight_from[i + 1] + (0 if m.role == "system" else _weight(m))
        images_from[i] = images_from[i + 1] + len(m.images)

    measured: dict[int, tuple[int, str, list[Message]]] = {}

    async def measure(start: int) -> int:
        kept_system = [msgs[i] for i in system_at[: bisect.bisect_left(system_at, start)]]
        chosen = kept_system + msgs[start:]
        prompt = render(chosen)
        tokens = await _count(count_tokens, prompt) + image_tokens * images_from[start]
        measured[start] = (tokens, prompt, chosen)
        return tokens

    # ``fits`` is the oldest cut known to fit, ``over`` the newest known not to: the answer is
    # ``fits`` once they are neighbours.
    if await measure(0) <= limit or last == 0:
        return _result(msgs, 0, measured, limit)
    over, fits = 0, last
    if await measure(last) > limit:
        return _result(msgs, last, measured, limit)

    def exact(cut: int) -> bool:
        # A count past twice the limit may be only "too long" (a bounded count): not a number
        # to predict with.
        return measured[cut][0] <= 2 * limit

    halving, gap, overshot = False, 1, False
    while fits - over > 1:
        width = fits - over
        if exact(over):  # both ends counted: predict between them, halving when that stalls
            start = (over + fits) // 2 if halving else _predicted(over, fits, measured, exact, limit,
                                                                  weight_from, images_from, image_tokens)
        elif overshot:  # a prediction went far past the limit: gallop out from what fits
            start, gap = max(over + 1, fits - gap), gap * 2
        else:
            start = _predicted(over, fits, measured, exact, limit, weight_from, images_from, image_tokens)
        if await measure(start) <= limit:
            fits = start
        else:
            over = start
            overshot = not exact(start)
        halving = exact(over) and not halving and (fits - over) * 2 > width
    return _result(msgs, fits, measured, limit)


def _predicted(over: int, fits: int, measured: dict, exact: Callable[[int], bool], limit: int,
               weight_from: list[int], images_from: list[int], image_tokens: int) -> int:
    """The cut whose prompt should hold ``limit`` tokens, from the measured counts.

    Tokens are taken to grow with the text weight a cut keeps, at the rate between the fitting cut
    and the nearest other cut counted exactly (the too-long one if it was, else another that
    fits), or failing both, the fitting cut's own tokens per weight.
    """
    def text_tokens(cut: int) -> float:
        return measured[cut][0] - image_tokens * images_from[cut]

    rate = text_tokens(fits) / max(1, weight_from[fits])
    others = [cut for cut in measured if cut != fits and exact(cut)]
    if others:
        nearest = min(others, key=lambda cut: abs(weight_from[cut] - weight_from[fits]))
        span = weight_from[nearest] - weight_from[fits]
        if span != 0 and (text_tokens(nearest) - text_tokens(fits)) / span > 0:
            rate = (text_tokens(nearest) - text_tokens(fits)) / span
    room = limit - measured[fits][0]  # tokens still free at the fitting cut
    # The oldest cut in (over, fits) whose predicted count stays within the limit.
    lo, hi = over + 1, fits
    while lo < hi:
        mid = (lo + hi) // 2
        extra = rate * (weight_from[mid] - weight_from[fits]) + image_tokens * (images_from[mid] - images_from[fits])
        if extra <= room:
            hi = mid
        else:
            lo = mid + 1
    return min(max(lo, over + 1), fits - 1)


def _result(msgs: list[Message], start: int, measured: dict, limit: int) -> Truncation:
    tokens, prompt, chosen = measured[start]
    dropped = len(msgs) - len(chosen)
    if dropped:
        log.debug("chat_truncated", dropped=dropped, kept=len(chosen), tokens=tokens, limit=limit,
                  probes=len(measured))
    return Truncation(tuple(chosen), prompt, tokens, dropped, probes=len(measured))


async def _count(count_tokens: CountTokens, prompt: str) -> int:
    result = count_tokens(prompt)
    if inspect.isawaitable(result):
        result = await result
    return int(result)  # type: ignore[arg-type]
