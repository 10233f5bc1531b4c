"""The values that cross the server↔runner boundary, as the Trio side sees them.

They live in their own module (no Trio, no llama.cpp imports) so that both halves can share them:
the runner process unpacks jobs with the same field names the client packs, and the client builds
events from the runner's compact tuples. cattrs does the (un)structuring at that edge only.
"""

from __future__ import annotations

from pathlib import Path
import attrs
import cattrs

__all__ = [
    "RUNNER_DIED_MESSAGE",
    "PROMPT_TOO_LONG",
    "TEXT_BYTES_PER_TOKEN",
    "RunnerSpec",
    "GenerateJob",
    "Piece",
    "Done",
    "Failed",
    "SlotState",
    "RunnerFacts",
    "RunnerError",
    "RunnerRequestError",
    "Event",
    "converter",
]

#: What Ollama says when its runner vanishes mid-request; clients and tests match on it.
RUNNER_DIED_MESSAGE = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal "
    "error, check ollama server logs for details"
)


#: Bytes of text per token beyond which the *server* refuses a prompt without sending it to the
#: runner: a text longer than ``num_ctx × TEXT_BYTES_PER_TOKEN`` cannot fit. No vocabulary has
#: tokens anywhere near this long (the longest here are 48-162 bytes raw), so nothing that could
#: fit is refused; the runner then applies its vocabulary's exact bound before tokenizing.
TEXT_BYTES_PER_TOKEN = 2048

#: Ollama's words for a prompt the context cannot hold (llm/llama_server.go).
PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the "
    "prompt, adjust the context length in settings, or use a model with a longer context length"
)

@attrs.frozen
class RunnerSpec:
    """Everything a runner process needs to load one model; a different spec means a new process.

    ``n_ctx`` is the context *per slot*: every one of the ``n_parallel`` slots can hold that many
    tokens (Ollama's ``num_ctx`` with ``OLLAMA_NUM_PARALLEL`` slots).
    """

    model_path: Path = attrs.field(converter=Path)
    n_ctx: int = attrs.field(validator=attrs.validators.ge(1))
    n_parallel: int = attrs.field(validator=[attrs.validators.ge(1), attrs.validators.le(256)])
    n_threads: int = attrs.field(validator=attrs.validators.ge(1))
    n_batch: int = attrs.field(default=512, validator=attrs.validators.ge(1))
    n_gpu_layers: int = 0
    flash_attn: bool | None = None
    kv_cache_type: str = attrs.field(
        default="f16", validator=attrs.validators.in_(("f16", "q8_0", "q4_0"))
    )
    use_mmap: bool = True
    adapters: tuple[Path, ...] = attrs.field(
        default=(), converter=lambda xs: tuple(Path(x) for x in xs)
    )
    #: the vision projector (mmproj GGUF) that lets the model see images, if it has one
    projector: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    #: take prefixes from other slots and the prompt cache (False: each slot reuses only its own)
    share_prefixes: bool = True
    #: bytes of saved sequence states the runner keeps in RAM (0: no prompt cache)
    prompt_cache_bytes: int = 0
    #: where saved states also go, to survive reloads and restarts (None: no disk tier)
    prompt_cache_dir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    prompt_cache_disk_bytes: int = 0
    #: spare KV streams where sequences are parked (models whose saved states do not restore)
    n_park: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen
class GenerateJob:
    """One completion request, already rendered to text by the prompt layer.

    Defaults are Ollama's option defaults, so a caller only sets what the request set.
    ``prompt_tokens`` go *before* the tokens of ``prompt`` (Ollama's ``context`` field);
    ``add_bos`` ``None`` means "as the model's tokenizer says" and is ignored when
    ``prompt_tokens`` are given (they already start the sequence). ``images`` are encoded image
    files; the prompt refers to image N as ``[img-N]`` (only a runner with a projector takes them).
    """

    prompt: str = ""
    prompt_tokens: list[int] | None = None
    add_bos: bool | None = None
    num_predict: int = -1
    stop: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    grammar: str | None = None
    logprobs: bool = False
    top_logprobs: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.le(20)])
    num_keep: int = 4
    shift: bool = True
    num_ctx: int | None = None
    #: prompt-lookup draft tokens per step at most (0: no speculation); None: the runner's default
    draft_max: int | None = None
    images: tuple[bytes, ...] = attrs.field(default=(), converter=tuple, repr=lambda xs: f"<{len(xs)} images>")


@attrs.frozen
class Piece:
    """Text that is safe to show (no partial UTF-8, no possible start of a stop string).

    ``logprobs`` holds one Ollama-shaped entry per generated token whose text is (now) released,
    or ``None`` when the job did not ask for them.
    """

    text: str
    logprobs: list[dict] | None = None


@attrs.frozen
class Done:
    """The last event of a successful job.

    ``prompt_eval_count`` counts the prompt tokens actually evaluated; ``cached_count`` the ones
    reused from the slot's cache, so their sum is the prompt length. ``context`` is prompt plus
    generated tokens (Ollama's ``context``).
    """

    done_reason: str
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    context: list[int]
    cached_count: int
    #: prompt-lookup draft tokens put in batches for this job, and how many the model confirmed
    draft_count: int = 0
    draft_accepted: int = 0
    #: where the reused prompt prefix came from: "slot" (the job's own slot), "copy" (another
    #: slot, copied in the KV cache), "ram" or "disk" (the prompt cache); "" when nothing was reused
    reuse: str = ""
    #: the runner's prompt cache (RAM tier) after this job, for the scheduler's memory ledger
    cache_bytes: int = 0


@attrs.frozen
class Failed:
    """The last event of a job that could not complete.

    ``kind`` is machine-readable: ``context_exceeded`` (the API answers 400), ``bad_grammar``,
    ``bad_request``, ``decode_failed``, ``runner_died``, ``internal``.
    """

    message: str
    kind: str


Event = Piece | Done | Failed


@attrs.frozen
class SlotState:
    """One slot as the runner sees it at the moment of the request (for tests and /api/ps-ish views)."""

    seq: int
    busy: bool
    job_id: str | None
    n_cached: int
    #: KV cells llama.cpp holds for this sequence, and the cells the sequence may use
    n_cells: int = 0
    n_ctx: int = 0


@attrs.frozen
class RunnerFacts:
    """What the runner learnt while loading: sizes for the memory ledger and for /api/show."""

    n_ctx: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_parallel: int
    n_batch: int
    load_seconds: float
    model_bytes: int
    rss_bytes: int
    vram_bytes: int
    add_bos: bool
    kv_unified: bool
    can_shift: bool
    vision: bool = False
    #: whether saved states of this model restore exactly, so the runner keeps a prompt cache
    prompt_cache: bool = False


class RunnerError(Exception):
    """The runner process could not be started or the model could not be loaded."""


class RunnerRequestError(Exception):
    """A request to a running runner (tokenize, embed…) failed; ``kind`` as in :class:`Failed`."""

    def __init__(self, message: str, kind: str = "internal") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook(Path, lambda value, _type: Path(value))
    return conv


#: The one converter used at the process edge (msgpack frames carry plain dicts and lists).
converter = _make_converter()
