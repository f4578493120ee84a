"""Lease-based leader election (coordination.k8s.io/v1 Lease), modelled on client-go's leaderelection.

Every replica of llmaz-serverless serves admission and keeps its watches (OpenModels, policy, caches)
warm; only the replica holding the Lease runs the reconciler's workers, so two replicas never fight over
the same KEDA objects.

Algorithm (one loop per replica):

- read the Lease; absent -> create it holding it ourselves;
- held by someone else and not expired -> wait ``retry_period`` and look again. "Expired" is judged on
  **our** clock: the time we last saw the Lease record change plus its ``leaseDurationSeconds`` (as
  client-go does), so clock skew between nodes does not matter;
- free (empty holder) or expired -> take it with an update that carries the ``resourceVersion`` we read
  (optimistic concurrency: of two candidates, one gets 409 Conflict and stays a follower);
- while leading, renew every ``renew_period``; if renewals keep failing for ``renew_deadline`` (shorter
  than the lease duration) leadership is given up *before* anyone else can take it, so two leaders
  never overlap;
- on a graceful stop the Lease is released (empty holder), so a successor takes over at its next
  retry instead of waiting for the lease to expire.

Callbacks ``on_started`` / ``on_stopped`` (plain functions) are called when leadership is gained / lost;
``leading`` (asyncio.Event) mirrors the state for ``await``-style users.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

from .kube import LEASES, ApiError, Conflict, Kube, NotFound, micro_time

log = logging.getLogger("llmaz_serverless.leader")

DEFAULT_LEASE_NAME = "llmaz-serverless-leader"


def default_identity() -> str:
    base = os.environ.get("POD_NAME") or socket.gethostname() or "llmaz-serverless"
    return f"{base}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, *, name: str = DEFAULT_LEASE_NAME,
                 identity: str | None = None, lease_duration: float = 15.0, renew_period: float = 2.0,
                 retry_period: float | None = None, renew_deadline: float | None = None,
                 on_started: Callable[[], Any] | None = None, on_stopped: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = float(lease_duration)
        self.renew_period = float(renew_period)
        self.retry_period = float(retry_period if retry_period is not None else renew_period)
        self.renew_deadline = float(renew_deadline if renew_deadline is not None else lease_duration * 2 / 3)
        if not self.renew_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need renew_period < renew_deadline < lease_duration")
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.clock = clock
        self.leading = asyncio.Event()
        self.transitions = 0                 # times this replica became leader
        self._observed: tuple[Any, ...] | None = None   # (holder, renewTime, duration, transitions)
        self._observed_at = 0.0
        self._last_renew = 0.0

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    # ---------------------------------------------------------------------------------------------

    def _lease_seconds(self) -> int:
        return max(1, int(round(self.lease_duration)))

    def _spec(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time()
        old = old or {}
        ours = old.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._lease_seconds(),
            "acquireTime": old.get("acquireTime") if ours and old.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if ours or not old else 1),
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        now = self.clock()
        try:
            lease = await self.kube.get(LEASES, self.name, self.namespace)
        except NotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)}
            body["spec"]["leaseTransitions"] = 0
            try:
                created = await self.kube.create(LEASES, body, self.namespace)
            except Conflict:
                return False
            self._observe(created.get("spec") or {}, now)
            return True
        spec = lease.get("spec") or {}
        self._observe(spec, now)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False
        new = dict(lease)
        new["spec"] = self._spec(spec)
        try:
            updated = await self.kube.replace(LEASES, new, self.namespace)
        except Conflict:
            return False
        self._observe(updated.get("spec") or {}, now)
        return True

    def _observe(self, spec: dict[str, Any], now: float) -> None:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                  spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed = record
            self._observed_at = now

    async def release(self) -> None:
        """Give the Lease up (empty holder) if we hold it."""
        try:
            lease = await self.kube.get(LEASES, self.name, self.namespace)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            new = dict(lease)
            new["spec"] = dict(spec, holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time())
            await self.kube.replace(LEASES, new, self.namespace)
            log.info("released lease %s/%s", self.namespace, self.name)
        except ApiError as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)

    # ---------------------------------------------------------------------------------------------

    def _set_leading(self, value: bool) -> None:
        if value == self.leading.is_set():
            return
        if value:
            self.transitions += 1
            self.leading.set()
            log.info("%s became leader (lease %s/%s)", self.identity, self.namespace, self.name)
            cb = self.on_started
        else:
            self.leading.clear()
            log.info("%s is no longer leader", self.identity)
            cb = self.on_stopped
        if cb is not None:
            try:
                cb()
            except Exception:  # noqa: BLE001
                log.exception("leader callback failed")

    async def run(self, stop: asyncio.Event, *, release: bool = True) -> None:
        """Campaign / renew until ``stop`` is set; then release the Lease (unless ``release=False``)."""
        try:
            while not stop.is_set():
                try:
                    ok = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=self.renew_deadline)
                except (ApiError, asyncio.TimeoutError) as exc:
                    log.debug("lease attempt failed: %s", exc)
                    ok = False
                now = self.clock()
                if ok:
                    self._last_renew = now
                    self._set_leading(True)
                elif self.is_leader and (now - self._last_renew >= self.renew_deadline or self._lost(now)):
                    log.warning("could not renew lease %s/%s for %.1fs; stepping down", self.namespace,
                                self.name, now - self._last_renew)
                    self._set_leading(False)
                period = self.renew_period if self.is_leader else self.retry_period
                try:
                    await asyncio.wait_for(stop.wait(), timeout=period)
                except asyncio.TimeoutError:
                    pass
        finally:
            was_leader = self.is_leader
            self._set_leading(False)
            if was_leader and release:
                try:
                    await asyncio.wait_for(asyncio.shield(self.release()), timeout=5)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass

    def _lost(self, now: float) -> bool:
        """Someone else holds it now (we read the record and it is not ours)."""
        return bool(self._observed and self._observed[0] and self._observed[0] != self.identity)
