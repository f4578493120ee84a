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
from typing import Sequence

from ..learn import Learner, Params
from ..settings import Settings
from .model import Batch, PodTiming, ScalingConfig, _Sim
from .result import Result

DAY = 86400.0


@dataclass(frozen=True)
class LearnedConfig:
    """A workload with ``keep-alive: learned``: its static configuration (the cooldown applies while the
    learner has too little history) and its objective. ``replay.run_configs`` replays it with the learner."""

    config: ScalingConfig
    objective: float
    params: Params = Params()


def learned_config(s: Settings, cfg: ScalingConfig) -> ScalingConfig | LearnedConfig:
    """``cfg`` as it is replayed: with the learner when ``s`` asks for it on a workload that can reach zero."""
    if s.keep_alive == "learned" and s.min_replicas == 0 and cfg.autoscale and cfg.keda:
        return LearnedConfig(cfg, s.cold_start_objective)
    return cfg


@dataclass
class LearnedRun:
    """A replay's ``Result`` (pre-warms included) plus what only a learned replay has."""

    result: Result
    decisions: dict[str, int] = field(default_factory=dict)   # mode -> idle periods decided in that mode
    final: str = ""                                           # the last decision, as a line


class _LearnedSim(_Sim):
    def __init__(self, cfg: ScalingConfig, timing: PodTiming, keep_timeline: bool, score_from: float,
                 learner: Learner, day_offset_s: float) -> None:
        super().__init__(cfg, timing, keep_timeline, score_from)
        self.learner = learner
        self.day_offset = day_offset_s
        self.static_cron = cfg.cron
        self.static_cooldown = cfg.cooldown_s
        self.idle_since: float | None = None
        self.prewarm_pending = False
        self.decisions: dict[str, int] = {}

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
        self.decisions[d.mode] = self.decisions.get(d.mode, 0) + 1
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
            if t >= self.sf:
                self.r.prewarms += 1
            self.prewarm_pending = True
        super()._wake(t)

    def _set_replicas(self, n: int, t: float) -> None:
        if n == 0 and self.replicas > 0 and self.prewarm_pending:
            if t >= self.sf:
                self.r.unused_prewarms += 1
            self.prewarm_pending = False
        super()._set_replicas(n, t)


def simulate_learned(arrivals: Sequence[Batch], config: ScalingConfig, timing: PodTiming,
                     horizon: float | None, objective: float, params: Params = Params(), day_offset_s: float = 0.0,
                     keep_timeline: bool = False, start: str = "cold", score_from: float = 0.0,
                     learner: Learner | None = None) -> LearnedRun:
    """Replay ``arrivals`` with a learner deciding keep-alive and pre-warm online; the arguments are those of
    ``model.simulate``. ``config`` is the workload's static configuration (its cooldown applies while the
    learner has too little history). Pure."""
    lr = learner or Learner(objective, timing.startup_s, config.polling_s, params, fallback_s=config.cooldown_s)
    sim = _LearnedSim(config, timing, keep_timeline, score_from, lr, day_offset_s)
    r = sim.run(arrivals, horizon, start)
    return LearnedRun(r, sim.decisions, lr.decision(r.duration_s).summary())
