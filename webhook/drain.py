"""Nothing in progress is cut: the drain of a replica that is removed, and the hold that keeps a busy or
loading workload from going to zero. Pure: (annotations, policy) -> settings, problems; settings -> the
shutdown flag, the pod's grace period and preStop, and the ``hold`` trigger of the ScaledObject.

Why both halves are needed:

* KEDA decides N -> 0 on its triggers alone, and a queue trigger counts the queue, not the jobs already taken
  off it; an HTTP trigger forgets a client that gave up while the model was loading. The **hold** trigger
  reads the model server's own gauges (requests running + waiting) and the count of its pods that do not
  answer yet, so KEDA sees the workload as active while it is busy or loading. It is bounded: a busy signal
  counts only while the server makes progress (generated tokens moved within ``stuckAfter`` seconds), and a
  pod counts as loading only during its first ``loadTimeout`` seconds, so a stuck or absent metric never pins
  GPUs. Without Prometheus (``holdWhileBusy: false``) there is no hold and the drain alone protects requests.
* The HPA (N -> N-1) and KEDA (1 -> 0) both end by deleting pods. The **drain** makes that deletion wait for
  the work on the pod: a ``preStop`` sleep lets endpoints drop the pod before the server hears SIGTERM, the
  server's shutdown flag (vLLM ``--shutdown-timeout``) rejects new requests and finishes the ones in flight,
  and ``terminationGracePeriodSeconds`` covers both, so the kubelet does not SIGKILL a draining server.

vLLM semantics (vllm-project/vllm #34730, re-applied as #36666, in v0.18.0+): ``--shutdown-timeout=0`` (the
default) aborts in-flight requests on SIGTERM; ``--shutdown-timeout=N`` rejects new requests and waits up to N
seconds for in-flight ones. The relation ``terminationGracePeriodSeconds >= preStop + --shutdown-timeout`` is
vLLM's Kubernetes guide (vllm-project/vllm #43208) and KServe's LLMInferenceService (kserve/kserve #5496).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import constants as C
from .errors import Problem

# Seconds the kubelet is given beyond preStop + drain before it may SIGKILL (process exit, last flush).
GRACE_MARGIN = 5
# The trigger name reserved in every ScaledObject that carries the hold.
HOLD_TRIGGER = "llmaz-hold"
# A target no sum of busy requests reaches: the hold only makes the workload *active* (keeps it above
# zero), its metric never asks the HPA for more than one replica (desired = ceil(value / target) = 1).
HOLD_TARGET = 1_000_000
# Environment variables written into the model container of a managed workload (through the Playground's
# backendRuntimeConfig.envs, which llmaz copies into the pod): they mark a pod as ours and carry its drain.
ENV_DRAIN_TIMEOUT = "LLMAZ_SERVERLESS_DRAIN_TIMEOUT"
ENV_PRESTOP = "LLMAZ_SERVERLESS_PRESTOP_SECONDS"
VLLM_SHUTDOWN_FLAG = "--shutdown-timeout"
# Pods created by LeaderWorkerSet (llmaz's workload) carry this label; the pod webhook matches on it.
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"

_SECONDS = re.compile(r"^(\d+)(s|m|h)?$")


class DrainPolicy(BaseModel):
    """The ``drain`` section of the cluster policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: int = Field(default=120, ge=0, description="seconds in-flight requests get after SIGTERM")
    maxTimeout: int = Field(default=1800, ge=0, description="no workload may ask for a longer drain")
    preStopSeconds: int = Field(default=5, ge=0, le=300,
                                description="pause before SIGTERM while endpoints drop the pod")
    holdWhileBusy: bool = Field(default=True, description="hold N -> 0 while the model is busy or loading "
                                "(needs Prometheus scraping the model servers)")
    stuckAfter: int = Field(default=120, ge=5, le=86400,
                            description="a busy signal without a generated token for this long is stuck")
    loadTimeout: int = Field(default=900, ge=5, le=86400,
                             description="a pod counts as loading for at most this long")
    exitWindow: int = Field(default=120, ge=5, le=3600,
                            description="a pod that answered less than this ago and stops is exiting, not loading")

    @model_validator(mode="after")
    def _coherent(self) -> "DrainPolicy":
        if self.timeout > self.maxTimeout:
            raise ValueError(f"drain.timeout ({self.timeout}) is above drain.maxTimeout ({self.maxTimeout})")
        return self


