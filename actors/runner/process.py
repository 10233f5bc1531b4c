"""The runner process: load one model, then serve frames on stdin/stdout until told to stop.

Threads: the main thread runs the decode loop (:meth:`Engine.run`); a reader thread parses
command frames and hands what needs no slot — tokenize, detokenize, preparing a job (tokenizing its
prompt, validating it, building its sampler) — to worker threads (:class:`_Preparer`), so the
decode loop only ever admits ready jobs and the reader is never held up by a long text.

stdout carries frames and nothing else. Native code and Python libraries sometimes print, so fd 1
is duplicated for frames first and then pointed at stderr: a stray ``printf`` lands in the log,
never in the middle of a frame.

The process must never outlive the server: it exits at end of stdin (the server closed the pipe
or died) and, on Linux, asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), which also covers a parent killed with ``kill -9`` while this
process is inside a long native call.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
import time
from typing import NoReturn

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _claim_stdout() -> int:
    """Keep the real stdout for frames; everything else that writes to fd 1 goes to stderr."""
    frames_fd = os.dup(1)
    os.dup2(2, 1)
    os.set_inheritable(frames_fd, False)
    return frames_fd


def _die_with_parent(parent_pid: int | None) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # The parent may have died before prctl took effect: then we were re-parented already.
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


class FrameWriter:
    """Writes whole frames to the frames fd; one lock, because two threads answer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, events: list) -> None:
        from trillama.actors.runner.protocol import encode_frame

        data = memoryview(encode_frame(events))
        with self.lock:
            try:
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
            except OSError:  # the server is gone: nobody to serve
                os._exit(0)


class _Preparer:
    """What the reader hands off so that it never waits: job preparation and tokenizer requests.

    Preparing a job tokenizes its prompt (and may encode image markers); a tokenize request may
    be a whole conversation. Done on the reader thread, one long text held up every other frame
    behind it — other requests' cancels and new jobs included (issue 24). Jobs are prepared on
    one thread, in arrival order; tokenize and detokenize requests on two more, so one long count
    does not hold up the next. A cancel that arrives while its job is still being prepared is
    remembered and the prepared job dropped (answered as cancelled), never run.
    """

    def __init__(self, engine, model, writer: FrameWriter, log) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.engine, self.model, self.writer, self.log = engine, model, writer, log
        self._jobs = ThreadPoolExecutor(1, thread_name_prefix="runner-prepare")
        self._requests = ThreadPoolExecutor(2, thread_name_prefix="runner-tokenize")
        self._lock = threading.Lock()
        self._preparing: set[str] = set()
        self._cancelled: set[str] = set()

    def generate(self, job_id: str, spec: dict) -> None:
        with self._lock:
            self._preparing.add(job_id)
        self._jobs.submit(self._prepare, job_id, spec)

    def _prepare(self, job_id: str, spec: dict) -> None:
        from trillama.actors.runner import protocol as P
        from trillama.actors.runner.engine import JobError

        job, failure = None, None
        try:
            job = self.engine.prepare(job_id, spec)
        except JobError as exc:
            failure = [P.EV_FAILED, job_id, exc.message, exc.kind]
        except Exception as exc:
            self.log.exception("prepare_failed", job_id=job_id)
            failure = [P.EV_FAILED, job_id, f"internal error: {exc}", "internal"]
        with self._lock:
            self._preparing.discard(job_id)
            cancelled = job_id in self._cancelled
            self._cancelled.discard(job_id)
            if job is not None and not cancelled:
                self.engine.submit((P.OP_GENERATE, job))
                return
        if job is not None:
            job.free()
        self.writer.send([P.cancelled_event(job_id) if cancelled else failure])

    def cancel(self, job_id: str) -> None:
        from trillama.actors.runner import protocol as P

        with self._lock:
            if job_id in self._preparing:
                self._cancelled.add(job_id)
                return
            # Under the lock: a job whose preparation just ended was submitted before this.
            self.engine.submit((P.OP_CANCEL, job_id))

    def request(self, msg: list) -> None:
        self._requests.submit(self._answer, msg)

    def _answer(self, msg: list) -> None:
        from trillama.actors.runner import protocol as P

        model = self.model
        if msg[0] == P.OP_TOKENIZE:
            try:
                if len(msg) > 4 and msg[4] is not None:  # bounded: None when over the cap
                    tokens = model.tokenize_bounded(msg[2], int(msg[4]), add_special=bool(msg[3]))
                else:
                    tokens = model.tokenize(msg[2], add_special=bool(msg[3]), parse_special=True)
                self.writer.send([[P.EV_REPLY, msg[1], tokens]])
            except Exception as exc:
                self.writer.send([[P.EV_ERROR, msg[1], str(exc), "internal"]])
        else:
            try:
                tokens = [int(t) for t in msg[2]]
                if any(not 0 <= t < model.n_vocab for t in tokens):
                    raise ValueError("token outside the vocabulary")
                self.writer.send([[P.EV_REPLY, msg[1], model.detokenize(tokens)]])
            except Exception as exc:
                self.writer.send([[P.EV_ERROR, msg[1], str(exc), "bad_request"]])


def _reader(engine, model, stdin, writer: FrameWriter, log) -> None:
    from trillama.actors.runner import protocol as P

    preparer = _Preparer(engine, model, writer, log)
    try:
        while True:
            msg = P.read_frame(stdin)
            if msg is None:
                # The server closed our stdin or died: nobody is listening any more, so there is
                # nothing to finish. Exit now, even if the decode thread is inside native code.
                log.info("stdin_closed")
                sys.stderr.flush()
                os._exit(0)
            op = msg[0]
            if op == P.OP_GENERATE:
                preparer.generate(msg[1], msg[2])
            elif op == P.OP_CANCEL:
                preparer.cancel(msg[1])
            elif op in (P.OP_TOKENIZE, P.OP_DETOKENIZE):
                preparer.request(msg)
            elif op in (P.OP_EMBED, P.OP_SLOTS, P.OP_THREADS, P.OP_CACHE_LIMIT):
                engine.submit(tuple(msg))
            elif op == P.OP_STOP:
                log.info("stop_requested")
                break
            else:
                log.warning("unknown_op", op=op)
    except Exception:
        log.exception("reader_failed")
    finally:
        engine.stop()


