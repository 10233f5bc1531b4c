"""From a request to the prompt text, and from output text back to message chunks.

The template machinery lives in :mod:`trillama.actors.prompt`; this module applies it to a stored
model (its TEMPLATE or GGUF chat template, SYSTEM and MESSAGEs) the way Ollama's handlers do, and
turns template problems and ``think`` values into Ollama's 400s.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Awaitable, Callable, Iterable, Iterator, Sequence

import attrs

from trillama.actors.prompt.messages import Message
from trillama.actors.prompt.render import PromptFormat, TemplateError, truncate_messages
from trillama.actors.prompt.truncate import IMAGE_TOKENS
from trillama.actors.prompt.thinking import ThinkingSplitter, prompt_opens_thinking
from trillama.actors.prompt.toolcalls import ToolCallParser
from trillama.actors.structured import FormatError, grammar_for_tool_call
from trillama.api.errors import APIError

__all__ = ["prompt_format", "build_generate_prompt", "forced_tool_call", "generate_thinking_splitter", "thinking_splitter", "build_chat_prompt", "ChatPrompt", "check_think",
           "parse_messages", "decode_images", "require_vision"]

_THINK_LEVELS = ("high", "medium", "low", "max")


def prompt_format(record: Any) -> PromptFormat:
    info = record.gguf_info()
    history = tuple(Message.from_json(m) for m in (record.messages or []))
    return PromptFormat(
        template=record.template,
        chat_template=getattr(info, "chat_template", None),
        # The runner adds BOS as the tokenizer says; rendering it too would double it.
        bos_token="",
        eos_token=getattr(info, "eos_token", None) or "",
        system=record.system,
        history=history,
    )


def check_think(value: Any, record: Any, model: str) -> bool | str | None:
    """Ollama's ``think`` rules: validate, default on for thinking models, 400 for the others."""
    if value is None:
        return True if "thinking" in (record.capabilities or []) else None
    if isinstance(value, str):
        if value not in _THINK_LEVELS:
            raise APIError(400, f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)')
    elif not isinstance(value, bool):
        raise APIError(400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)')
    if value and "thinking" not in (record.capabilities or []):
        raise APIError(400, f'"{model}" does not support thinking')
    return value


def parse_messages(raw: Sequence[dict[str, Any]]) -> list[Message]:
    messages = []
    for item in raw:
        message = Message.from_json(item)
        if message.role not in ("system", "user", "assistant", "tool"):
            raise APIError(400, f'invalid role "{message.role}": must be one of system, user, assistant, tool')
        messages.append(message)
    return messages


def decode_images(images: Sequence[Any] | None) -> list[bytes]:
    """Base64 image strings (Ollama's ``images``) to bytes; 400 in Ollama's words if one is not."""
    decoded = []
    for image in images or ():
        if isinstance(image, (bytes, bytearray)):
            decoded.append(bytes(image))
            continue
        try:
            decoded.append(base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError, TypeError) as exc:
            raise APIError(400, f"illegal base64 data: {exc}") from None
    return decoded


def require_vision(record: Any, has_images: bool) -> None:
    """400 when images are sent to a model without a vision projector."""
    if has_images and "vision" not in (record.capabilities or []):
        raise APIError(400, f'"{record.name.display}" does not support images (the model has no vision projector)')


def _tag_raw(prompt: str, images: int) -> str:
    """A raw prompt keeps its text; each image it does not mention yet fills an ``[img]``
    placeholder or, failing that, is tagged in front (as a chat message's images are)."""
    prefix = ""
    for i in range(images):
        tag = f"[img-{i}]"
        if tag in prompt:
            continue
        if "[img]" in prompt:
            prompt = prompt.replace("[img]", tag, 1)
        else:
            prefix += tag
    return prefix + prompt


def build_generate_prompt(record: Any, prompt: str, *, system: str | None, template: str | None, suffix: str,
                          raw: bool, has_context: bool, images: int, think: bool | str | None) -> str:
    """The /api/generate prompt text; image ``i`` appears in it as ``[img-i]``."""
    if raw:
        return _tag_raw(prompt, images)
    fmt = prompt_format(record)
    if template:
        fmt = attrs.evolve(fmt, template=template)
    try:
        return fmt.render_generate(prompt, suffix=suffix, system=system, has_context=has_context,
                                   images=[b""] * images, think=think)
    except TemplateError as exc:
        raise APIError(400, f"template error: {exc}") from None