@dataclass(frozen=True)
class Drain:
    """The resolved drain and hold of one workload."""

    timeout: int
    pre_stop: int
    hold: bool
    stuck_after: int
    load_timeout: int
    max_request: int | None = None
    exit_window: int = 120

    @property
    def grace_period(self) -> int:
        """terminationGracePeriodSeconds: preStop + drain + a margin, so the kubelet never kills a drain."""
        return self.pre_stop + self.timeout + GRACE_MARGIN

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"timeout": self.timeout, "preStop": self.pre_stop,
                               "terminationGracePeriodSeconds": self.grace_period, "hold": self.hold}
        if self.hold:
            doc.update(stuckAfter=self.stuck_after, loadTimeout=self.load_timeout)
        if self.max_request is not None:
            doc["maxRequestDuration"] = self.max_request
        return doc


def _seconds(ann: dict[str, str], key: str, hi: int, problems: list[Problem]) -> int | None:
    if key not in ann:
        return None
    raw = str(ann[key]).strip()
    m = _SECONDS.match(raw)
    if not m:
        problems.append(Problem(key, f"{raw!r} is not a number of seconds",
                                "write seconds (90) or a duration in s, m or h (90s, 5m, 1h)"))
        return None
    value = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value > hi:
        problems.append(Problem(key, f"{raw} is out of range", f"allowed: 0 to {hi} seconds"))
        return None
    return value


def resolve(ann: dict[str, str], policy: DrainPolicy, problems: list[Problem]) -> Drain | None:
    """Drain settings from the workload's annotations and the policy; problems are appended, None if any."""
    before = len(problems)
    timeout = _seconds(ann, C.ANN_DRAIN_TIMEOUT, 7 * 86400, problems)
    longest = _seconds(ann, C.ANN_MAX_REQUEST, 7 * 86400, problems)
    if len(problems) > before:
        return None
    if timeout is not None and timeout > policy.maxTimeout:
        problems.append(Problem(C.ANN_DRAIN_TIMEOUT, f"{timeout} s is longer than this cluster allows "
                                f"({policy.maxTimeout} s, policy drain.maxTimeout): a replica being removed "
                                "would hold its GPU that long", f"write at most {policy.maxTimeout}s"))
        return None
    effective = policy.timeout if timeout is None else timeout
    if longest is not None and effective < longest:
        source = "annotation" if timeout is not None else "policy drain.timeout"
        if longest > policy.maxTimeout:
            fix = (f"requests longer than {policy.maxTimeout} s (policy drain.maxTimeout) cannot be drained "
                   f"here: shorten them, or lower {C.ANN_MAX_REQUEST}")
        else:
            fix = f"set {C.ANN_DRAIN_TIMEOUT} to at least {longest}s (at most {policy.maxTimeout}s)"
        problems.append(Problem(C.ANN_DRAIN_TIMEOUT if timeout is not None else C.ANN_MAX_REQUEST,
                                f"the drain timeout ({effective} s, from the {source}) is shorter than the "
                                f"longest request this workload declares ({C.ANN_MAX_REQUEST}: {longest} s): "
                                "such a request would be cut when its replica is removed", fix))
        return None
    return Drain(timeout=effective, pre_stop=policy.preStopSeconds, hold=policy.holdWhileBusy,
                 stuck_after=policy.stuckAfter, load_timeout=policy.loadTimeout, max_request=longest,
                 exit_window=policy.exitWindow)


