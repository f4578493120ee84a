"""The cluster policy: defaults, GPU defaults, named profiles, and preset settings.

A policy lives in a ConfigMap (key ``policy.yaml``) and is parsed by the pydantic model below. Every field has
a default, so an empty ConfigMap -- or none at all -- means the built-in policy. Unknown keys are rejected
(``extra="forbid"``): a typo in a policy must be reported, not silently ignored, and because a bad policy is
never applied (the last good one stays in force) being strict costs no availability.

A document overrides the built-in policy field by field (nested mappings are merged, lists replaced).

Layering, from weakest to strongest, when settings are resolved for one workload::

    defaults  ->  gpu (only for accelerator workloads)  ->  profile (annotation or none)  ->  annotations
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .durations import DurationError, go_duration, whole_seconds
from .tenancy.boundary import Tenancy
from .tenancy.limits import POLICY_BOUNDS, Limits
from .tenancy.safeyaml import InputRefused, load as bounded_load
from .drain import DrainPolicy
from .triggers import parse_trigger_list

POLICY_KEY = "policy.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _seconds_in(value: Any) -> Any:
    """A policy duration in whole seconds, in the same forms as the annotations (300, "300", "5m", "1h30m")."""
    if value is None or isinstance(value, bool):
        return value
    try:
        return whole_seconds(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _go_duration_in(value: Any) -> Any:
    """A timeout the HTTP add-on reads with Go's time.ParseDuration: same forms, written in Go's."""
    try:
        return go_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


Seconds = Annotated[int, BeforeValidator(_seconds_in)]
GoDuration = Annotated[str, BeforeValidator(_go_duration_in)]


class Overlay(_Strict):
    """A partial set of scaling settings; ``None`` means "inherit from the layer below"."""

    minReplicas: int | None = Field(default=None, ge=0)
    maxReplicas: int | None = Field(default=None, ge=1)
    cooldownPeriod: Seconds | None = Field(default=None, ge=0, description="seconds inactive before N -> 0")
    pollingInterval: Seconds | None = Field(default=None, ge=1)
    initialCooldownPeriod: Seconds | None = Field(default=None, ge=0)
    startAtZero: bool | None = None
    triggers: list[Any] | None = Field(
        default=None, description="trigger presets, same forms as the triggers annotation")
    behavior: dict[str, Any] | None = Field(default=None, description="autoscaling/v2 HPA behavior")
    keepAlive: Literal["fixed", "learned"] | None = Field(
        default=None, description="fixed: the cooldown; learned: each workload learns its keep-alive and pre-warm")
    coldStartObjective: str | None = Field(
        default=None, pattern=r"^\d{1,2}(\.\d{1,3})?%$", description="share of requests a learned keep-alive may "
        "let meet a cold start, e.g. 1%")
    startupTime: Seconds | None = Field(
        default=None, ge=1, le=3600, description="how long a replica takes from zero to ready (scheduling, "
        "image pull, model load); a learned pre-warm starts this much early")


class HTTPSettings(_Strict):
    """Defaults of the ``http`` preset (KEDA HTTP add-on)."""

    scalerAddress: str = "keda-add-ons-http-external-scaler.keda:9090"
    concurrency: int = Field(default=16, ge=1, description="in-flight requests per replica")
    # LLM cold starts take 1-5 minutes (image pull, weights, CUDA graphs); HTTP-sized defaults would 504.
    readinessTimeout: GoDuration = "10m"
    requestTimeout: GoDuration = "0s"
    responseHeaderTimeout: GoDuration = "10m"
    gatewayHeader: str = Field(
        default="x-ai-eg-model",
        description="header that the Envoy AI Gateway sets to the model name; '' disables that rule")
    gatewayValue: str = Field(
        default="{namespace}/{name}",
        description="value of gatewayHeader that routes to a workload; must name both {namespace} and {name}, "
                    "so two namespaces never claim the same route")

    @field_validator("gatewayValue")
    @classmethod
    def _namespaced(cls, v: str) -> str:
        rest = v.replace("{namespace}", "").replace("{name}", "")
        if "{namespace}" not in v or "{name}" not in v or "{" in rest or "}" in rest:
            raise ValueError("must contain {namespace} and {name} (and no other placeholder), e.g. "
                             "{namespace}/{name}")
        return v


class PrometheusSettings(_Strict):
    """Where the ``queue-depth`` preset reads vLLM / llama.cpp metrics."""

    serverAddress: str = "http://prometheus-operated.monitoring.svc:9090"
    namespaceLabel: str = "namespace"
    podLabel: str = "pod"
    authRef: str | None = None


class PrometheusAuth(_Strict):
    """How the request-count poller proves itself to a Prometheus that asks (``learnFrom.auth``): files in the
    controller's pod (the chart mounts ``prometheusAuth.secretName`` at /etc/llmaz-serverless/prometheus),
    read again at every poll so a rotated token or CA is picked up. KEDA's own reads (the ``queue-depth``
    preset) use ``prometheus.authRef`` instead: KEDA, not this controller, holds that TriggerAuthentication's
    Secret."""

    bearerTokenFile: str | None = Field(
        default=None, min_length=2, max_length=256,
        description="sent as 'Authorization: Bearer <token>' to prometheus.serverAddress only, over https only")
    caFile: str | None = Field(default=None, min_length=2, max_length=256,
                               description="PEM bundle that verifies prometheus.serverAddress's certificate")

    @field_validator("bearerTokenFile", "caFile")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "/../" in v + "/" or "\x00" in v):
            raise ValueError(f"must be an absolute path in the controller's pod without '..', not {v!r}")
        return v


class LearnFrom(_Strict):
    """What the reconciler learns ``keep-alive: learned`` workloads from (``webhook.controller.requestcounts``).

    ``requests``: each request and when it came, read from Prometheus as the HTTP add-on's interceptor counts
    them (per InterceptorRoute, so only workloads with the ``http`` trigger), with KEDA's status whenever those
    counts cannot be read; ``keda-status``: KEDA's ``lastActiveTime`` only (no Prometheus needed; each wake-up
    counts as one request). The two queries are cumulative counters summed by route: the requests completed,
    and the sum of their durations (which dates their arrivals). Read from ``prometheus.serverAddress``."""

    source: Literal["requests", "keda-status"] = "requests"
    countQuery: str = Field(default="sum by (route_namespace, route_name) (interceptor_request_count_total)",
                            min_length=1, max_length=2048)
    durationQuery: str = Field(
        default="sum by (route_namespace, route_name) (interceptor_request_duration_seconds_sum)",
        min_length=1, max_length=2048)
    namespaceLabel: str = Field(default="route_namespace", min_length=1, max_length=63)
    nameLabel: str = Field(default="route_name", min_length=1, max_length=63)
    interval: Seconds = Field(default=15, ge=1, le=300, description="how often Prometheus is read")
    step: Seconds = Field(default=5, ge=1, le=300, description="resolution of the counts read")
    timeout: Seconds = Field(default=5, ge=1, le=60, description="bound of one Prometheus query")
    auth: PrometheusAuth = PrometheusAuth()


class AnnotationSettings(_Strict):
    """What happens to a misspelt annotation: ``unknown`` keys under serverless.llmaz.io/, and keys whose prefix
    is a near miss of it (serverless.llmaz.com/), are a warning by default; ``deny`` refuses the object."""

    unknown: Literal["warn", "deny"] = "warn"


DEFAULT_ACCELERATORS = (
    "nvidia.com/gpu",
    "amd.com/gpu",
    "gpu.intel.com/i915",
    "gpu.intel.com/xe",
    "habana.ai/gaudi",
    "aws.amazon.com/neuron",
    "aws.amazon.com/neuroncore",
    "google.com/tpu",
)
DEFAULT_ACCELERATOR_PREFIXES = ("nvidia.com/mig-", "nvidia.com/gpu.", "amd.com/", "habana.ai/")


def _builtin_profiles() -> dict[str, Overlay]:
    return {
        # Chat / completion endpoints: wake on HTTP, scale out on the vLLM queue.
        "interactive": Overlay(triggers=["http", "queue-depth"]),
        # Latency-sensitive: one replica always warm.
        "always-warm": Overlay(minReplicas=1, startAtZero=False),
        # Offline work fed by a queue: quick to release GPUs.
        "batch": Overlay(minReplicas=0, startAtZero=True, cooldownPeriod=120),
    }


class Policy(_Strict):
    defaults: Overlay = Overlay(
        minReplicas=1, maxReplicas=4, cooldownPeriod=300, pollingInterval=30,
        initialCooldownPeriod=0, startAtZero=False, triggers=["http"],
    )
    # Idle GPUs are the expensive part: start at zero, and give a model time to load before KEDA may scale
    # it back in (initial cooldown) and a long idle window before releasing it (cooldown).
    gpu: Overlay = Overlay(
        minReplicas=0, startAtZero=True, cooldownPeriod=600, initialCooldownPeriod=300, pollingInterval=15,
    )
    profiles: dict[str, Overlay] = Field(default_factory=_builtin_profiles)
    maxReplicasCap: int = Field(default=64, ge=1, description="no workload may ask for more")
    http: HTTPSettings = HTTPSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    learnFrom: LearnFrom = LearnFrom()   # what keep-alive: learned learns from (webhook/controller/requestcounts.py)
    drain: DrainPolicy = DrainPolicy()   # scale-in waits for work in progress (webhook/drain.py)
    timezone: str = "UTC"
    annotations: AnnotationSettings = AnnotationSettings()
    acceleratorResources: tuple[str, ...] = DEFAULT_ACCELERATORS
    acceleratorPrefixes: tuple[str, ...] = DEFAULT_ACCELERATOR_PREFIXES
    unknownModelIsGPU: bool = Field(
        default=True, description="an OpenModel not (yet) in the cache is treated as a GPU model")
    limits: Limits = Limits()
    tenancy: Tenancy = Tenancy()

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, value: dict[str, Overlay]) -> dict[str, Overlay]:
        for name in value:
            if not name or len(name) > 63 or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"profile name {name!r} must be 1-63 characters of [A-Za-z0-9-_.]")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> "Policy":
        d = self.defaults
        missing = [f for f in ("minReplicas", "maxReplicas", "cooldownPeriod", "pollingInterval",
                               "initialCooldownPeriod", "startAtZero", "triggers") if getattr(d, f) is None]
        if missing:
            raise ValueError(f"defaults must set {', '.join(missing)}")
        if d.maxReplicas > self.maxReplicasCap:
            raise ValueError(f"defaults.maxReplicas ({d.maxReplicas}) is above maxReplicasCap "
                             f"({self.maxReplicasCap})")
        if d.minReplicas > d.maxReplicas:
            raise ValueError(f"defaults.minReplicas ({d.minReplicas}) is above defaults.maxReplicas "
                             f"({d.maxReplicas})")
        https = self.prometheus.serverAddress.lower().startswith("https://")
        if self.learnFrom.auth.bearerTokenFile and not https:
            raise ValueError(f"learnFrom.auth.bearerTokenFile: a token is sent only over https, and "
                             f"prometheus.serverAddress is {self.prometheus.serverAddress!r}; use its https "
                             f"address or drop the token")
        return self

    @classmethod
    def default(cls) -> "Policy":
        return _DEFAULT


_DEFAULT = Policy()


class PolicyError(ValueError):
    """A policy document that cannot be used; the message says where and what."""


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return override


def parse_policy(text: str | None) -> Policy:
    """Parse a policy document (YAML or JSON). Empty means the built-in default policy."""
    if text is None or not text.strip():
        return Policy.default()
    try:
        data = bounded_load(text, POLICY_BOUNDS)
    except InputRefused as exc:
        raise PolicyError(f"policy {exc.what}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy is not valid YAML: {exc}") from None
    if data is None:
        return Policy.default()
    if not isinstance(data, dict):
        raise PolicyError(f"policy must be a YAML mapping, got {type(data).__name__}")
    try:
        # A policy document overrides the built-in policy field by field: `gpu: {cooldownPeriod: 900}` keeps
        # the other GPU defaults, and user profiles extend the built-in ones. Lists are replaced, not merged.
        policy = Policy.model_validate(_merge(Policy.default().model_dump(mode="json", exclude_none=True), data))
    except ValidationError as exc:
        raise PolicyError(f"invalid policy: {_describe(exc)}") from None
    # Triggers inside the policy are checked with the same rules as annotations.
    for where, overlay in [("defaults", policy.defaults), ("gpu", policy.gpu),
                           *((f"profiles.{n}", p) for n, p in policy.profiles.items())]:
        if overlay.triggers is not None:
            _, problems = parse_trigger_list(overlay.triggers, where=f"{where}.triggers")
            if problems:
                raise PolicyError("invalid policy: " + "; ".join(str(p) for p in problems))
    return policy


def policy_from_configmap(configmap: dict[str, Any]) -> Policy:
    data = configmap.get("data") or {}
    return parse_policy(data.get(POLICY_KEY))


def load_policy_file(path: str) -> Policy:
    """Raises ``OSError`` when the file cannot be read, ``PolicyError`` when it is no usable policy."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 text (byte {exc.start}); a policy is a YAML document") from None
    try:
        doc = bounded_load(text, POLICY_BOUNDS)
    except (yaml.YAMLError, InputRefused):
        doc = None
    # Accept either a bare policy document or a ConfigMap manifest that carries one.
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        return policy_from_configmap(doc)
    return parse_policy(text)
