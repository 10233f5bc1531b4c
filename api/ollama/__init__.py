"""Ollama's native API: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/ps``, the model
store's routes and pull and push, each a blueprint beside the ``openai`` and ``anthropic`` ones.

:mod:`.inference` (generate, chat, embed, embeddings, ps, runners), :mod:`.manage` (tags, show,
create, copy, delete, blobs) and :mod:`.registry` (pull, push). What every protocol shares (the
app, error shapes, decoding, streaming, leases) stays in :mod:`trillama.api` itself.
"""