# ---------------------------------------------------------------------------------------------- the hold

# (busy gauges, progress counter) per backend; the hold is built only for backends listed here.
_HOLD_SERIES = {
    "vllm": (("vllm:num_requests_running", "vllm:num_requests_waiting"), "vllm:generation_tokens_total"),
    "llamacpp": (("llamacpp:requests_processing", "llamacpp:requests_deferred"), "llamacpp:tokens_predicted_total"),
}


def hold_supported(backend: str) -> bool:
    return backend in _HOLD_SERIES


def hold_query(name: str, namespace: str, backend: str, drain: Drain, namespace_label: str, pod_label: str) -> str:
    """PromQL: requests running + waiting while tokens move, plus the workload's pods that do not answer yet.

    * busy, bounded: ``(sum(running) + sum(waiting)) and on() (sum(increase(tokens[stuckAfter])) > 0)``: the
      gauges count only while the server generated a token within ``stuckAfter`` seconds, so a gauge stuck
      above zero (a hung engine, a lost decrement) stops holding ``stuckAfter`` after the last token; a gauge
      the server does not export counts as 0 (``sum(g) or on() vector(0)``), so one missing gauge (another
      version of the engine) does not silence the other;
    * loading, bounded: ``count(up == 0 unless max_over_time(up[E]) > 0 unless (max_over_time(up[L]) == 0
      and up offset L))`` with ``E = exitWindow``, ``L = loadTimeout``: pods that Prometheus scrapes but that
      do not answer (vLLM listens only once the weights are loaded), minus those that answered within ``E``
      (a pod that served and stops answering is exiting: Prometheus keeps scraping a deleted pod until its
      discovery drops the target, a few seconds normally, 27 s seen on a loaded two-core machine), minus
      those that were already scraped ``L`` ago and have not answered once since, so a pod that never comes
      up stops holding ``L`` after its first scrape. Series are matched on all their labels (pod *and*
      address): a new pod that reuses the name of one gone a moment ago, as LeaderWorkerSet's pods do on every
      cold start, is judged on its own series unless it also got the same IP within ``E`` of the old one's last
      answer (a scrape that adds the pod's UID as a label makes every pod a series of its own);
    * absent series count as 0 (``or on() vector(0)``): a workload whose pods are gone is never held.
    """
    gauges, progress = _HOLD_SERIES[backend]
    pods = re.escape(name).replace("\\-", "-") + "-[0-9]+(-[0-9]+)?"
    sel = f'{{{namespace_label}="{namespace}",{pod_label}=~"{pods}"}}'
    busy = " + ".join(f"(sum({g}{sel}) or on() vector(0))" for g in gauges)
    bounded = f"(({busy}) and on() (sum(increase({progress}{sel}[{drain.stuck_after}s])) > 0))"
    window, exiting = f"{drain.load_timeout}s", f"{drain.exit_window}s"
    loading = (f"count(up{sel} == 0 unless max_over_time(up{sel}[{exiting}]) > 0 "
               f"unless (max_over_time(up{sel}[{window}]) == 0 and up{sel} offset {window}))")
    return f"({bounded} or on() vector(0)) + ({loading} or on() vector(0))"


def hold_trigger(name: str, namespace: str, backend: str, drain: Drain, prometheus: Any) -> dict[str, Any]:
    """The KEDA trigger that keeps a busy or loading workload active (never scales it out)."""
    trigger: dict[str, Any] = {
        "type": "prometheus",
        "name": HOLD_TRIGGER,
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": prometheus.serverAddress,
            "query": hold_query(name, namespace, backend, drain, prometheus.namespaceLabel, prometheus.podLabel),
            "threshold": str(HOLD_TARGET),
            "activationThreshold": "0",
            "ignoreNullValues": "true",
        },
    }
    if prometheus.authRef:
        trigger["authenticationRef"] = {"name": prometheus.authRef, "kind": "TriggerAuthentication"}
    return trigger


