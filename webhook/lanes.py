"""Admission rules off the event loop, each with a deadline.

The rules (``Brain.mutate`` / ``Brain.validate``) are synchronous Python. Run inline, one slow request (a huge
annotation, an expensive build) holds the event loop and with it every other admission, the probes and the
TLS handshakes of everyone else. Here they run in worker threads, in two lanes sorted by request size:

- requests up to ``large_body`` bytes (every ordinary Playground or Service) go to the *small* lane,
  ``small_workers`` threads;
- larger ones go to the *large* lane: one worker **process** (``multiprocessing`` forkserver), one request at
  a time. A large request is rare (an UPDATE of an object with big annotations) and is the shape a hostile one
  takes (thousands of triggers); in a process of its own it shares neither the interpreter lock nor the
  garbage collector with the server, and past its deadline the process is killed, its memory with it, and a
  fresh one started for the next. In a thread it would keep running (threads cannot be killed) and its
  garbage-collection pauses stall every thread: measured, a normal admission's p99 went from ~10 ms to ~190 ms
  next to four such requests in one worker thread (docs/performance.md).

Every request gets ``deadline`` seconds from the moment it is handed over, queueing included. Past it the
caller gets :class:`AdmissionTimeout` (the server answers a denial, see ``webhook/server.py``) and a request
still waiting in its lane never starts. A small request already running in a thread cannot be interrupted: its
thread finishes and its answer is dropped; the input caps (annotation bytes, trigger count, nesting depth)
that make every rule cheap are the bound that matters there.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from .errors import Denied

log = logging.getLogger("llmaz_serverless.lanes")

T = TypeVar("T")

LARGE_BODY = 64 * 1024
DEADLINE = 2.0


class AdmissionTimeout(Exception):
    """The rules did not finish within the deadline."""

    def __init__(self, deadline: float, lane: str) -> None:
        super().__init__(f"the admission rules took longer than {deadline:g}s ({lane} request lane)")
        self.deadline = deadline
        self.lane = lane


def _worker_main(conn: Any) -> None:
    """The large lane's process: (brain, method name, request) in, ("ok", result) / ("denied", problems, code)
    / ("error", text) out, until the pipe closes."""
    while True:
        try:
            brain, method, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            out: tuple[Any, ...] = ("ok", getattr(brain, method)(*args))
        except Denied as d:
            out = ("denied", d.problems, d.code)
        except BaseException as exc:  # noqa: BLE001 - reported to the server as a defect
            out = ("error", f"{type(exc).__name__}: {exc}"[:2000])
        conn.send(out)


class _ProcessLane:
    """One worker process, one request at a time, killed and replaced past a deadline."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["webhook.admission"])
        self._proc: Any = None
        self._conn: Any = None
        self._mutex = threading.Lock()      # one request at a time, in the waiting thread
        self.restarts = 0

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), name="llmaz-serverless-admit-large",
                                 daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
            self._conn.close()
            self._proc = self._conn = None
            self.restarts += 1

    def call(self, deadline_at: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Blocking (runs in a waiting thread): the answer, or TimeoutError past ``deadline_at``."""
        if not self._mutex.acquire(timeout=max(0.0, deadline_at - time.monotonic())):
            raise TimeoutError
        try:
            if time.monotonic() >= deadline_at:
                raise TimeoutError
            self._ensure()
            self._conn.send((fn.__self__, fn.__name__, args))   # type: ignore[attr-defined]
            if not self._conn.poll(max(0.0, deadline_at - time.monotonic())):
                self._kill()
                raise TimeoutError
            out = self._conn.recv()
        except TimeoutError:                   # an OSError too: not a dead worker
            raise
        except (EOFError, OSError) as exc:     # the worker died (e.g. out of memory)
            self._kill()
            raise RuntimeError(f"admission worker process failed: {exc}") from None
        finally:
            self._mutex.release()
        if out[0] == "ok":
            return out[1]
        if out[0] == "denied":
            raise Denied(out[1], out[2])
        raise RuntimeError(f"in the admission worker process: {out[1]}")

    def warm(self) -> None:
        with self._mutex:
            self._ensure()

    def shutdown(self) -> None:
        with self._mutex:
            if self._proc is not None:
                self._conn.close()
                self._proc.join(2)
                if self._proc.is_alive():
                    self._proc.kill()
                self._proc = self._conn = None


class Lanes:
    def __init__(self, *, small_workers: int = 4, large_body: int = LARGE_BODY, deadline: float = DEADLINE,
                 large_in_process: bool = True) -> None:
        if deadline <= 0 or small_workers < 1:
            raise ValueError("deadline and worker counts must be positive")
        self.deadline = float(deadline)
        self.large_body = int(large_body)
        self._small = ThreadPoolExecutor(small_workers, thread_name_prefix="admit")
        # Threads that wait for the large lane's process (one is busy at a time; the others queue on its lock).
        self._waiters = ThreadPoolExecutor(8, thread_name_prefix="admit-large-wait")
        self._process = _ProcessLane() if large_in_process else None
        self.timeouts = 0

    def lane(self, body_size: int) -> str:
        return "large" if body_size > self.large_body else "small"

    def warm(self) -> None:
        """Start the large lane's process now rather than at the first large request."""
        if self._process is not None:
            self._process.warm()

    async def run(self, body_size: int, fn: Callable[..., T], *args: Any) -> T:
        lane = self.lane(body_size)
        loop = asyncio.get_running_loop()
        if lane == "large" and self._process is not None:
            deadline_at = time.monotonic() + self.deadline
            try:
                return await loop.run_in_executor(self._waiters, self._process.call, deadline_at, fn, args)
            except TimeoutError:
                self.timeouts += 1
                raise AdmissionTimeout(self.deadline, lane) from None
        future = loop.run_in_executor(self._small, fn, *args)
        try:
            return await asyncio.wait_for(future, self.deadline)
        except TimeoutError:
            self.timeouts += 1
            raise AdmissionTimeout(self.deadline, lane) from None

    def shutdown(self) -> None:
        self._small.shutdown(wait=False, cancel_futures=True)
        self._waiters.shutdown(wait=False, cancel_futures=True)
        if self._process is not None:
            self._process.shutdown()
