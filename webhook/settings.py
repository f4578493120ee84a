"""Annotations + policy -> the resolved scaling settings of one workload.

This is the one place that reads our annotations. Every problem found is collected (not just the first), so a
user fixing a manifest sees everything wrong at once. ``analyze`` is the shared brain behind the mutating
webhook, the validating webhook, the reconciler and ``preview``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from . import drain as drain_rules
from .accelerators import Detection, detect
from .durations import DurationError, human, whole_seconds
from .errors import Problem
from .learn import STARTUP_S, parse_objective
from .models import ModelCatalog
from .policy import Overlay, Policy
from .readiness import workload_readiness_warning
from .spelling import misplaced_labels, misspelt_annotations
from .tenancy.boundary import trigger_problems
from .tenancy.limits import annotation_problems, built_problems, load_annotation
from .triggers import Preset, RawTrigger, TriggerContext, parse_trigger_list, parse_triggers_annotation

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}

# Upper bounds that catch typos (a cooldown of 3e9 seconds is never meant).
LIMITS = {
    C.ANN_COOLDOWN: (0, 7 * 86400),
    C.ANN_POLLING: (1, 3600),
    C.ANN_INITIAL_COOLDOWN: (0, 86400),
    C.ANN_STARTUP_TIME: (1, 3600),
}


@dataclass(frozen=True)
class Settings:
    """Fully resolved scaling settings (every field set)."""

    min_replicas: int
    max_replicas: int
    cooldown_period: int
    polling_interval: int
    initial_cooldown_period: int
    start_at_zero: bool
    triggers: tuple[Preset, ...]
    behavior: dict[str, Any] | None
    gpu: bool
    profile: str | None
    keep_alive: str = "fixed"             # "learned": the reconciler learns keep-alive and pre-warm per workload
    cold_start_objective: float = 0.01    # share of requests a learned keep-alive may let meet a cold start
    startup_s: float = STARTUP_S          # zero -> ready, as a learned pre-warm plans for it
    drain: drain_rules.Drain | None = None

    def as_annotation(self) -> str:
        doc = {
            "gpu": self.gpu,
            "minReplicas": self.min_replicas,
            "maxReplicas": self.max_replicas,
            "cooldownPeriod": self.cooldown_period,
            "pollingInterval": self.polling_interval,
            "initialCooldownPeriod": self.initial_cooldown_period,
            "startAtZero": self.start_at_zero,
            "triggers": [t.summary() for t in self.triggers],
        }
        if self.profile:
            doc["profile"] = self.profile
        if self.keep_alive == "learned":
            doc["keepAlive"] = "learned"
            doc["coldStartObjective"] = f"{self.cold_start_objective * 100:g}%"
            doc["startupTime"] = f"{self.startup_s:g}s"
        if self.drain is not None:
            doc["drain"] = self.drain.summary()
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass
class Analysis:
    """Everything the rules conclude about one workload."""

    kind: str
    name: str
    namespace: str
    managed: bool                     # in scope and not opted out
    skip_reason: str = ""             # why not managed, when not
    settings: Settings | None = None
    detection: Detection | None = None
    backend: str = "vllm"
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def trigger_context(self, policy: Policy) -> TriggerContext:
        assert self.settings is not None
        return TriggerContext(kind=self.kind, name=self.name, namespace=self.namespace, policy=policy,
                              min_replicas=self.settings.min_replicas, backend=self.backend)


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata")
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    return ann if isinstance(ann, dict) else {}


def owned_by_playground(obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == C.KIND_PLAYGROUND and str(
                ref.get("apiVersion", "")).startswith(C.LLMAZ_GROUP + "/"):
            return True
    return False


def opted_out(obj: dict[str, Any]) -> bool:
    return str(annotations_of(obj).get(C.ANN_ENABLED, "")).strip().lower() in _FALSE


def _int(ann: dict[str, str], key: str, lo: int, hi: int, problems: list[Problem], hi_why: str = "") -> int | None:
    """A whole-number annotation in ``lo..hi``; ``hi_why`` says where the upper bound comes from, so the hint
    names the bound that is really enforced."""
    if key not in ann:
        return None
    raw = str(ann[key]).strip()
    hint = f"write a whole number from {lo} to {hi}{hi_why}"
    if re.fullmatch(r"-\s*\d+(\.\d*)?", raw):
        problems.append(Problem(key, f"{raw!r} is negative", hint))
        return None
    if not re.fullmatch(r"\d+", raw):
        problems.append(Problem(key, f"{raw!r} is not a whole number", hint))
        return None
    value = int(raw)
    if value > hi and hi_why:
        problems.append(Problem(key, f"{value} is above {hi}{hi_why}", f"ask for at most {hi}"))
        return None
    if not lo <= value <= hi:
        problems.append(Problem(key, f"{value} is out of range", hint))
        return None
    return value


def _seconds(ann: dict[str, str], key: str, problems: list[Problem]) -> int | None:
    if key not in ann:
        return None
    lo, hi = LIMITS[key]
    raw = str(ann[key]).strip()
    try:
        value = whole_seconds(raw)
    except DurationError as exc:
        problems.append(Problem(key, str(exc)))
        return None
    if not lo <= value <= hi:
        problems.append(Problem(key, f"{raw} is out of range",
                                f"allowed: {lo} to {hi} seconds ({human(lo)} to {human(hi)})"))
        return None
    return value


def _bool(ann: dict[str, str], key: str, problems: list[Problem]) -> bool | None:
    if key not in ann:
        return None
    raw = str(ann[key]).strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    problems.append(Problem(key, f"{ann[key]!r} is not a boolean", 'write "true" or "false"'))
    return None


_QUANTITY = re.compile(r"^(\d+)(\.\d+)?(m)?$")
_RULE_FIELDS = ("stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance")
MAX_SCALING_POLICIES = 10


def _tolerance_problem(value: Any) -> str | None:
    """``tolerance`` of autoscaling/v2 HPAScalingRules is a resource.Quantity: a number or a decimal string
    (``"0.05"``, ``"50m"``); as a fraction of the target it only makes sense from 0 to 1."""
    if isinstance(value, bool):
        return "must be a number from 0 to 1 (e.g. 0.05 or \"50m\")"
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and len(value) <= 32 and (m := _QUANTITY.match(value.strip())):
        number = float(m.group(1) + (m.group(2) or "")) / (1000 if m.group(3) else 1)
    else:
        return "must be a number from 0 to 1 (e.g. 0.05 or \"50m\")"
    return None if 0 <= number <= 1 else "must be from 0 to 1 (a fraction of the target)"


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _learned(ann: dict[str, str], resolved: dict[str, Any], problems: list[Problem]) -> None:
    """``keep-alive`` and ``cold-start-objective``: the annotation over the policy's layers; the objective
    resolved to a share in ``resolved["objective"]`` (1 % when neither sets it)."""
    if C.ANN_KEEP_ALIVE in ann:
        raw = str(ann[C.ANN_KEEP_ALIVE]).strip().lower()
        if raw in ("fixed", "learned"):
            resolved["keepAlive"] = raw
        else:
            problems.append(Problem(C.ANN_KEEP_ALIVE, f"{ann[C.ANN_KEEP_ALIVE]!r} is not a keep-alive mode",
                                    f'write "learned" (each workload learns its own) or "fixed" (the '
                                    f"{C.ANN_COOLDOWN} applies)"))
    source, text = "policy", resolved.get("coldStartObjective") or "1%"
    if C.ANN_COLD_START_OBJECTIVE in ann:
        source, text = C.ANN_COLD_START_OBJECTIVE, str(ann[C.ANN_COLD_START_OBJECTIVE])
    try:
        resolved["objective"] = parse_objective(text)
    except ValueError as exc:
        problems.append(Problem(source, str(exc), "e.g. \"1%\": at most 1 request in 100 meets a cold start"))
        resolved["objective"] = 0.01
    startup = _seconds(ann, C.ANN_STARTUP_TIME, problems)
    resolved["startup"] = float(startup if startup is not None else resolved.get("startupTime") or STARTUP_S)


def validate_behavior(value: Any, where: str) -> list[Problem]:
    """Strict check of an autoscaling/v2 HorizontalPodAutoscalerBehavior: every field that reaches the HPA is
    typed and bounded, nothing unknown passes through."""
    if not isinstance(value, dict):
        return [Problem(where, "must be a mapping with scaleUp and/or scaleDown",
                        "see autoscaling/v2 HorizontalPodAutoscalerBehavior")]
    problems = []
    for key, rules in value.items():
        if key not in ("scaleUp", "scaleDown"):
            problems.append(Problem(f"{where}.{str(key)[:64]}", "unknown field", "allowed: scaleUp, scaleDown"))
            continue
        if not isinstance(rules, dict):
            problems.append(Problem(f"{where}.{key}", "must be a mapping"))
            continue
        for rk, rv in rules.items():
            if rk == "stabilizationWindowSeconds":
                if not _whole(rv) or not 0 <= rv <= 3600:
                    problems.append(Problem(f"{where}.{key}.{rk}", "must be a whole number from 0 to 3600"))
            elif rk == "selectPolicy":
                if rv not in ("Max", "Min", "Disabled"):
                    problems.append(Problem(f"{where}.{key}.{rk}", "must be Max, Min or Disabled"))
            elif rk == "policies":
                if not isinstance(rv, list) or len(rv) > MAX_SCALING_POLICIES:
                    problems.append(Problem(f"{where}.{key}.policies",
                                            f"must be a list of at most {MAX_SCALING_POLICIES} policies"))
                    continue
                for i, pol in enumerate(rv):
                    pw = f"{where}.{key}.policies[{i}]"
                    if not isinstance(pol, dict) or pol.get("type") not in ("Pods", "Percent"):
                        problems.append(Problem(pw, "type must be Pods or Percent"))
                        continue
                    extra = sorted(str(k)[:64] for k in pol if k not in ("type", "value", "periodSeconds"))
                    if extra:
                        problems.append(Problem(pw, f"unknown field(s) {extra}",
                                                "allowed: type, value, periodSeconds"))
                    v, period = pol.get("value"), pol.get("periodSeconds")
                    if not _whole(v) or not 0 < v <= 100000:
                        problems.append(Problem(f"{pw}.value", "must be a whole number from 1 to 100000"))
                    if not _whole(period) or not 0 < period <= 1800:
                        problems.append(Problem(f"{pw}.periodSeconds", "must be a whole number from 1 to 1800"))
            elif rk == "tolerance":
                if (why := _tolerance_problem(rv)):
                    problems.append(Problem(f"{where}.{key}.{rk}", why))
            else:
                problems.append(Problem(f"{where}.{key}.{str(rk)[:64]}", "unknown field",
                                        f"allowed: {', '.join(_RULE_FIELDS)}"))
    return problems


def _layer(base: dict[str, Any], overlay: Overlay) -> None:
    for key, value in overlay.model_dump(exclude_none=True).items():
        base[key] = value


def _backend(obj: dict[str, Any]) -> str:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    brc = spec.get("backendRuntimeConfig")
    if isinstance(brc, dict) and isinstance(brc.get("backendName"), str):
        return brc["backendName"].lower()
    return "vllm"


def _name_problems(obj: dict[str, Any]) -> list[Problem]:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or ""
    generate = meta.get("generateName") or ""
    limit = C.MAX_WORKLOAD_NAME
    if name and len(name) > limit:
        return [Problem("metadata.name", f"{name!r} is {len(name)} characters; KEDA derives the HPA name "
                        f"'{C.KEDA_HPA_PREFIX}<name>', which must fit in 63",
                        f"use a name of at most {limit} characters, or opt this object out with "
                        f"{C.ANN_ENABLED}: \"false\"")]
    if not name and generate and len(generate) + 5 > limit:
        return [Problem("metadata.generateName", f"{generate!r} plus the 5 random characters exceeds {limit}",
                        f"use a generateName of at most {limit - 5} characters")]
    return []


def shape_problems(obj: dict[str, Any]) -> list[Problem]:
    """The structure the rules rely on. A custom resource's schema is checked only after mutating admission, so
    a webhook can see ``spec: []``; that is the client's error and must be denied as such, never crash a rule."""
    problems = []
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        problems.append(Problem("metadata", f"must be a mapping, got {type(meta).__name__}"))
        meta = {}
    meta = meta or {}
    for key in ("name", "generateName", "namespace"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            problems.append(Problem(f"metadata.{key}", f"must be a string, got {type(meta[key]).__name__}"))
    ann = meta.get("annotations")
    if ann is not None and not isinstance(ann, dict):
        problems.append(Problem("metadata.annotations", f"must be a mapping, got {type(ann).__name__}"))
    elif isinstance(ann, dict):
        for key, value in ann.items():
            if str(key).startswith(C.PREFIX) and not isinstance(value, str):
                problems.append(Problem(str(key), f"annotation values must be strings, got {type(value).__name__}",
                                        "quote the value in YAML, e.g. \"4\""))
    spec = obj.get("spec")
    if spec is not None and not isinstance(spec, dict):
        problems.append(Problem("spec", f"must be a mapping, got {type(spec).__name__}"))
    return problems


def built_for(settings: Settings, ctx: TriggerContext) -> list[dict[str, Any]]:
    """The parts of the KEDA objects that come from the workload's own settings (triggers, route, behavior);
    measured against ``limits`` before any of it is applied."""
    from .triggers import HTTPTrigger, assign_names

    out: list[dict[str, Any]] = []
    for trigger_name, preset in assign_names(list(settings.triggers)):
        out.append(preset.keda_trigger(ctx, trigger_name))
        if isinstance(preset, HTTPTrigger):
            out.append(preset.interceptor_route_spec(ctx))
    if settings.behavior:
        out.append(settings.behavior)
    return out


def analyze(obj: dict[str, Any], policy: Policy, models: ModelCatalog) -> Analysis:
    """Decide whether ``obj`` is managed and, if so, with which settings. Pure."""
    kind = str(obj.get("kind") or "")
    if kind in C.WORKLOAD_KINDS:
        broken = shape_problems(obj)
        if broken:
            an = Analysis(kind=kind, name="", namespace="", managed=True)
            an.problems.extend(broken)
            return an
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    an = Analysis(kind=kind, name=str(meta.get("name") or meta.get("generateName") or ""),
                  namespace=str(meta.get("namespace") or ""), managed=False)
    if kind not in C.WORKLOAD_KINDS:
        an.skip_reason = f"kind {kind!r} is not handled"
        return an
    if kind == C.KIND_SERVICE and owned_by_playground(obj):
        an.skip_reason = "Service owned by a Playground (the Playground is the scale target)"
        return an
    ann = annotations_of(obj)
    problems = an.problems
    enabled = _bool(ann, C.ANN_ENABLED, problems)
    if enabled is False:
        an.skip_reason = f"opted out with {C.ANN_ENABLED}=false"
        return an
    an.managed = True
    an.backend = _backend(obj)
    # Bytes first: an oversized annotation costs a length check, never a parse.
    too_big = annotation_problems(ann, policy.limits)
    if too_big:
        problems.extend(too_big)
        return an
    problems.extend(_name_problems(obj))
    for finding in misspelt_annotations(ann):
        if policy.annotations.unknown == "deny":
            problems.append(finding.problem())
        else:
            an.warnings.append(finding.warning())
    an.warnings.extend(misplaced_labels(obj))

    det = detect(obj, policy, models)
    an.detection = det
    if det.unknown_models and not det.resources:
        an.warnings.append(
            f"OpenModel {', '.join(det.unknown_models)} is not known to llmaz-serverless yet; "
            + ("treated as a GPU model (scale-to-zero defaults)" if policy.unknownModelIsGPU
               else "treated as a CPU model"))

    resolved: dict[str, Any] = {}
    _layer(resolved, policy.defaults)
    if det.gpu:
        _layer(resolved, policy.gpu)
    profile = ann.get(C.ANN_PROFILE)
    if profile is not None:
        profile = str(profile).strip()
        if profile not in policy.profiles:
            known = ", ".join(sorted(policy.profiles)) or "(none defined)"
            problems.append(Problem(C.ANN_PROFILE, f"unknown profile {profile!r}",
                                    f"profiles in the cluster policy: {known}"))
            profile = None
        else:
            _layer(resolved, policy.profiles[profile])

    cap = policy.maxReplicasCap
    cap_why = f" (the cluster's cap of {cap}, policy maxReplicasCap)"
    explicit_min = _int(ann, C.ANN_MIN_REPLICAS, 0, cap, problems, cap_why)
    explicit_max = _int(ann, C.ANN_MAX_REPLICAS, 1, cap, problems, cap_why)
    for key, field_name in ((C.ANN_MIN_REPLICAS, "minReplicas"), (C.ANN_MAX_REPLICAS, "maxReplicas")):
        value = explicit_min if key == C.ANN_MIN_REPLICAS else explicit_max
        if value is not None:
            resolved[field_name] = value
    for key, field_name in ((C.ANN_COOLDOWN, "cooldownPeriod"), (C.ANN_POLLING, "pollingInterval"),
                            (C.ANN_INITIAL_COOLDOWN, "initialCooldownPeriod")):
        value = _seconds(ann, key, problems)
        if value is not None:
            resolved[field_name] = value
    start = _bool(ann, C.ANN_START_AT_ZERO, problems)
    if start is not None:
        resolved["startAtZero"] = start
    _learned(ann, resolved, problems)

    if C.ANN_BEHAVIOR in ann:
        behavior, errs = load_annotation(str(ann[C.ANN_BEHAVIOR]), C.ANN_BEHAVIOR, policy.limits)
        for p in errs:
            p.fix = p.fix or 'write e.g. {"scaleDown": {"stabilizationWindowSeconds": 300}}'
        problems.extend(errs)
        if not errs:
            errs = validate_behavior(behavior, C.ANN_BEHAVIOR)
            problems.extend(errs)
            if not errs:
                resolved["behavior"] = behavior

    drain = drain_rules.resolve(ann, policy.drain, problems)

    if C.ANN_TRIGGERS in ann:
        presets, errs = parse_triggers_annotation(str(ann[C.ANN_TRIGGERS]), C.ANN_TRIGGERS, policy.limits)
        problems.extend(errs)
        if not errs:
            # What the tenant wrote is checked against what the policy lends this namespace.
            problems.extend(trigger_problems(presets, C.ANN_TRIGGERS, name=an.name, namespace=an.namespace,
                                             tenancy=policy.tenancy,
                                             prometheus_address=policy.prometheus.serverAddress))
    else:
        presets, errs = parse_trigger_list(resolved.get("triggers") or [], "policy triggers")
        problems.extend(errs)

    lo, hi = resolved["minReplicas"], resolved["maxReplicas"]
    if hi > cap and explicit_max is None:
        hi = resolved["maxReplicas"] = cap
    if lo > hi:
        src_min = "annotation" if explicit_min is not None else "policy"
        src_max = "annotation" if explicit_max is not None else "policy"
        problems.append(Problem(
            C.ANN_MIN_REPLICAS if explicit_min is not None else C.ANN_MAX_REPLICAS,
            f"min-replicas ({lo}, from the {src_min}) is above max-replicas ({hi}, from the {src_max})",
            f"set {C.ANN_MAX_REPLICAS} to at least {lo} or lower {C.ANN_MIN_REPLICAS}"))

    if any(p.name == drain_rules.HOLD_TRIGGER for p in presets):
        problems.append(Problem(C.ANN_TRIGGERS, f"the trigger name {drain_rules.HOLD_TRIGGER!r} is reserved for the "
                                "hold that keeps a busy or loading model from going to zero",
                                "give the trigger another name"))

    if not presets and not any(p.where.startswith(C.ANN_TRIGGERS) for p in problems):
        problems.append(Problem(C.ANN_TRIGGERS, "no trigger is configured, so nothing would ever scale "
                                "this workload", "name at least one trigger, e.g. http"))

    raws = [p for p in presets if isinstance(p, RawTrigger)]
    if presets and all(isinstance(p, RawTrigger) and p.resource_metric for p in presets) and lo == 0:
        problems.append(Problem(C.ANN_TRIGGERS, "cpu/memory triggers cannot scale a workload up from zero "
                                "(no pods, no usage), and KEDA rejects them with min-replicas 0",
                                f"set {C.ANN_MIN_REPLICAS} to 1 or add an http or queue trigger"))
    elif any(p.resource_metric for p in raws) and len(presets) > 1:
        an.warnings.append("cpu/memory triggers never activate a workload at zero; they only help scale "
                           "from 1 to N together with the other triggers")

    if problems:
        return an

    settings = Settings(
        min_replicas=lo, max_replicas=hi, cooldown_period=resolved["cooldownPeriod"],
        polling_interval=resolved["pollingInterval"], initial_cooldown_period=resolved["initialCooldownPeriod"],
        start_at_zero=bool(resolved["startAtZero"]) and lo == 0, triggers=tuple(presets),
        behavior=resolved.get("behavior"), gpu=det.gpu, profile=profile,
        keep_alive=resolved.get("keepAlive") or "fixed", cold_start_objective=resolved["objective"],
        startup_s=resolved["startup"], drain=drain)
    an.settings = settings
    ctx = an.trigger_context(policy)
    too_big = built_problems(built_for(settings, ctx), C.ANN_TRIGGERS, policy.limits)
    if too_big:
        an.settings = None
        problems.extend(too_big)
        return an

    for p in presets:
        an.warnings.extend(p.warnings(ctx))
    if lo == 0 and presets and not any(p.wakes_from_zero for p in presets):
        an.warnings.append("with min-replicas 0 the queue-depth trigger alone cannot wake the workload (no "
                           "pods, no metrics); add an http or message-queue trigger or set min-replicas 1")
    if drain is not None and an.backend != "vllm":
        an.warnings.append(f"backend {an.backend!r}: llmaz-serverless knows no drain flag for it, so requests in "
                           "flight on a replica that is removed are cut when it stops (vLLM: --shutdown-timeout)")
    if det.gpu and lo > 0:
        an.warnings.append(f"min-replicas {lo} keeps {lo} GPU replica(s) running while idle")
    readiness = workload_readiness_warning(obj, settings, policy, models)
    if readiness:
        an.warnings.append(readiness)
    if settings.keep_alive == "learned" and lo > 0:
        an.warnings.append(f"keep-alive: learned has no effect with min-replicas {lo}: the workload never goes "
                           "to zero")
    elif settings.keep_alive != "learned":
        for key in (C.ANN_COLD_START_OBJECTIVE, C.ANN_STARTUP_TIME):
            if key in ann:
                an.warnings.append(f"{key} only steers keep-alive: learned; with a fixed keep-alive the "
                                   "cooldown-period applies")
    return an
