"""Does a workload ask for accelerators (GPUs, MIG slices, TPUs, Gaudi, Neuron ...)?

llmaz declares accelerators in several places, and any one of them makes a workload a GPU workload:

- the OpenModel's ``spec.inferenceConfig.flavors[].limits`` (the claimed flavors, else the first flavor, which
  is what llmaz itself schedules with);
- a Playground's ``spec.backendRuntimeConfig.resources`` (requests or limits);
- a Service's ``spec.workloadTemplate`` leader and worker pod templates (containers and init containers), in
  both the current shape and the older one nested under ``leaderWorkerTemplate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .models import ModelCatalog
from .policy import Policy


@dataclass
class Detection:
    gpu: bool
    resources: list[str] = field(default_factory=list)   # accelerator resource names seen
    sources: list[str] = field(default_factory=list)     # where they were seen
    unknown_models: list[str] = field(default_factory=list)


def is_accelerator(resource: str, policy: Policy) -> bool:
    if resource in policy.acceleratorResources:
        return True
    return any(resource.startswith(p) for p in policy.acceleratorPrefixes)


def _positive(quantity: Any) -> bool:
    text = str(quantity).strip()
    try:
        return float(text) > 0
    except ValueError:
        return text not in ("", "0")


def _scan_resources(resources: Any, where: str, policy: Policy, det: Detection) -> None:
    if not isinstance(resources, dict):
        return
    for section in ("requests", "limits"):
        values = resources.get(section)
        if not isinstance(values, dict):
            continue
        for name, qty in values.items():
            if isinstance(name, str) and is_accelerator(name, policy) and _positive(qty):
                if name not in det.resources:
                    det.resources.append(name)
                src = f"{where}.{section}"
                if src not in det.sources:
                    det.sources.append(src)


def _scan_pod_template(tpl: Any, where: str, policy: Policy, det: Detection) -> None:
    if not isinstance(tpl, dict):
        return
    spec = tpl.get("spec")
    if not isinstance(spec, dict):
        return
    for key in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(key) or []):
            if isinstance(c, dict):
                _scan_resources(c.get("resources"), f"{where}.spec.{key}[{i}].resources", policy, det)


def claimed_models(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(model names, claimed flavor names) of a Playground or Service spec."""
    names: list[str] = []
    flavors: list[str] = []
    claim = spec.get("modelClaim")
    if isinstance(claim, dict):
        if isinstance(claim.get("modelName"), str):
            names.append(claim["modelName"])
        flavors.extend(f for f in claim.get("inferenceFlavors") or [] if isinstance(f, str))
    claims = spec.get("modelClaims")
    if isinstance(claims, dict):
        for m in claims.get("models") or []:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                names.append(m["name"])
        flavors.extend(f for f in claims.get("inferenceFlavors") or [] if isinstance(f, str))
    return names, flavors


def _model_flavors(model: dict[str, Any], wanted: Iterable[str]) -> list[dict[str, Any]]:
    flavors = [f for f in ((model.get("spec") or {}).get("inferenceConfig") or {}).get("flavors") or []
               if isinstance(f, dict)]
    wanted = list(wanted)
    if wanted:
        chosen = [f for f in flavors if f.get("name") in wanted]
        if chosen:
            return chosen
    return flavors[:1]


def detect(obj: dict[str, Any], policy: Policy, models: ModelCatalog) -> Detection:
    det = Detection(gpu=False)
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    kind = obj.get("kind")
    if kind == "Playground":
        brc = spec.get("backendRuntimeConfig")
        if isinstance(brc, dict):
            _scan_resources(brc.get("resources"), "spec.backendRuntimeConfig.resources", policy, det)
    if kind == "Service":
        wt = spec.get("workloadTemplate")
        if isinstance(wt, dict):
            # llmaz main: workloadTemplate is a LeaderWorkerTemplate; llmaz <= v0.1.x: a LeaderWorkerSet spec
            # that nests it under leaderWorkerTemplate.
            nested = wt.get("leaderWorkerTemplate")
            for base, tpl in (("spec.workloadTemplate", wt),
                              ("spec.workloadTemplate.leaderWorkerTemplate", nested)):
                if isinstance(tpl, dict):
                    _scan_pod_template(tpl.get("leaderTemplate"), f"{base}.leaderTemplate", policy, det)
                    _scan_pod_template(tpl.get("workerTemplate"), f"{base}.workerTemplate", policy, det)
    names, flavors = claimed_models(spec)
    for name in names:
        model = models.get(name)
        if model is None:
            det.unknown_models.append(name)
            continue
        for flavor in _model_flavors(model, flavors):
            _scan_resources({"limits": flavor.get("limits")},
                            f"OpenModel {name} flavor {flavor.get('name')}", policy, det)
    det.gpu = bool(det.resources) or (bool(det.unknown_models) and policy.unknownModelIsGPU
                                      and not det.resources)
    return det
