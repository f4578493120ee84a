"""What one replay (or a fleet of them) cost and what its requests saw: the figures every report is made of.

A ``Result`` is plain numbers; ``merge`` sums workloads run side by side, ``extend_to`` bills a replay that
came to rest until a common end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


def within(share: float, objective: float) -> bool:
    """Whether a cold-start share meets an objective (a share exactly at it does; float noise aside)."""
    return share <= objective + 1e-12


@dataclass
class Result:
    """Figures of one replay (or a sum of replays, see ``merge``)."""

    duration_s: float = 0.0
    replica_seconds: float = 0.0
    gpu_seconds: float = 0.0
    requests: int = 0
    activations: int = 0              # 0 -> 1 scale-ups (cold starts)
    pod_starts: int = 0
    waited: int = 0                   # requests held for a cold start (failed ones included)
    failed: int = 0                   # held past the readiness timeout (504), or nothing could ever wake it
    cut: int = 0                      # still held when a given horizon cut the replay: neither served nor failed
    overloaded: int = 0               # arrived while demand was above ready replicas x target
    peak_replicas: int = 0
    events: int = 0
    # (added wait, requests) of every request that waited: served ones until served, failed ones until failed
    waits: list[tuple[float, int]] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas) at each change
    scored_from: float = 0.0          # start of the scored period (the warm-up before it is not counted)
    rest_replicas: int = 0            # replicas at the end of the replay (the workload at rest)
    rest_gpus: int = 0                # GPUs those replicas hold
    workload_shares: list[float] = field(default_factory=list)  # waited share of each workload with requests
    workloads: int = 0                # workloads summed into this result
    prewarms: int = 0                 # a learned pre-warm woke the workload with no request waiting
    unused_prewarms: int = 0          # ... and it went back to zero without serving one

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def replica_hours(self) -> float:
        return self.replica_seconds / 3600.0

    @property
    def waited_share(self) -> float:
        return self.waited / self.requests if self.requests else 0.0

    def wait_quantile(self, q: float) -> float:
        """Added wait at quantile ``q`` over *all* requests (a request that did not wait added 0)."""
        if not self.requests:
            return 0.0
        rank = q * self.requests
        no_wait = self.requests - sum(n for _, n in self.waits)
        if rank <= no_wait:
            return 0.0
        seen = no_wait
        for w, n in sorted(self.waits):
            seen += n
            if seen >= rank:
                return w
        return max((w for w, _ in self.waits), default=0.0)

    def waiter_quantile(self, q: float) -> float:
        """Added wait at quantile ``q`` among the requests that waited."""
        total = sum(n for _, n in self.waits)
        if not total:
            return 0.0
        seen = 0
        for w, n in sorted(self.waits):
            seen += n
            if seen >= q * total:
                return w
        return self.waits[-1][0]

    @property
    def max_wait(self) -> float:
        return max((w for w, _ in self.waits), default=0.0)

    @property
    def failed_share(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def workload_share_quantile(self, q: float) -> float:
        """Waited share of the workload at quantile ``q`` (0.5: the median workload), over the workloads that
        had requests; the request-weighted share is ``waited_share``."""
        shares = sorted(self.workload_shares)
        if not shares:
            return 0.0
        return shares[min(len(shares) - 1, max(0, math.ceil(q * len(shares)) - 1))]

    def workloads_within(self, objective: float) -> int:
        """How many of the workloads that had requests kept their own waited share within ``objective``: the
        per-workload contract a ``cold-start-objective`` states, beside the request-weighted ``waited_share``
        (which one busy workload can dominate)."""
        return sum(1 for s in self.workload_shares if within(s, objective))

    def extend_to(self, end: float) -> "Result":
        """The same replay run on at rest until ``end`` (so configurations compared on one trace are billed
        over the same span): the replicas left at the end keep their GPUs."""
        start = max(self.duration_s, self.scored_from)
        if end <= self.duration_s:
            return self
        extra = max(0.0, end - start)
        return replace(self, duration_s=end, replica_seconds=self.replica_seconds + self.rest_replicas * extra,
                       gpu_seconds=self.gpu_seconds + self.rest_gpus * extra)

    def merge(self, other: "Result") -> "Result":
        """Sum of two workloads run side by side (a fleet): costs and counts add, peaks add (worst case)."""
        return Result(
            duration_s=max(self.duration_s, other.duration_s),
            replica_seconds=self.replica_seconds + other.replica_seconds,
            gpu_seconds=self.gpu_seconds + other.gpu_seconds, requests=self.requests + other.requests,
            activations=self.activations + other.activations, pod_starts=self.pod_starts + other.pod_starts,
            waited=self.waited + other.waited, failed=self.failed + other.failed, cut=self.cut + other.cut,
            overloaded=self.overloaded + other.overloaded, peak_replicas=self.peak_replicas + other.peak_replicas,
            events=self.events + other.events, waits=self.waits + other.waits,
            scored_from=min(self.scored_from, other.scored_from) if self.workloads else other.scored_from,
            rest_replicas=self.rest_replicas + other.rest_replicas, rest_gpus=self.rest_gpus + other.rest_gpus,
            workload_shares=self.workload_shares + other.workload_shares,
            workloads=self.workloads + other.workloads, prewarms=self.prewarms + other.prewarms,
            unused_prewarms=self.unused_prewarms + other.unused_prewarms)
