"""Live keep-alive and pre-warm for workloads with ``keep-alive: learned``: the pure part of the reconciler's
learning (the reconciler does the reading, writing and Events).

Signal: KEDA's ScaledObject ``status.lastActiveTime``. KEDA's scale loop sets it to "now" on every poll in
which a trigger is active and when it scales the target from zero, and scales to zero once
``lastActiveTime + cooldownPeriod`` has passed (kedacore/keda, pkg/scaling/executor/scale_scaledobjects.go,
``RequestScale`` / ``scaleToZero``). So while a workload is busy it advances one polling interval at a time, and
a jump of more than two polling intervals is an idle time measured on the very clock the cooldown is measured
on. Every cluster with KEDA has it (no Prometheus needed), and the informer already watches ScaledObjects.

Without request counts each wake-up counts as one request: the learner's cold-start share becomes the share of
wake-ups that wait, which is stricter than the share of requests (a busy period holds one or more requests).

The learner (``webhook.learn``) is the one the simulator replays, unchanged. Its decision goes out only
through the ScaledObject we already build: ``cooldownPeriod`` = the learned keep-alive, and a pre-warm =
a wake-up and a hold. The wake-up is a cron trigger with a dated start and end (minute, hour, day, month) one
minute long (``wake_length``), so it ends by itself; the hold is a longer ``cooldownPeriod`` from the wake-up's
start to the pre-warm's end, after which the learned keep-alive comes back. The hold is not a trigger on
purpose: a trigger active through the whole pre-warm would set lastActiveTime all along it, and a request the
pre-warm serves could not be told from none (the learner would never see its pre-warms work, and would anchor
the next one on the window's end, after the request). Only a request inside the one-minute wake-up is missed.
If llmaz-serverless stops during a hold, the workload still goes back to zero by itself, one hold after the
wake-up. The state is an annotation on that ScaledObject (``STATE_ANNOTATION``, at most
``webhook.learn.state.MAX_ENCODED`` bytes), with the anchor of the last pre-warm placed.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any

from .. import constants as C
from ..learn import (STARTUP_S, Decision, Learner, Params, State, StateError, decode, encode, prewarm_span,
                     wake_length)
from ..learn.decide import prewarm_lead

STATE_ANNOTATION = C.ANN_LEARNED_STATE
TRIGGER_PREFIX = "learned-prewarm"
DAILY_PREFIX = f"{TRIGGER_PREFIX}-daily"
DAY = 86400.0


@dataclass
class Live:
    """One workload's learning in the reconciler's memory (rebuilt from the stored state after a restart)."""

    learner: Learner
    prev: float | None = None                                   # the last lastActiveTime seen
    windows: list[tuple[float, float]] = field(default_factory=list)   # cron windows placed (epoch s)
    daily: list[tuple[float, float]] = field(default_factory=list)     # ... of them, the time-of-day ones
    shown: tuple[Any, ...] | None = None                        # the decision last made visible
    in_window: bool = False          # ``prev`` was seen inside a window of ours (KEDA active for our cron)
    blind: bool = False              # a time-of-day window ran since the last activity (its requests unseen)
    anchor: float | None = None      # the last activity not ours: relative pre-warms are placed from it
    # Learning from request counts (``observe_counts``, policy ``learnFrom.source: requests``):
    signal: str = "keda-status"      # what the last observation was read from: "requests" or "keda-status"
    seen: tuple[float, float, float] | None = None   # the last sample of the route's counts read
    done: float | None = None        # when the last request counted completed
    written: str | None = None       # the state as last encoded for the ScaledObject
    dirty: bool = True               # the state changed in a way worth a write since ``written``


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time as Kubernetes writes it -> epoch seconds; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def last_active(so: dict[str, Any] | None) -> float | None:
    status = (so or {}).get("status")
    return parse_time(status.get("lastActiveTime")) if isinstance(status, dict) else None


def read_state(so: dict[str, Any] | None) -> tuple[State, str | None]:
    """The stored state of a ScaledObject, or a fresh one and why the stored one could not be used."""
    ann = ((so or {}).get("metadata") or {}).get("annotations") or {}
    text = ann.get(STATE_ANNOTATION) if isinstance(ann, dict) else None
    if not text:
        return State(), None
    try:
        return decode(str(text)), None
    except StateError as exc:
        return State(), str(exc)


MAX_AGE_S = 365 * DAY      # a state whose time base is further from now is not ours to trust


def new_live(so: dict[str, Any] | None, objective: float, polling_s: float, cooldown_s: float, now: float,
             params: Params = Params(), startup_s: float = STARTUP_S) -> tuple[Live, str | None]:
    """A workload's learning from its ScaledObject, or a fresh one and why the stored state was not usable.
    Times are epoch seconds here; the learner's time base (``State.t0``) is put near ``now`` (its weights are
    powers of 2 of the distance to it)."""
    state, error = read_state(so)
    if error is None and state.first is not None and abs(now - state.t0) > MAX_AGE_S:
        state, error = State(), f"learned state time {state.t0:.0f} is more than a year from now"
    if state.first is None:
        state.t0 = now
    learner = Learner(objective, startup_s, polling_s, params, state=state, fallback_s=cooldown_s)
    live = Live(learner, prev=last_active(so), windows=placed_windows(so, now, False, polling_s, startup_s),
                daily=placed_windows(so, now, True, polling_s, startup_s))
    # The anchor of the pre-warm placed last is stored with the state; a restart during that pre-warm goes on
    # with it (lastActiveTime is then the wake-up's). Otherwise, or if it is no time this workload could have
    # been active at, the last activity is lastActiveTime (a newer one moves it at once).
    x, live.anchor = state.anchor, live.prev
    if x is not None and live.prev is not None and 0 <= live.prev - x <= params.max_keep_alive_s:
        live.anchor = x
    return live, error


def cron_time(expr: Any, now: float) -> float | None:
    """A dated "minute hour day month *" of ours -> epoch seconds, the occurrence nearest ``now``."""
    try:
        minute, hour, day, month = (int(x) for x in str(expr).split()[:4])
        year = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).year
        times = [_dt.datetime(y, month, day, hour, minute, tzinfo=_dt.timezone.utc).timestamp()
                 for y in (year - 1, year, year + 1)]
    except (ValueError, TypeError, OverflowError):
        return None
    return min(times, key=lambda t: abs(t - now))


def placed_windows(so: dict[str, Any] | None, now: float, daily: bool = False, polling_s: float = 0.0,
                   startup_s: float = STARTUP_S) -> list[tuple[float, float]]:
    """The windows an earlier process placed on the ScaledObject (after a restart or a leader change), so that
    one holding the replica is kept to its end and the activity inside it is not taken for demand. ``daily``:
    only the time-of-day ones.

    They are read back from the cluster, where others may have edited them, and a window kept is a replica held:
    one longer than any we place (a wake-up: ``wake_length``; a time-of-day window: a day plus the lead of its
    load) is not ours and is left out."""
    wake = wake_length(polling_s)
    day = DAY + prewarm_lead(startup_s, polling_s)
    out = []
    for trig in ((so or {}).get("spec") or {}).get("triggers") or []:
        name = str(trig.get("name", "")) if isinstance(trig, dict) else ""
        if not name.startswith(DAILY_PREFIX if daily else TRIGGER_PREFIX):
            continue
        md = trig.get("metadata") or {}
        a, b = cron_time(md.get("start"), now), cron_time(md.get("end"), now)
        if a is not None and b is not None and 0 < b - a <= (day if name.startswith(DAILY_PREFIX) else wake):
            out.append((a, b))
    return sorted(out)


def observe(live: Live, t: float | None, polling_s: float, teach: bool = True) -> bool:
    """Feed one lastActiveTime to the learner. True when it ended an idle time (the state changed).
    ``teach=False``: only follow it (the learner reads request counts, ``observe_counts``), so that reading
    KEDA's status again later goes on from here.

    The first time seen only sets the reference (after a restart the idle time in progress is lost, never
    counted twice). Inside a window we placed (and one poll after) KEDA is active because of our cron trigger,
    so a request there cannot be told from none: such an advance teaches nothing and does not move the anchor.
    The next idle time is measured from the last activity before the window: a pre-warm's wake-up is one
    minute long, and what comes after it (a request the pre-warm serves, or none) is seen. After a time-of-day
    window, which holds the replica for its whole length, the first idle time is not counted (a request inside
    it may have come since)."""
    if t is None:
        return False
    if not teach:
        if live.prev is None or t > live.prev:
            live.prev, live.in_window, live.blind = t, False, False
            live.anchor = t if live.anchor is None else live.anchor
        return False
    if live.prev is None or t <= live.prev:
        if live.prev is None:
            live.prev = t
            if live.anchor is None:
                live.anchor = t
        return False
    daily = any(a <= t <= b + polling_s for a, b in live.daily)
    if daily or any(a <= t <= b + polling_s for a, b in live.windows):
        live.prev, live.in_window = t, True
        live.blind = live.blind or daily
        return False
    gap, after_window, anchor = t - live.prev, live.in_window, live.anchor
    live.prev, live.in_window, live.anchor = t, False, t
    if gap <= 2 * polling_s:
        if after_window:
            live.blind = False             # activity that began inside the window goes on: it is the anchor now
        return False                       # KEDA's poll-by-poll advance while busy
    blind, live.blind = live.blind, False
    if blind or anchor is None:
        return False
    live.learner.idle_ended(t, t - anchor)
    live.learner.requests(t, 1)
    live.dirty = True
    return True


def observe_counts(live: Live, samples: list[tuple[float, float, float]], polling_s: float,
                   step_s: float = 0.0) -> bool:
    """Feed a route's request counts to the learner (``controller.requestcounts``): samples of (time,
    requests completed so far, sum of their durations). True when an idle time ended (the state changed).

    In each step ``n`` requests completed, with a mean duration ``d``; they came about ``d`` before the step
    (exactly for a lone request, on average for several). The last completion is the end of activity (the
    anchor of a pre-warm); a request that came more than two polling intervals (or two steps) after it ended
    an idle time, as on KEDA's clock. Unlike ``observe`` this sees the requests a pre-warm serves, those of a
    time-of-day window, and warm requests too short for KEDA to see, and counts each request of a burst. The
    first sample only sets the reference, and so do the first requests counted (the idle time before them is
    not known); a counter that went back (an interceptor restarted) makes its step unknown."""
    changed = False
    for t, c, d in samples:
        prev = live.seen
        if prev is not None and t <= prev[0]:
            continue
        live.seen = (t, c, d)
        if prev is None:
            continue
        dc, dd = c - prev[1], d - prev[2]
        if dc < 0.5 or dd < 0:
            continue
        came = min(t, t - dd / dc)
        done, live.done = live.done, t if live.done is None else max(live.done, t)
        live.anchor = live.done
        if done is None:
            continue
        if came - done > 2 * max(polling_s, step_s):
            live.learner.idle_ended(came, came - done)
            changed = live.dirty = True
        live.learner.requests(came, int(round(dc)))
    return changed


def decision_key(d: Decision) -> tuple[Any, ...]:
    """What the ScaledObject shows of a decision (estimates like the share may drift without a change)."""
    return (d.mode, d.keep_alive_s, d.prewarm, d.daily)


def cron_trigger(name: str, start: float, end: float) -> dict[str, Any]:
    """A KEDA cron trigger holding one replica from ``start`` to ``end`` (epoch seconds, whole minutes) on
    that date only: the fields are minute hour day month, so it ends by itself (it would recur a year later
    only if nothing reconciled the ScaledObject for a whole year)."""
    def expr(t: float) -> str:
        d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
        return f"{d.minute} {d.hour} {d.day} {d.month} *"
    return {"type": "cron", "name": name, "metadata": {
        "timezone": "Etc/UTC", "start": expr(start), "end": expr(end), "desiredReplicas": "1"}}


@dataclass(frozen=True)
class Plan:
    scaled_object: dict[str, Any]
    decision: Decision
    windows: list[tuple[float, float]]              # cron windows on the ScaledObject
    recheck_in: float | None                        # seconds until the plan should be looked at again
    warm: list[tuple[float, float]] = field(default_factory=list)   # what the pre-warms hold warm (shown)


def plan(so: dict[str, Any], live: Live, now: float, polling_s: float, params: Params = Params()) -> Plan:
    """The ScaledObject with the learned decision applied, given the workload's last activity ``live.anchor``.

    A relative pre-warm is placed once the workload has been idle two polling intervals (while it is busy the
    replica is up anyway, and the pre-warm would move with every poll): a one-minute cron window that wakes it
    and, from shortly before that window until the pre-warm's end, a ``cooldownPeriod`` that holds it there.
    Windows that ended are left out; the next daily window is placed up to a day ahead. Updates ``live.daily``."""
    anchor = live.anchor if live.anchor is not None else live.prev if live.prev is not None else now
    d = live.learner.decision(anchor)
    out = copy.deepcopy(so)
    spec = out.setdefault("spec", {})
    cooldown = None if d.keep_alive_s is None else int(math.ceil(d.keep_alive_s))
    # A window that already woke the replica stays until its end (it ends by itself within minutes).
    windows: list[tuple[float, float]] = [(a, b) for a, b in live.windows if a <= now < b]
    daily: list[tuple[float, float]] = [w for w in windows if w in live.daily]
    warm: list[tuple[float, float]] = []
    recheck: list[float] = []
    if d.prewarm is not None and live.anchor is not None:
        a, w, b = prewarm_span(anchor, d.prewarm, polling_s)
        settle = anchor + 2 * polling_s
        # The hold goes in just before the wake-up (so a replica woken is held even if we stop right after),
        # and not before the keep-alive after the last activity has taken the replica away.
        hold_from = max(a - 30.0, anchor + (cooldown or 0) + 3 * polling_s)
        if now < settle:
            recheck.append(settle - now)
        elif b > now:
            warm.append((a, b))
            if w > now and (a, w) not in windows:
                windows.append((a, w))
            if now >= hold_from:
                if cooldown is not None and b > w:
                    cooldown = max(cooldown, int(math.ceil(b - w)))
                recheck.append(b - now + 1.0)           # the learned keep-alive comes back after the hold
            else:
                recheck.append(hold_from - now)
    for start, end in d.daily:
        day0 = math.floor(now / DAY) * DAY
        for k in (0, 1):
            a = math.floor((day0 + k * DAY + start) / 60.0) * 60.0
            b = math.ceil((day0 + k * DAY + end) / 60.0) * 60.0
            if b > now:
                if (a, b) not in windows:
                    windows.append((a, b))
                    daily.append((a, b))
                break
    if cooldown is not None:
        spec["cooldownPeriod"] = cooldown
    triggers = list(spec.get("triggers") or [])
    wake = [x for x in sorted(windows) if x not in daily]
    for i, (a, b) in enumerate(wake):
        triggers.append(cron_trigger(f"{TRIGGER_PREFIX}-{i}", a, b))
    for i, (a, b) in enumerate(sorted(daily)):
        triggers.append(cron_trigger(f"{DAILY_PREFIX}-{i}", a, b))
    recheck += [b - now + 1.0 for a, b in windows]      # take each out once it ended
    spec["triggers"] = triggers
    live.daily = sorted(daily)
    state = live.learner.state
    if warm and d.prewarm is not None and state.anchor != anchor:
        state.anchor, live.dirty = anchor, True   # once per pre-warm placed, not on every poll while busy
    if state.first is not None:
        # Written when an idle time ended or a pre-warm was placed; requests counted in between are kept in
        # memory and go out with the next write (a restart loses at most those, never an idle time).
        if live.dirty or live.written is None:
            live.written, live.dirty = encode(state, state.t0, params), False
        meta = out.setdefault("metadata", {})
        ann = dict(meta.get("annotations") or {})
        ann[STATE_ANNOTATION] = live.written
        meta["annotations"] = ann
    return Plan(out, d, sorted(windows), min(recheck) if recheck else None, sorted(warm + daily))


def visible(d: Decision, windows: list[tuple[float, float]]) -> str:
    """The line shown on the workload (annotation) and in the Event."""
    line = d.summary()
    for a, b in windows:
        fa = _dt.datetime.fromtimestamp(a, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        fb = _dt.datetime.fromtimestamp(b, _dt.timezone.utc).strftime("%H:%MZ")
        line += f"; warm {fa}-{fb}"
    return line
