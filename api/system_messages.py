"""System messages inside a conversation: kept where they stand when the template can show them
there, moved into the system prompt when it cannot, never dropped.

Agents put instructions in the middle of a conversation (Claude Code's ``role: "system"``
messages in ``messages``, Codex's ``developer`` items between turns). Templates differ in what
they do with one: a Go template that renders system turns in its message loop shows it in place;
one that renders only ``.System`` shows it in the system prompt (Ollama joins every system
message there); a GGUF Jinja template may refuse it outright ("system message must be at the
beginning"), and a template may leave it out altogether. So the conversation is rendered as it
is first, and only if the template fails or the instruction's text is missing from the prompt is
it rendered again with the system messages joined into one leading system prompt, and, for a
template that shows no system prompt at all, in front of the first user message. Each move is
logged.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

from trillama.api.errors import APIError
from trillama.api.prompting import ChatPrompt, build_chat_prompt
from trillama.logs import get_logger

__all__ = ["render_conversation", "inner_system_texts"]

log = get_logger("trillama.api.system_messages")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def inner_system_texts(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The texts of the system messages that come after the conversation has started."""
    out: list[str] = []
    started = False
    for message in messages:
        if message.get("role") != "system":
            started = True
        elif started and _text(message).strip():
            out.append(_text(message))
    return out


def _shown(text: str, prompt: str) -> bool:
    """Is ``text`` in ``prompt``? Its start and its end are looked for, so a template that trims or
    wraps a message still counts as showing it."""
    text = text.strip()
    if len(text) <= 160:
        return text in prompt
    return text[:80] in prompt and text[-80:] in prompt


def _merged(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every system message joined, in order, into one system message in front."""
    texts = [_text(m) for m in messages if m.get("role") == "system" and _text(m).strip()]
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    return ([{"role": "system", "content": "\n\n".join(texts)}] if texts else []) + rest


def _in_first_user(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every system text in front of the first user message (for templates with no system prompt)."""
    texts = [_text(m) for m in messages if m.get("role") == "system" and _text(m).strip()]
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    for message in rest:
        if message.get("role") == "user":
            system = "\n\n".join(texts)
            content = message.get("content")
            if isinstance(content, list):
                message["content"] = [{"type": "text", "text": system}, *content]
            else:
                message["content"] = f"{system}\n\n{content or ''}"
            return rest
    return [{"role": "user", "content": "\n\n".join(texts)}] + rest


async def render_conversation(
    record: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    think: bool | str | None,
    truncate: bool,
    num_ctx: int,
    count_tokens: Callable[[str, int], Awaitable[list[int] | None]],
) -> ChatPrompt:
    """:func:`~trillama.api.prompting.build_chat_prompt`, keeping every system message's text."""

    async def build(msgs: Sequence[dict[str, Any]]) -> ChatPrompt:
        return await build_chat_prompt(record, msgs, tools=tools, think=think, truncate=truncate,
                                       num_ctx=num_ctx, count_tokens=count_tokens)

    inner = inner_system_texts(messages)
    if not inner:
        return await build(messages)
    try:
        prompt = await build(messages)
        if all(_shown(text, prompt.text) for text in inner):
            return prompt
        reason = "the template leaves them out where they stand"
    except APIError as exc:
        if not exc.message.startswith("template error"):
            raise
        reason = exc.message
    texts = [_text(m) for m in messages if m.get("role") == "system" and _text(m).strip()]
    prompt = await build(_merged(messages))
    where = "system_prompt"
    if not all(_shown(text, prompt.text) for text in texts):
        prompt = await build(_in_first_user(messages))
        where = "first_user_message"
    log.info("system_messages_moved", model=record.name.display, count=len(inner), to=where, reason=reason)
    return prompt
