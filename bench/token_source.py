"""A stand-in runner that emits tokens at a fixed step rate, for measuring the *server's* cost.

Why: on a 2-core CPU machine SmolLM2 makes a few dozen tokens a second across all streams, so the
server process sleeps between decode steps and every step wakes it cold (on this VM the same
Python work costs 3–4× more CPU right after a 10 ms sleep than in a loop). A GPU feeding 64
streams keeps the server busy instead, and that is the case issue 14 asks about: how many tokens
one server process can stream. This process speaks the runner protocol
(:mod:`trillama.actors.runner.protocol`) to the unmodified server and, every ``1/rate`` seconds,
emits one token for every running job in one frame, as the real engine's decode step does. It
loads no weights and answers tokenize requests with one token per four bytes.

It is only ever started by ``bench/serve_token_source.py``, which serves trillama with this in
place of ``python -m trillama.actors.runner``. ``TRILLAMA_BENCH_STEP_RATE`` sets the steps per
second (default 200).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from trillama.actors.runner import protocol as P


def _facts(spec: dict) -> dict:
    return {"n_ctx": spec["n_ctx"], "n_ctx_train": 8192, "n_embd": 576, "n_vocab": 49152,
            "n_parallel": spec["n_parallel"], "n_batch": spec["n_batch"], "load_seconds": 0.0,
            "model_bytes": os.path.getsize(spec["model_path"]), "rss_bytes": 0, "vram_bytes": 0,
            "add_bos": False, "kv_unified": False, "can_shift": True, "vision": False}


class _Source:
    def __init__(self, fd: int, spec: dict, rate: float) -> None:
        self.fd = fd
        self.spec = spec
        self.period = 1.0 / rate
        self.lock = threading.Lock()
        self.jobs: dict[str, list] = {}  # job id → [generated, budget, prompt tokens]
        self.wake = threading.Event()

    def send(self, events: list) -> None:
        data = memoryview(P.encode_frame(events))
        with self.lock:
            while data:
                data = data[os.write(self.fd, data):]

    def read_commands(self) -> None:
        stdin = os.fdopen(0, "rb")
        while True:
            msg = P.read_frame(stdin)
            if msg is None or msg[0] == P.OP_STOP:
                os._exit(0)
            op = msg[0]
            if op == P.OP_GENERATE:
                job = msg[2]
                budget = job.get("num_predict", -1)
                budget = budget if budget and budget > 0 else 128
                with self.lock:
                    self.jobs[msg[1]] = [0, budget, max(1, len(job.get("prompt") or "") // 4)]
                self.wake.set()
            elif op == P.OP_CANCEL:
                with self.lock:
                    self.jobs.pop(msg[1], None)
            elif op == P.OP_TOKENIZE:
                text, bound = msg[2], (msg[4] if len(msg) > 4 else None)
                count = max(1, len(text.encode()) // 4)
                self.send([[P.EV_REPLY, msg[1], None if bound is not None and count > bound else [1] * count]])
            elif op == P.OP_DETOKENIZE:
                self.send([[P.EV_REPLY, msg[1], ""]])
            elif op == P.OP_SLOTS:
                self.send([[P.EV_REPLY, msg[1], {"slots": [], "n_threads": 1}]])
            elif op == P.OP_EMBED:
                self.send([[P.EV_ERROR, msg[1], "the token source does not embed", "bad_request"]])

    def run(self) -> None:
        next_step = time.monotonic()
        while True:
            with self.lock:
                running = list(self.jobs.items())
            if not running:
                self.wake.wait()
                self.wake.clear()
                next_step = time.monotonic()
                continue
            events: list = []
            finished = []
            for job_id, state in running:
                state[0] += 1
                events.append([P.EV_PIECE, job_id, f" {state[0]},", None])
                if state[0] >= state[1]:
                    finished.append(job_id)
                    events.append([P.EV_DONE, job_id, {
                        "done_reason": "length", "prompt_eval_count": state[2], "prompt_eval_duration_ns": 1000,
                        "eval_count": state[0], "eval_duration_ns": int(state[0] * self.period * 1e9),
                        "context": [], "cached_count": 0}])
            with self.lock:
                for job_id in finished:
                    self.jobs.pop(job_id, None)
            self.send(events)
            next_step += self.period
            delay = next_step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_step = time.monotonic()


def main() -> None:
    frames_fd = os.dup(1)
    os.dup2(2, 1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--parent-pid")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-format", default="console")
    args = parser.parse_args()
    spec = json.loads(args.spec)
    source = _Source(frames_fd, spec, float(os.environ.get("TRILLAMA_BENCH_STEP_RATE", "200")))
    source.send([[P.EV_READY, _facts(spec)]])
    threading.Thread(target=source.read_commands, daemon=True).start()
    source.run()


if __name__ == "__main__":
    sys.exit(main())
