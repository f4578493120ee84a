"""The recommender: sweep the knobs a user sets as annotations, replay each candidate, pick the cheapest
that meets the objective.

Every candidate is written as annotations on a copy of the workload and resolved by the webhook's own rules
(``mutation.mutate`` -> ``settings.analyze``), so what is recommended is exactly what would be admitted and
reconciled: a cron warm window the trigger parser would refuse cannot be recommended. A warm window is learned
from the first half of the days and every candidate is scored on the second half (never on the days a window
was learned from); traces shorter than two days get no warm window.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import constants as C
from ..errors import Denied
from ..models import ModelCatalog
from ..mutation import mutate
from ..policy import Policy
from ..settings import Settings
from .baselines import SimulationError, from_settings
from .learned import FleetRun, replay
from .model import PodTiming, Result
from .traces import Trace

COOLDOWNS = (60, 120, 300, 600, 900, 1800, 3600)
POLLINGS = (5, 15, 30)
DAY = 86400.0

_OBJECTIVE = re.compile(r"^\s*(cold-start-share|added-wait-p99|failed-share)\s*<=\s*([\d.]+)\s*(%|s|m)?\s*$")


@dataclass(frozen=True)
class Objective:
    metric: str
    limit: float          # a share in [0, 1] or seconds

    def value(self, r: Result) -> float:
        if self.metric == "cold-start-share":
            return r.waited_share
        if self.metric == "failed-share":
            return r.failed / r.requests if r.requests else 0.0
        return r.wait_quantile(0.99)

    def met(self, r: Result) -> bool:
        return self.value(r) <= self.limit + 1e-12

    def show(self, v: float) -> str:
        return f"{v * 100:.2f}%" if self.metric.endswith("share") else f"{v:.1f}s"


def parse_objective(text: str) -> Objective:
    m = _OBJECTIVE.match(text)
    if not m:
        raise ValueError(f"objective {text!r} not understood; write cold-start-share<=1%, added-wait-p99<=30s "
                         "or failed-share<=0.1%")
    metric, num, unit = m.group(1), float(m.group(2)), m.group(3)
    if metric.endswith("share"):
        if unit not in ("%", None):
            raise ValueError(f"objective {text!r}: a share is written in % (e.g. {metric}<=1%)")
        return Objective(metric, num / 100 if unit == "%" else num)
    if unit == "%":
        raise ValueError(f"objective {text!r}: a wait is written in s or m (e.g. added-wait-p99<=30s)")
    return Objective(metric, num * (60 if unit == "m" else 1))


def learn_warm_window(trace: Trace, days: int, min_share: float = 0.5) -> tuple[int, int] | None:
    """(start hour, end hour) UTC of the longest run of hours that had traffic on at least ``min_share`` of
    the first ``days`` days; None when no hour or every hour qualifies (nothing a window would change)."""
    if days < 1:
        return None
    off = trace.day_offset()
    seen = [set() for _ in range(24)]
    for t, _, _ in trace.arrivals:
        if t >= days * DAY:
            break
        a = t + off
        seen[int(a // 3600) % 24].add(int(a // DAY))
    busy = [len(s) >= min_share * days for s in seen]
    if all(busy) or not any(busy):
        return None
    best, best_len = None, 0
    for h in range(24):
        if busy[h] and not busy[h - 1]:
            n = 0
            while busy[(h + n) % 24] and n < 24:
                n += 1
            if n > best_len:
                best, best_len = h, n
    assert best is not None
    return best, (best + best_len) % 24


@dataclass
class Candidate:
    label: str
    annotations: dict[str, str]
    settings: Settings
    result: Result
    value: float


@dataclass
class Recommendation:
    objective: Objective
    picked: Candidate | None
    candidates: list[Candidate]
    baseline: Result                  # the current settings on the scoring days
    window: tuple[int, int] | None
    scored_on: str
    notes: list[str] = field(default_factory=list)

    def knee(self, around: int = 3) -> list[Candidate]:
        """Candidates sorted by cost, ``around`` either side of the pick (the cost/latency curve)."""
        ordered = sorted(self.candidates, key=lambda c: (c.result.gpu_seconds, c.value))
        if self.picked is None:
            return ordered[:2 * around + 1]
        i = ordered.index(self.picked)
        return ordered[max(0, i - around): i + around + 1]


def _trigger_list(s: Settings) -> list[Any]:
    out: list[Any] = []
    for p in s.triggers:
        doc = p.model_dump(exclude_none=True, exclude_defaults=True)
        out.append(p.type if not doc else {"type": p.type, **doc})
    return out


def candidate_annotations(base: Settings, cooldown: int, min_replicas: int, polling: int,
                          window: tuple[int, int] | None) -> dict[str, str]:
    """The annotations that express one candidate, with the keys from ``webhook.constants``."""
    ann = {C.ANN_MIN_REPLICAS: str(min_replicas)}
    if min_replicas == 0:
        ann[C.ANN_COOLDOWN] = str(cooldown)
        ann[C.ANN_POLLING] = str(polling)
        ann[C.ANN_START_AT_ZERO] = "true"
    if window is not None:
        triggers = [t for t in _trigger_list(base) if not (isinstance(t, dict) and t.get("type") == "cron")]
        triggers.append({"type": "cron", "start": f"0 {window[0]} * * *", "end": f"0 {window[1]} * * *",
                         "timezone": "UTC", "desiredReplicas": 1})
        ann[C.ANN_TRIGGERS] = json.dumps(triggers, separators=(", ", ": "))
    return ann


def resolve(obj: dict[str, Any], annotations: dict[str, str], policy: Policy, models: ModelCatalog) -> Settings:
    """Settings of ``obj`` with ``annotations`` applied, through the webhook's mutation and analysis."""
    o = copy.deepcopy(obj)
    meta = o.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    ann = dict(meta.get("annotations") or {})
    ann.update(annotations)
    meta["annotations"] = ann
    try:
        m = mutate(o, None, "CREATE", policy, models)
    except Denied as d:
        raise SimulationError(f"the candidate annotations are denied: {d.message}") from None
    if m.analysis.settings is None:
        raise SimulationError(f"the workload is not managed: {m.analysis.skip_reason}")
    return m.analysis.settings


