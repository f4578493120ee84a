"""What to replay: the settings ``settings.analyze`` resolves, turned into a ``ScalingConfig``, and the
baselines it is compared with on the same trace.

Baselines:

* ``llmaz`` -- llmaz today: a fixed ``spec.replicas`` (1 when unset), always on, never a cold start;
* ``elastic`` -- llmaz ``elasticConfig``: its own HPA, minimum 1 (llmaz cannot express 0), on the same
  demand metric and target;
* ``always-on`` -- ``maxReplicas`` replicas all the time: the latency ceiling and the cost ceiling.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import replace
from typing import Any

from ..mutation import spec_replicas
from ..policy import Policy
from ..settings import Settings
from ..triggers import CronTrigger, HTTPTrigger, duration_seconds
from .model import PodTiming, ScalingConfig

# Per-replica target parameter of each preset (KEDA's AverageValue of that scaler).
_TARGETS = ("listLength", "pendingEntriesCount", "lagCount", "lagThreshold", "queueLength", "value")
_ACTIVATIONS = ("activationListLength", "activationLagCount", "activationLagThreshold", "activationQueueLength",
                "activationValue")


class SimulationError(Exception):
    """A setting the simulator cannot model; one line with the fix."""


def _dow_set(field: str, expr: str) -> set[int]:
    if field in ("*", "?"):
        return set(range(7))
    out: set[int] = set()
    for part in field.split(","):
        a, _, b = part.partition("-")
        if not (a.isdigit() and (not b or b.isdigit())):
            raise SimulationError(f"cron {expr!r}: day of week {field!r} is not simulated; use numbers 0-7")
        out.update(int(d) % 7 for d in range(int(a), int(b or a) + 1))
    return out


def _daily(expr: str) -> tuple[int, set[int]]:
    """``M H * * DOW`` -> (second of the day, weekdays with Sunday = 0)."""
    f = expr.split()
    if len(f) != 5 or not (f[0].isdigit() and f[1].isdigit()) or f[2] not in ("*", "?") or f[3] != "*":
        raise SimulationError(f"cron {expr!r} is not simulated: only daily windows 'M H * * DOW' are; "
                              "write e.g. '0 8 * * *' or '0 8 * * 1-5'")
    return int(f[1]) * 3600 + int(f[0]) * 60, _dow_set(f[4], expr)


def cron_windows(preset: CronTrigger, horizon: float, origin: dt.datetime | None,
                 policy: Policy) -> tuple[tuple[float, float, int], ...]:
    """Absolute windows ``[start, end)`` of a cron trigger over ``[0, horizon)``, in seconds from t = 0.

    The window's times are local to the trigger's IANA timezone (as KEDA's cron scaler reads them), converted
    with the standard library's zoneinfo, daylight-saving changes included; weekdays are local too."""
    tz_name = preset.timezone or policy.timezone
    try:
        tz = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SimulationError(f"cron timezone {tz_name!r} is not an IANA timezone; write e.g. Europe/Berlin "
                              "or UTC") from None
    start_s, days = _daily(preset.start)
    end_s, _ = _daily(preset.end)
    o = origin or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    first_day = o.astimezone(tz).date()
    out = []
    for d in range(-1, int(horizon // 86400) + 2):
        day = first_day + dt.timedelta(days=d)
        if (day.weekday() + 1) % 7 not in days:        # Sunday = 0, as cron
            continue
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        s_at = midnight + dt.timedelta(seconds=start_s)
        e_at = midnight + dt.timedelta(seconds=end_s)
        if e_at <= s_at:
            e_at += dt.timedelta(days=1)
        # aware arithmetic keeps the wall clock; astimezone applies that day's offset (fold 0 on a repeated hour)
        s = (s_at.astimezone(dt.timezone.utc) - o).total_seconds()
        e = (e_at.astimezone(dt.timezone.utc) - o).total_seconds()
        if e > 0 and s < horizon:
            out.append((max(s, 0.0), min(e, horizon), preset.desiredReplicas))
    return tuple(out)


def from_settings(s: Settings, policy: Policy, horizon: float, origin: dt.datetime | None = None,
                  gpus_per_replica: int | None = None) -> ScalingConfig:
    """The ScaledObject + InterceptorRoute the reconciler would build from ``s``, as the model's input."""
    http = next((t for t in s.triggers if isinstance(t, HTTPTrigger)), None)
    target: float | None = None
    activation = 0.0
    readiness = 0.0
    if http is not None:
        target = float(http.concurrency or policy.http.concurrency) if http.requestRate is None else None
        if http.requestRate is not None:
            raise SimulationError("the http trigger's requestRate metric is not simulated; use concurrency")
        readiness = duration_seconds(http.effective_timeouts(policy)["readiness"]) or 0.0
    else:
        for t in s.triggers:
            for name in _TARGETS:
                if getattr(t, name, None):
                    target = float(getattr(t, name))
                    break
            for name in _ACTIVATIONS:
                if getattr(t, name, None) is not None:
                    activation = float(getattr(t, name))
            if target is not None:
                break
    cron: list[tuple[float, float, int]] = []
    for t in s.triggers:
        if isinstance(t, CronTrigger):
            cron.extend(cron_windows(t, horizon, origin, policy))
    wakes = any(t.wakes_from_zero and not isinstance(t, CronTrigger) for t in s.triggers)
    return ScalingConfig(
        min_replicas=s.min_replicas, max_replicas=s.max_replicas, cooldown_s=float(s.cooldown_period),
        polling_s=float(s.polling_interval), initial_cooldown_s=float(s.initial_cooldown_period),
        start_at_zero=s.start_at_zero, push=http is not None, wakes=wakes, activation=activation,
        target=target, readiness_timeout_s=readiness, behavior=s.behavior, cron=tuple(sorted(cron)),
        gpus_per_replica=(1 if s.gpu else 0) if gpus_per_replica is None else gpus_per_replica)


def fixed_replicas(obj: dict[str, Any]) -> int:
    """What llmaz runs without an autoscaler: ``spec.replicas``, 1 when unset (llmaz's default)."""
    r = spec_replicas(obj)
    return r if r is not None and r >= 0 else 1


def elastic_bounds(obj: dict[str, Any], fallback_max: int) -> tuple[int, int]:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    ec = spec.get("elasticConfig") if isinstance(spec.get("elasticConfig"), dict) else {}
    lo = ec.get("minReplicas") if isinstance(ec.get("minReplicas"), int) else 1
    hi = ec.get("maxReplicas") if isinstance(ec.get("maxReplicas"), int) else fallback_max
    return max(1, lo), max(max(1, lo), hi)


def baselines(obj: dict[str, Any], ours: ScalingConfig) -> dict[str, ScalingConfig]:
    """The three comparisons, built from the original object and our own config (same metric, same GPUs)."""
    fixed = fixed_replicas(obj)
    lo, hi = elastic_bounds(obj, ours.max_replicas)
    target = ours.target if ours.target is not None else 16.0
    return {
        "llmaz": replace(ours, min_replicas=fixed, max_replicas=max(fixed, 1), autoscale=False, cron=()),
        "elastic": replace(ours, min_replicas=lo, max_replicas=hi, keda=False, target=target, cron=(),
                           behavior=None, start_at_zero=False),
        "always-on": replace(ours, min_replicas=ours.max_replicas, autoscale=False, cron=()),
    }


def describe(cfg: ScalingConfig, timing: PodTiming) -> str:
    if not cfg.autoscale:
        return f"{cfg.min_replicas} fixed"
    if not cfg.keda:
        return f"HPA {cfg.min_replicas}-{cfg.max_replicas}"
    warm = f", {len(cfg.cron)} cron windows" if cfg.cron else ""
    return (f"KEDA {cfg.min_replicas}-{cfg.max_replicas}, cooldown {cfg.cooldown_s:g}s, polling "
            f"{cfg.polling_s:g}s{warm}; pod start {timing.startup_s:g}s")


def hours(seconds: float) -> float:
    return seconds / 3600.0 if math.isfinite(seconds) else math.inf
