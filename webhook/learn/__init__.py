"""Per-workload keep-alive and pre-warm, learned online from the workload's own idle times.

``state`` holds what is remembered (bounded, encodable for an annotation or a ConfigMap); ``decide`` turns it
into a keep-alive and a pre-warm for an objective. ``Learner`` ties the two for a caller that sees activity
as it happens: the simulator (``webhook.simulate.learned``) and the reconciler use it unchanged. Pure: no
clocks, no I/O; every time is passed in.
"""

from __future__ import annotations

import math

from .decide import Decision, decide
from .state import Params, State, StateError, decode, encode, observe_idle, observe_requests

__all__ = ["STARTUP_S", "Decision", "Learner", "Params", "State", "StateError", "decide", "decode", "encode",
           "parse_objective", "prewarm_span", "wake_length"]

# A replica's start (scheduling + image pull + model load) when the workload does not say (``startup-time``):
# the simulator's default pod timing (webhook/simulate/model.py ``PodTiming``).
STARTUP_S = 142.0
REDECIDE_EVERY = 16     # observations after which a cached decision is recomputed


def wake_length(polling_s: float) -> float:
    """How long the cron window that wakes a workload for a pre-warm lasts: whole minutes (a cron expression's
    unit), at least one polling interval, so that KEDA's loop sees it. The replica is then held by a longer
    cooldown, not by the window (see ``webhook.controller.learning``)."""
    return max(60.0, math.ceil(polling_s / 60.0) * 60.0)


def prewarm_span(anchor: float, prewarm: tuple[float, float], polling_s: float) -> tuple[float, float, float]:
    """Where a relative pre-warm ``prewarm`` (seconds after ``anchor``) goes on the clock, as the reconciler
    places it: the wake-up window's start and end (whole minutes, ``wake_length`` long) and the end of the hold
    (rounded up to a minute, never before the wake-up's end)."""
    a = math.floor((anchor + prewarm[0]) / 60.0) * 60.0
    w = a + wake_length(polling_s)
    return a, w, max(w, math.ceil((anchor + prewarm[1]) / 60.0) * 60.0)


class Learner:
    """One workload's learner. ``idle_ended`` / ``requests`` feed it; ``decision`` answers after an activity
    ended, recomputed when an idle time fell outside what the last decision covered or after
    ``REDECIDE_EVERY`` observations (deciding scans the histogram; most idle times change nothing)."""

    def __init__(self, objective: float, startup_s: float, polling_s: float, params: Params = Params(),
                 state: State | None = None, fallback_s: float = 0.0) -> None:
        self.objective = objective
        self.fallback_s = fallback_s
        self.startup_s = startup_s
        self.polling_s = polling_s
        self.params = params
        self.state = state if state is not None else State()
        self._last: Decision | None = None

    def idle_ended(self, t: float, idle_s: float, day_offset_s: float = 0.0) -> None:
        d = self._last
        cold = None if d is None else _cold(d, t, idle_s, day_offset_s, self.startup_s, self.polling_s,
                                            self.fallback_s)
        observe_idle(self.state, self.params, t, idle_s, self.startup_s, day_offset_s, cold)
        if d is not None and d.keep_alive_s is not None and not d.prewarm and idle_s > d.keep_alive_s:
            self.state.changes = REDECIDE_EVERY        # a cold start under the last decision: look again

    def requests(self, t: float, n: int) -> None:
        observe_requests(self.state, self.params, t, n)

    def decision(self, t: float) -> Decision:
        if self._last is None or self.state.changes >= REDECIDE_EVERY or self._last.mode == "policy":
            self._last = decide(self.state, self.params, t, self.objective, self.startup_s, self.polling_s,
                                self.fallback_s)
        return self._last


def _cold(d: Decision, t: float, idle_s: float, day_offset_s: float, startup_s: float, polling_s: float,
          fallback_s: float) -> bool | None:
    """Whether an idle time of ``idle_s`` ending at ``t`` met a cold start under decision ``d`` (as far as the
    learner can tell: a replica is ready after one pod start, a scale-in is acted on at the next poll). None
    when it cannot tell: the policy's settings applied and the learner was not told their keep-alive."""
    if d.keep_alive_s is None and fallback_s <= 0:
        return None
    keep = fallback_s if d.keep_alive_s is None else d.keep_alive_s
    if idle_s <= keep + polling_s:
        return False
    if d.prewarm is not None and d.prewarm[0] + startup_s <= idle_s <= d.prewarm[1]:
        return False
    tod = (t + day_offset_s) % 86400.0
    for a, b in d.daily:
        if a + startup_s <= tod <= b or a + startup_s <= tod + 86400.0 <= b:
            return False
    return True


def parse_objective(text: str) -> float:
    """``"1%"`` -> 0.01. A share of requests above 0 and at most 50 %; ValueError says how to write it."""
    raw = str(text).strip()
    if not raw.endswith("%"):
        raise ValueError(f"{raw!r} is not a percentage; write e.g. \"1%\" or \"0.5%\"")
    try:
        value = float(raw[:-1])
    except ValueError:
        raise ValueError(f"{raw!r} is not a percentage; write e.g. \"1%\" or \"0.5%\"") from None
    if not 0 < value <= 50:
        raise ValueError(f"{raw} is out of range; write a share above 0% and at most 50%")
    return value / 100.0
