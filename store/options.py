"""The option table: every model option Ollama knows, with its type.

Two readers share it. The Modelfile parser turns ``PARAMETER temperature 0.7`` text into a typed
value (``invalid float value [x]`` when it can't), and the inference side checks the JSON
``options`` of a request (``option "x" must be of type float32``). Keeping both on one table means a
parameter a Modelfile accepts is one a request may also send, and vice versa.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from trillama.logs import get_logger
from trillama.store.errors import InvalidRequest
from trillama.gofmt import go_float32

__all__ = [
    "OPTION_TYPES",
    "RUNNER_OPTIONS",
    "DEPRECATED_PARAMETERS",
    "OptionError",
    "coerce_options",
    "parse_parameter",
]

log = get_logger("trillama.store.options")

#: name → one of ``int``, ``float``, ``bool``, ``str``, ``list`` (of strings). Ollama's
#: ``api.Options`` at v0.33: the runner (load-time) group first, then the sampling group.
OPTION_TYPES: dict[str, str] = {
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
    # trillama: slots for this model alone, over OLLAMA_NUM_PARALLEL (Ollama lacks it, ollama#8842)
    "num_parallel": "int",
    # trillama: prompt-lookup draft tokens per step at most, 0 = no speculative decoding
    "draft_max": "int",
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "list",
}

#: Options that only take effect when a model is loaded; changing one means a reload.
RUNNER_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
     "num_parallel"}
)

#: Modelfile parameters older Ollama accepted; the parser warns and drops them.
DEPRECATED_PARAMETERS = frozenset(
    {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat",
     "mirostat_tau", "mirostat_eta"}
)

_JSON_TYPE_NAMES = {"int": "integer", "bool": "boolean", "float": "float32", "str": "string",
                    "list": "array"}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class OptionError(ValueError):
    """A request option has the wrong JSON type; the message is Ollama's."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def int64_problem(number: int) -> str | None:
    """Why an integer cannot be a Go ``int`` (64 bits), or ``None``: the one rule for every
    integer option and token limit, whatever the protocol calls it. Past 64 bits Ollama silently
    wraps; here it is a 400 that says so."""
    if -(2**63) <= number < 2**63:
        return None
    return f"is out of range: {number} does not fit in a 64-bit integer"


def coerce_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check request ``options`` against the table and return the known ones, typed.

    Unknown keys are dropped (Ollama logs and ignores them) and ``null`` values are skipped.
    Numbers are accepted for integer options and truncated, as Go's JSON decoding makes them.
    """
    out: dict[str, Any] = {}
    if not options:
        return out
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if kind is None:
            log.warning("invalid option provided", option=key)
            continue
        if value is None:
            continue
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f'option "{key}" must be of type integer')
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f'option "{key}" must be of type integer')
            number = int(value)
            problem = int64_problem(number)
            if problem:
                raise OptionError(f'option "{key}" {problem}')
            out[key] = number
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f'option "{key}" must be of type float32')
            out[key] = float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise OptionError(f'option "{key}" must be of type boolean')
            out[key] = value
        elif kind == "str":
            if not isinstance(value, str):
                raise OptionError(f'option "{key}" must be of type string')
            out[key] = value
        else:
            if not isinstance(value, list):
                raise OptionError(f'option "{key}" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise OptionError(f'option "{key}" must be of an array of strings')
            out[key] = list(value)
    return out


def parse_parameter(name: str, text: str) -> Any:
    """Type one Modelfile ``PARAMETER`` value (Ollama's ``api.FormatParams``).

    ``stop`` comes back as a one-element list so repeated ``stop`` lines can be concatenated.
    Raises :class:`InvalidRequest` with Ollama's wording, which quotes the value Go-slice style.
    """
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise InvalidRequest(f"unknown parameter '{name}'")
    if kind == "int":
        if not _INT_RE.fullmatch(text):
            raise InvalidRequest(f"invalid int value [{text}]")
        value = int(text)
        if not -(2**63) <= value < 2**63:
            raise InvalidRequest(f"invalid int value [{text}]")
        return value
    if kind == "float":
        if not _FLOAT_RE.fullmatch(text):
            raise InvalidRequest(f"invalid float value [{text}]")
        value = go_float32(float(text))
        if math.isinf(value):
            # Out of float32 range: Go's ParseFloat reports ErrRange. (NaN and Inf spelled out are
            # refused by the pattern above: no JSON parameters blob could hold them.)
            raise InvalidRequest(f"invalid float value [{text}]")
        return value
    if kind == "bool":
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidRequest(f"invalid bool value [{text}]")
    if kind == "list":
        return [text]
    return text


def json_type_name(name: str) -> str:
    """The word Ollama uses for an option's type in error messages."""
    return _JSON_TYPE_NAMES[OPTION_TYPES[name]]
