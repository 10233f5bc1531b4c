"""OpenAI-compatible routes under ``/v1``: chat completions, completions, embeddings, models, responses.

One module per endpoint family (``chat``, ``completions``, ``embeddings``, ``models``,
``responses`` with its ``responses_input``, ``responses_output`` and ``response_store``), with
``common`` (the blueprint, shared fields and helpers), ``messages`` and ``tools`` shared by them.

Why a translation layer and not a second server: half of the ecosystem (the ``openai`` SDKs,
LangChain's OpenAI classes, benchmark tools) only speaks OpenAI's dialect. Every route here turns
an OpenAI body into the same values the native routes build (a stored model, merged Ollama
options, a rendered prompt, a :class:`~trillama.actors.runner.messages.GenerateJob`) and reads
the same runner events through :func:`~trillama.api.completion.run_job`; only the shapes differ.

Where Ollama's own layer is known to be wrong or silent, this one is explicit: ``tool_choice`` is
honoured (``required`` and a named function constrain decoding so the model *must* call a tool),
Ollama's ``options`` and ``keep_alive`` are accepted as extra body fields, ``n`` > 1 is refused with
a 400 instead of being ignored, and ``/v1/models`` lists ``[]`` rather than ``null`` when empty.
Errors are raised as :class:`~trillama.api.errors.APIError`; the app renders them in OpenAI's
``{"error": {...}}`` shape with the status that makes the SDK raise the matching exception.
"""

from __future__ import annotations

# Importing the route modules registers their routes on the shared blueprint.
from trillama.api.openai import chat, completions, embeddings, models, responses  # noqa: F401
from trillama.api.openai.chat import ChatCompletionRequest
from trillama.api.openai.common import blueprint, stop_list
from trillama.api.openai.completions import CompletionRequest
from trillama.api.openai.embeddings import EmbeddingRequest, float32_base64
from trillama.api.openai.messages import native_messages
from trillama.api.openai.tools import ToolChoice, ollama_format, parse_tool_choice

__all__ = [
    "blueprint",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "ToolChoice",
    "native_messages",
    "parse_tool_choice",
    "ollama_format",
    "stop_list",
    "float32_base64",
]
