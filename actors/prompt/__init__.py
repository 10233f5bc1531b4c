"""Prompt construction for Ollama-compatible chat and generate requests.

Nothing here knows HTTP or models; it turns messages into prompt text and model output back into
content, thinking and tool calls:

* ``gotemplate`` — Ollama's Go text/template dialect (``golex``/``goparse``/``goexec``/``gofuncs``,
  with Go value semantics in ``govalues`` and Ollama's template data in ``tmpldata``);
* ``render`` — Ollama's prompt assembly (Messages and legacy templates, generate, fill-in-middle),
  with ``jinja`` for GGUF chat templates, ``truncate`` for context-length truncation and
  ``capabilities`` for what a template implies (tools, insert, thinking, tool-call tag);
* ``toolcalls`` and ``thinking`` — streaming parsers for the model's output;
* ``messages`` — the message and tool-call values all of these share.
"""
