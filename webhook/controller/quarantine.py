"""Workloads whose KEDA objects cannot be built: held aside, reported once, never retried in a loop.

An object can reach the reconciler without passing today's rules: it was stored while the webhook was off
(``failurePolicy: Ignore``, or before the install), or before an upgrade that tightened them. Building its
KEDA objects then either ends in a denial (the usual case: the same rules that admission applies) or, for
input nobody foresaw, in an exception. Neither may cost the other workloads anything:

- the workload is *quarantined*: a Warning Event on it, the ``llmaz_serverless_quarantined_workloads`` gauge
  and ``llmaz_serverless_quarantines_total{reason}`` counter, and its existing KEDA objects (if any) keep
  their last good settings, untouched;
- it is not put back on the rate-limited queue; it is looked at again only when it changes (a new
  ``resourceVersion``), when the policy changes, or on the periodic resync;
- a build that raised is not even retried on resync until the object or the policy changes, so input that
  is expensive to reject is rejected once per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

DENIED, FAILED = "denied", "error"


@dataclass(frozen=True)
class Held:
    reason: str            # DENIED | FAILED
    version: str           # the workload's resourceVersion when it was quarantined
    policy: int            # id() of the policy object it was judged with (policies are replaced, never edited)
    message: str


class Quarantine:
    def __init__(self, gauge: Any, counter: Any) -> None:
        self._held: dict[Hashable, Held] = {}
        self._gauge = gauge
        self._counter = counter

    def __contains__(self, key: Hashable) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Hashable) -> Held | None:
        return self._held.get(key)

    def still_failing(self, key: Hashable, version: str, policy: Any) -> Held | None:
        """The earlier failure of a build that raised, when nothing that could change the outcome has
        changed since; None when it must be built again."""
        held = self._held.get(key)
        if held is not None and held.reason == FAILED and held.version == version and held.policy == id(policy):
            return held
        return None

    def hold(self, key: Hashable, reason: str, version: str, policy: Any, message: str) -> bool:
        """Quarantine ``key``; True when this is news (first time, or for a different reason/version)."""
        new = Held(reason, version, id(policy), message)
        old = self._held.get(key)
        self._held[key] = new
        self._gauge.set(len(self._held))
        if old is None or (old.reason, old.version, old.message) != (new.reason, new.version, new.message):
            self._counter.labels(reason).inc()
            return True
        return False

    def release(self, key: Hashable) -> bool:
        gone = self._held.pop(key, None) is not None
        if gone:
            self._gauge.set(len(self._held))
        return gone

    def keys(self) -> list[Hashable]:
        return list(self._held)
