"""Replay with ``keep-alive: learned``: the model of ``model.py`` with the learner of ``webhook.learn`` acting
as the reconciler would, online (the learner only ever sees the past).

When an activity ends (no request pending or in flight) the learner decides and the decision is applied
through what KEDA has: the ScaledObject's ``cooldownPeriod`` becomes the keep-alive, and a pre-warm becomes a
cron window of one replica with an end (start rounded down and end up to whole minutes, as a cron expression
has them), so it lapses by itself. The workload's own cron windows stay. When a request ends an idle time the
learner is told how long it was, and which requests came within one pod start after it (the ones a cold start
there holds).

Counted beside the model's figures: pre-warms (a cron window woke the workload with no request waiting) and
the pre-warms that went unused (the replica went back to zero without serving a request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence, TextIO

from ..learn import Learner, Params
from ..settings import Settings
from .model import Batch, PodTiming, Result, ScalingConfig, _Sim, simulate
from .traces import Trace

DAY = 86400.0


@dataclass
class LearnedRun:
    """A replay's ``Result`` plus what only a learned replay has."""

    result: Result
    prewarms: int = 0
    unused_prewarms: int = 0
    decisions: dict[str, int] = field(default_factory=dict)   # mode -> idle periods decided in that mode
    final: str = ""                                           # the last decision, as a line


class _LearnedSim(_Sim):
    def __init__(self, cfg: ScalingConfig, timing: PodTiming, keep_timeline: bool, learner: Learner,
                 day_offset_s: float) -> None:
        super().__init__(cfg, timing, keep_timeline)
        self.learner = learner
        self.day_offset = day_offset_s
        self.static_cron = cfg.cron
        self.static_cooldown = cfg.cooldown_s
        self.idle_since: float | None = None
        self.prewarm_pending = False
        self.run_info = LearnedRun(self.r)

    # -- the learner sees activity
    def _demand_changed(self, before: int, t: float) -> None:
        super()._demand_changed(before, t)
        act = self.cfg.activation
        after = self.demand
        if before <= act < after:
            if self.idle_since is not None:
                self.learner.idle_ended(t, t - self.idle_since, self.day_offset)
            self.idle_since = None
        elif after <= act < before:
            self.idle_since = t
            self._apply(t)

    def _arrive(self, t: float, n: int, service: float) -> None:
        super()._arrive(t, n, service)
        self.learner.requests(t, n)
        self.prewarm_pending = False

    # -- the decision goes out through KEDA's fields
    def _apply(self, t: float) -> None:
        d = self.learner.decision(t)
        info = self.run_info
        info.decisions[d.mode] = info.decisions.get(d.mode, 0) + 1
        cooldown = self.static_cooldown if d.keep_alive_s is None else float(d.keep_alive_s)
        windows = [w for w in self.static_cron if w[1] > t]
        if d.prewarm is not None:
            a = math.floor((t + d.prewarm[0]) / 60.0) * 60.0
            b = math.ceil((t + d.prewarm[1]) / 60.0) * 60.0
            windows.append((a, b, 1))
        for start, end in d.daily:
            day0 = math.floor((t + self.day_offset) / DAY) * DAY - self.day_offset
            for k in (0, 1):
                a, b = day0 + k * DAY + start, day0 + k * DAY + end
                if b > t and a < t + DAY:
                    windows.append((math.floor(a / 60.0) * 60.0, math.ceil(b / 60.0) * 60.0, 1))
        self._cron_desired(t)                      # windows that ended are accounted before they go
        self.cfg = replace(self.cfg, cooldown_s=cooldown, cron=tuple(sorted(windows)))
        self.cron_i = 0

    def _wake(self, t: float) -> None:
        if self.demand <= self.cfg.activation:
            self.run_info.prewarms += 1
            self.prewarm_pending = True
        super()._wake(t)

    def _set_replicas(self, n: int, t: float) -> None:
        if n == 0 and self.replicas > 0 and self.prewarm_pending:
            self.run_info.unused_prewarms += 1
            self.prewarm_pending = False
        super()._set_replicas(n, t)


def simulate_learned(arrivals: Sequence[Batch], config: ScalingConfig, timing: PodTiming, horizon: float,
                     objective: float, params: Params = Params(), day_offset_s: float = 0.0,
                     keep_timeline: bool = False, learner: Learner | None = None) -> LearnedRun:
    """Replay ``arrivals`` with a learner deciding keep-alive and pre-warm online. ``config`` is the workload's
    static configuration (its cooldown applies while the learner has too little history). Pure."""
    lr = learner or Learner(objective, timing.startup_s, config.polling_s, params, fallback_s=config.cooldown_s)
    sim = _LearnedSim(config, timing, keep_timeline, lr, day_offset_s)
    sim.run(arrivals, horizon)
    info = sim.run_info
    info.final = lr.decision(horizon).summary()
    return info


@dataclass
class FleetRun:
    """A fleet replay: the summed ``Result`` and, per workload with requests, its cold-start share."""

    result: Result = field(default_factory=Result)
    shares: list[float] = field(default_factory=list)
    prewarms: int = 0
    unused_prewarms: int = 0

    def add(self, r: Result, prewarms: int = 0, unused: int = 0) -> None:
        self.result = self.result.merge(r) if self.result.requests or self.result.duration_s else r
        if r.requests:
            self.shares.append(r.waited_share)
        self.prewarms += prewarms
        self.unused_prewarms += unused

    def workload_share(self, q: float) -> float:
        """Cold-start share of the workload at quantile ``q`` (0.5: the median workload)."""
        if not self.shares:
            return 0.0
        s = sorted(self.shares)
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    def figures(self) -> dict[str, Any]:
        return {"workloads_with_requests": len(self.shares),
                "workload_waited_share": {"median": round(self.workload_share(0.5), 6),
                                          "p90": round(self.workload_share(0.9), 6)},
                "prewarms": self.prewarms, "unused_prewarms": self.unused_prewarms}


def learns(s: Settings | None) -> bool:
    """Whether a replay of ``s`` runs the learner: ``keep-alive: learned`` on a workload that can reach zero."""
    return s is not None and s.keep_alive == "learned" and s.min_replicas == 0


def replay(tr: Trace, cfg: ScalingConfig, timing: PodTiming, horizon: float, settings: Settings | None,
           fleet: FleetRun, keep_timeline: bool = False, params: Params = Params()) -> Result:
    """One workload's replay, learned when ``settings`` asks for it; added to ``fleet``."""
    if learns(settings):
        assert settings is not None
        lr = simulate_learned(tr.arrivals, cfg, timing, horizon, settings.cold_start_objective, params,
                              tr.day_offset(), keep_timeline)
        fleet.add(lr.result, lr.prewarms, lr.unused_prewarms)
        return lr.result
    r = simulate(tr.arrivals, cfg, timing, horizon, keep_timeline=keep_timeline)
    fleet.add(r)
    return r


def print_fleet_extras(out: TextIO, fleets: dict[str, FleetRun]) -> None:
    """Per-workload cold-start shares (a fleet) and pre-warms (a learned keep-alive), below the table."""
    for name, f in fleets.items():
        parts = []
        if len(f.shares) > 1:
            parts.append(f"median workload {f.workload_share(0.5) * 100:.2f}%, p90 workload "
                         f"{f.workload_share(0.9) * 100:.2f}% of its requests met a cold start")
        if f.prewarms:
            parts.append(f"{f.prewarms} pre-warms, {f.unused_prewarms} unused")
        if parts:
            out.write(f"{name}: {'; '.join(parts)}\n")
