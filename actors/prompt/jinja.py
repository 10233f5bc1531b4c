"""Renders a GGUF ``tokenizer.chat_template`` (Jinja2) for models without a Modelfile TEMPLATE.

Chat templates are written for Hugging Face's renderer, so the environment matches its conventions:
``trim_blocks``/``lstrip_blocks``, loop controls, a ``tojson`` that does not HTML-escape or sort keys,
``raise_exception``, ``strftime_now``, ``{% generation %}`` blocks accepted and ignored, and the
variables ``messages``, ``tools``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` (plus
``enable_thinking`` when the request says). The environment is sandboxed and immutable because the
template comes from a model file, which is untrusted input.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from trillama.actors.prompt.gotemplate import TemplateError
from trillama.actors.prompt.messages import Message
from trillama.logs import get_logger

__all__ = ["render_jinja", "jinja_messages"]

log = get_logger(__name__)


class _GenerationBlocks(jinja2.ext.Extension):
    """Accepts ``{% generation %}…{% endgeneration %}`` (training-mask markers) and renders the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Sequence[str] | None = None,
    sort_keys: bool = False,
) -> str:
    sep = tuple(separators) if separators is not None else None
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=sep, sort_keys=sort_keys)


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlocks],
        autoescape=False,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template: line {exc.lineno}: {exc.message}") from None


def jinja_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the shape Hugging Face chat templates expect (images are tags in the text)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.thinking:
            d["thinking"] = m.thinking
            d["reasoning_content"] = m.thinking
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": dict(c.function.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_name:
            d["name"] = m.tool_name
            d["tool_name"] = m.tool_name
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def render_jinja(
    chat_template: str,
    messages: Sequence[Message],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render a chat template; raises :class:`TemplateError` on syntax, runtime or sandbox errors."""
    template = _compile(chat_template)
    context: dict[str, Any] = {
        "messages": jinja_messages(messages),
        "tools": [dict(t) for t in tools] if tools else None,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if think is not None:
        context["enable_thinking"] = bool(think)
        if isinstance(think, str):
            context["reasoning_effort"] = think
    try:
        return template.render(context)
    except _TemplateRaised as exc:
        raise TemplateError(f"chat template: {exc}") from None
    except jinja2.exceptions.SecurityError as exc:
        log.warning("chat_template_sandbox_violation", error=str(exc))
        raise TemplateError(f"chat template: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as exc:
        raise TemplateError(f"chat template: {type(exc).__name__}: {exc}") from None
