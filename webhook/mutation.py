"""The mutation rules. Pure: (raw object, old object, operation, policy, models) -> mutated copy + warnings.

The JSON Patch sent back to the API server is the diff between the **raw** request object and the mutated
copy, so fields this code does not know are never touched. Every rule is idempotent: mutating an already
mutated object changes nothing, which makes ``reinvocationPolicy: IfNeeded`` safe.

Rules, in order:

1. Not a Playground/Service, or a Service owned by a Playground: untouched.
2. Opted out (``serverless.llmaz.io/enabled: "false"``): our written annotations are removed, nothing else.
3. ``spec.elasticConfig`` of a Playground is converted into our annotations and removed (llmaz would create
   its own HPA for it, and KEDA refuses a target that already has a foreign HPA).
4. Settings are resolved (see ``settings.analyze``); any problem denies the request.
5. ``serverless.llmaz.io/managed`` and ``serverless.llmaz.io/resolved`` record what was decided.
6. ``spec.replicas``: on CREATE 0 when the workload starts at zero, else clamped into [max(min,1), max]; on
   UPDATE the live value is kept (KEDA owns replicas; a re-applied manifest must not fight the autoscaler).
   When KEDA, or the HTTP add-on for an ``http`` workload, is not installed, never 0 (``webhook.prerequisites``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from . import drain as drain_rules
from .errors import Denied, Problem
from .models import ModelCatalog
from .policy import Policy
from .prerequisites import ASSUMED, Installed, degrade
from .settings import Analysis, analyze, annotations_of, opted_out


@dataclass
class Mutation:
    obj: dict[str, Any]
    analysis: Analysis
    warnings: list[str] = field(default_factory=list)
    changed: bool = False


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):   # absent or null
        meta = obj["metadata"] = {}
    ann = meta.get("annotations")
    if not isinstance(ann, dict):
        ann = meta["annotations"] = {}
    return ann


def convert_elastic_config(obj: dict[str, Any], warnings: list[str]) -> list[str]:
    """Move ``spec.elasticConfig`` into our annotations; returns the annotation keys it wrote."""
    spec = obj.get("spec")
    if not isinstance(spec, dict) or "elasticConfig" not in spec:
        return []
    elastic = spec.pop("elasticConfig")
    if not isinstance(elastic, dict):
        warnings.append("spec.elasticConfig was not a mapping and has been removed")
        return []
    written: list[str] = []
    ann = _annotations(obj)
    carried, ignored = [], []
    max_r = elastic.get("maxReplicas")
    if isinstance(max_r, int) and not isinstance(max_r, bool):
        if C.ANN_MAX_REPLICAS in ann:
            ignored.append(f"maxReplicas (annotation {C.ANN_MAX_REPLICAS} wins)")
        else:
            ann[C.ANN_MAX_REPLICAS] = str(max_r)
            written.append(C.ANN_MAX_REPLICAS)
            carried.append(f"maxReplicas={max_r}")
    min_r = elastic.get("minReplicas")
    # llmaz cannot express 0 there (its own webhook rejects it) and defaults to 1, so only a value above 1
    # is a real request for warm replicas.
    if isinstance(min_r, int) and not isinstance(min_r, bool) and min_r > 1:
        if C.ANN_MIN_REPLICAS in ann:
            ignored.append(f"minReplicas (annotation {C.ANN_MIN_REPLICAS} wins)")
        else:
            ann[C.ANN_MIN_REPLICAS] = str(min_r)
            written.append(C.ANN_MIN_REPLICAS)
            carried.append(f"minReplicas={min_r}")
    hpa = (elastic.get("scaleTrigger") or {}).get("hpa") if isinstance(elastic.get("scaleTrigger"), dict) else None
    if hpa is None:
        # llmaz <= v0.1.x keeps the HPA trigger in backendRuntimeConfig.scaleTrigger.
        brc = spec.get("backendRuntimeConfig") if isinstance(spec.get("backendRuntimeConfig"), dict) else {}
        trigger = brc.get("scaleTrigger") if isinstance(brc.get("scaleTrigger"), dict) else {}
        hpa = trigger.get("hpa")
    if isinstance(hpa, dict):
        behavior = hpa.get("behavior")
        if isinstance(behavior, dict) and behavior:
            if C.ANN_BEHAVIOR in ann:
                ignored.append(f"behavior (annotation {C.ANN_BEHAVIOR} wins)")
            else:
                ann[C.ANN_BEHAVIOR] = json.dumps(behavior, sort_keys=True, separators=(",", ":"))
                written.append(C.ANN_BEHAVIOR)
                carried.append("behavior")
        if hpa.get("metrics"):
            ignored.append("HPA metrics (use trigger presets instead)")
    msg = ("spec.elasticConfig was removed: llmaz would create its own HPA, which conflicts with the KEDA "
           "autoscaler of llmaz-serverless")
    if carried:
        msg += f"; carried over as annotations: {', '.join(carried)}"
    if ignored:
        msg += f"; not carried over: {', '.join(ignored)}"
    warnings.append(msg)
    return written


def spec_replicas(obj: dict[str, Any]) -> int | None:
    """``spec.replicas`` when it is an integer, else None (absent, or a shape the API server would refuse)."""
    spec = obj.get("spec")
    value = spec.get("replicas") if isinstance(spec, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _writable_copy(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` in which the containers the rules write to are new dicts: the object itself,
    ``metadata``, ``metadata.annotations`` and ``spec``. Everything below them (managedFields, the pod templates,
    the other annotations' values ...) is shared with ``raw``, never written.

    This replaces a deep copy: an UPDATE carries objects of hundreds of KB (managedFields, last-applied
    annotations) and copying them cost more than everything else the rules do. It also lets
    ``admission.make_patch`` skip the shared sub-trees, which cannot differ."""
    obj = dict(raw)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta = obj["metadata"] = dict(meta)
        ann = meta.get("annotations")
        if isinstance(ann, dict):
            meta["annotations"] = dict(ann)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        obj["spec"] = dict(spec)
    return obj


