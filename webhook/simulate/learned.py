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

What the learner is told depends on the signal (``SIGNALS``). ``requests``: every request and its time, as a
request-count metric would give them. ``keda-status``: what the live reconciler reads without Prometheus
(``webhook.controller.learning``): KEDA's ``lastActiveTime``, so each wake-up counts as one request, a gap of
at most two polling intervals is no idle time, and activity inside a window of ours (and one poll after it)
cannot be told from the window's own; a pre-warm is placed as the reconciler places it (a one-minute wake-up
window, then a longer cooldown holding the replica to the pre-warm's end). ``request-counts``: what the
reconciler reads where Prometheus counts requests (``webhook.controller.learning.observe_counts``): every
request, but seen only when Prometheus scrapes the interceptor's counter after the request completed
(``SCRAPE_S``), dated that scrape minus its duration; the activity's end is the scrape that saw its last
completion, and a request dated at most two polling intervals (or two steps) after it ends no idle time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from ..learn import Learner, Params, prewarm_span
from ..policy import LearnFrom
from ..settings import Settings
from .model import Batch, PodTiming, ScalingConfig, _Sim
from .result import Result

DAY = 86400.0
SIGNALS = ("requests", "keda-status", "request-counts")
SCRAPE_S = 15.0     # request-counts: how often Prometheus scrapes the interceptor's counters (assumed)
STEP_S = float(LearnFrom().step)   # ... and the resolution the reconciler reads them at (the policy default)


@dataclass(frozen=True)
class LearnedConfig:
    """A workload with ``keep-alive: learned``: its static configuration (the cooldown applies while the
    learner has too little history) and its objective. ``replay.run_configs`` replays it with the learner."""

    config: ScalingConfig
    objective: float
    params: Params = Params()
    signal: str = "requests"            # what the learner is told (``SIGNALS``)


def learned_config(s: Settings, cfg: ScalingConfig, signal: str = "keda-status") -> ScalingConfig | LearnedConfig:
    """``cfg`` as it is replayed: with the learner when ``s`` asks for it on a workload that can reach zero.
    By default the learner is told what the live reconciler reads (``keda-status``)."""
    if s.keep_alive == "learned" and s.min_replicas == 0 and cfg.autoscale and cfg.keda:
        return LearnedConfig(cfg, s.cold_start_objective, signal=signal)
    return cfg


@dataclass
class LearnedRun:
    """A replay's ``Result`` (pre-warms included) plus what only a learned replay has."""

    result: Result
    decisions: dict[str, int] = field(default_factory=dict)   # mode -> idle periods decided in that mode
    final: str = ""                                           # the last decision, as a line


