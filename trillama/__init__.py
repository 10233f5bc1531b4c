"""trillama: an Ollama-compatible model server on Trio."""

__version__ = "0.1.0"

#: The Ollama API level this server implements, as ``GET /api/version`` reports it: clients turn
#: features on by it (numeric semver; ``/v1/messages`` arrived with Ollama 0.33, and the behaviour
#: reference is Ollama at v0.33.0-rc2). trillama's own version is reported beside it.
OLLAMA_API_VERSION = "0.33.0"
