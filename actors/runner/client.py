"""The Trio side of a runner process: spawn it, talk to it, notice when it dies.

One :class:`Runner` is one OS process with one model loaded. It owns four background tasks —
stdout reader (frames → events), stderr reader (log tail), stdin writer, and the process waiter —
and those tasks need an owner. The preferred one is :meth:`Runner.open`::

    async with Runner.open(spec) as runner:
        async with aclosing(runner.run_job("job-1", GenerateJob(prompt="Hi"))) as events:
            async for event in events:
                ...

which opens its own nursery; :meth:`Runner.start` puts the tasks in a nursery the caller owns.

Routing is by id: each job has an unbounded memory channel the stdout reader pushes into, so a
slow consumer never stalls the reader (and through it every other stream of the model). The
channel may be the consumer's own (:meth:`Runner.submit_job`): the reader then delivers each
token straight to the task that writes it to the client, with no task in between, which is what
a streamed token costs the server (issue 14).
Commands go through an outbox channel drained by the writer task, which is why leaving a job
early can send ``cancel`` synchronously from a ``finally`` even while being cancelled.

When the process exits, every job still in flight gets one :class:`Failed` with
:data:`RUNNER_DIED_MESSAGE` (kind ``runner_died``) unless the exit was asked for, pending
requests raise :class:`RunnerRequestError`, and :attr:`Runner.died` is set.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import attrs
import trio

from trillama.actors.runner import protocol as P
from trillama.actors.runner.spawn import ChildProcess, spawn
from trillama.actors.runner.messages import (
    RUNNER_DIED_MESSAGE,
    TEXT_BYTES_PER_TOKEN,
    Done,
    Event,
    Failed,
    GenerateJob,
    Piece,
    RunnerError,
    RunnerFacts,
    RunnerRequestError,
    RunnerSpec,
    SlotState,
    converter,
)
from trillama.logs import get_logger, log_format

__all__ = [
    "Runner",
    "JobHandle",
    "RunnerSpec",
    "GenerateJob",
    "Piece",
    "Done",
    "Failed",
    "SlotState",
    "RunnerFacts",
    "RunnerError",
    "RunnerRequestError",
    "RUNNER_DIED_MESSAGE",
]

log = get_logger("trillama.actors.runner")

#: stderr lines kept for error messages (a failed load explains itself in its last lines)
_STDERR_TAIL = 40
#: longest stderr line kept or forwarded whole (bytes)
_MAX_LINE = 64 * 1024
_READ_CHUNK = 65536


@attrs.define(eq=False)
class JobHandle:
    """A generation in flight in the runner, delivering its events into ``channel``.

    ``finished`` is set once the job is over for this side: its :class:`Done` or :class:`Failed`
    was delivered, it was cancelled, or the runner died. Whoever owns the handle may
    :meth:`cancel` it at any time; after ``finished`` that does nothing.
    """

    runner: "Runner"
    job_id: str
    channel: trio.MemorySendChannel
    finished: trio.Event = attrs.Factory(trio.Event)
    #: after :meth:`cancel`: set when the runner has answered it (or died); ``cancelled_counts``
    #: is then the job's final event (``done_reason "cancel"``, or the result that crossed the
    #: cancel), or ``None`` if the runner died first
    cancel_answered: trio.Event = attrs.Factory(trio.Event)
    cancelled_counts: "Done | None" = None

    def cancel(self) -> None:
        """Stop the job: the runner frees its slot at the next decode step; no more events come."""
        if self.finished.is_set():
            return
        self.runner._forget_job(self.job_id)
        self._end()

    def _end(self) -> None:
        self.channel.close()
        self.finished.set()


@attrs.define(eq=False)
class _Pending:
    event: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: tuple[str, str] | None = None


class Runner:
    """A running runner process. Create with :meth:`open` or :meth:`start`, never directly."""

    def __init__(self, spec: RunnerSpec, process: ChildProcess, *, forward_stderr: bool) -> None:
        self.spec = spec
        self._process = process
        self.pid: int = process.pid
        self.facts: RunnerFacts | None = None
        #: the decode threads last asked for (:meth:`set_threads`); the spec's until then
        self.threads: int = spec.n_threads
        #: the prompt cache as the runner last reported it (``status``, ``set_cache_limit``)
        self.cache_stats: dict = {}
        #: set once the process has exited, for whatever reason
        self.died = trio.Event()
        #: why it exited ("exited with code 1", "killed by signal 9"…), None while running
        self.exit_message: str | None = None
        self.returncode: int | None = None
        self._forward_stderr = forward_stderr
        self._closing = False
        self._load_error: str | None = None
        self._ready = trio.Event()
        self._stdout_done = trio.Event()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._jobs: dict[str, JobHandle] = {}
        #: cancelled jobs whose answer (their counts) has not arrived yet
        self._cancelling: dict[str, JobHandle] = {}
        self._requests: dict[int, _Pending] = {}
        self._req_ids = itertools.count(1)
        self._out_send, self._out_recv = trio.open_memory_channel(math.inf)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    @asynccontextmanager
    async def open(cls, spec: RunnerSpec, *, verbose: bool = False, forward_stderr: bool = True) -> AsyncIterator["Runner"]:
        """Start a runner whose background tasks live in a nursery of this context manager.

        The runner is stopped and reaped when the block exits. Errors are not wrapped in an
        exception group: a failed load raises :class:`RunnerError`, an error in the block raises
        itself (the background tasks never raise, so the nursery only ever carries one error).
        """
        try:
            async with trio.open_nursery() as nursery:
                runner = await cls.start(spec, nursery, verbose=verbose, forward_stderr=forward_stderr)
                try:
                    yield runner
                finally:
                    await runner.aclose()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    @classmethod
    async def start(
        cls,
        spec: RunnerSpec,
        nursery: trio.Nursery,
        *,
        verbose: bool = False,
        forward_stderr: bool = True,
    ) -> "Runner":
        """Spawn the process, wait until the model is loaded, and return the runner.

        Raises :class:`RunnerError` when the model does not load (the process is reaped first).
        The background tasks run in ``nursery`` and end by themselves once the process is gone.
        """
        argv = [
            sys.executable,
            "-m",
            "trillama.actors.runner",
            "--spec",
            json.dumps(converter.unstructure(spec)),
            "--parent-pid",
            str(os.getpid()),
        ]
        if verbose:
            argv.append("--verbose")
        argv += ["--log-format", log_format()]
        try:
            process = await spawn(argv)
        except OSError as exc:
            raise RunnerError(f"unable to start the model runner: {exc}") from exc
        runner = cls(spec, process, forward_stderr=forward_stderr)
        nursery.start_soon(runner._read_stdout)
        nursery.start_soon(runner._read_stderr)
        nursery.start_soon(runner._write_stdin)
        nursery.start_soon(runner._watch_process)
        try:
            await runner._ready.wait()
        except BaseException:
            await runner.kill()
            raise
        if runner.facts is None:
            await runner.kill()
            raise RunnerError(runner._failure_message())
        log.info("runner_started", pid=runner.pid, model=str(spec.model_path), load_seconds=round(runner.facts.load_seconds, 3))
        return runner

    def _failure_message(self) -> str:
        message = self._load_error or f"model runner {self.exit_message or 'exited'} while loading"
        errors = [line for line in self._stderr_tail if "error" in line.lower() and "load_failed" not in line]
        if errors:
            detail = errors[-1].strip()
            if detail not in message:
                message = f"{message}: {detail}"
        return message

    async def aclose(self, grace: float = 5.0) -> None:
        """Ask the process to stop, kill it after ``grace`` seconds, and always reap it."""
        with trio.CancelScope(shield=True):
            if not self.died.is_set():
                self._closing = True
                self._post([P.OP_STOP])
                with trio.move_on_after(grace):
                    await self.died.wait()
            await self.kill()

    async def kill(self) -> None:
        """Kill the process (if still running) and return once it is reaped and finalized."""
        with trio.CancelScope(shield=True):
            if self._process.returncode is None:
                self._closing = True
                self._process.kill()
            code = await self._process.wait()
            with trio.move_on_after(5):
                await self.died.wait()
            if not self.died.is_set():  # the watcher task is gone (its nursery was cancelled)
                self._finalize(code)

    @property
    def running(self) -> bool:
        return not self.died.is_set()

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr_tail)

    # ------------------------------------------------------------------ background tasks
    async def _read_stdout(self) -> None:
        decoder = P.FrameDecoder()
        stream = self._process.stdout
        try:
            while True:
                data = await stream.receive_some(_READ_CHUNK)
                if not data:
                    break
                for frame in decoder.feed(data):
                    for event in frame:
                        self._dispatch(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # garbage on the pipe or a malformed event: the peer is broken
            log.error("runner_protocol_error", pid=self.pid, error=repr(exc))
            self._process.kill()
        finally:
            self._stdout_done.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _forward_json_line(self, line: bytes) -> None:
        """Pass a runner's JSON line through; wrap anything else (native code's own prints) in one."""
        stripped = line.strip()
        if not stripped:
            return
        if stripped[:1] == b"{":
            try:
                json.loads(stripped)
            except ValueError:
                pass
            else:
                try:
                    os.write(2, stripped + b"\n")
                except OSError:
                    pass
                return
        log.info("runner_output", pid=self.pid, text=stripped.decode("utf-8", errors="replace"))

    async def _read_stderr(self) -> None:
        stream = self._process.stderr
        partial = b""
        as_json = log_format() == "json"
        try:
            while True:
                data = await stream.receive_some(_READ_CHUNK)
                if not data:
                    break
                if self._forward_stderr and not as_json:
                    try:
                        os.write(2, data)
                    except OSError:
                        pass
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                if len(partial) > _MAX_LINE:  # a runaway line: keep its start, drop the rest
                    lines.append(partial[:_MAX_LINE])
                    partial = b""
                for line in lines:
                    self._stderr_tail.append(line.decode("utf-8", errors="replace"))
                    if self._forward_stderr and as_json:
                        self._forward_json_line(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        if partial:
            self._stderr_tail.append(partial.decode("utf-8", errors="replace"))

    async def _write_stdin(self) -> None:
        stream = self._process.stdin
        try:
            async for data in self._out_recv:
                chunks = [data]
                while True:  # coalesce whatever else is queued into one write
                    try:
                        chunks.append(self._out_recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await stream.send_all(b"".join(chunks) if len(chunks) > 1 else data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the process is gone; _watch_process reports it
        except Exception as exc:  # never let a background task take the owner's nursery down
            log.error("runner_write_failed", pid=self.pid, error=repr(exc))
            self._process.kill()
        finally:
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _watch_process(self) -> None:
        code = await self._process.wait()
        # The last frames (a load error, final tokens) may still be in the pipe: read them first.
        with trio.move_on_after(5):
            await self._stdout_done.wait()
        self._finalize(code)

    def _finalize(self, code: int) -> None:
        """The process is gone: fail what is in flight, wake every waiter. Runs once."""
        if self.died.is_set():
            return
        self.returncode = code
        self.exit_message = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if not self._closing and self.facts is not None:
            log.error("runner_died", pid=self.pid, reason=self.exit_message, stderr_tail=self.stderr_tail[-5:])
        else:
            log.info("runner_exited", pid=self.pid, reason=self.exit_message)
        jobs, self._jobs = self._jobs, {}
        for handle in jobs.values():
            self._deliver(handle, Failed(RUNNER_DIED_MESSAGE, "runner_died"))
            handle._end()
        cancelling, self._cancelling = self._cancelling, {}
        for handle in cancelling.values():
            handle.cancel_answered.set()
        requests, self._requests = self._requests, {}
        for pending in requests.values():
            pending.error = (RUNNER_DIED_MESSAGE, "runner_died")
            pending.event.set()
        self._out_send.close()
        self._ready.set()
        self.died.set()

    # ------------------------------------------------------------------ frames in
    @staticmethod
    def _deliver(handle: JobHandle, event: Event) -> None:
        try:
            handle.channel.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            handle.cancel()  # the consumer left without saying so: free the slot now

    def _dispatch(self, event: list) -> None:
        tag = event[0]
        if tag == P.EV_PIECE:
            handle = self._jobs.get(event[1])
            if handle is not None:
                self._deliver(handle, Piece(event[2], event[3]))
        elif tag == P.EV_DONE:
            handle = self._jobs.pop(event[1], None)
            self.cache_stats["bytes"] = event[2].get("cache_bytes", 0)
            if handle is not None:
                self._deliver(handle, Done(**event[2]))
                handle._end()
            elif (handle := self._cancelling.pop(event[1], None)) is not None:
                handle.cancelled_counts = Done(**event[2])
                handle.cancel_answered.set()
        elif tag == P.EV_FAILED:
            handle = self._jobs.pop(event[1], None)
            if handle is not None:
                self._deliver(handle, Failed(event[2], event[3]))
                handle._end()
            elif (handle := self._cancelling.pop(event[1], None)) is not None:
                handle.cancel_answered.set()
        elif tag == P.EV_REPLY or tag == P.EV_ERROR:
            pending = self._requests.pop(event[1], None)
            if pending is not None:
                if tag == P.EV_REPLY:
                    pending.result = event[2]
                else:
                    pending.error = (event[2], event[3])
                pending.event.set()
        elif tag == P.EV_READY:
            self.facts = converter.structure(event[1], RunnerFacts)
            self._ready.set()
        elif tag == P.EV_LOAD_FAILED:
            self._load_error = event[1]
        else:
            log.warning("runner_unknown_event", pid=self.pid, tag=tag)

    # ------------------------------------------------------------------ frames out
    def _forget_job(self, job_id: str) -> None:
        """Deliver nothing more for ``job_id``; tell the runner to free its slot if it still runs.

        The runner answers a cancel with the job's counts so far, kept on the handle.
        """
        handle = self._jobs.pop(job_id, None)
        if handle is not None:
            if self.died.is_set():
                handle.cancel_answered.set()
                return
            self._cancelling[job_id] = handle
            self._post([P.OP_CANCEL, job_id])

    def _post(self, message: list) -> None:
        frame = P.encode_frame(message)
        if len(frame) - P.HEADER.size > P.MAX_FRAME:
            # The runner would take an oversized frame for a broken peer and exit, failing every
            # job in flight: refuse this one request instead.
            raise RunnerRequestError(
                f"the request is too large for the model runner ({len(frame) >> 20} MiB, at most "
                f"{P.MAX_FRAME >> 20} MiB)", "bad_request")
        try:
            self._out_send.send_nowait(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _request(self, op: str, *args: Any) -> Any:
        if self.died.is_set():
            raise RunnerRequestError(RUNNER_DIED_MESSAGE, "runner_died")
        req_id = next(self._req_ids)
        pending = _Pending()
        self._requests[req_id] = pending
        try:
            self._post([op, req_id, *args])
            await pending.event.wait()
        finally:
            self._requests.pop(req_id, None)
        if pending.error is not None:
            raise RunnerRequestError(*pending.error)
        return pending.result

    # ------------------------------------------------------------------ public operations
    def submit_job(self, job_id: str, job: GenerateJob, channel: trio.MemorySendChannel) -> JobHandle:
        """Start one generation whose events go into ``channel`` (which the runner closes).

        ``channel`` receives :class:`Piece` events, then one :class:`Done` or :class:`Failed`, and
        is closed after it. It should be unbounded: the stdout reader never waits for a consumer.
        A consumer that goes away should :meth:`JobHandle.cancel`; one that only closes its end
        is noticed at the job's next event.
        """
        if job_id in self._jobs:
            raise ValueError(f"job id already running: {job_id}")
        handle = JobHandle(self, job_id, channel)
        if self.died.is_set():
            self._deliver(handle, Failed(RUNNER_DIED_MESSAGE, "runner_died"))
            handle._end()
            return handle
        try:
            self._post([P.OP_GENERATE, job_id, converter.unstructure(job)])
        except RunnerRequestError as exc:
            self._deliver(handle, Failed(exc.message, exc.kind))
            handle._end()
            return handle
        self._jobs[job_id] = handle
        return handle

    async def run_job(self, job_id: str, job: GenerateJob) -> AsyncIterator[Event]:
        """Run one generation; yields :class:`Piece` events, then one :class:`Done` or :class:`Failed`.

        Leaving early — ``aclose()`` of the generator (use ``contextlib.aclosing``) or
        cancellation — sends ``cancel`` and the runner frees the slot at its next decode step.
        """
        send, receive = trio.open_memory_channel(math.inf)
        handle = self.submit_job(job_id, job, send)
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            handle.cancel()

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Tokens of ``text`` (special tokens parsed); ``add_special`` adds BOS/EOS as the model does."""
        return await self._request(P.OP_TOKENIZE, text, add_special)

    @staticmethod
    def text_bound(max_tokens: int) -> int:
        """Characters beyond which a text certainly has more than ``max_tokens`` tokens."""
        return max(1, max_tokens) * TEXT_BYTES_PER_TOKEN

    async def tokenize_bounded(self, text: str, max_tokens: int, add_special: bool = True) -> list[int] | None:
        """Tokens of ``text``, or ``None`` when it has more than ``max_tokens``.

        A text whose length proves it never leaves this process; the runner checks again in
        bytes and tokenizes only what the context could hold, so neither side's memory grows
        with the text.
        """
        if len(text) > self.text_bound(max_tokens):
            return None
        return await self._request(P.OP_TOKENIZE, text, add_special, int(max_tokens))

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._request(P.OP_DETOKENIZE, list(tokens))

    async def embed(self, inputs: list[str], truncate: bool = True) -> tuple[list[list[float]], list[int]]:
        """Raw (unnormalised) mean-pooled vectors and the token count of each input.

        An input longer than the context raises :class:`RunnerRequestError` with kind
        ``context_exceeded`` unless ``truncate``.
        """
        vectors, counts = await self._request(P.OP_EMBED, list(inputs), bool(truncate))
        return vectors, counts

    async def slots(self) -> list[SlotState]:
        """The state of every slot as of the runner's next step (busy, job id, cached tokens)."""
        return (await self.status())[0]

    async def status(self) -> tuple[list[SlotState], int]:
        """Slot states and the number of decode threads, as of the runner's next step."""
        reply = await self._request(P.OP_SLOTS)
        self.cache_stats = dict(reply.get("cache") or {})
        return [SlotState(**s) for s in reply["slots"]], int(reply["n_threads"])

    async def set_cache_limit(self, limit: int) -> dict:
        """Bound the runner's prompt cache (RAM tier) to ``limit`` bytes; its stats afterwards."""
        self.cache_stats = dict(await self._request(P.OP_CACHE_LIMIT, max(0, int(limit))))
        return self.cache_stats

    def set_threads(self, n: int) -> None:
        """Decode with ``n`` threads from the runner's next step on.

        Sent at once, without waiting: a job posted after this call is decoded with ``n``
        threads from its first step. :attr:`threads` is what was last asked.
        """
        self.threads = max(1, int(n))
        self._post([P.OP_THREADS, self.threads])