def _apply_drain(spec: dict[str, Any], backend: str, drain: drain_rules.Drain, warnings: list[str]) -> None:
    """The drain of a managed Playground, through the only fields llmaz v0.1.1 carries into its pods:
    ``backendRuntimeConfig.args`` (appended to the BackendRuntime's) get the backend's shutdown flag, and
    ``backendRuntimeConfig.envs`` the two markers from which the pod webhook sets the grace period and preStop
    (Playground and BackendRuntime have no field for either). Both are rewritten on every admission, so a
    changed drain timeout reaches the pods llmaz makes next."""
    brc = spec.get("backendRuntimeConfig")
    brc = dict(brc) if isinstance(brc, dict) else {}
    args = brc.get("args") if isinstance(brc.get("args"), list) else []
    new_args, previous = drain_rules.shutdown_args(args, backend, drain.timeout)
    if previous is not None:
        warnings.append(f"spec.backendRuntimeConfig.args: {drain_rules.VLLM_SHUTDOWN_FLAG}={previous} was replaced "
                        f"by {drain.timeout}, the drain timeout of this workload (set it with {C.ANN_DRAIN_TIMEOUT})")
    if new_args != args or "args" in brc:
        brc["args"] = new_args
    envs = brc.get("envs") if isinstance(brc.get("envs"), list) else []
    brc["envs"] = drain_rules.drain_envs(envs, drain)
    if brc != spec.get("backendRuntimeConfig"):
        spec["backendRuntimeConfig"] = brc


def mutate(raw: dict[str, Any], old: dict[str, Any] | None, operation: str, policy: Policy,
           models: ModelCatalog, installed: Installed = ASSUMED) -> Mutation:
    """Return the mutated copy of ``raw``; raise ``Denied`` if the object's settings are invalid.

    ``raw`` is never modified. The copy shares the sub-trees the rules do not write with ``raw`` (see
    ``_writable_copy``): treat both as read-only, or deep-copy before editing nested parts."""
    obj = _writable_copy(raw)
    warnings: list[str] = []
    kind = obj.get("kind")
    converted: list[str] = []
    if kind == C.KIND_PLAYGROUND and isinstance(obj.get("spec"), dict) and "elasticConfig" in obj["spec"]:
        # A Playground is managed unless opted out (what ``analyze`` decides first); checked directly rather
        # than by a second full analysis.
        if not opted_out(obj):
            converted = convert_elastic_config(obj, warnings)
    an = analyze(obj, policy, models)
    if not an.managed:
        ann = annotations_of(obj)
        for key in C.WRITTEN_ANNOTATIONS:
            ann.pop(key, None)
        if isinstance(obj.get("metadata"), dict) and obj["metadata"].get("annotations") == {} and not (
                isinstance(raw.get("metadata"), dict) and "annotations" in raw["metadata"]):
            obj["metadata"].pop("annotations")
        return Mutation(obj=obj, analysis=an, warnings=warnings, changed=obj != raw)
    if an.problems:
        problems = list(an.problems)
        blamed = sorted({k for k in converted for p in problems if k in p.where or k in p.fix})
        if blamed:
            # The user wrote elasticConfig, not these annotations: say where the values came from.
            problems.append(Problem("spec.elasticConfig", f"was converted into {', '.join(blamed)}, which the "
                                    "problems above refer to", "fix the values in spec.elasticConfig or set "
                                    "those annotations explicitly"))
        raise Denied(problems)
    assert an.settings is not None
    # What the cluster cannot do changes the replicas, never the annotations (they come back into force by
    # themselves once the missing API is installed): see webhook.prerequisites.
    degraded = degrade(an.settings, installed)
    s = degraded.settings
    ann = _annotations(obj)
    ann[C.ANN_MANAGED] = "true"
    ann[C.ANN_RESOLVED] = an.settings.as_annotation()

    spec = obj.get("spec")
    if not isinstance(spec, dict):   # absent or null
        spec = obj["spec"] = {}
    live = spec_replicas(old) if operation == "UPDATE" and old is not None else None
    if live is not None:
        # Never left at zero by an edit while nothing could wake it up again.
        spec["replicas"] = max(live, degraded.floor) if degraded.missing else live
    elif operation in ("CREATE", "UPDATE"):
        if s.start_at_zero:
            spec["replicas"] = 0
        else:
            current = spec_replicas(obj)
            floor = max(s.min_replicas, 1)
            spec["replicas"] = floor if current is None else min(max(current, floor), s.max_replicas)
    if kind == C.KIND_PLAYGROUND and an.settings.drain is not None:
        _apply_drain(spec, an.backend, an.settings.drain, warnings)
    warnings.extend(an.warnings)
    warnings.extend(degraded.reasons)
    return Mutation(obj=obj, analysis=an, warnings=warnings, changed=obj != raw)