# ---------------------------------------------------------------------------------------------- the drain

def shutdown_args(args: list[Any], backend: str, timeout: int) -> tuple[list[Any], str | None]:
    """``args`` with the backend's drain flag set to ``timeout``; and the user's own value, if it differed.

    Only vLLM has a drain flag known here; for other backends the args are returned unchanged."""
    if backend != "vllm":
        return list(args), None
    out: list[Any] = []
    previous: str | None = None
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if isinstance(a, str) and a == VLLM_SHUTDOWN_FLAG:
            previous = str(args[i + 1]) if i + 1 < len(args) else ""
            skip = True
            continue
        if isinstance(a, str) and a.startswith(VLLM_SHUTDOWN_FLAG + "="):
            previous = a.split("=", 1)[1]
            continue
        out.append(a)
    out.append(f"{VLLM_SHUTDOWN_FLAG}={timeout}")
    return out, (previous if previous is not None and previous != str(timeout) else None)


def drain_envs(envs: list[Any], drain: Drain) -> list[Any]:
    """``envs`` with our two markers set (other entries untouched, order kept)."""
    ours = {ENV_DRAIN_TIMEOUT: str(drain.timeout), ENV_PRESTOP: str(drain.pre_stop)}
    out = [e for e in envs if not (isinstance(e, dict) and e.get("name") in ours)]
    out.extend({"name": k, "value": v} for k, v in ours.items())
    return out


def pod_drain(pod: dict[str, Any]) -> tuple[int, int] | None:
    """(drain timeout, preStop seconds) when ``pod`` is a model pod of a managed workload, else None.

    A pod is ours only when it was made by LeaderWorkerSet and one of its containers carries both markers that
    the webhook wrote into the Playground (llmaz copies backendRuntimeConfig.envs into the container)."""
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    if LWS_NAME_LABEL not in labels:
        return None
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    for ctr in spec.get("containers") or []:
        if not isinstance(ctr, dict):
            continue
        env = {e.get("name"): e.get("value") for e in ctr.get("env") or [] if isinstance(e, dict)}
        t, p = env.get(ENV_DRAIN_TIMEOUT), env.get(ENV_PRESTOP)
        if isinstance(t, str) and t.isdigit() and isinstance(p, str) and p.isdigit():
            return int(t), int(p)
    return None


def mutate_pod(pod: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``pod`` with the grace period and preStop its drain needs; unchanged if it is not ours.

    Narrow on purpose: only ``spec.terminationGracePeriodSeconds`` (raised, never lowered) and a ``preStop``
    sleep on the containers that carry the markers (an existing preStop of the user is kept)."""
    found = pod_drain(pod)
    if found is None:
        return pod, []
    timeout, pre_stop = found
    grace = pre_stop + timeout + GRACE_MARGIN
    out = dict(pod)
    spec = out["spec"] = dict(out["spec"])
    notes = []
    current = spec.get("terminationGracePeriodSeconds")
    if not isinstance(current, int) or isinstance(current, bool) or current < grace:
        spec["terminationGracePeriodSeconds"] = grace
    containers = []
    for ctr in spec.get("containers") or []:
        if isinstance(ctr, dict) and any(isinstance(e, dict) and e.get("name") == ENV_DRAIN_TIMEOUT
                                         for e in ctr.get("env") or []) and pre_stop > 0:
            lifecycle = ctr.get("lifecycle") if isinstance(ctr.get("lifecycle"), dict) else {}
            if "preStop" in lifecycle:
                notes.append(f"container {ctr.get('name')}: its own preStop is kept")
            else:
                ctr = dict(ctr)
                ctr["lifecycle"] = {**lifecycle, "preStop": {"sleep": {"seconds": pre_stop}}}
        containers.append(ctr)
    spec["containers"] = containers
    return out, notes