@attrs.define
class OutputParser:
    """Splits streamed model text into ``message`` dicts: thinking, content, and whole tool calls."""

    thinking: ThinkingSplitter | None
    tools: ToolCallParser | None
    _calls: int = 0

    def _messages(self, thinking: str, content: str, flush: bool) -> Iterator[dict[str, Any]]:
        calls: list = []
        if self.tools is not None:
            parsed = self.tools.feed(content)
            content, calls = parsed.content, list(parsed.calls)
            if flush:
                rest = self.tools.flush()
                content, calls = content + rest.content, calls + list(rest.calls)
        if thinking or content:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            yield message
        if calls:
            # A tool call travels whole, in a chunk of its own, with empty content (as Ollama sends it).
            out = []
            for call in calls:
                data = call.as_json()
                data["function"]["index"] = self._calls
                self._calls += 1
                out.append(data)
            yield {"role": "assistant", "content": "", "tool_calls": out}

    def feed(self, text: str) -> Iterable[dict[str, Any]]:
        if self.thinking is None and self.tools is None:
            # Plain text, the common case, once per streamed token: no generator to build.
            return ({"role": "assistant", "content": text},) if text else ()
        thinking, content = "", text
        if self.thinking is not None:
            split = self.thinking.feed(text)
            thinking, content = split.thinking, split.content
        return self._messages(thinking, content, flush=False)

    def flush(self) -> Iterator[dict[str, Any]]:
        thinking, content = "", ""
        if self.thinking is not None:
            split = self.thinking.flush()
            thinking, content = split.thinking, split.content
        return self._messages(thinking, content, flush=True)


@attrs.frozen
class ChatPrompt:
    text: str
    fmt: PromptFormat
    tools: list[dict[str, Any]] | None
    think: bool | str | None
    #: the images of the messages that made it into ``text``, in ``[img-N]`` order
    images: tuple[bytes, ...] = ()

    def output_parser(self) -> OutputParser:
        tools = ToolCallParser(self.tools, self.fmt.tool_call_tag()) if self.tools else None
        return OutputParser(thinking=thinking_splitter(self.fmt, self.text, self.think), tools=tools)


def thinking_splitter(fmt: PromptFormat, prompt: str, think: bool | str | None) -> ThinkingSplitter | None:
    """The splitter of thinking from content for one answer, or ``None`` when nothing thinks.

    Shared by chat and generate: Ollama answers both with a separate ``thinking`` field when
    thinking is on and the template names its tags.
    """
    if not think:
        return None
    opening, closing = fmt.thinking_tags()
    if not (opening and closing):
        return None
    return ThinkingSplitter(opening, closing, started=prompt_opens_thinking(prompt, opening))


def generate_thinking_splitter(record: Any, prompt: str, *, raw: bool, template: str | None,
                               think: bool | str | None) -> ThinkingSplitter | None:
    """:func:`thinking_splitter` for ``/api/generate`` (raw prompts are passed through untouched)."""
    if raw:
        return None
    fmt = prompt_format(record)
    if template:
        fmt = attrs.evolve(fmt, template=template)
    return thinking_splitter(fmt, prompt, think)


async def build_chat_prompt(
    record: Any,
    raw_messages: Sequence[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    think: bool | str | None,
    truncate: bool,
    num_ctx: int,
    count_tokens: Callable[[str, int], Awaitable[list[int] | None]],
) -> ChatPrompt:
    """Assemble (Modelfile SYSTEM and MESSAGEs), truncate to ``num_ctx`` and render.

    ``count_tokens(text, limit)`` (``Lease.tokenize``) gives the tokens, or ``None`` for a text
    with more than ``limit`` of them: truncation only compares, and a bounded answer keeps a huge
    message from being tokenized at all.
    """
    fmt = prompt_format(record)
    messages = fmt.chat_messages(parse_messages(raw_messages))

    def render(msgs: Sequence[Message]) -> str:
        return fmt.render(msgs, tools=tools, think=think)

    async def count(text: str) -> int:
        # Exact up to twice the context: a count past the limit then says by how much, which
        # lets truncation predict the cut (beyond, it only needs to know "too long").
        tokens = await count_tokens(text, 2 * num_ctx)
        return 2 * num_ctx + 1 if tokens is None else len(tokens)

    vision = "vision" in (record.capabilities or [])
    try:
        if truncate:
            kept = await truncate_messages(messages, count, num_ctx, render=render,
                                           image_tokens=IMAGE_TOKENS if vision else 0)
            text, messages = kept.prompt, list(kept.messages)
        else:
            text = render(messages)
    except TemplateError as exc:
        raise APIError(400, f"template error: {exc}") from None
    images = tuple(decode_images([image for m in messages for image in m.images])) if vision else ()
    return ChatPrompt(text=text, fmt=fmt, tools=tools, think=think, images=images)


def forced_tool_call(record: Any, tools: Sequence[dict[str, Any]], name: str | None,
                     think: bool | str | None) -> tuple[str, bool | str | None]:
    """The grammar that makes a tool call the model's whole answer, and the ``think`` to run it with.

    For every protocol's "must call a tool" (OpenAI's ``required`` or a named function,
    Anthropic's ``any`` or ``tool``): the grammar makes the call the very first thing the model
    writes, in the template's own tool-call syntax; a template that opened a thinking block would
    have the call read as thinking, so thinking is turned off.
    """
    try:
        grammar = grammar_for_tool_call(tools, prompt_format(record).tool_call_tag(), only=name)
    except FormatError as exc:
        raise APIError(400, str(exc)) from None
    return grammar, (False if think else think)
