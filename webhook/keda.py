"""Desired KEDA objects for a managed workload. Pure: (workload, policy, models) -> objects.

One ScaledObject per workload holds every trigger (a workload can have only one HPA, so HTTP and queue
triggers must share it). It targets the Playground, or a standalone Service, through their ``/scale``
subresource. With an ``http`` trigger an InterceptorRoute of the KEDA HTTP add-on routes requests to the llmaz
``<name>-lb`` Service; the ScaledObject's ``external-push`` trigger names that route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import constants as C
from . import drain as drain_rules
from .errors import Denied, Problem
from .models import ModelCatalog
from .policy import Policy
from .prerequisites import ASSUMED, Degraded, Installed, degrade
from .settings import Analysis, analyze
from .triggers import HTTPTrigger, assign_names


@dataclass
class Desired:
    analysis: Analysis
    scaled_object: dict[str, Any] | None = None
    interceptor_route: dict[str, Any] | None = None
    degraded: Degraded | None = None     # set for a managed workload; ``missing`` says what is not installed

    @property
    def missing(self) -> tuple[str, ...]:
        return self.degraded.missing if self.degraded else ()

    def objects(self) -> list[dict[str, Any]]:
        return [o for o in (self.interceptor_route, self.scaled_object) if o is not None]


def labels_for(kind: str, name: str) -> dict[str, str]:
    return {
        C.LABEL_MANAGED_BY: C.MANAGED_BY,
        C.LABEL_WORKLOAD_KIND: kind,
        C.LABEL_WORKLOAD_NAME: name,
    }


def metadata_problems(workload: dict[str, Any]) -> list[str]:
    """Shapes the API server would never store (it rejects them when decoding), checked before any rule reads
    the object, so an object from a file cannot crash the builders: what is wrong, in Kubernetes' terms."""
    meta = workload.get("metadata")
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return [f"metadata must be a mapping, got {type(meta).__name__}"]
    out = [f"metadata.{k} must be a string, got {type(meta[k]).__name__}"
           for k in ("name", "generateName", "namespace", "uid") if meta.get(k) is not None
           and not isinstance(meta[k], str)]
    for k in ("labels", "annotations"):
        v = meta.get(k)
        if v is not None and not (isinstance(v, dict) and all(isinstance(x, str) for x in v)):
            out.append(f"metadata.{k} must be a mapping with string keys")
    refs = meta.get("ownerReferences")
    if refs is not None and not (isinstance(refs, list) and all(isinstance(r, dict) for r in refs)):
        out.append("metadata.ownerReferences must be a list of mappings")
    return out


def owner_reference(workload: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference that ties a KEDA object to its workload, or None when the workload is not stored.

    A stored object always has a ``name`` and a ``uid``; an object seen at admission of a CREATE may have
    neither (``generateName`` leaves the name to the API server), and then the reconciler adds the reference
    once the object exists.
    """
    meta = workload.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    uid, name = meta.get("uid"), meta.get("name")
    if not uid or not name or not isinstance(uid, str) or not isinstance(name, str):
        return None
    return {"apiVersion": str(workload.get("apiVersion") or C.LLMAZ_API_VERSION), "kind": str(workload.get("kind")),
            "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


def _metadata(kind: str, name: str, obj_name: str, namespace: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": obj_name, "namespace": namespace, "labels": labels_for(kind, name)}
    if owner:
        meta["ownerReferences"] = [owner]
    return meta


def desired_objects(workload: dict[str, Any], policy: Policy, models: ModelCatalog,
                    installed: Installed = ASSUMED) -> Desired:
    """The KEDA objects that should exist for ``workload``; none when it is not managed.

    ``installed`` says which optional APIs the cluster serves; a missing one changes what is built by the
    never-stranded rule of ``webhook.prerequisites`` (``Desired.degraded`` says what and why).

    Raises ``Denied`` when the workload's settings are invalid (the caller reports it; nothing is built from
    a half-valid configuration).
    """
    broken = metadata_problems(workload)
    if broken:
        raise Denied([Problem("metadata", what, "fix the manifest") for what in broken])
    an = analyze(workload, policy, models)
    desired = Desired(analysis=an)
    if not an.managed:
        return desired
    if an.problems:
        raise Denied(an.problems)
    meta = workload.get("metadata")
    stored_name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(stored_name, str) or not stored_name:
        # KEDA objects carry the workload's final name; with only ``generateName`` (or nothing) that name is
        # not known yet, and a ScaledObject named after the prefix would target nothing.
        raise Denied.one("metadata.name", "not set: KEDA objects are named after the stored workload",
                         "build them from the object as stored by the API server (it has metadata.name)")
    assert an.settings is not None
    desired.degraded = degraded = degrade(an.settings, installed)
    if not degraded.scaled_object:
        return desired
    s = degraded.settings
    kind, name, ns = an.kind, an.name, an.namespace
    owner = owner_reference(workload)
    ctx = an.trigger_context(policy)

    triggers = []
    for trigger_name, preset in assign_names(list(s.triggers)):
        triggers.append(preset.keda_trigger(ctx, trigger_name))
        if isinstance(preset, HTTPTrigger):
            desired.interceptor_route = {
                "apiVersion": C.HTTP_API_VERSION,
                "kind": "InterceptorRoute",
                "metadata": _metadata(kind, name, C.interceptor_route_name(name), ns, owner),
                "spec": preset.interceptor_route_spec(ctx),
            }

    if s.drain is not None and s.drain.hold and s.min_replicas == 0 and drain_rules.hold_supported(an.backend):
        # Never to zero while the model is busy or loading, whatever the other triggers say (webhook/drain.py).
        triggers.append(drain_rules.hold_trigger(name, ns, an.backend, s.drain, policy.prometheus))

    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": C.LLMAZ_API_VERSION, "kind": kind, "name": name},
        "pollingInterval": s.polling_interval,
        "cooldownPeriod": s.cooldown_period,
        "initialCooldownPeriod": s.initial_cooldown_period,
        "minReplicaCount": s.min_replicas,
        "maxReplicaCount": s.max_replicas,
        "triggers": triggers,
    }
    if s.behavior:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": s.behavior}}
    desired.scaled_object = {
        "apiVersion": C.KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": _metadata(kind, name, C.scaled_object_name(name), ns, owner),
        "spec": spec,
    }
    return desired
