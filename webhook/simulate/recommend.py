"""The recommender: sweep the knobs a user sets as annotations, replay each candidate, pick the cheapest
that meets the objective.

Every candidate is written as annotations on a copy of the workload and resolved by the webhook's own rules
(``mutation.mutate`` -> ``settings.analyze``), so what is recommended is exactly what would be admitted and
reconciled: a cron warm window the trigger parser would refuse cannot be recommended. A warm window is learned
from the first half of the days and every candidate is scored on the second half (never on the days a window
was learned from); traces shorter than two days get no warm window. The days a window is learned from are
replayed too (so the scored days start from the state the trace leads to) but not counted; start, warm-up and
end follow ``replay.Replay`` exactly as in ``simulate``.
"""

from __future__ import annotations

import copy
import json
import math
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
from .gpus import per_replica
from .learned import learned_config
from .model import PodTiming, Result
from .replay import Replay, merge, replay_one, settle
from .traces import Trace

COOLDOWNS = (60, 120, 300, 600, 900, 1800, 3600)
POLLINGS = (5, 15, 30)
DAY = 86400.0

_OBJECTIVE = re.compile(r"^\s*(cold-start-share|added-wait-p99|failed-share)\s*<=\s*([^\s%a-z]*)\s*([a-z%]*)\s*$")
_EXAMPLES = "write cold-start-share<=1%, failed-share<=0.1% or added-wait-p99<=30s"


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
    """``metric<=value unit``; the unit is required (``1`` alone could mean 1 % or 100 %) and the value is
    checked against its range: a share between 0 and 100 %, a wait of 0 s or more."""
    m = _OBJECTIVE.match(text.lower())
    if not m:
        raise ValueError(f"objective {text!r} not understood; {_EXAMPLES}")
    metric, raw, unit = m.group(1), m.group(2), m.group(3)
    try:
        num = float(raw)
    except ValueError:
        raise ValueError(f"objective {text!r}: {raw!r} is not a number; {_EXAMPLES}") from None
    if not math.isfinite(num) or num < 0:
        raise ValueError(f"objective {text!r}: the limit must be a number >= 0; {_EXAMPLES}")
    if metric.endswith("share"):
        if unit != "%":
            raise ValueError(f"objective {text!r}: a share needs its unit, %: write {metric}<={raw}% "
                             f"(a share of {raw} would be {num * 100:g} %)" if not unit else
                             f"objective {text!r}: a share is written in %, not {unit!r} (e.g. {metric}<=1%)")
        if num > 100:
            raise ValueError(f"objective {text!r}: a share is between 0 and 100 %")
        return Objective(metric, num / 100)
    if unit not in ("s", "m"):
        raise ValueError(f"objective {text!r}: a wait needs its unit, s or m (e.g. added-wait-p99<=30s)")
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
        ordered = sorted(self.candidates, key=_cost)
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


def score_each(traces: Sequence[Trace], s: Settings, policy: Policy, timing: PodTiming, replay: Replay,
               gpus: int, score_from: float) -> list[Result]:
    """One result per trace, not yet brought to a common end (see ``replay.settle``)."""
    out = []
    for tr in traces:
        cfg = learned_config(s, from_settings(s, policy, tr.horizon, tr.origin, gpus), replay.learn_from)
        out.append(replay_one(tr, cfg, timing, replay, False, score_from))
    return out


def score(traces: Sequence[Trace], s: Settings, policy: Policy, timing: PodTiming, replay: Replay = Replay(),
          gpus: int = 1, score_from: float | None = None) -> Result:
    """One setting on every trace, each billed until it is back at rest, summed."""
    sf = replay.warm_up_s if score_from is None else score_from
    runs = score_each(traces, s, policy, timing, replay, gpus, sf)
    return merge([r["x"] for r in settle([{"x": r} for r in runs], traces, replay)])


def _cost(c: Candidate) -> tuple[float, float, float]:
    """Cheapest first: GPU time, then replica time (what decides for a CPU workload), then the objective."""
    return (c.result.gpu_seconds, c.result.replica_seconds, c.value)


