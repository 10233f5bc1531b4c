"""What the native and the OpenAI routes share: model lookup, leases, the event stream, embeddings.

There is one inference path. ``/api/generate``, ``/api/chat`` and ``/v1/*`` all resolve a model,
take a lease from the scheduler and read the same runner events through :func:`run_job`; they
differ only in how they shape requests and chunks. Errors are raised as :class:`APIError` with
Ollama's status codes and messages; each route decides how they look on the wire.
"""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Mapping

import trio
from quart import current_app

from trillama.actors.model import Lease, LoadFailed, ModelGone, ServerBusy
from trillama.actors.runner.messages import Done, Failed, GenerateJob, Piece, RunnerRequestError
from trillama.api import access
from trillama.api.context import services
from trillama.api.context_limit import context_exceeded
from trillama.api.errors import SERVER_BUSY, APIError
from trillama.durations import DurationError, parse_keep_alive
from trillama.logs import get_logger

__all__ = [
    "resolve_model",
    "model_lease",
    "run_job",
    "embed_inputs",
    "with_model_parameters",
    "unit_length",
    "parse_keep_alive_field",
    "coerce_request_options",
    "check_token_limit",
    "now_rfc3339",
    "Timer",
]

log = get_logger("trillama.api.completion")


#: the last whole second and its text: every streamed chunk carries a timestamp, and formatting
#: the date part anew for each (``strftime``, ~8 µs) was a fair share of what a token cost
_last_second: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """UTC time as Go's ``time.Time`` JSON would print it (RFC 3339 with nanoseconds, ``Z``)."""
    global _last_second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached, stamp = _last_second
    if cached != seconds:
        stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, stamp)
    if not nanos:
        return stamp + "Z"
    return f"{stamp}.{nanos:09d}".rstrip("0") + "Z"


class Timer:
    """Request-relative durations in nanoseconds, as Ollama reports them."""

    def __init__(self) -> None:
        self.started = time.perf_counter_ns()
        self.loaded: int | None = None

    def mark_loaded(self) -> None:
        self.loaded = time.perf_counter_ns()

    @property
    def load_duration(self) -> int:
        return (self.loaded or time.perf_counter_ns()) - self.started

    @property
    def total_duration(self) -> int:
        return time.perf_counter_ns() - self.started


def resolve_model(name: str | None, *, empty_status: int = 404, empty_message: str | None = None) -> Any:
    """The stored model for ``name``, or the 400/404 Ollama answers for it."""
    from trillama.store import InvalidName, ModelNotFound

    store = services().store
    if not name:
        raise APIError(empty_status, empty_message or f"model '{name or ''}' not found")
    from trillama.store.errors import BlobMissing

    try:
        return store.resolve(name).require_blobs()
    except InvalidName:
        raise APIError(400, "invalid model name") from None
    except ModelNotFound:
        raise APIError(404, f"model '{name}' not found") from None
    except BlobMissing as exc:
        raise APIError(404, exc.message) from None


def parse_keep_alive_field(value: Any) -> float | None:
    try:
        return parse_keep_alive(value)
    except DurationError as exc:
        raise APIError(400, str(exc)) from None


def coerce_request_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate request ``options`` with Ollama's messages; unknown keys are dropped."""
    from trillama.store.options import OptionError, coerce_options

    if not options:
        return {}
    if not isinstance(options, Mapping):
        raise APIError(400, "json: cannot unmarshal into Go struct field .options of type map[string]interface {}")
    try:
        return dict(coerce_options(options))
    except OptionError as exc:
        raise APIError(400, str(exc)) from None