class _LearnedSim(_Sim):
    def __init__(self, cfg: ScalingConfig, timing: PodTiming, keep_timeline: bool, score_from: float,
                 learner: Learner, day_offset_s: float, signal: str = "requests") -> None:
        super().__init__(cfg, timing, keep_timeline, score_from)
        self.learner = learner
        self.day_offset = day_offset_s
        self.static_cron = cfg.cron
        self.static_cooldown = cfg.cooldown_s
        self.idle_since: float | None = None
        self.prewarm_pending = False
        self.decisions: dict[str, int] = {}
        # keda-status: what the reconciler sees (``webhook.controller.learning``)
        self.status = signal == "keda-status"
        self.counts = signal == "request-counts"
        self.count_from: float | None = None             # request-counts: the activity end before a new one
        self.wakes: list[tuple[float, float]] = []       # pre-warm wake-up windows placed (blind inside)
        self.dailies: list[tuple[float, float]] = []     # time-of-day windows placed (blind inside)
        self.anchor: float | None = None                 # the last activity's end outside our windows
        self.blind = False                               # a time-of-day window ran since that activity

    # -- the learner sees activity
    def _demand_changed(self, before: int, t: float) -> None:
        super()._demand_changed(before, t)
        act = self.cfg.activation
        after = self.demand
        if before <= act < after:
            if self.status:
                self._status_wake(t)
            elif self.counts:
                self.count_from = self.idle_since       # told in ``_arrive``, once the counter shows it
            elif self.idle_since is not None:
                self.learner.idle_ended(t, t - self.idle_since, self.day_offset)
            self.idle_since = None
        elif after <= act < before:
            self.idle_since = t
            if self.status and self._inside(t) is None:
                self.anchor = t
            self._apply(t)

    def _inside(self, t: float) -> str | None:
        """Whether lastActiveTime at ``t`` is inside one of our windows (and one poll after): "daily", "wake"."""
        p = self.cfg.polling_s
        if any(a <= t <= b + p for a, b in self.dailies):
            return "daily"
        if any(a <= t <= b + p for a, b in self.wakes):
            return "wake"
        return None

    def _status_wake(self, t: float) -> None:
        """What ``webhook.controller.learning.observe`` makes of a wake-up seen through lastActiveTime."""
        inside = self._inside(t)
        if inside is not None:
            self.blind = self.blind or inside == "daily"
            return
        anchor = self.anchor
        if anchor is None:
            self.anchor = t
            return
        # lastActiveTime last moved at the end of a window of ours that ran since the anchor, if any
        seen = max([anchor] + [b for a, b in self.wakes + self.dailies if anchor < b <= t])
        self.anchor = t
        if t - seen <= 2 * self.cfg.polling_s:
            if seen > anchor:
                self.blind = False
            return
        blind, self.blind = self.blind, False
        if not blind:
            self.learner.idle_ended(t, t - anchor, self.day_offset)
            self.learner.requests(t, 1)

    def _arrive(self, t: float, n: int, service: float) -> None:
        super()._arrive(t, n, service)
        if self.counts:
            self._counted(t, n, service)
        elif not self.status:
            self.learner.requests(t, n)
        self.prewarm_pending = False

    def _counted(self, t: float, n: int, service: float) -> None:
        """What ``observe_counts`` makes of ``n`` requests that came at ``t``: the scrape after their completion
        (a wait for a replica counts in their duration, so it does not move the date) less their duration."""
        done = t + service
        came = t + (math.ceil(done / SCRAPE_S) * SCRAPE_S - done)
        end, self.count_from = self.count_from, None
        if end is not None:
            seen_end = math.ceil(end / SCRAPE_S) * SCRAPE_S
            if came - seen_end > 2 * max(self.cfg.polling_s, STEP_S):
                self.learner.idle_ended(came, came - seen_end, self.day_offset)
        self.learner.requests(came, n)

    # -- the decision goes out through KEDA's fields
    def _apply(self, t: float) -> None:
        d = self.learner.decision(t)
        self.decisions[d.mode] = self.decisions.get(d.mode, 0) + 1
        cooldown = self.static_cooldown if d.keep_alive_s is None else float(d.keep_alive_s)
        windows = [w for w in self.static_cron if w[1] > t]
        if d.prewarm is not None and not self.status:
            a = math.floor((t + d.prewarm[0]) / 60.0) * 60.0
            b = math.ceil((t + d.prewarm[1]) / 60.0) * 60.0
            windows.append((a, b, 1))
        elif self.status:
            p = self.cfg.polling_s
            self.wakes = [w for w in self.wakes if w[1] + p >= t]
            self.dailies = [w for w in self.dailies if w[1] + p >= t]
            windows += [(a, b, 1) for a, b in self.wakes if a <= t < b]    # a wake-up under way ends by itself
            if d.prewarm is not None and self.anchor is not None:
                # live: a one-minute wake-up window, then a cooldown holding the replica to the pre-warm's
                # end, which is KEDA active until ``end - keep-alive``, seen only in the wake-up
                a, w, b = prewarm_span(self.anchor, d.prewarm, p)
                if b > t:
                    windows.append((a, max(w, b - cooldown), 1))
                    if w > t and (a, w) not in self.wakes:
                        self.wakes.append((a, w))
        for start, end in d.daily:
            day0 = math.floor((t + self.day_offset) / DAY) * DAY - self.day_offset
            for k in (0, 1):
                a, b = day0 + k * DAY + start, day0 + k * DAY + end
                if b > t and a < t + DAY:
                    w2 = (math.floor(a / 60.0) * 60.0, math.ceil(b / 60.0) * 60.0)
                    windows.append((*w2, 1))
                    if self.status and w2 not in self.dailies:
                        self.dailies.append(w2)
        self._cron_desired(t)                      # windows that ended are accounted before they go
        cron = tuple(sorted(windows))
        if cooldown != self.cfg.cooldown_s or cron != self.cfg.cron:   # most decisions change nothing
            self.cfg = replace(self.cfg, cooldown_s=cooldown, cron=cron)
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
                     learner: Learner | None = None, signal: str = "requests") -> LearnedRun:
    """Replay ``arrivals`` with a learner deciding keep-alive and pre-warm online; the arguments are those of
    ``model.simulate``. ``config`` is the workload's static configuration (its cooldown applies while the
    learner has too little history). ``signal``: what the learner is told (``SIGNALS``). Pure."""
    lr = learner or Learner(objective, timing.startup_s, config.polling_s, params, fallback_s=config.cooldown_s)
    sim = _LearnedSim(config, timing, keep_timeline, score_from, lr, day_offset_s, signal)
    r = sim.run(arrivals, horizon, start)
    return LearnedRun(r, sim.decisions, lr.decision(r.duration_s).summary())
