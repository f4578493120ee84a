"""The scaling model: KEDA operator, Kubernetes HPA and KEDA HTTP add-on rules as a pure event loop.

``simulate(arrivals, config, timing, horizon)`` replays arrivals and returns what it cost and what requests
saw. Nothing here reads files, clocks or randomness: the same input gives the same output, so a unit test can
hand-compute a timeline and compare it exactly. Every rule is listed, with the upstream source it follows,
in docs/scaling-report.md ("The model"); the short form:

* KEDA operator (kedacore/keda ``pkg/scaling/executor/scale_scaledobjects.go``, ``RequestScale``): every
  ``pollingInterval`` it asks all triggers whether they are active. At 0 replicas and any trigger active it
  writes ``max(minReplicaCount, 1)`` (``scaleFromZeroOrIdle``). Active at N > 0: ``lastActiveTime = now``.
  Inactive, N > 0 and ``minReplicaCount == 0``: scale to 0 when ``lastActiveTime + cooldownPeriod`` is
  strictly before now, or, never active yet, when ``creation + initialCooldownPeriod`` is (``scaleToZeroOrIdle``).
  ``lastActiveTime`` is the one KEDA reads back from the API server (``checkScalers`` in
  ``pkg/scaling/scale_handler.go`` re-reads the ScaledObject each loop), and a ``metav1.Time`` is stored with
  whole seconds: the fraction is cut off, so the workload may go to zero up to 1 s before
  ``lastActiveTime + cooldownPeriod`` (observed on the live stack: 7.5-8.7 s after the queue emptied with a
  10 s cooldown and 2 s polling).
* A trigger is active when its metric is strictly greater than its activation threshold.
* HTTP add-on (external-push): the scaler streams "active" every 200 ms while requests are pending or in
  flight; KEDA acts on an active push at once, without waiting for a poll (``startPushScalers``), so 0 -> 1
  happens ``push_latency_s`` after the first request, and ``lastActiveTime`` follows the last moment a request
  was in the system. Requests are held by the interceptor until a replica is ready; a held request fails when
  the readiness timeout passes (0 = no readiness deadline, the add-on's default).
* HPA 1 <-> N (kubernetes ``pkg/controller/podautoscaler``): a sync every 15 s; AverageValue targets of
  external metrics give ``ceil(total / target)`` unless ``|total / (target * current) - 1| <= 0.1``; the
  largest proposal across metrics wins; stabilisation keeps the minimum (scale up) / maximum (scale down)
  recommendation within the window; rate limits from the behavior policies over their periods. Default
  behavior: up max(100 %, 4 pods) per 15 s without a window; down 100 % per 15 s with a 300 s window.
* Pods: a new pod holds its GPU from creation and is ready after scheduling + image pull + model load. On scale
  in, pods that are not ready go first (as the ReplicaSet controller ranks them).

Where a replay starts and ends is part of its input, not of the rules (a trace is a slice of a longer life):

* ``start="warm"``: the steady state before the first request. The workload was serving until t = 0 (recent
  activity): ``max(minReplicas, 1)`` replicas ready and ``lastActiveTime = 0``, so with nothing to do it
  scales in one cooldown later. When the trace opens with an idle stretch longer than the cooldown (or has
  no request at all), the workload would be at rest by its first request whatever came before, so it starts
  at rest instead of being billed for a cooldown that serves nobody.
  ``start="cold"``: at rest since long before t = 0: ``minReplicaCount`` replicas (0 when it scales to zero;
  the HPA floor of 1 for a plain HPA). ``start="created"``: the object is created at t = 0
  (``start-at-zero`` and ``initialCooldownPeriod`` apply). Replicas present at t = 0 are ready.
* ``score_from``: a warm-up. Everything runs from t = 0, but only GPU time after ``score_from`` and requests
  arriving from then on are counted.
* ``horizon=None`` (the default): run until every request is served (or failed) and the workload is back at
  rest, so the last cooldown is billed. A given horizon cuts the replay there; requests still held at the cut
  are counted as ``cut``, never as failed (unless nothing could ever wake the workload to serve them).

Simplifications (also in the report): requests are served as soon as one replica is ready, with no queueing
behind busy replicas (``overloaded`` counts requests arriving above the per-replica target instead); service
time is fixed per request; the scaler's 200 ms stream and 500 ms queue ticks are treated as instant; KEDA's
poll and the HPA's sync are aligned on multiples of their periods from the trace start.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from .result import Result

__all__ = ["Batch", "PodTiming", "Result", "ScalingConfig", "simulate"]

# One arrival batch: (time in seconds from the trace start, number of requests, service time in seconds).
Batch = tuple[float, int, float]

HPA_SYNC_S = 15.0            # kube-controller-manager --horizontal-pod-autoscaler-sync-period default
HPA_TOLERANCE = 0.1          # --horizontal-pod-autoscaler-tolerance default
HPA_DOWNSCALE_WINDOW_S = 300  # --horizontal-pod-autoscaler-downscale-stabilization default (5m)
PUSH_LATENCY_S = 0.25        # observed on the live stack: /scale written 0.24-0.26 s after the first request

DEFAULT_SCALE_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                                 {"type": "Percent", "value": 100, "periodSeconds": 15}]}
DEFAULT_SCALE_DOWN = {"stabilizationWindowSeconds": HPA_DOWNSCALE_WINDOW_S, "selectPolicy": "Max",
                      "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}


@dataclass(frozen=True)
class PodTiming:
    """How long a new replica takes to serve. Defaults are parameters chosen by us (see the report); the
    model-load time is the one that matters and the CLI asks for it (``--model-load``)."""

    scheduling_s: float = 2.0
    image_pull_s: float = 20.0
    model_load_s: float = 120.0

    @property
    def startup_s(self) -> float:
        return self.scheduling_s + self.image_pull_s + self.model_load_s


@dataclass(frozen=True)
class ScalingConfig:
    """What the model needs of a ScaledObject (+ InterceptorRoute), in seconds and counts.

    ``autoscale=False`` means a fixed replica count (llmaz without KEDA): ``min_replicas`` pods all along.
    ``keda=False`` with ``autoscale=True`` is a plain HPA (llmaz ``elasticConfig``): never below 1.
    """

    min_replicas: int
    max_replicas: int
    cooldown_s: float = 300.0
    polling_s: float = 30.0
    initial_cooldown_s: float = 0.0
    start_at_zero: bool = False
    push: bool = True                 # an http trigger: external-push activation
    wakes: bool = True                # some trigger can become active with no pods
    activation: float = 0.0           # demand must be strictly greater to count as active
    target: float | None = 16.0       # per-replica AverageValue target of the demand metric; None: no metric
    readiness_timeout_s: float = 0.0  # 0: no readiness deadline
    behavior: dict[str, Any] | None = None
    cron: tuple[tuple[float, float, int], ...] = ()   # (start, end, desiredReplicas), sorted, absolute seconds
    autoscale: bool = True
    keda: bool = True
    push_latency_s: float = PUSH_LATENCY_S
    hpa_sync_s: float = HPA_SYNC_S
    tolerance: float = HPA_TOLERANCE
    gpus_per_replica: int = 1


def _rules(behavior: dict[str, Any] | None, key: str, default: dict[str, Any]) -> dict[str, Any]:
    """The API server fills unset fields of a scaling rule from the defaults (autoscaling/v2 defaults.go)."""
    given = (behavior or {}).get(key) or {}
    merged = dict(default)
    for k in ("stabilizationWindowSeconds", "selectPolicy", "policies"):
        if given.get(k) is not None:
            merged[k] = given[k]
    return merged


def _grid_after(x: float, period: float) -> float:
    """First multiple of ``period`` strictly after ``x``."""
    return (math.floor(x / period + 1e-9) + 1) * period


def _grid_at_or_after(x: float, period: float) -> float:
    return math.ceil(x / period - 1e-9) * period


def _stored(t: float) -> float:
    """``lastActiveTime`` as stored by the API server: ``metav1.Time`` serialises whole seconds (RFC 3339)."""
    return float(math.floor(t))


def _grid_before(x: float, period: float) -> float:
    """Last multiple of ``period`` strictly before ``x``."""
    return (math.ceil(x / period - 1e-9) - 1) * period


class _Sim:
    """Mutable state of one replay; ``simulate`` is the pure entry point."""

    def __init__(self, cfg: ScalingConfig, timing: PodTiming, keep_timeline: bool, score_from: float = 0.0) -> None:
        self.cfg = cfg
        self.sf = score_from
        self.startup = timing.startup_s
        self.keep_timeline = keep_timeline
        self.r = Result()
        self.now = 0.0
        self.replicas = 0
        self.ready = 0
        self.starting: list[float] = []           # ready times of pods not ready yet, ascending
        self.held: deque[list[Any]] = deque()     # [arrival, n, service] waiting for a ready replica
        self.held_n = 0
        self.inflight: list[tuple[float, int]] = []
        self.inflight_n = 0
        self.last_active: float | None = None
        self.active_since: float | None = None
        self.wake_at: float | None = None
        self.area_t = 0.0
        self.hfloor = max(cfg.min_replicas, 1)
        self.up = _rules(cfg.behavior, "scaleUp", DEFAULT_SCALE_UP)
        self.down = _rules(cfg.behavior, "scaleDown", DEFAULT_SCALE_DOWN)
        self.recs: list[tuple[float, int]] = []
        self.scale_events: list[tuple[float, int]] = []
        self.hpa_last = -math.inf
        self.cron_i = 0

    # ------------------------------------------------------------------ bookkeeping
    def _account(self, t: float) -> None:
        lo = max(self.area_t, self.sf)
        if t > lo:
            self.r.replica_seconds += self.replicas * (t - lo)
            if self.area_t <= self.sf:
                self.r.peak_replicas = max(self.r.peak_replicas, self.replicas)   # replicas when scoring starts
        self.area_t = max(self.area_t, t)
        self.now = t

    def _set_replicas(self, n: int, t: float) -> None:
        n = max(0, n)
        if n == self.replicas:
            return
        if n > self.replicas:
            for _ in range(n - self.replicas):
                self.starting.append(t + self.startup)
            if t >= self.sf:
                self.r.pod_starts += n - self.replicas
        else:
            drop = self.replicas - n
            while drop and self.starting:          # not-ready pods are deleted first
                self.starting.pop()
                drop -= 1
            self.ready -= drop
        self.replicas = n
        if t >= self.sf:
            self.r.peak_replicas = max(self.r.peak_replicas, n)
        if self.keep_timeline:
            self.r.timeline.append((t, n))

    @property
    def demand(self) -> int:
        return self.held_n + self.inflight_n

    def _cron_desired(self, t: float) -> int:
        cron = self.cfg.cron
        while self.cron_i < len(cron) and cron[self.cron_i][1] <= t:
            s, e, _ = cron[self.cron_i]
            seen = _grid_before(e, self.cfg.polling_s)   # the last poll inside the window saw it active
            if self.replicas > 0 and seen >= s and (self.last_active is None or seen > self.last_active):
                self.last_active = seen
            self.cron_i += 1
        best = 0
        for i in range(self.cron_i, len(cron)):
            s, e, d = cron[i]
            if s > t:
                break
            if s <= t < e:
                best = max(best, d)
        return best

    def _next_cron_start(self, t: float) -> float | None:
        for i in range(self.cron_i, len(self.cfg.cron)):
            s, e, _ = self.cfg.cron[i]
            if e > t:
                return max(s, t)
        return None

    def _next_cron_edge(self) -> float:
        for i in range(self.cron_i, len(self.cfg.cron)):
            s, e, _ = self.cfg.cron[i]
            if s > self.now:
                return s
            if e > self.now:
                return e
        return math.inf

    def _active(self, t: float) -> bool:
        return self.demand > self.cfg.activation or self._cron_desired(t) > 0

    def _demand_changed(self, before: int, t: float) -> None:
        """Keep ``lastActiveTime`` as KEDA would have recorded it from this demand trigger."""
        act = self.cfg.activation
        after = self.demand
        if before <= act < after:
            self.active_since = t
        elif after <= act < before:
            since = self.active_since if self.active_since is not None else t
            if self.cfg.push:
                seen = t                             # streamed while active, then the poll loop saw it too
            else:
                seen = _grid_before(t, self.cfg.polling_s)
                if seen < since:
                    return                           # active between two polls: KEDA never saw it
            if self.replicas > 0 and (self.last_active is None or seen > self.last_active):
                self.last_active = seen

    # ------------------------------------------------------------------ the rules
    def _keda_poll_time(self) -> float | None:
        cfg = self.cfg
        if not (cfg.autoscale and cfg.keda):
            return None
        p = cfg.polling_s
        if self.replicas == 0:
            cands = []
            if cfg.wakes and not cfg.push and self.demand > cfg.activation:
                cands.append(_grid_at_or_after(self.now, p))
            cs = self._next_cron_start(self.now)
            if cs is not None:
                cands.append(_grid_at_or_after(cs, p))
            return min(cands) if cands else None
        if cfg.min_replicas > 0 or self.demand > cfg.activation:
            return None
        cs = self._next_cron_start(self.now)
        if cs is not None and cs <= self.now:
            return None                              # inside a cron window: active
        base = cfg.initial_cooldown_s if self.last_active is None else _stored(self.last_active) + cfg.cooldown_s
        t = max(_grid_after(base, p), _grid_at_or_after(self.now, p))
        if cs is not None and _grid_at_or_after(cs, p) <= t:
            return None                              # a window opens first; reconsidered when it closes
        return t

    def _keda_poll(self, t: float) -> None:
        cfg = self.cfg
        if self._active(t):
            if self.replicas == 0:
                self._wake(t)
            else:
                self.last_active = t
            return
        if self.replicas > 0 and cfg.min_replicas == 0:
            base = cfg.initial_cooldown_s if self.last_active is None else _stored(self.last_active) + cfg.cooldown_s
            if base < t:
                self._set_replicas(0, t)
                self.wake_at = None

    def _wake(self, t: float) -> None:
        self._set_replicas(max(self.cfg.min_replicas, 1), t)
        if t >= self.sf:
            self.r.activations += 1
        self.last_active = t
        self.wake_at = None

    def _hot(self) -> bool:
        cfg = self.cfg
        if not cfg.autoscale or self.replicas == 0:
            return False
        if self.replicas > self.hfloor or self._cron_desired(self.now) > self.hfloor:
            return True
        return cfg.target is not None and self.demand > self.hfloor * cfg.target

    def _hpa_sync(self, t: float) -> None:
        cfg = self.cfg
        cur = self.replicas
        proposals = []
        if cfg.target is not None:
            total = self.demand
            ratio = total / (cfg.target * cur)
            proposals.append(cur if abs(1.0 - ratio) <= cfg.tolerance else math.ceil(total / cfg.target - 1e-9))
        d = self._cron_desired(t)
        if d:
            proposals.append(cur if abs(1.0 - d / cur) <= cfg.tolerance else d)
        desired = max(proposals) if proposals else cur
        self._record(t, desired)
        up_cut = t - self.up["stabilizationWindowSeconds"]
        down_cut = t - self.down["stabilizationWindowSeconds"]
        up_rec = down_rec = desired
        for ts, rec in self.recs:
            if ts > up_cut:
                up_rec = min(up_rec, rec)
            if ts > down_cut:
                down_rec = max(down_rec, rec)
        rec = cur
        if rec < up_rec:
            rec = up_rec
        if rec > down_rec:
            rec = down_rec
        new = self._rate_limited(t, cur, rec)
        if new != cur:
            self.scale_events.append((t, new - cur))
            self._set_replicas(new, t)

    def _record(self, t: float, desired: int) -> None:
        keep = t - max(self.up["stabilizationWindowSeconds"], self.down["stabilizationWindowSeconds"], 1)
        self.recs = [(ts, r) for ts, r in self.recs if ts > keep]
        self.recs.append((t, desired))

    def _rate_limited(self, t: float, cur: int, desired: int) -> int:
        lo, hi = self.hfloor, self.cfg.max_replicas
        horizon = max([p["periodSeconds"] for p in self.up["policies"] + self.down["policies"]] + [1])
        self.scale_events = [(ts, c) for ts, c in self.scale_events if ts > t - horizon]
        if desired > cur:
            limit = self._limit(t, cur, self.up, up=True)
            return max(min(desired, hi, max(limit, cur)), lo)
        if desired < cur:
            limit = self._limit(t, cur, self.down, up=False)
            return min(max(desired, lo, min(limit, cur)), hi)
        return min(max(desired, lo), hi)

    def _limit(self, t: float, cur: int, rules: dict[str, Any], up: bool) -> int:
        select = rules["selectPolicy"]
        if select == "Disabled":
            return cur
        props = []
        for pol in rules["policies"]:
            cut = t - pol["periodSeconds"]
            changed = sum(c for ts, c in self.scale_events if ts > cut and (c > 0) == up)
            start = cur - changed    # replicas at the start of the period (changed < 0 when scaling down)
            if up:
                props.append(start + pol["value"] if pol["type"] == "Pods"
                             else math.ceil(start * (1 + pol["value"] / 100)))
            else:
                props.append(start - pol["value"] if pol["type"] == "Pods"
                             else int(start * (1 - pol["value"] / 100)))
        if not props:
            return cur
        # "Max" picks the policy allowing the largest change.
        if up:
            return max(props) if select == "Max" else min(props)
        return min(props) if select == "Max" else max(props)

    # ------------------------------------------------------------------ requests
    def _arrive(self, t: float, n: int, service: float) -> None:
        before = self.demand
        scored = t >= self.sf
        if scored:
            self.r.requests += n
        if self.ready > 0:
            if scored and self.cfg.target is not None and before + n > self.ready * self.cfg.target:
                self.r.overloaded += n
            heapq.heappush(self.inflight, (t + service, n))
            self.inflight_n += n
        else:
            self.held.append([t, n, service])
            self.held_n += n
            if (self.replicas == 0 and self.cfg.push and self.cfg.wakes and self.cfg.autoscale
                    and self.cfg.keda and self.wake_at is None):
                self.wake_at = t + self.cfg.push_latency_s
        self._demand_changed(before, t)

    def _release_held(self, t: float) -> None:
        before = self.demand
        while self.held:
            ta, n, s = self.held.popleft()
            if ta >= self.sf:
                self.r.waited += n
                self.r.waits.append((t - ta, n))
            heapq.heappush(self.inflight, (t + s, n))
            self.inflight_n += n
        self.held_n = 0
        self._demand_changed(before, t)

    def _fail_held(self, t: float) -> None:
        before = self.demand
        limit = self.cfg.readiness_timeout_s
        while self.held and self.held[0][0] + limit <= t:
            ta, n, _ = self.held.popleft()
            self.held_n -= n
            if ta >= self.sf:
                self.r.waited += n
                self.r.failed += n
                self.r.waits.append((t - ta, n))
        self._demand_changed(before, t)

    def _settle_s(self) -> float:
        """How long HPA syncs alone may go on after the last other event before the replay counts the workload
        as at rest: the stabilisation windows and rate-limit periods have all passed by then."""
        periods = [p["periodSeconds"] for p in self.up["policies"] + self.down["policies"]]
        return (max(self.up["stabilizationWindowSeconds"], self.down["stabilizationWindowSeconds"])
                + max(periods + [0]) + 2 * self.cfg.hpa_sync_s)

    def _start(self, start: str, first_arrival: float) -> None:
        cfg = self.cfg
        if start not in ("warm", "cold", "created"):
            raise ValueError(f"start {start!r}: use warm, cold or created")
        if start == "warm" and cfg.keda and first_arrival > cfg.cooldown_s:
            start = "cold"                              # idle for longer than the cooldown: at rest by then
        if not cfg.autoscale:
            n = cfg.min_replicas
        elif start == "warm" or not cfg.keda:
            n = max(cfg.min_replicas, 1)
        elif start == "cold":
            n = cfg.min_replicas
        else:
            n = cfg.min_replicas if cfg.start_at_zero else max(cfg.min_replicas, 1)
        self._set_replicas(n, 0.0)
        # The workload existed before the trace: replicas present at t=0 are ready.
        self.starting.clear()
        self.ready = self.replicas
        if start == "warm" and cfg.autoscale and cfg.keda and n > 0:
            self.last_active = 0.0                      # the last request before the trace ended at t = 0

    def _wakeable(self) -> bool:
        """Would anything still serve the held requests if the replay went on?"""
        return bool(self.starting) or self.wake_at is not None or self.ready > 0 or (
            self.replicas == 0 and self._keda_poll_time() is not None)

    def run(self, arrivals: Sequence[Batch], horizon: float | None, start: str = "cold") -> Result:
        cfg = self.cfg
        self._start(start, arrivals[0][0] if arrivals else math.inf)
        at_rest = horizon is None
        stop = math.inf if horizon is None else horizon
        settle = self._settle_s()
        busy_until = 0.0                                # time of the last event other than an HPA sync
        i, n_arr = 0, len(arrivals)
        inf = math.inf
        events = 0
        while True:
            t_arr = arrivals[i][0] if i < n_arr else inf
            t_done = self.inflight[0][0] if self.inflight else inf
            t_ready = self.starting[0] if self.starting else inf
            t_fail = (self.held[0][0] + cfg.readiness_timeout_s
                      if self.held and cfg.readiness_timeout_s > 0 else inf)
            t_wake = self.wake_at if self.wake_at is not None else inf
            t_poll = self._keda_poll_time()
            t_poll = inf if t_poll is None else t_poll
            t_hpa = inf
            if self._hot():
                nxt = _grid_at_or_after(self.now, cfg.hpa_sync_s)
                if nxt <= self.hpa_last:
                    nxt = self.hpa_last + cfg.hpa_sync_s
                t_hpa = nxt
            t_edge = self._next_cron_edge()
            t_other = min(t_done, t_ready, t_fail, t_wake, t_poll, t_edge, t_arr)
            if at_rest and t_other == inf and t_hpa > busy_until + settle:
                break                                   # only syncs that change nothing are left: at rest
            t_int = min(t_done, t_ready, t_fail, t_wake, t_poll, t_hpa, t_edge)
            t = min(t_int, t_arr)
            if t == inf or t > stop:
                break
            if t < t_hpa:
                busy_until = t
            events += 1
            self._account(t)
            if t_done == t:
                before = self.demand
                while self.inflight and self.inflight[0][0] <= t:
                    self.inflight_n -= heapq.heappop(self.inflight)[1]
                self._demand_changed(before, t)
            elif t_fail == t:
                self._fail_held(t)
            elif t_ready == t:
                while self.starting and self.starting[0] <= t:
                    self.starting.pop(0)
                    self.ready += 1
                if self.held:
                    self._release_held(t)
            elif t_wake == t:
                self.wake_at = None
                if self.replicas == 0 and self.demand > 0:
                    self._wake(t)
            elif t_poll == t:
                self._keda_poll(t)
            elif t_hpa == t:
                skipped = _grid_before(t, cfg.hpa_sync_s)
                if skipped > self.hpa_last + 1e-9:
                    self._record(skipped, self.hfloor)   # syncs skipped while nothing could change
                self.hpa_last = t
                self._hpa_sync(t)
            elif t_edge == t:
                self._cron_desired(t)                    # a window opened or closed: state re-evaluated
            else:
                a = arrivals[i]
                i += 1
                self._arrive(a[0], a[1], a[2])
        last_arrival = arrivals[-1][0] if arrivals else 0.0
        end = max(self.now, last_arrival, self.sf) if at_rest else stop
        self._account(end)
        never = not self._wakeable()
        for ta, n, _ in self.held:
            if ta < self.sf:
                continue
            if never:                               # nothing would ever serve it: failed
                self.r.failed += n
                self.r.waited += n
                self.r.waits.append((end - ta, n))
            else:                                   # cut by the horizon: neither served nor failed
                self.r.cut += n
        self.r.duration_s = end
        self.r.scored_from = self.sf
        self.r.gpu_seconds = self.r.replica_seconds * cfg.gpus_per_replica
        self.r.rest_replicas = self.replicas
        self.r.rest_gpus = self.replicas * cfg.gpus_per_replica
        self.r.workloads = 1
        if self.r.requests:
            self.r.workload_shares = [self.r.waited / self.r.requests]
        self.r.events = events
        return self.r


def simulate(arrivals: Sequence[Batch], config: ScalingConfig, timing: PodTiming = PodTiming(),
             horizon: float | None = None, keep_timeline: bool = False, start: str = "cold",
             score_from: float = 0.0) -> Result:
    """Replay ``arrivals`` (sorted by time) against ``config``. Pure and deterministic.

    ``horizon``: None runs until every request is served and the workload is at rest; a number cuts there.
    ``start``: ``warm``, ``cold`` or ``created`` (see the module docstring). ``score_from``: the warm-up; only
    what happens from then on is counted."""
    return _Sim(config, timing, keep_timeline, score_from).run(arrivals, horizon, start)
