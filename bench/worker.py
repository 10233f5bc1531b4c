"""The bench's side of the in-process engine worker (``bench/inprocess.py``).

Why a handle object: the worker answers one sample per JSON line, and the single-stream phase
interleaves it with the servers, so the bench needs an awaitable "take one sample" like the one
it has for HTTP subjects. Reads block, so they run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from bench.env import REPO_DIR
from bench.plan import Plan
from bench.streams import StreamResult

__all__ = ["EngineWorker"]


class EngineWorker:
    def __init__(self, gguf: str, plan: Plan, log_path) -> None:
        self._log = open(log_path, "wb")
        payload = json.dumps({"gguf": gguf, "plan": plan.as_dict()})
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.inprocess", payload], cwd=REPO_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        hello = self._read()
        self.load_s = hello["load_s"]
        self.version = hello["llama_cpp_python"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"in-process worker exited ({self.proc.poll()}); see {self._log.name}")
        return json.loads(line)

    def _sample(self, key: tuple, attempt: int) -> dict:
        self.proc.stdin.write(json.dumps({"key": list(key), "attempt": attempt}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    async def stream(self, key: tuple, attempt: int) -> StreamResult:
        r = await asyncio.to_thread(self._sample, key, attempt)
        if not r.get("ok"):
            return StreamResult(ok=False, error="no content streamed")
        return StreamResult(ok=True, ttft=r["ttft"], t_last=r["t_last"], total=r["total"], chunks=r["tokens"],
                            tokens=r["tokens"], tokens_from="chunks", prompt_tokens=r["prompt_tokens"])

    def close(self) -> float | None:
        """End the worker; return its peak RSS in MiB."""
        peak = None
        try:
            self.proc.stdin.close()
            for line in self.proc.stdout:
                msg = json.loads(line)
                if msg.get("done"):
                    peak = msg["peak_rss_mb"]
            self.proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self._log.close()
        return peak

    def __enter__(self) -> "EngineWorker":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.close()
