"""Spawning runner processes from ONE long-lived thread, and waiting for them from Trio.

Why not ``trio.lowlevel.open_process``: it forks from a worker thread of Trio's thread cache, and
on Linux the "parent" that ``prctl(PR_SET_PDEATHSIG)`` watches is the *thread* that forked, not
the process. When the cached worker thread idles out (about ten seconds later) the kernel sends
the runner its death signal and a healthy model dies mid-stream. Forking from a dedicated thread
that lives as long as the server keeps the death signal meaning what we want: "the server is gone".

The child's pipes are created here (``os.pipe`` ends are not inherited by other children) and the
parent's ends are wrapped in :class:`trio.lowlevel.FdStream`. Exit is awaited through a pidfd
when the kernel has them (Linux ≥ 5.3), else by polling.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from typing import Callable

import trio

__all__ = ["ChildProcess", "spawn"]


class _Spawner:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                result = (True, fn())
            except BaseException as exc:  # handed back to the awaiting task
                result = (False, exc)
            done(result)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="runner-spawner", daemon=True)
                self._thread.start()

    async def run(self, fn: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        box: list = []

        def done(result: tuple) -> None:
            box.append(result)
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                if result[0]:  # nobody will ever own this child
                    result[1].kill()
                    result[1].wait()

        self._ensure_thread()
        self._jobs.put((fn, done))
        # A fork takes milliseconds; not waiting for it would leak a process nobody reaps.
        with trio.CancelScope(shield=True):
            await finished.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value


_spawner = _Spawner()


class ChildProcess:
    """A spawned process with Trio streams for its stdin/stdout/stderr."""

    def __init__(self, popen: subprocess.Popen, stdin: int, stdout: int, stderr: int) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.stdin = trio.lowlevel.FdStream(stdin)
        self.stdout = trio.lowlevel.FdStream(stdout)
        self.stderr = trio.lowlevel.FdStream(stderr)
        try:
            self._pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._pidfd_busy = False

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        if self._popen.poll() is None:
            try:
                self._popen.kill()
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        """Wait for exit and reap; negative return codes are signals, as in :mod:`subprocess`."""
        while self._popen.poll() is None:
            if self._pidfd is not None and not self._pidfd_busy:
                self._pidfd_busy = True
                try:
                    await trio.lowlevel.wait_readable(self._pidfd)
                finally:
                    self._pidfd_busy = False
            else:
                await trio.sleep(0.05)
        if self._pidfd is not None and not self._pidfd_busy:
            os.close(self._pidfd)
            self._pidfd = None
        return self._popen.returncode


async def spawn(argv: list[str], *, env: dict[str, str] | None = None) -> ChildProcess:
    """Start ``argv`` with piped stdin/stdout/stderr from the long-lived spawner thread."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    child_ends = (stdin_r, stdout_w, stderr_w)
    try:
        popen = await _spawner.run(
            lambda: subprocess.Popen(
                argv, stdin=stdin_r, stdout=stdout_w, stderr=stderr_w, env=env, close_fds=True
            )
        )
    except BaseException:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w):
            os.close(fd)
        raise
    for fd in child_ends:
        os.close(fd)
    return ChildProcess(popen, stdin_w, stdout_r, stderr_r)
