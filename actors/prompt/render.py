"""Ollama's prompt assembly: from request messages to the exact text the model sees.

Three ways a prompt is built, as in Ollama:

* **Messages templates** (the template mentions ``.Messages``): executed once with ``.System`` (all
  system messages joined by a blank line), ``.Messages`` (consecutive same-role messages merged with a
  blank line, tool results kept apart), ``.Tools``, ``.Think``, ``.ThinkLevel``, ``.IsThinkSet`` and
  an empty ``.Response``.
* **Legacy templates** (``.System``/``.Prompt``/``.Response``): executed once per
  system/user/assistant turn group and concatenated; the final turn uses the tree cut after
  ``{{ .Response }}`` so the prompt ends where the answer starts.
* **No TEMPLATE**: the GGUF Jinja chat template, or failing that ``{{ .Prompt }}``.

Images become ``[img-N]`` markers in the message text (or replace an ``[img]`` placeholder), numbered
across the conversation. Fill-in-middle (``suffix``) runs the template once with ``.Prompt`` and
``.Suffix`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from trillama.actors.prompt import tmpldata
from trillama.actors.prompt.capabilities import (
    chat_template_capabilities,
    chat_template_thinking_tags,
    chat_template_tool_call_tag,
    template_capabilities,
    thinking_tags,
    tool_call_tag,
)
from trillama.actors.prompt.gotemplate import DEFAULT_TEMPLATE, Template, TemplateError, parse_template
from trillama.actors.prompt.jinja import render_jinja
from trillama.actors.prompt.messages import Message
from trillama.actors.prompt.thinking import ThinkingSplitter
from trillama.actors.prompt.truncate import Truncation, truncate_messages

__all__ = [
    "render_chat",
    "render_generate",
    "chat_messages",
    "generate_messages",
    "collate",
    "tag_images",
    "think_values",
    "PromptFormat",
    "TemplateError",
    "truncate_messages",
    "Truncation",
    "template_capabilities",
    "tool_call_tag",
    "thinking_tags",
    "chat_template_capabilities",
]

Think = bool | str | None
Tools = Sequence[Mapping[str, Any]] | None

_THINK_LEVELS = ("high", "medium", "low", "max")


def think_values(think: Think) -> dict[str, Any]:
    """``.Think``, ``.ThinkLevel`` and ``.IsThinkSet`` for a request's ``think`` value.

    ``true`` means level ``medium``; a level string means thinking on at that level.
    """
    if think is True:
        level = "medium"
    elif isinstance(think, str):
        level = think
    else:
        level = ""
    enabled = think is True or (isinstance(think, str) and think in _THINK_LEVELS)
    return {"Think": enabled, "ThinkLevel": level, "IsThinkSet": think is not None}


# -- message assembly ------------------------------------------------------------------------------


def chat_messages(
    messages: Sequence[Message],
    *,
    system_default: str | None = None,
    history: Sequence[Message] = (),
    filter_think: bool = False,
) -> list[Message]:
    """The conversation a chat request renders: Modelfile MESSAGEs, then the request's messages,
    with the Modelfile SYSTEM in front unless the request starts with its own system message.

    ``filter_think`` strips ``<think>…</think>`` from assistant turns before the last user turn (Ollama
    does this for the qwen3 and deepseek-r1 families).
    """
    msgs = list(history) + list(messages)
    if system_default and (not messages or messages[0].role != "system"):
        msgs.insert(0, Message("system", system_default))
    if filter_think:
        last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1)
        for i, m in enumerate(msgs[:last_user]):
            if m.role == "assistant":
                splitter = ThinkingSplitter("<think>", "</think>")
                content = splitter.feed(m.content).content + splitter.flush().content
                msgs[i] = attrs.evolve(m, content=content)
    return msgs


def generate_messages(
    prompt: str,
    *,
    system: str | None = None,
    system_default: str | None = None,
    history: Sequence[Message] = (),
    has_context: bool = False,
    images: Sequence[Any] = (),
) -> list[Message]:
    """The conversation /api/generate renders: system (request's, else the Modelfile's), the
    Modelfile MESSAGEs unless the request carries a ``context``, then the prompt as a user turn."""
    msgs: list[Message] = []
    if system:
        msgs.append(Message("system", system))
    elif system_default:
        msgs.append(Message("system", system_default))
    if not has_context:
        msgs.extend(history)
    msgs.append(Message("user", prompt, images=tuple(images)))
    return msgs


def tag_images(messages: Sequence[Message]) -> list[Message]:
    """Reference each image in its message's text as ``[img-N]``, numbered across the conversation."""
    out: list[Message] = []
    counter = 0
    for m in messages:
        if not m.images:
            out.append(m)
            continue
        prefix = ""
        content = m.content
        for _ in m.images:
            tag = f"[img-{counter}]"
            counter += 1
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        out.append(attrs.evolve(m, content=prefix + content))
    return out


