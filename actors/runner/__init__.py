"""Runner processes: one OS process per loaded model, continuous batching inside.

Import the Trio side from :mod:`trillama.actors.runner.client`. This package's ``__init__`` stays
empty on purpose: ``python -m trillama.actors.runner`` imports it in every runner process, which
needs neither Trio nor anything else the client pulls in. See ``docs/runner.md``.
"""
