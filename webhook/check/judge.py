"""The judging half of ``llmaz-serverless check``: pure functions from gathered facts to check results.

Everything the cluster said is first collected into a ``Facts`` (see ``gather.py``, the only part that does
I/O); each ``judge_*`` function here reads those facts and returns ``Result`` lines, so every verdict and every
fix text is unit-tested with hand-made fact sets.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from .. import constants as C
from ..errors import Denied
from ..keda import desired_objects
from ..learn import StateError, decode
from ..kube import conditions, parse_time
from ..models import ModelCatalog
from ..policy import Policy
from ..readiness import workload_readiness_warning
from ..settings import Analysis, analyze
from ..spelling import misspelt_annotations

OK, WARN, FAIL = "ok", "warn", "fail"

LLMAZ_CRDS = ("playgrounds.inference.llmaz.io", "services.inference.llmaz.io",
              "backendruntimes.inference.llmaz.io", "openmodels.llmaz.io")
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
# The KEDA operator exits at start unless all six of its CRDs are installed.
KEDA_CRDS = ("scaledobjects.keda.sh", "scaledjobs.keda.sh", "triggerauthentications.keda.sh",
             "clustertriggerauthentications.keda.sh", "cloudeventsources.eventing.keda.sh",
             "clustercloudeventsources.eventing.keda.sh")
HTTP_CRD = "interceptorroutes.http.keda.sh"
METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"
# The KEDA operator's leader-election Lease (LeaderElectionID in kedacore/keda cmd/operator/main.go); it
# exists only when the operator runs with --leader-elect (off by default in the binary, on in the Helm chart).
KEDA_LEASE = "operator.keda.sh"
KEDA_DEPLOYMENT = "keda-operator"


@dataclass(frozen=True)
class Result:
    group: str
    name: str
    status: str                 # ok | warn | fail
    detail: str = ""
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"group": self.group, "check": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix}


@dataclass
class Facts:
    """What the cluster answered. ``None`` means "absent" (404); a string in ``errors`` means "could not read"."""

    version: dict[str, Any] | None = None
    api_error: str | None = None
    crds: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    apiservice: dict[str, Any] | None = None
    keda_namespace: str = "keda"
    keda_deployment: dict[str, Any] | None = None
    keda_lease: dict[str, Any] | None = None
    scaler_service: dict[str, Any] | None = None
    scaler_slices: list[dict[str, Any]] = field(default_factory=list)
    policy_ref: str = ""
    policy_configmap: dict[str, Any] | None = None
    webhook_configs: dict[str, dict[str, Any] | None] = field(default_factory=dict)   # kind -> object
    webhook_slices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)      # "ns/name" -> slices
    webhook_services: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    namespaces: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    scaled_objects: dict[str, dict[str, Any]] = field(default_factory=dict)      # "ns/name" -> object
    interceptor_routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)                         # fact -> why unreadable
    now: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))


# ------------------------------------------------------------------------------------------------ helpers

def served_versions(crd: dict[str, Any]) -> list[str]:
    return [v.get("name", "?") for v in (crd.get("spec") or {}).get("versions") or [] if v.get("served")]


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for v in (crd.get("spec") or {}).get("versions") or []:
        if v.get("name") == version:
            return ((v.get("schema") or {}).get("openAPIV3Schema") or {})
    return {}


def ready_endpoints(slices: list[dict[str, Any]]) -> int:
    """Addresses whose ``conditions.ready`` is true or unset (unset means ready, per discovery.k8s.io/v1)."""
    n = 0
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is not False:
                n += len(ep.get("addresses") or [])
    return n


def parse_scaler_address(address: str, default_namespace: str) -> tuple[str, str, str]:
    """``host[.ns[.svc...]]:port`` -> (namespace, service, port)."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    labels = host.split(".")
    return (labels[1] if len(labels) > 1 else default_namespace), labels[0], port


def _unreadable(facts: Facts, key: str, group: str, name: str) -> Result | None:
    if key in facts.errors:
        return Result(group, name, FAIL, f"could not read: {facts.errors[key]}",
                      "grant the user running check read access (get/list) to it, or run check as cluster-admin")
    return None


# ----------------------------------------------------------------------------------------------- judges

def judge_api(f: Facts) -> list[Result]:
    if f.api_error:
        return [Result("kubernetes", "API server reachable", FAIL, f.api_error,
                       "check --kubeconfig/--context, that the API server runs and that your credentials are valid")]
    v = f.version or {}
    return [Result("kubernetes", "API server reachable", OK, f"version {v.get('gitVersion', 'unknown')}")]