def collate(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    """All system text joined by blank lines, and the messages with same-role runs merged.

    Tool results stay separate because each carries its own tool name and call id.
    """
    system = [m.content for m in messages if m.role == "system"]
    # Runs are joined once each (adding to the run's text message by message copied it again for
    # every message: quadratic in a long run, issue 24).
    runs: list[list[Message]] = []
    for m in messages:
        if runs and runs[-1][0].role == m.role and m.role != "tool":
            runs[-1].append(m)
        else:
            runs.append([m])
    merged = [run[0] if len(run) == 1 else attrs.evolve(run[0], content="\n\n".join(m.content for m in run))
              for run in runs]
    return "\n\n".join(system), merged


# -- Go template execution -------------------------------------------------------------------------


def _execute(t: Template, messages: Sequence[Message], tools: Tools, think: Think) -> str:
    system, merged = collate(messages)
    thinking = think_values(think)
    if t.uses("messages"):
        data = {
            "System": system,
            "Messages": tmpldata.messages_value(merged),
            "Tools": tmpldata.tools_value(tools),
            "Response": "",
            **thinking,
        }
        return t.execute(data)

    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        parts.append(t.execute({**turn, **thinking}))
        turn.update(System="", Prompt="", Response="")

    for m in merged:
        if m.role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m.content
        elif m.role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m.content
        elif m.role == "assistant":
            turn["Response"] = m.content
    parts.append(t.execute_until_response({**turn, **thinking}))
    return "".join(parts)


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    *,
    tools: Tools = None,
    think: Think = None,
    system_default: str | None = None,
    history: Sequence[Message] = (),
    chat_template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render a chat prompt.

    ``template`` is the Modelfile TEMPLATE (Go syntax); when it is empty the GGUF ``chat_template``
    (Jinja) is used, and when both are empty, ``{{ .Prompt }}``. ``system_default`` and ``history``
    are the Modelfile SYSTEM and MESSAGEs (see :func:`chat_messages`; pass them here only when not
    truncating, since truncation must see the assembled list). Raises :class:`TemplateError`.
    """
    if system_default or history:
        messages = chat_messages(messages, system_default=system_default, history=history)
    messages = tag_images(messages)
    if not template and chat_template:
        return render_jinja(
            chat_template,
            messages,
            tools=tools,
            think=think,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    t = parse_template(template or DEFAULT_TEMPLATE)
    return _execute(t, messages, tools, think)


def render_generate(
    template: str | None,
    prompt: str,
    *,
    suffix: str = "",
    system: str | None = None,
    system_default: str | None = None,
    history: Sequence[Message] = (),
    has_context: bool = False,
    images: Sequence[Any] = (),
    think: Think = None,
    chat_template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render an /api/generate prompt (not raw mode: a raw prompt is used as sent).

    With ``suffix`` the template runs once with ``.Prompt``/``.Suffix`` (fill-in-middle); otherwise
    the request becomes a conversation (:func:`generate_messages`) rendered like a chat.
    """
    if suffix and prompt:
        if not template and chat_template:
            raise TemplateError("this model's template does not support insert (no .Suffix)")
        t = parse_template(template or DEFAULT_TEMPLATE)
        return t.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **think_values(think)})
    msgs = generate_messages(
        prompt,
        system=system,
        system_default=system_default,
        history=history,
        has_context=has_context,
        images=images,
    )
    return render_chat(
        template,
        msgs,
        think=think,
        chat_template=chat_template,
        bos_token=bos_token,
        eos_token=eos_token,
    )


# -- a model's prompt format, bundled --------------------------------------------------------------


@attrs.frozen
class PromptFormat:
    """Everything about one model's prompting: its TEMPLATE or GGUF chat template, SYSTEM, MESSAGEs.

    A convenience for the API and actor layers so they pass one value around instead of six.
    """

    template: str | None = None
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    system: str | None = None
    history: tuple[Message, ...] = attrs.field(default=(), converter=tuple)

    @property
    def uses_jinja(self) -> bool:
        return not self.template and bool(self.chat_template)

    def validate(self) -> None:
        """Parse the template now; raises :class:`TemplateError` (``400 template error: …`` on create)."""
        if self.template:
            parse_template(self.template)

    def capabilities(self) -> set[str]:
        if self.uses_jinja:
            return chat_template_capabilities(self.chat_template or "")
        return template_capabilities(self.template or DEFAULT_TEMPLATE)

    def tool_call_tag(self) -> str:
        if self.uses_jinja:
            return chat_template_tool_call_tag(self.chat_template or "")
        return tool_call_tag(self.template or DEFAULT_TEMPLATE)

    def thinking_tags(self) -> tuple[str, str]:
        if self.uses_jinja:
            return chat_template_thinking_tags(self.chat_template or "")
        return thinking_tags(self.template or DEFAULT_TEMPLATE)

    def chat_messages(self, messages: Sequence[Message], *, filter_think: bool = False) -> list[Message]:
        return chat_messages(messages, system_default=self.system, history=self.history, filter_think=filter_think)

    def render(self, messages: Sequence[Message], *, tools: Tools = None, think: Think = None) -> str:
        """Render an already assembled conversation (the ``render`` for :func:`truncate_messages`)."""
        return render_chat(
            self.template,
            messages,
            tools=tools,
            think=think,
            chat_template=self.chat_template,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def render_generate(
        self,
        prompt: str,
        *,
        suffix: str = "",
        system: str | None = None,
        has_context: bool = False,
        images: Sequence[Any] = (),
        think: Think = None,
    ) -> str:
        return render_generate(
            self.template,
            prompt,
            suffix=suffix,
            system=system,
            system_default=self.system,
            history=self.history,
            has_context=has_context,
            images=images,
            think=think,
            chat_template=self.chat_template,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
