"""The work queue: de-duplicating, one worker per key at a time, per-key exponential backoff."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from typing import Callable, Hashable


class WorkQueue:
    """De-duplicating work queue with per-key exponential backoff (the client-go workqueue, in asyncio).

    - a key waiting in the queue is there once, however often it is added;
    - a key being processed is never handed to a second worker; re-added meanwhile, it is queued again
      when ``done`` is called (so no change is lost);
    - ``add_rate_limited`` re-adds a key after ``base * 2**failures`` seconds (capped), ``forget`` resets.

    ``clock`` is injectable so the timing can be tested without sleeping (``get_nowait``).
    """

    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.clock = clock
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._failures: dict[Hashable, int] = {}
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._on_depth = on_depth

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def pending_delayed(self) -> int:
        return len(self._due)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    def add(self, key: Hashable) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._wakeup.set()
        self._depth_changed()

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = self.clock() + delay
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._delayed, (due, self._seq, key))
        self._wakeup.set()

    def backoff(self, key: Hashable) -> float:
        """The delay the next ``add_rate_limited(key)`` will use."""
        n = self._failures.get(key, 0)
        return min(self.max_delay, self.base_delay * (2 ** min(n, 32)))

    def add_rate_limited(self, key: Hashable) -> float:
        delay = self.backoff(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wakeup.set()
            self._depth_changed()

    def clear(self) -> None:
        """Drop everything waiting (leadership lost); keys in processing finish normally."""
        self._queue.clear()
        self._dirty.clear()
        self._delayed.clear()
        self._due.clear()
        self._failures.clear()
        self._depth_changed()

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self.add(key)

    def next_due(self) -> float | None:
        while self._delayed and self._due.get(self._delayed[0][2]) != self._delayed[0][0]:
            heapq.heappop(self._delayed)  # superseded entry
        return self._delayed[0][0] if self._delayed else None

    def get_nowait(self) -> Hashable | None:
        self._promote(self.clock())
        if not self._queue:
            return None
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        self._depth_changed()
        return key

    async def get(self) -> Hashable:
        while True:
            key = self.get_nowait()
            if key is not None:
                return key
            self._wakeup.clear()
            due = self.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the wake-up fires, and a worker that misses its cancel never stops.
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