def with_model_parameters(record: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """A request's options over its model's Modelfile ``PARAMETER`` values (the request wins)."""
    return {**(record.parameters or {}), **options}


def check_token_limit(field: str, value: Any) -> None:
    """400 for a token limit (``max_tokens``, ``max_output_tokens``…) no 64-bit integer holds, by
    the rule native ``num_predict`` follows; values up to that mean "until the context is full"."""
    from trillama.store.options import int64_problem

    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        problem = int64_problem(int(value))
        if problem:
            raise APIError(400, f"{field} {problem}")


@asynccontextmanager
async def model_lease(
    record: Any, options: Mapping[str, Any], keep_alive: float | None, timer: Timer | None = None
) -> AsyncIterator[Lease]:
    """Hold a loaded model for the duration of the block, mapping scheduler errors to HTTP."""
    scheduler = services().scheduler
    assert scheduler is not None
    entry = access.current()
    if entry is not None:
        entry.model = record.name.display
    asked = time.perf_counter()
    try:
        lease = await scheduler.acquire(record, options, keep_alive,
                                        tenant=entry.key_id if entry is not None else None)
    except ServerBusy:
        raise APIError(503, SERVER_BUSY, headers={"Retry-After": "1"}) from None
    except LoadFailed as exc:
        raise APIError(500, str(exc)) from None
    except ModelGone as exc:
        raise APIError(503, f"model {exc} is unloading, please try again", headers={"Retry-After": "1"}) from None
    except trio.Cancelled:
        log.info("request_canceled", status=499, model=record.name.display)
        raise
    if timer is not None:
        timer.mark_loaded()
    if entry is not None:
        entry.load_s = time.perf_counter() - asked
    try:
        yield lease
    except ServerBusy:  # its queue place went to another key's request (ModelActor.admit)
        raise APIError(503, SERVER_BUSY, headers={"Retry-After": "1"}) from None
    finally:
        # A generation still running here lost its consumer (the client left): stop it now, not
        # when its generator is collected, and log what it did.
        await lease.stop_generation()
        if entry is not None:
            entry.queued, entry.queue_s = lease.queued, lease.queued_s
            if lease.cancelled is not None:
                cancelled = lease.cancelled
                entry.prompt_tokens, entry.generated_tokens = cancelled.prompt_eval_count, cancelled.eval_count
                entry.done_reason = cancelled.done_reason
        lease.release()


async def run_job(lease: Lease, job: GenerateJob) -> AsyncIterator[Piece | Done]:
    """The runner's events for ``job``; a failure becomes an ``APIError`` with the right status.

    Pieces that are already waiting when one arrives are joined into one (see
    :func:`_with_waiting_pieces`). The channel is read here, not through another generator: every
    layer of async generator costs each streamed token another resumption (issue 14).
    """
    # Taken now: the rest of the stream may run after Quart has left the app context.
    metrics = current_app.extensions["trillama.metrics"]
    entry = access.current()
    try:
        async with lease.generate(job) as events:
            async for event in events:
                if type(event) is Piece:
                    event, after = _with_waiting_pieces(events, event)
                    if entry is not None:
                        entry.mark_first_token()
                    yield event
                    if after is None:
                        continue
                    event = after
                if isinstance(event, Failed):
                    if event.kind == "context_exceeded":
                        # With both numbers; each protocol words it its own way (api/context_limit.py).
                        raise await context_exceeded(lease, job.prompt or "", lease.num_ctx_for(job.num_ctx),
                                                     extra_tokens=len(job.prompt_tokens or ()))
                    raise APIError(_failure_status(event.kind), event.message)
                if isinstance(event, Done):
                    if entry is not None:
                        entry.prompt_tokens, entry.generated_tokens = event.prompt_eval_count, event.eval_count
                        entry.done_reason = event.done_reason
                    metrics.observe_tokens(lease.actor.name, event.prompt_eval_count, event.eval_count)
                    metrics.observe_drafts(lease.actor.name, event.draft_count, event.draft_accepted)
                    metrics.observe_prompt(lease.actor.name, event.prompt_eval_count, event.cached_count, event.reuse)
                    yield event
                    return
                yield event
    except ModelGone:
        raise APIError(503, "model was unloaded, please try again", headers={"Retry-After": "1"}) from None
    except LoadFailed as exc:
        raise APIError(500, str(exc)) from None
    raise APIError(500, "model runner ended the request without a result")


def _with_waiting_pieces(events: trio.MemoryReceiveChannel, first: Piece) -> tuple[Piece, Any]:
    """``first`` joined with the pieces already waiting behind it, and the event that ended them.

    A client that reads slower than the model writes (or a decode step that confirms several
    drafted tokens at once) leaves a backlog of pieces; sending them as one chunk costs one write
    instead of many, and the text is the same. A client that keeps up sees one chunk per piece,
    exactly as before. The second value is the first non-piece event taken from the channel
    (``None`` if there was none), which the caller must handle next.
    """
    pieces = None
    while True:
        try:
            after = events.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            after = None
            break
        if type(after) is not Piece:
            break
        if pieces is None:
            pieces = [first]
        pieces.append(after)
    return (first if pieces is None else _joined(pieces)), after


def _joined(pieces: list[Piece]) -> Piece:
    logprobs = [lp for piece in pieces for lp in piece.logprobs or ()]
    wanted = any(piece.logprobs is not None for piece in pieces)
    return Piece("".join(piece.text for piece in pieces), logprobs if wanted else None)


def _failure_status(kind: str) -> int:
    return 400 if kind in ("context_exceeded", "bad_grammar", "bad_request") else 500


def check_finite(vectors: list[list[float]]) -> None:
    for vector in vectors:
        if any(math.isnan(x) or math.isinf(x) for x in vector):
            raise APIError(400, "embedding contains NaN or Inf values")


async def embed_inputs(record: Any, inputs: list[str], *, truncate: bool, options: dict, keep_alive: Any,
                       timer: Timer) -> tuple[list[list[float]], int]:
    """Embed ``inputs`` with ``record``'s model (its Modelfile parameters under ``options``); returns raw
    vectors and the total token count. ``/api/embed``, ``/api/embeddings`` and ``/v1/embeddings``."""
    async with model_lease(record, with_model_parameters(record, options), keep_alive, timer) as lease:
        if not inputs:
            return [], 0
        try:
            vectors, counts = await lease.embed(inputs, truncate)
        except RunnerRequestError as exc:  # e.g. over-long input with truncate off
            if exc.kind == "context_exceeded":
                raise APIError(400, "the input length exceeds the context length") from None
            raise APIError(500, str(exc)) from None
    check_finite(vectors)
    access.note(prompt_tokens=sum(counts))
    return vectors, sum(counts)


def unit_length(vector: list[float]) -> list[float]:
    """An embedding scaled to length 1, as Ollama returns them (cosine similarity becomes a dot
    product); a zero vector stays as it is."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
