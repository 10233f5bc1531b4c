"""The store's view of Go templates, answered by the real parser.

The store refuses a TEMPLATE that does not parse and lists the capabilities a template implies,
but it sits below this package and cannot import the parser; it declares what it needs as
``trillama.store.templates.TemplateInspector`` and the server hands it this one. Using the parser
that renders prompts means create refuses exactly the templates that would fail at chat time, in
the same words.
"""

from __future__ import annotations

import attrs

from trillama.actors.prompt.capabilities import chat_template_capabilities, template_capabilities
from trillama.actors.prompt.gotemplate import TemplateError, parse_template

__all__ = ["GoTemplateInspector"]

#: The order ``/api/show`` and ``/api/tags`` list template capabilities in (Ollama's).
_ORDER = ("tools", "insert", "thinking")


@attrs.frozen
class GoTemplateInspector:
    """Satisfies ``TemplateInspector`` with :func:`parse_template` and :func:`template_capabilities`."""

    def check(self, text: str) -> None:
        """Raise :class:`TemplateError` (a ``ValueError``) with Go's message if ``text`` does not parse."""
        parse_template(text)

    def capabilities(self, text: str) -> list[str]:
        """``tools``/``insert``/``thinking`` as the template implies them; none if it does not parse.

        A stored template can predate the check (or come from another server), and one broken
        model must still list; it simply enables nothing.
        """
        try:
            found = template_capabilities(text)
        except TemplateError:
            return []
        return [capability for capability in _ORDER if capability in found]

    def chat_template_capabilities(self, chat_template: str) -> list[str]:
        """The same capabilities read off a GGUF Jinja chat template (Ollama's substring rules)."""
        found = chat_template_capabilities(chat_template)
        return [capability for capability in _ORDER if capability in found]