def _crd_line(f: Facts, group: str, name: str, fix: str, severity: str = FAIL) -> Result:
    bad = _unreadable(f, "crd/" + name, group, f"CRD {name}")
    if bad:
        return bad
    crd = f.crds.get(name)
    if crd is None:
        return Result(group, f"CRD {name}", severity, "not installed", fix)
    est = conditions(crd).get("Established", {}).get("status")
    if est not in (None, "True"):
        return Result(group, f"CRD {name}", FAIL, "installed but not Established",
                      f"kubectl describe crd {name} (names conflict or schema rejected)")
    return Result(group, f"CRD {name}", OK, "served: " + (", ".join(served_versions(crd)) or "none"))


def judge_llmaz(f: Facts) -> list[Result]:
    fix = "install llmaz (helm install llmaz oci://registry-1.docker.io/inftyai/llmaz, see docs/deploy.md)"
    out = [_crd_line(f, "llmaz", n, fix) for n in LLMAZ_CRDS]
    svc = f.crds.get("services.inference.llmaz.io")
    if svc is not None:
        props = (crd_schema(svc, C.LLMAZ_VERSION).get("properties") or {}).get("spec", {}).get("properties") or {}
        if "replicas" in props:
            out.append(Result("llmaz", "Service spec.replicas", OK,
                              "present: standalone Services can be scaled through /scale"))
        else:
            out.append(Result("llmaz", "Service spec.replicas", WARN,
                              "absent (llmaz v0.1.1 and older): only Playgrounds can be scaled",
                              "upgrade llmaz to v0.1.4 or newer to autoscale standalone Services"))
    out.append(_crd_line(f, "llmaz", LWS_CRD, "install LeaderWorkerSet (llmaz's Helm chart installs it by default)"))
    return out


def _lease_fresh(lease: dict[str, Any], now: _dt.datetime) -> tuple[bool, str]:
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    renew = parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 15
    if not holder or renew is None:
        return False, "Lease has no holder"
    age = (now - renew).total_seconds()
    if age > float(duration):
        return False, f"Lease held by {holder} but last renewed {age:.0f}s ago (duration {duration}s)"
    return True, f"Lease {KEDA_LEASE} held by {holder}, renewed {max(age, 0):.0f}s ago"


def judge_keda(f: Facts) -> list[Result]:
    fix = "install KEDA (helm install keda kedacore/keda -n keda --create-namespace); it needs all six CRDs"
    out = [_crd_line(f, "keda", n, fix) for n in KEDA_CRDS]
    seen: list[str] = []
    running = False
    dep = f.keda_deployment
    if dep is not None:
        st = dep.get("status") or {}
        ready = int(st.get("readyReplicas") or 0)
        seen.append(f"Deployment {f.keda_namespace}/{KEDA_DEPLOYMENT}: {ready} ready")
        running = running or ready > 0
    if f.keda_lease is not None:
        fresh, why = _lease_fresh(f.keda_lease, f.now)
        seen.append(why)
        running = running or fresh
    if running:
        out.append(Result("keda", "KEDA operator running", OK, "; ".join(seen)))
    else:
        out.append(Result("keda", "KEDA operator running", FAIL,
                          "; ".join(seen) or f"neither Deployment {f.keda_namespace}/{KEDA_DEPLOYMENT} nor "
                          f"Lease {f.keda_namespace}/{KEDA_LEASE} found",
                          f"kubectl -n {f.keda_namespace} get pods; kubectl -n {f.keda_namespace} logs "
                          f"deploy/{KEDA_DEPLOYMENT} (or pass --keda-namespace)"))
    api = f.apiservice
    bad = _unreadable(f, "apiservice", "keda", f"APIService {METRICS_APISERVICE}")
    if bad:
        out.append(bad)
    elif api is None:
        out.append(Result("keda", f"APIService {METRICS_APISERVICE}", FAIL,
                          "absent: the HPA cannot read KEDA metrics, so nothing scales from 1 to N",
                          "install KEDA's metrics API server (part of the KEDA Helm chart)"))
    else:
        cond = conditions(api).get("Available", {})
        if cond.get("status") == "True":
            out.append(Result("keda", f"APIService {METRICS_APISERVICE}", OK, "Available"))
        else:
            out.append(Result("keda", f"APIService {METRICS_APISERVICE}", FAIL,
                              f"not Available: {cond.get('reason', 'no condition')} {cond.get('message', '')}".strip(),
                              f"kubectl -n {f.keda_namespace} logs deploy/keda-operator-metrics-apiserver"))
    return out


