"""Admission rules off the event loop, each with a deadline.

The rules (``Brain.mutate`` / ``Brain.validate``) are synchronous Python. Run inline, one slow request (a huge
annotation, an expensive build) holds the event loop and with it every other admission, the probes and the
TLS handshakes of everyone else. Here they run in worker threads, in two lanes sorted by request size:

- requests up to ``large_body`` bytes (every ordinary Playground or Service) go to the *small* lane,
  ``small_workers`` threads;
- larger ones go to the *large* lane, one thread by default, so a flood of big requests queues behind itself
  instead of competing with the small ones for the interpreter lock.

Every request gets ``deadline`` seconds from the moment it is handed over, queueing included. Past it the
caller gets :class:`AdmissionTimeout` (the server answers a denial, see ``webhook/server.py``) and a request
still waiting in its lane never starts. A request already running cannot be interrupted (Python threads
cannot be killed): its thread finishes and its answer is dropped; that is why the lanes are sized, and why
the input caps (annotation bytes, trigger count, nesting depth) that make every rule cheap are the bound that
matters. Threads share the interpreter lock with the loop; the lane split keeps hostile large requests to
one competing thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")

LARGE_BODY = 64 * 1024
DEADLINE = 2.0


class AdmissionTimeout(Exception):
    """The rules did not finish within the deadline."""

    def __init__(self, deadline: float, lane: str) -> None:
        super().__init__(f"the admission rules took longer than {deadline:g}s ({lane} request lane)")
        self.deadline = deadline
        self.lane = lane


class Lanes:
    def __init__(self, *, small_workers: int = 4, large_workers: int = 1, large_body: int = LARGE_BODY,
                 deadline: float = DEADLINE) -> None:
        if deadline <= 0 or small_workers < 1 or large_workers < 1:
            raise ValueError("deadline and worker counts must be positive")
        self.deadline = float(deadline)
        self.large_body = int(large_body)
        self._small = ThreadPoolExecutor(small_workers, thread_name_prefix="admit")
        self._large = ThreadPoolExecutor(large_workers, thread_name_prefix="admit-large")
        self.timeouts = 0

    def lane(self, body_size: int) -> str:
        return "large" if body_size > self.large_body else "small"

    async def run(self, body_size: int, fn: Callable[..., T], *args: Any) -> T:
        lane = self.lane(body_size)
        pool = self._large if lane == "large" else self._small
        future = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.deadline)
        except TimeoutError:
            self.timeouts += 1
            raise AdmissionTimeout(self.deadline, lane) from None

    def shutdown(self) -> None:
        for pool in (self._small, self._large):
            pool.shutdown(wait=False, cancel_futures=True)
