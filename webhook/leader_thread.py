"""Lease election on a thread of its own, with a watchdog on the reconciler's event loop.

Run on the reconciler's event loop, the Lease is renewed only when the loop gets round to it. A loop held by
slow work (a pathological object, a long garbage collection) then misses renewals: another replica takes the
expired Lease, and when the loop comes back the old leader is still inside its workers, writing, before its
own election loop notices: two leaders overlap.

``ThreadedElector`` runs ``leader.LeaderElector`` on its own thread, with its own event loop and its own API
client, so renewals keep their rhythm whatever the reconciler does. It also watches the reconciler's loop: a
heartbeat task there stamps the time every ``HEARTBEAT`` seconds, and the election thread stops renewing when
the stamp is older than ``renew_deadline``. A leader whose loop is stuck therefore steps down *before* its
Lease can expire (renew_deadline < lease_duration) and another replica takes over at expiry, instead of a
stuck leader holding the Lease forever. ``is_leader`` is a plain attribute read without the loop, so the workers
check it before every reconcile: a loop that wakes after stepping down does not start new work.

The same interface as ``LeaderElector`` for ``run_controller``: ``run(stop)``, ``leading`` (an asyncio.Event on
the caller's loop), ``is_leader``, ``identity``, ``transitions``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from .kube import Kube
from .leader import LeaderElector

log = logging.getLogger("llmaz_serverless.leader")

HEARTBEAT = 0.25


class _WatchedElector(LeaderElector):
    """A LeaderElector that does not renew while ``healthy()`` is False."""

    def __init__(self, *args: Any, healthy: Callable[[], bool], stalled_for: Callable[[], float],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.healthy = healthy
        self.stalled_for = stalled_for
        self.skipped = 0

    async def try_acquire_or_renew(self) -> bool:
        if not self.healthy():
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 10 == 0:
                log.warning("the reconciler's event loop has not ticked for %.1fs: not renewing the Lease",
                            self.stalled_for())
            return False
        self.skipped = 0
        return await super().try_acquire_or_renew()


class ThreadedElector:
    def __init__(self, kube: Kube, namespace: str, *, name: str, identity: str, lease_duration: float = 15.0,
                 renew_period: float = 2.0, on_stopped: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = kube.config
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        self.renew_deadline = lease_duration * 2 / 3
        self.on_stopped = on_stopped
        self.clock = clock
        self.leading = asyncio.Event()
        self.is_leader = False          # written by the election thread, read anywhere
        self.transitions = 0
        self._tick = clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.elector: _WatchedElector | None = None

    def stalled_for(self) -> float:
        return self.clock() - self._tick

    def _healthy(self) -> bool:
        return self.stalled_for() < self.renew_deadline

    # ---- election thread

    def _changed(self, leading: bool) -> None:
        self.is_leader = leading
        if leading:
            self.transitions += 1
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._apply, leading)
        except RuntimeError:   # the caller's loop is closed: shutting down
            pass

    def _thread_main(self, release: bool) -> None:
        async def main() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            kube = Kube(self.config)
            self.elector = _WatchedElector(
                kube, self.namespace, name=self.name, identity=self.identity, lease_duration=self.lease_duration,
                renew_period=self.renew_period, healthy=self._healthy, stalled_for=self.stalled_for, clock=self.clock,
                on_started=lambda: self._changed(True), on_stopped=lambda: self._changed(False))
            self._started.set()
            try:
                await self.elector.run(self._thread_stop, release=release)
            finally:
                await kube.close()

        try:
            asyncio.run(main())
        except Exception:  # noqa: BLE001
            log.exception("leader election thread failed")
        finally:
            self._started.set()
            self.is_leader = False
            if self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._apply, False)
                except RuntimeError:
                    pass

    # ---- caller's loop

    def _apply(self, leading: bool) -> None:
        if leading == self.leading.is_set():
            return
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
            if self.on_stopped is not None:
                try:
                    self.on_stopped()
                except Exception:  # noqa: BLE001
                    log.exception("leader callback failed")

    async def _heartbeat(self) -> None:
        while True:
            self._tick = self.clock()
            await asyncio.sleep(HEARTBEAT)

    async def run(self, stop: asyncio.Event, *, release: bool = True) -> None:
        """Campaign / renew on the election thread until ``stop`` is set; then release the Lease."""
        self._loop = asyncio.get_running_loop()
        self._tick = self.clock()
        beat = asyncio.create_task(self._heartbeat(), name="leader-heartbeat")
        thread = threading.Thread(target=self._thread_main, args=(release,), name="leader-election", daemon=True)
        thread.start()
        try:
            await asyncio.to_thread(self._started.wait)
            await stop.wait()
        finally:
            beat.cancel()
            if self._thread_loop is not None and self._thread_stop is not None:
                try:
                    self._thread_loop.call_soon_threadsafe(self._thread_stop.set)
                except RuntimeError:
                    pass
            await asyncio.to_thread(thread.join, 10)
            self._apply(False)