def _prompt_cache(spec, llama_cpp, log):
    """The runner's prompt cache from its spec: RAM tier, and the disk tier if it has a folder."""
    from trillama.actors.runner.prompt_cache import DiskTier, PromptCache, namespace

    if not spec.share_prefixes or (spec.prompt_cache_bytes <= 0 and spec.prompt_cache_dir is None):
        return None
    disk = None
    if spec.prompt_cache_dir is not None and spec.prompt_cache_disk_bytes > 0:
        stat = spec.model_path.stat()
        # What a saved state depends on: the weights, the adapters, how the KV cache stores them.
        ns = namespace(spec.model_path.name, stat.st_size, [str(a) for a in spec.adapters],
                       spec.kv_cache_type, spec.flash_attn, llama_cpp.__version__,
                       getattr(llama_cpp, "LLAMA_STATE_SEQ_VERSION", None))
        try:
            disk = DiskTier(spec.prompt_cache_dir / ns, spec.prompt_cache_disk_bytes)
        except OSError as exc:
            log.warning("prompt_cache_disk_unavailable", dir=str(spec.prompt_cache_dir), error=str(exc))
    return PromptCache(spec.prompt_cache_bytes, disk)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trillama.actors.runner")
    parser.add_argument("--spec", required=True, help="RunnerSpec as JSON")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="also log llama.cpp INFO lines")
    parser.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="the server's log format, so that the runner's lines match it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> NoReturn:
    frames_fd = _claim_stdout()
    args = _parse_args(argv)
    _die_with_parent(args.parent_pid)

    from trillama.logs import configure_logging, get_logger

    configure_logging(debug=1 if args.verbose else 0, fmt=args.log_format)
    log = get_logger("trillama.runner")
    writer = FrameWriter(frames_fd)

    from trillama.actors.runner import native
    from trillama.actors.runner import protocol as P
    from trillama.actors.runner.engine import Engine
    from trillama.actors.runner.messages import RunnerSpec, converter

    spec = converter.structure(json.loads(args.spec), RunnerSpec)
    native.install_log_callback(args.verbose, as_events=args.log_format == "json")
    started = time.monotonic()
    free_before = native.gpu_free_bytes()
    try:
        import llama_cpp

        llama_cpp.llama_backend_init()
        model = native.load_model(spec.model_path, n_gpu_layers=spec.n_gpu_layers, use_mmap=spec.use_mmap)
        ctx = native.create_generation_context(
            model,
            n_ctx=spec.n_ctx,
            n_parallel=spec.n_parallel,
            n_batch=spec.n_batch,
            n_threads=spec.n_threads,
            flash_attn=spec.flash_attn,
            kv_cache_type=spec.kv_cache_type,
            n_park=spec.n_park if spec.share_prefixes else 0,
        )
        native.apply_adapters(model, ctx, spec.adapters)
        vision = None
        if spec.projector is not None:
            from trillama.actors.runner.media import Vision

            vision = Vision.load(spec.projector, model, n_threads=spec.n_threads,
                                 use_gpu=spec.n_gpu_layers != 0, flash_attn=spec.flash_attn)
    except native.LoadError as exc:
        log.error("load_failed", error=str(exc), model=str(spec.model_path))
        writer.send([[P.EV_LOAD_FAILED, str(exc)]])
        os._exit(1)
    free_after = native.gpu_free_bytes()
    vram = sum(max(0, free_before.get(k, 0) - v) for k, v in free_after.items())

    engine = Engine(
        model,
        ctx,
        cache=_prompt_cache(spec, llama_cpp, log),
        n_park=spec.n_park if spec.share_prefixes else 0,
        share_prefixes=spec.share_prefixes,
        n_ctx=spec.n_ctx,
        n_parallel=spec.n_parallel,
        n_batch=spec.n_batch,
        n_threads=spec.n_threads,
        emit=writer.send,
        vision=vision,
    )
    facts = {
        "n_ctx": spec.n_ctx,
        "n_ctx_train": model.n_ctx_train,
        "n_embd": model.n_embd,
        "n_vocab": model.n_vocab,
        "n_parallel": spec.n_parallel,
        "n_batch": spec.n_batch,
        "load_seconds": time.monotonic() - started,
        "model_bytes": model.size_bytes,
        "rss_bytes": native.rss_bytes(),
        "vram_bytes": vram,
        "add_bos": model.add_bos,
        "kv_unified": False,
        "can_shift": engine.can_shift,
        "prompt_cache": engine.placement.cache is not None,
        "vision": vision is not None,
    }
    log.info("runner_ready", pid=os.getpid(), model=str(spec.model_path),
             **{k: facts[k] for k in ("n_ctx", "n_parallel", "load_seconds", "vision")})
    writer.send([[P.EV_READY, facts]])

    stdin = os.fdopen(0, "rb")
    reader = threading.Thread(
        target=_reader, args=(engine, model, stdin, writer, log), name="runner-reader", daemon=True
    )
    reader.start()
    engine.run()
    log.info("runner_exit", pid=os.getpid())
    sys.stderr.flush()
    # No interpreter teardown: freeing native objects from finalizers in arbitrary order is how
    # processes crash on exit; the kernel gives every byte (and the GPU) back anyway.
    os._exit(0)
