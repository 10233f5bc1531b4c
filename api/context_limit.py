"""A prompt longer than the context: counted, and refused in each protocol's own words.

The runner refuses a prompt its context cannot hold (``Failed`` of kind ``context_exceeded``)
before it decodes anything. :func:`context_exceeded` turns that refusal into
:class:`ContextExceeded`, an :class:`APIError` that carries both numbers (the prompt's length and
the context it had) and the model's trained maximum, so each protocol can answer in the words its
clients act on:

* native routes: a message with both numbers and the settings that raise the context
  (``OLLAMA_CONTEXT_LENGTH``, ``PARAMETER num_ctx``, ``options.num_ctx``);
* ``/v1/messages``: Anthropic's ``prompt is too long: N tokens > M maximum`` (Claude Code answers
  it by compacting the conversation);
* ``/v1/*``: OpenAI's ``code: "context_length_exceeded"``.

Counting stays cheap in memory whatever the text's length: a text is tokenized in pieces of at most
:data:`PIECE_CHARS` characters cut after a newline (the runner's tokenizer needs memory in
proportion to what it is given at once). Tokens never span a line break that starts a new line of
text, so the sum is the count of the whole; a single line longer than a piece may be off by a token
at each cut. It is exact up to :data:`EXACT_CHARS` characters (half a million tokens or so, many
times any context); past that the first :data:`EXACT_CHARS` are counted and the rest estimated in
proportion, so a 200 MB prompt costs seconds, not minutes.
"""

from __future__ import annotations

from typing import Any

import attrs

from trillama.api.errors import APIError

__all__ = ["context_full", "ContextExceeded", "PIECE_CHARS", "EXACT_CHARS", "count_text_tokens", "context_exceeded", "trained_context",
           "native_message", "how_to_raise"]

#: The most characters given to the tokenizer at once when counting a long text.
PIECE_CHARS = 1 << 17
#: Texts up to this many characters are counted exactly; longer ones are estimated from it.
EXACT_CHARS = 1 << 21


def trained_context(record: Any) -> int:
    """The context length the model was trained with (its GGUF ``context_length``), 0 if unknown."""
    info = record.gguf_info() if callable(getattr(record, "gguf_info", None)) else None
    return int(getattr(info, "context_length", 0) or 0)


def how_to_raise(limit: int, trained: int) -> str:
    """What raises a context of ``limit`` tokens, given the model's trained maximum (0: unknown)."""
    settings = "OLLAMA_CONTEXT_LENGTH on the server, PARAMETER num_ctx in a Modelfile, or options.num_ctx"
    if trained and limit >= trained:
        return f"use a model with a longer context (this one is at its trained maximum, {trained} tokens)"
    upto = f" (up to the model's trained {trained} tokens)" if trained else ""
    return f"raise the context{upto} with {settings}"


def native_message(tokens: int, limit: int, trained: int, exact: bool = True) -> str:
    """Ollama's words (its message starts the same way), then both numbers and every setting that
    raises the context."""
    about = "" if exact else "about "
    return (f"the prompt is longer than the context length: {about}{tokens} tokens, and the model's context "
            f"is {limit} tokens; shorten the prompt or {how_to_raise(limit, trained)}")


@attrs.define(eq=False)
class ContextExceeded(APIError):
    """A prompt of ``tokens`` tokens against a context of ``limit`` (``trained`` the model's maximum)."""

    tokens: int = 0
    limit: int = 0
    trained: int = 0
    #: whether ``tokens`` is a count (else an estimate: the text was longer than EXACT_CHARS)
    exact: bool = True


def _pieces(text: str) -> list[str]:
    """``text`` in runs of at most :data:`PIECE_CHARS` characters, each cut just after a newline
    that starts a new line of text (never between two newlines, which one token may join)."""
    out: list[str] = []
    start = 0
    while len(text) - start > PIECE_CHARS:
        window = text[start:start + PIECE_CHARS]
        cut = -1
        at = len(window)
        while True:
            at = window.rfind("\n", 0, at)
            if at <= 0:
                break
            if window[at - 1] != "\n" and at + 1 < len(window) and window[at + 1] not in "\n ":
                cut = at + 1
                break
        if cut <= 0:
            cut = PIECE_CHARS
        out.append(text[start:start + cut])
        start += cut
    out.append(text[start:])
    return out


async def count_text_tokens(lease: Any, text: str) -> tuple[int, bool]:
    """How many tokens the runner makes of prompt ``text`` (special tokens parsed, BOS added when
    the model adds one and the text does not start with it), and whether that is exact: past
    :data:`EXACT_CHARS` characters the rest is estimated from the part counted."""
    counted_text = text[:EXACT_CHARS]
    total = 0
    first: list[int] = []
    for piece in _pieces(counted_text):
        tokens = await lease.tokenize(piece, len(piece.encode("utf-8", errors="replace")) + 8, add_special=False)
        assert tokens is not None  # never more tokens than bytes
        if not first:
            first = tokens[:1]
        total += len(tokens)
    exact = len(counted_text) == len(text)
    if not exact:
        total = round(total * len(text) / max(1, len(counted_text)))
    runner = lease.actor.runner
    if runner is not None and runner.facts is not None and runner.facts.add_bos:
        bos = (await lease.tokenize("", add_special=True))[:1]
        if bos and first != bos:
            total += 1
    return total, exact


async def context_exceeded(lease: Any, prompt: str, num_ctx: int, extra_tokens: int = 0) -> ContextExceeded:
    """The error for ``prompt`` (after ``extra_tokens`` given as tokens) refused by a context of
    ``num_ctx`` tokens, with its real length."""
    tokens, exact = await count_text_tokens(lease, prompt)
    tokens += extra_tokens
    runner = lease.actor.runner
    trained = int(runner.facts.n_ctx_train) if runner is not None and runner.facts is not None else 0
    tokens = max(tokens, num_ctx + 1)  # the runner said it does not fit (an image's tokens count too)
    return ContextExceeded(400, native_message(tokens, num_ctx, trained, exact), tokens=tokens, limit=num_ctx,
                           trained=trained, exact=exact)


def context_full(done: Any, num_predict: Any) -> bool:
    """Did generation stop because the context was full (a job run without context shift), rather
    than because it reached ``num_predict``? The runner reports both as ``done_reason: "length"``."""
    if done.done_reason != "length":
        return False
    limit = int(num_predict) if num_predict is not None else -1
    return not (0 <= limit <= done.eval_count)