def _hours(a: float, b: float) -> str:
    h = lambda x: f"{x / 3600:.2f}".rstrip("0").rstrip(".")
    return f"hours {h(a)}-{h(b)}"


def recommend(obj: dict[str, Any], traces: Sequence[Trace], objective: Objective, policy: Policy,
              models: ModelCatalog, timing: PodTiming,
              progress: Callable[[str], None] | None = None, replay: Replay = Replay()) -> Recommendation:
    """Sweep cooldown x warm window at the current polling, then polling around the best; plus min 1.

    Every candidate and the current settings are billed over the same span of each trace (the latest time any
    of them is back at rest), so a setting is never cheaper only because its replay ended sooner."""
    base = resolve(obj, {}, policy, models)
    gpus = (replay.gpus_per_replica if replay.gpus_per_replica is not None
            else per_replica(obj, policy, models, base.gpu).per_replica)
    notes: list[str] = []
    window = None
    score_from = replay.warm_up_s
    span = replay.until_s if replay.until_s is not None else max(t.horizon for t in traces)
    warm = f" after a {replay.warm_up_s / 3600:g} h warm-up" if replay.warm_up_s else ""
    whole = "the whole trace, " if replay.until_s is None else ""
    cut = " (to --until)" if replay.until_s is not None else ""
    scored_on = f"{whole}{_hours(score_from, span)}{cut}{warm}" + (f" of each of {len(traces)} workloads"
                                                                   if len(traces) > 1 else "")
    if len(traces) == 1 and min(traces[0].horizon, span) >= 2 * DAY:
        tr = traces[0]
        end = min(tr.horizon, span)
        days = int(end // DAY)
        learn = days // 2
        window = learn_warm_window(tr, learn)
        score_from = max(score_from, learn * DAY)
        scored_on = (f"{_hours(score_from, end)} (days {learn + 1}-{math.ceil(end / DAY)}); "
                     f"window learned on {_hours(0, learn * DAY)}, replayed but not scored")
        if window is None:
            notes.append("no daily pattern to learn a warm window from (traffic in every hour or in none)")
    elif len(traces) == 1:
        notes.append("trace shorter than two days: no warm window (it could not be scored on unseen days)")
    runs: list[list[Result]] = [score_each(traces, base, policy, timing, replay, gpus, score_from)]
    cands: list[Candidate] = []

    def settle_all() -> Result:
        """Bring every candidate's per-trace results to each trace's common end; returns the baseline's."""
        per_trace = [{str(j): runs[j][i] for j in range(len(runs))} for i in range(len(traces))]
        done = settle(per_trace, traces, replay)
        for j, c in enumerate(cands, start=1):
            c.result = merge([d[str(j)] for d in done])
            c.value = objective.value(c.result)
        return merge([d["0"] for d in done])

    def run(label: str, ann: dict[str, str]) -> Candidate:
        s = resolve(obj, ann, policy, models)
        runs.append(score_each(traces, s, policy, timing, replay, gpus, score_from))
        r = merge(runs[-1])
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
    baseline = settle_all()
    ok = [c for c in cands if objective.met(c.result)]
    best = min(ok, key=_cost) if ok else None
    if best is not None and best.settings.min_replicas == 0 and best.settings.keep_alive != "learned":
        cd = best.settings.cooldown_period
        w = window if C.ANN_TRIGGERS in best.annotations else None
        for p in POLLINGS:
            if p != polling:
                tag = f" + warm {w[0]:02d}-{w[1]:02d}h" if w else ""
                run(f"min 0, cooldown {cd}s, polling {p}s{tag}", candidate_annotations(base, cd, 0, p, w))
        baseline = settle_all()
        ok = [c for c in cands if objective.met(c.result)]
        best = min(ok, key=_cost)
    if best is None:
        notes.append("no candidate meets the objective; the closest is shown first in the curve")
    return Recommendation(objective, best, cands, baseline, window, scored_on, notes)