def score(traces: Sequence[Trace], s: Settings, policy: Policy, timing: PodTiming) -> Result:
    total = Result()
    fleet = FleetRun()
    for tr in traces:
        cfg = from_settings(s, policy, tr.horizon, tr.origin)
        total = total.merge(replay(tr, cfg, timing, tr.horizon, s, fleet))
    return total


def recommend(obj: dict[str, Any], traces: Sequence[Trace], objective: Objective, policy: Policy,
              models: ModelCatalog, timing: PodTiming,
              progress: Callable[[str], None] | None = None) -> Recommendation:
    """Sweep cooldown x warm window at the current polling, then polling around the best; plus min 1."""
    base = resolve(obj, {}, policy, models)
    notes: list[str] = []
    window = None
    scoring: Sequence[Trace] = traces
    scored_on = "the whole trace"
    if len(traces) == 1 and traces[0].horizon >= 2 * DAY:
        tr = traces[0]
        days = int(tr.horizon // DAY)
        learn = days // 2
        window = learn_warm_window(tr, learn)
        scoring = [tr.window(learn * DAY, tr.horizon)]
        scored_on = f"days {learn + 1}-{days} (window learned on days 1-{learn})"
        if window is None:
            notes.append("no daily pattern to learn a warm window from (traffic in every hour or in none)")
    elif len(traces) == 1:
        notes.append("trace shorter than two days: no warm window (it could not be scored on unseen days)")
    baseline = score(scoring, base, policy, timing)
    cands: list[Candidate] = []

    def run(label: str, ann: dict[str, str]) -> Candidate:
        s = resolve(obj, ann, policy, models)
        r = score(scoring, s, policy, timing)
        c = Candidate(label, ann, s, r, objective.value(r))
        cands.append(c)
        if progress:
            progress(f"{label}: {r.gpu_hours:.1f} GPU-h, {objective.metric} {objective.show(c.value)}")
        return c

    polling = base.polling_interval
    for w in ([None, window] if window else [None]):
        for cd in COOLDOWNS:
            tag = f" + warm {w[0]:02d}-{w[1]:02d}h" if w else ""
            run(f"min 0, cooldown {cd}s, polling {polling}s{tag}", candidate_annotations(base, cd, 0, polling, w))
    run("min 1 (always warm)", candidate_annotations(base, 0, 1, polling, None))
    learned = {C.ANN_MIN_REPLICAS: "0", C.ANN_KEEP_ALIVE: "learned", C.ANN_START_AT_ZERO: "true"}
    if objective.metric == "cold-start-share":
        learned[C.ANN_COLD_START_OBJECTIVE] = f"{min(max(objective.limit, 0.0001), 0.5) * 100:g}%"
    run(f"min 0, keep-alive learned per workload, polling {polling}s", learned)
    ok = [c for c in cands if objective.met(c.result)]
    best = min(ok, key=lambda c: (c.result.gpu_seconds, c.value)) if ok else None
    if best is not None and best.settings.min_replicas == 0 and best.settings.keep_alive != "learned":
        cd = best.settings.cooldown_period
        w = window if C.ANN_TRIGGERS in best.annotations else None
        for p in POLLINGS:
            if p != polling:
                tag = f" + warm {w[0]:02d}-{w[1]:02d}h" if w else ""
                run(f"min 0, cooldown {cd}s, polling {p}s{tag}", candidate_annotations(base, cd, 0, p, w))
        ok = [c for c in cands if objective.met(c.result)]
        best = min(ok, key=lambda c: (c.result.gpu_seconds, c.value))
    if best is None:
        notes.append("no candidate meets the objective; the closest is shown first in the curve")
    return Recommendation(objective, best, cands, baseline, window, scored_on, notes)