def judge_http(f: Facts, policy: Policy, needed: bool) -> list[Result]:
    out: list[Result] = []
    sev = FAIL if needed else WARN
    why = "some managed workload uses the http trigger" if needed else "no managed workload uses http yet"
    crd = f.crds.get(HTTP_CRD)
    if HTTP_CRD in f.errors:
        out.append(_crd_line(f, "http add-on", HTTP_CRD, ""))
    elif crd is None:
        out.append(Result("http add-on", f"CRD {HTTP_CRD}", sev, f"not installed ({why})",
                          "install the KEDA HTTP add-on (helm install http-add-on kedacore/keda-add-ons-http -n keda)"))
    elif "v1beta1" not in served_versions(crd):
        out.append(Result("http add-on", f"CRD {HTTP_CRD}", sev,
                          "served: " + ", ".join(served_versions(crd)) + "; v1beta1 needed",
                          "upgrade the KEDA HTTP add-on to a release that serves InterceptorRoute v1beta1"))
    else:
        out.append(Result("http add-on", f"CRD {HTTP_CRD}", OK, "served: v1beta1"))
    address = policy.http.scalerAddress
    ns, name, port = parse_scaler_address(address, f.keda_namespace)
    label = f"external scaler {address}"
    if "scaler" in f.errors:
        out.append(Result("http add-on", label, sev, f"could not read Service {ns}/{name}: {f.errors['scaler']}"))
    elif f.scaler_service is None:
        out.append(Result("http add-on", label, sev, f"Service {ns}/{name} not found ({why})",
                          "install the HTTP add-on, or set http.scalerAddress in the policy to its scaler Service"))
    elif ready_endpoints(f.scaler_slices) == 0:
        out.append(Result("http add-on", label, sev, f"Service {ns}/{name} has no ready endpoints",
                          f"kubectl -n {ns} get pods; kubectl -n {ns} describe svc {name}"))
    else:
        out.append(Result("http add-on", label, OK,
                          f"Service {ns}/{name}: {ready_endpoints(f.scaler_slices)} ready endpoint(s), port {port}"))
    return out


def judge_policy(f: Facts, policy: Policy | None, error: str | None) -> list[Result]:
    name = f"policy ConfigMap {f.policy_ref}"
    bad = _unreadable(f, "policy", "llmaz-serverless", name)
    if bad:
        return [bad]
    if f.policy_configmap is None:
        return [Result("llmaz-serverless", name, WARN, "absent: the built-in default policy is in force",
                       "kubectl apply -f deploy/manifests/llmaz-serverless.yaml (or pass --policy-configmap)")]
    if error:
        return [Result("llmaz-serverless", name, FAIL, error,
                       f"fix policy.yaml in {f.policy_ref} (the webhook keeps its last good policy meanwhile); "
                       "try it offline with `llmaz-serverless preview --policy FILE`")]
    return [Result("llmaz-serverless", name, OK, "valid")]


def judge_webhooks(f: Facts) -> list[Result]:
    out: list[Result] = []
    for kind, obj in f.webhook_configs.items():
        bad = _unreadable(f, kind, "llmaz-serverless", kind)
        if bad:
            out.append(bad)
            continue
        if obj is None:
            out.append(Result("llmaz-serverless", kind, FAIL, "not found",
                              "kubectl apply -f deploy/manifests/llmaz-serverless.yaml"))
            continue
        hooks = obj.get("webhooks") or []
        empty = [h.get("name", "?") for h in hooks if not (h.get("clientConfig") or {}).get("caBundle")]
        if not hooks:
            out.append(Result("llmaz-serverless", kind, FAIL, "has no webhooks",
                              "re-apply deploy/manifests/llmaz-serverless.yaml"))
        elif empty:
            out.append(Result("llmaz-serverless", kind, FAIL, "empty caBundle on " + ", ".join(empty),
                              "the webhook fills it at start with --cert-mode=self-managed; otherwise inject "
                              "the CA (cert-manager ca-injector) - see docs/deploy.md"))
        else:
            out.append(Result("llmaz-serverless", kind, OK, f"{len(hooks)} webhook(s), caBundle set"))
    for key, svc in f.webhook_services.items():
        label = f"webhook Service {key}"
        if svc is None:
            out.append(Result("llmaz-serverless", label, FAIL, "not found",
                              "kubectl apply -f deploy/manifests/llmaz-serverless.yaml"))
        elif ready_endpoints(f.webhook_slices.get(key, [])) == 0:
            ns, name = key.split("/", 1)
            out.append(Result("llmaz-serverless", label, FAIL,
                              "no ready endpoints: with failurePolicy Ignore, workloads are admitted unmanaged",
                              f"kubectl -n {ns} get pods -l app.kubernetes.io/name=llmaz-serverless; "
                              f"kubectl -n {ns} describe svc {name}"))
        else:
            out.append(Result("llmaz-serverless", label, OK,
                              f"{ready_endpoints(f.webhook_slices.get(key, []))} ready endpoint(s)"))
    return out


