"""How many accelerators one replica of a workload holds, as llmaz would run it.

GPU-hours are replica-hours times this number, so it must be what llmaz actually schedules, not "1 if it has
a GPU". llmaz's rules (InftyAI/llmaz: ``pkg/controller_helper/helper.go``, ``FirstAssignedFlavor`` and
``MultiHostInference``; the OpenModel CRD's ``flavors[].limits`` description):

* A Playground runs the model's *first assigned flavor*: the first flavor named in the claim's
  ``inferenceFlavors``, else the model's first flavor. Its ``limits`` are the accelerators of each pod, and
  they overwrite the same resources given in ``backendRuntimeConfig.resources``. A flavor with a ``PP``
  parameter is served multi-host: one replica is a LeaderWorkerSet group of ``PP`` pods, each with the limits.
* A Service replica is one LeaderWorkerSet group: the leader pod plus ``size - 1`` worker pods (``size``
  defaults to 1), from ``spec.workloadTemplate`` (llmaz main) or ``spec.workloadTemplate.leaderWorkerTemplate``
  (llmaz <= v0.1.x). The claimed flavor's limits overwrite the ``model-runner`` container's accelerators.

A pod's accelerators are the sum of its containers' (limits, else requests), or its largest init container's
if that is more (as the scheduler counts them). Every accelerator resource counts one per unit: a MIG slice
is one "GPU" here. Pure: objects in, a number and the reasoning out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..accelerators import claimed_models, is_accelerator
from ..models import ModelCatalog
from ..policy import Policy

MODEL_RUNNER = "model-runner"


@dataclass(frozen=True)
class GPUs:
    per_replica: int
    hosts: int            # pods per replica (LeaderWorkerSet group size)
    why: str              # one line: where the number comes from


def _count(quantity: Any) -> float:
    try:
        return max(0.0, float(str(quantity).strip()))
    except ValueError:
        return 0.0


def _accel(resources: Any, policy: Policy) -> dict[str, float]:
    """Accelerators of one container: its limits, else its requests (a limit implies the request)."""
    if not isinstance(resources, dict):
        return {}
    out: dict[str, float] = {}
    for section in ("requests", "limits"):
        values = resources.get(section)
        if isinstance(values, dict):
            for name, qty in values.items():
                if isinstance(name, str) and is_accelerator(name, policy):
                    out[name] = _count(qty)
    return out


def _first_flavor(obj: dict[str, Any], models: ModelCatalog) -> tuple[str, dict[str, Any] | None]:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    names, wanted = claimed_models(spec)
    if not names:
        return "", None
    model = models.get(names[0])
    if model is None:
        return names[0], None
    flavors = [f for f in ((model.get("spec") or {}).get("inferenceConfig") or {}).get("flavors") or []
               if isinstance(f, dict)]
    if wanted:
        return names[0], next((f for f in flavors if f.get("name") == wanted[0]), None)
    return names[0], flavors[0] if flavors else None


def _flavor_limits(flavor: dict[str, Any] | None, policy: Policy) -> dict[str, float]:
    return _accel({"limits": (flavor or {}).get("limits")}, policy) if flavor else {}


def _pod(template: Any, flavor_limits: dict[str, float], policy: Policy) -> float:
    spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(spec, dict):
        return sum(flavor_limits.values())
    total: dict[str, float] = {}
    runner_seen = False
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        acc = _accel(c.get("resources"), policy)
        if c.get("name") == MODEL_RUNNER:
            runner_seen = True
            acc.update(flavor_limits)
        for k, v in acc.items():
            total[k] = total.get(k, 0.0) + v
    if not runner_seen:       # llmaz adds the model-runner container with the flavor's limits
        for k, v in flavor_limits.items():
            total[k] = total.get(k, 0.0) + v
    init = max((sum(_accel(c.get("resources"), policy).values()) for c in spec.get("initContainers") or []
                if isinstance(c, dict)), default=0.0)
    return max(sum(total.values()), init)


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def per_replica(obj: dict[str, Any], policy: Policy, models: ModelCatalog, is_gpu: bool) -> GPUs:
    """GPUs one replica of ``obj`` holds; ``is_gpu`` is the webhook's own verdict (an unknown model the
    policy treats as a GPU model counts 1 per pod)."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    model, flavor = _first_flavor(obj, models)
    limits = _flavor_limits(flavor, policy)
    where = f"OpenModel {model} flavor {flavor.get('name')}" if flavor else ""
    if obj.get("kind") == "Service":
        wt = spec.get("workloadTemplate") if isinstance(spec.get("workloadTemplate"), dict) else {}
        tpl = wt.get("leaderWorkerTemplate") if isinstance(wt.get("leaderWorkerTemplate"), dict) else wt
        hosts = _size(tpl.get("size"))
        worker = tpl.get("workerTemplate")
        leader = tpl.get("leaderTemplate") or worker
        n = _pod(leader, limits, policy) + (hosts - 1) * _pod(worker, limits, policy)
        why = f"Service workloadTemplate: {hosts} pod(s) per replica" + (f", {where} limits" if where else "")
    else:
        pp = (flavor or {}).get("params") or {}
        hosts = _size(int(pp["PP"]) if str(pp.get("PP", "")).isdigit() else 1)
        brc = spec.get("backendRuntimeConfig") if isinstance(spec.get("backendRuntimeConfig"), dict) else {}
        acc = _accel(brc.get("resources"), policy)
        acc.update(limits)
        n = hosts * sum(acc.values())
        why = (f"{where} limits" if limits else "backendRuntimeConfig.resources" if acc else "no accelerator given")
        if hosts > 1:
            why += f" x {hosts} hosts (flavor param PP={hosts})"
    count = math.ceil(n - 1e-9)
    if count == 0 and is_gpu:
        return GPUs(hosts, hosts, "a GPU workload with no accelerator count readable (unknown model?): "
                                  "1 per pod; set --gpus-per-replica")
    return GPUs(count, hosts, why)
