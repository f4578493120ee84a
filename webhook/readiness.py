"""Is the HTTP add-on's readiness timeout long enough for this model to load?

At zero replicas the add-on's interceptor holds a request until the workload has a ready endpoint, for at most
``readinessTimeout``; then it answers 504. A timeout shorter than the model's load makes every cold start fail.
This module estimates the load and words the warning that preview, admission, ``check`` and ``simulate`` show.

The estimate is deliberately a lower bound, so the warning fires only when the timeout is clearly too short:

- the model's size comes from the OpenModel's ``spec.source.modelHub.modelID`` or ``spec.source.uri``
  (``Qwen/Qwen2.5-72B-Instruct`` -> 72e9 parameters; ``Mixtral-8x7B`` -> 56e9), at 2 bytes a parameter
  (16-bit weights), 1 for 8-bit and 0.5 for 4-bit names (fp8, int8, awq, gptq, int4 ...);
- the weights are read at ``READ_GB_PER_S`` (a local or in-cluster model cache; a download from a hub is
  usually slower) after ``POD_START_S`` to schedule the pod and start its containers;
- a GPU model of unknown size takes ``UNKNOWN_GPU_LOAD_S``: the short end of the 1-5 minutes an LLM cold start
  usually takes (image pull, weights, CUDA graph capture), the figure the built-in policy's 10-minute
  ``http.readinessTimeout`` is sized against.

The pure entry points are ``expected_load`` (object -> estimate), ``readiness_problem`` (timeout and load in
seconds -> warning text or None, for callers that know the load, such as a simulation) and
``workload_readiness_warning`` (object + resolved settings -> warning or None).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .accelerators import claimed_models
from .durations import duration_seconds, human
from .models import ModelCatalog
from .policy import Policy

POD_START_S = 30.0
READ_GB_PER_S = 1.0
UNKNOWN_GPU_LOAD_S = 120.0

_MOE = re.compile(r"(?<![A-Za-z0-9.])(\d+)x(\d+(?:\.\d+)?)[bB](?![A-Za-z0-9])")
_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([bBmM])(?![A-Za-z0-9])")
_FOUR_BIT = re.compile(r"awq|gptq|int4|4bit|4-bit|q4|nf4|bnb", re.I)
_EIGHT_BIT = re.compile(r"fp8|int8|8bit|8-bit|q8|w8a8", re.I)


@dataclass(frozen=True)
class LoadEstimate:
    seconds: float
    basis: str            # what the figure rests on, shown in the warning


@functools.lru_cache(maxsize=1024)
def parameters_of(model_id: str) -> float | None:
    """Parameters named in a model id (``Qwen/Qwen2-0.5B-Instruct`` -> 0.5e9), or None."""
    moe = _MOE.search(model_id)
    if moe:
        return int(moe.group(1)) * float(moe.group(2)) * 1e9
    size = _SIZE.search(model_id)
    if size:
        return float(size.group(1)) * (1e9 if size.group(2) in "bB" else 1e6)
    return None


@functools.lru_cache(maxsize=1024)
def bytes_per_parameter(model_id: str) -> float:
    if _FOUR_BIT.search(model_id):
        return 0.5
    if _EIGHT_BIT.search(model_id):
        return 1.0
    return 2.0


def _model_id(model: dict[str, Any]) -> str | None:
    source = ((model.get("spec") or {}).get("source") or {}) if isinstance(model.get("spec"), dict) else {}
    if not isinstance(source, dict):
        return None
    hub = source.get("modelHub")
    if isinstance(hub, dict) and isinstance(hub.get("modelID"), str):
        return hub["modelID"]
    uri = source.get("uri")
    return uri if isinstance(uri, str) else None


def expected_load(obj: dict[str, Any], models: ModelCatalog, gpu: bool) -> LoadEstimate | None:
    """A lower bound of the time from a new pod to a ready model server, or None when nothing is known."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    names, _ = claimed_models(spec)
    gigabytes, ids = 0.0, []
    for name in names:
        model = models.get(name)
        model_id = _model_id(model) if model is not None else None
        params = parameters_of(model_id) if model_id else None
        if params is not None and model_id is not None:
            gigabytes += params * bytes_per_parameter(model_id) / 1e9
            ids.append(model_id)
    if ids:
        seconds = POD_START_S + gigabytes / READ_GB_PER_S
        return LoadEstimate(seconds, f"{', '.join(ids)}: ~{gigabytes:.0f} GB of weights at "
                                     f"{READ_GB_PER_S:g} GB/s plus {POD_START_S:.0f}s to start the pod")
    if gpu:
        return LoadEstimate(UNKNOWN_GPU_LOAD_S, "a GPU model of unknown size: LLM cold starts take 1-5 minutes")
    return None


def readiness_problem(readiness_timeout_s: float, load_s: float, basis: str) -> str | None:
    """The warning when requests held at zero replicas would time out before the model is ready (a timeout of
    0 means no deadline)."""
    if readiness_timeout_s <= 0 or readiness_timeout_s >= load_s:
        return None
    return (f"http readinessTimeout {human(readiness_timeout_s)} is shorter than the expected load of "
            f"~{human(round(load_s))} ({basis}); requests that wake it from zero get 504: raise it")


def _http_readiness(triggers: Iterable[Any], policy: Policy) -> float | None:
    for t in triggers:
        effective = getattr(t, "effective_timeouts", None)
        if effective is not None:
            return duration_seconds(effective(policy)["readiness"])
    return None


def workload_readiness_warning(obj: dict[str, Any], settings: Any, policy: Policy,
                               models: ModelCatalog) -> str | None:
    """For a workload with resolved ``settings`` (``settings.Settings``): the readiness warning or None. Only a
    workload that can be at zero and is woken by the http trigger holds requests while it loads."""
    if settings is None or settings.min_replicas > 0:
        return None
    timeout = _http_readiness(settings.triggers, policy)
    if timeout is None:
        return None
    estimate = expected_load(obj, models, settings.gpu)
    if estimate is None:
        return None
    return readiness_problem(timeout, estimate.seconds, estimate.basis)