def opted_in(f: Facts) -> list[str]:
    return sorted(n["metadata"]["name"] for n in f.namespaces
                  if ((n.get("metadata") or {}).get("labels") or {}).get(C.NAMESPACE_LABEL) == "true")


def judge_namespaces(f: Facts) -> list[Result]:
    bad = _unreadable(f, "namespaces", "workloads", "opted-in namespaces")
    if bad:
        return [bad]
    names = opted_in(f)
    if not names:
        return [Result("workloads", "opted-in namespaces", FAIL, f"no namespace has {C.NAMESPACE_LABEL}=true",
                       f"kubectl label namespace NAME {C.NAMESPACE_LABEL}=true")]
    return [Result("workloads", "opted-in namespaces", OK, ", ".join(names))]


def analyse_workloads(f: Facts, policy: Policy) -> list[tuple[dict[str, Any], Any, Any, str | None]]:
    """(workload, analysis, desired, denial) for each workload in an opted-in namespace."""
    models = ModelCatalog(f.models)
    out = []
    ns_in = set(opted_in(f))
    for w in f.workloads:
        if (w.get("metadata") or {}).get("namespace") not in ns_in:
            continue
        try:
            an = analyze(w, policy, models)
        except Exception as exc:  # noqa: BLE001 - one unforeseen object is a finding, never the end of check
            an = Analysis(kind=str(w.get("kind") or ""), name="", namespace="", managed=True)
            out.append((w, an, None, f"its settings could not be read ({type(exc).__name__})"))
            continue
        desired, denial = None, None
        if an.managed:
            try:
                desired = desired_objects(w, policy, models)
            except Denied as d:
                denial = d.message
            except Exception as exc:  # noqa: BLE001 - as above
                denial = f"its KEDA objects could not be built ({type(exc).__name__})"
        out.append((w, an, desired, denial))
    return out


def judge_workloads(f: Facts, analysed: list[tuple[dict[str, Any], Any, Any, str | None]]) -> list[Result]:
    out: list[Result] = []
    for w, an, desired, denial in analysed:
        meta = w.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        label = f"{w.get('kind')} {key}"
        replicas = (w.get("spec") or {}).get("replicas", 1)
        if not an.managed:
            out.append(Result("workloads", label, OK, f"not managed ({an.skip_reason})"))
            continue
        so = f.scaled_objects.get(key)
        so_ready = so is not None and conditions(so).get("Ready", {}).get("status") == "True"
        if replicas == 0 and not so_ready:
            out.append(Result("workloads", label, FAIL,
                              "stranded at zero: 0 replicas and no Ready ScaledObject can wake it",
                              f"kubectl -n {meta.get('namespace')} scale {w.get('kind', '').lower()} "
                              f"{meta.get('name')} --replicas=1, then fix the ScaledObject (see below)"))
        if denial and so is not None:
            # Admitted once (webhook off, or before the rules tightened): the reconciler leaves its KEDA
            # objects at the last good settings and quarantines it; say so, never change it silently.
            out.append(Result("workloads", label, FAIL, f"refused by the current rules, so its ScaledObject keeps "
                              f"the last good settings and no edit takes effect: {denial}",
                              "fix the serverless.llmaz.io/* annotations (see docs/api.md and docs/security.md), "
                              "or ask the cluster admin to widen the policy"))
            continue
        if denial:
            out.append(Result("workloads", label, FAIL, f"settings invalid: {denial}",
                              "fix the serverless.llmaz.io/* annotations (see docs/api.md)"))
            continue
        if so is None:
            out.append(Result("workloads", label, FAIL, "no ScaledObject",
                              "check that llmaz-serverless runs (its reconciler creates it); see its logs and "
                              "the workload's Events"))
            continue
        owners = [o for o in (so.get("metadata") or {}).get("ownerReferences") or []
                  if o.get("uid") == meta.get("uid") and o.get("controller")]
        if not owners:
            out.append(Result("workloads", label, WARN, f"ScaledObject {key} is not owned by the workload",
                              "delete it; llmaz-serverless recreates it with an ownerReference"))
        ready = conditions(so).get("Ready", {})
        if ready.get("status") != "True":
            out.append(Result("workloads", label, FAIL,
                              f"ScaledObject {key} not Ready: {ready.get('reason', 'no Ready condition')} "
                              f"{ready.get('message', '')}".strip(),
                              f"kubectl -n {meta.get('namespace')} describe scaledobject {meta.get('name')}"))
        elif desired is not None and desired.interceptor_route is not None and key not in f.interceptor_routes:
            out.append(Result("workloads", label, FAIL, "uses http but has no InterceptorRoute",
                              "check that the HTTP add-on CRD is installed and llmaz-serverless runs"))
        elif owners:
            out.append(Result("workloads", label, OK, f"ScaledObject Ready; replicas {replicas}"))
    if not analysed and not f.errors.get("workloads"):
        out.append(Result("workloads", "managed workloads", OK, "none yet in opted-in namespaces"))
    elif "workloads" in f.errors:
        out.append(Result("workloads", "managed workloads", FAIL, f"could not list: {f.errors['workloads']}",
                          "grant list on playgrounds/services/scaledobjects to the user running check"))
    return out


