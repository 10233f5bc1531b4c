"""trillama: an Ollama-compatible model server on Trio."""

__version__ = "0.1.0"