def judge_advice(f: Facts, analysed: list[tuple[dict[str, Any], Any, Any, str | None]],
                 policy: Policy) -> list[Result]:
    """Warnings about managed workloads that work but not as meant: misspelt annotations (ignored, see
    webhook.spelling), and an http readiness timeout shorter than the model's load, which makes every cold
    start end in 504 (see webhook.readiness)."""
    models = ModelCatalog(f.models)
    out = []
    for w, an, _, denial in analysed:
        if an.managed:   # stored before misspelt keys were reported at admission, or admitted with a warning
            meta = w.get("metadata") or {}
            for finding in misspelt_annotations(meta.get("annotations") or {}):
                out.append(Result("workloads", f"{w.get('kind')} {meta.get('namespace')}/{meta.get('name')}",
                                  WARN, finding.warning(), "fix the annotation key (see docs/api.md)"))
        if not an.managed or denial or an.settings is None:
            continue
        text = workload_readiness_warning(w, an.settings, policy, models)
        if text:
            meta = w.get("metadata") or {}
            out.append(Result("workloads", f"{w.get('kind')} {meta.get('namespace')}/{meta.get('name')}", WARN,
                              text, "set readinessTimeout in the http trigger, or http.readinessTimeout in the "
                              "policy, above the model's load (docs/api.md)"))
    return out


def judge_learned(f: Facts, analysed: list[tuple[dict[str, Any], Any, Any, str | None]]) -> list[Result]:
    """One line per workload with ``keep-alive: learned``: what the reconciler learned (the workload's
    ``serverless.llmaz.io/learned``), the cooldown in force, and whether the stored state can be read."""
    out = []
    for w, an, _, denial in analysed:
        s = an.settings
        if not an.managed or denial or s is None or s.keep_alive != "learned" or s.min_replicas > 0:
            continue
        meta = w.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        label = f"{w.get('kind')} {key}"
        so = f.scaled_objects.get(key)
        if so is None:
            continue                                   # judge_workloads says so
        text = ((so.get("metadata") or {}).get("annotations") or {}).get(C.ANN_LEARNED_STATE)
        shown = (meta.get("annotations") or {}).get(C.ANN_LEARNED) or "nothing decided yet"
        cooldown = (so.get("spec") or {}).get("cooldownPeriod")
        if text:
            try:
                decode(str(text))
            except StateError as exc:
                out.append(Result("learning", label, WARN, f"stored learned state unreadable ({exc}); the policy "
                                  f"settings apply (cooldownPeriod {cooldown}) while it learns afresh",
                                  "nothing to do: the reconciler replaces it; see the workload's Events"))
                continue
        else:
            shown = "no idle time seen yet; policy settings apply"
        out.append(Result("learning", label, OK, f"keep-alive: learned: {shown}; cooldownPeriod {cooldown}"))
    return out


def judge_all(f: Facts, policy: Policy, policy_error: str | None) -> list[Result]:
    """Every check, in the order they are printed. After an unreachable API server nothing else is judged."""
    results = judge_api(f)
    if f.api_error:
        return results
    results += judge_llmaz(f)
    results += judge_keda(f)
    analysed = analyse_workloads(f, policy)
    needs_http = any(d is not None and d.interceptor_route is not None for _, _, d, _ in analysed)
    results += judge_http(f, policy, needs_http)
    results += judge_policy(f, policy, policy_error)
    results += judge_webhooks(f)
    results += judge_namespaces(f)
    results += judge_workloads(f, analysed)
    results += judge_learned(f, analysed)
    results += judge_advice(f, analysed, policy)
    return results
