"""The I/O half of ``llmaz-serverless check``: read what the checks need from the API server into ``Facts``.

Every call is bounded (``timeout`` seconds each). A 404 becomes "absent" (None); any other API error is kept
in ``Facts.errors`` under the fact's key, so the judging can say "could not read X" instead of crashing.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .. import constants as C
from ..kube import (CONFIGMAPS, LEASES, NAMESPACES, OPENMODELS, PLAYGROUNDS, SCALEDOBJECTS, SERVICES,
                    INTERCEPTORROUTES, ApiError, Kube, NotFound, Resource)
from ..policy import Policy
from .judge import (HTTP_CRD, KEDA_CRDS, KEDA_DEPLOYMENT, KEDA_LEASE, LLMAZ_CRDS, LWS_CRD, METRICS_APISERVICE,
                    Facts, parse_scaler_address)

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
APISERVICES = Resource("apiregistration.k8s.io", "v1", "apiservices", "APIService", False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
CORE_SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
MWC = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
               "MutatingWebhookConfiguration", False)
VWC = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
               "ValidatingWebhookConfiguration", False)


class Unreachable(Exception):
    """The API server did not answer at all: nothing else can be checked."""


async def _bounded(call: Awaitable[Any], timeout: float) -> Any:
    return await asyncio.wait_for(call, timeout)


async def _get(kube: Kube, facts: Facts, key: str, res: Resource, name: str, namespace: str | None,
               timeout: float) -> dict[str, Any] | None:
    try:
        return await _bounded(kube.get(res, name, namespace), timeout)
    except NotFound:
        return None
    except (ApiError, asyncio.TimeoutError) as exc:
        facts.errors[key] = _describe(exc)
        return None


async def _list(kube: Kube, facts: Facts, key: str, res: Resource, namespace: str | None, timeout: float,
                label_selector: str | None = None) -> list[dict[str, Any]]:
    try:
        return (await _bounded(kube.list(res, namespace, label_selector=label_selector), timeout)).items
    except NotFound:
        return []
    except (ApiError, asyncio.TimeoutError) as exc:
        facts.errors[key] = _describe(exc)
        return []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, ApiError):
        return f"{exc.status} {getattr(exc, 'reason', '')} {getattr(exc, 'message', '')}".strip()
    return str(exc)


async def _slices(kube: Kube, facts: Facts, key: str, namespace: str, service: str,
                  timeout: float) -> list[dict[str, Any]]:
    return await _list(kube, facts, key, ENDPOINTSLICES, namespace, timeout,
                       label_selector=f"kubernetes.io/service-name={service}")


async def gather(kube: Kube, *, keda_namespace: str, policy_ref: str, webhook_config_name: str,
                 timeout: float, policy_for: Callable[[dict[str, Any] | None], Policy]) -> Facts:
    """Collect the facts; ``policy_for`` turns the policy ConfigMap (or None) into the policy to judge with."""
    facts = Facts(keda_namespace=keda_namespace, policy_ref=policy_ref)
    host = getattr(getattr(kube, "config", None), "host", "the server")
    not_kubernetes = (f"is {host} a Kubernetes API server? Check the cluster's server address in the kubeconfig "
                      f"(--kubeconfig, --context)")
    try:
        facts.version = await _bounded(kube.request("GET", "/version", timeout=timeout), timeout)
    except NotFound:
        facts.api_error = f"GET /version answered 404 Not Found: {not_kubernetes}"
        return facts
    except (ApiError, asyncio.TimeoutError) as exc:
        facts.api_error = _describe(exc)
        return facts
    if not isinstance(facts.version, dict) or not isinstance(facts.version.get("gitVersion"), str):
        facts.api_error = f"GET /version did not answer a Kubernetes version: {not_kubernetes}"
        facts.version = None
        return facts

    for name in LLMAZ_CRDS + (LWS_CRD,) + KEDA_CRDS + (HTTP_CRD,):
        facts.crds[name] = await _get(kube, facts, "crd/" + name, CRDS, name, None, timeout)
    facts.apiservice = await _get(kube, facts, "apiservice", APISERVICES, METRICS_APISERVICE, None, timeout)
    facts.keda_deployment = await _get(kube, facts, "keda-deployment", DEPLOYMENTS, KEDA_DEPLOYMENT,
                                       keda_namespace, timeout)
    facts.keda_lease = await _get(kube, facts, "keda-lease", LEASES, KEDA_LEASE, keda_namespace, timeout)

    ns, name = policy_ref.split("/", 1)
    facts.policy_configmap = await _get(kube, facts, "policy", CONFIGMAPS, name, ns, timeout)
    policy = policy_for(facts.policy_configmap)
    s_ns, s_name, _ = parse_scaler_address(policy.http.scalerAddress, keda_namespace)
    facts.scaler_service = await _get(kube, facts, "scaler", CORE_SERVICES, s_name, s_ns, timeout)
    if facts.scaler_service is not None:
        facts.scaler_slices = await _slices(kube, facts, "scaler", s_ns, s_name, timeout)

    for kind, res in (("MutatingWebhookConfiguration", MWC), ("ValidatingWebhookConfiguration", VWC)):
        obj = await _get(kube, facts, kind, res, webhook_config_name, None, timeout)
        facts.webhook_configs[kind] = obj
        for hook in (obj or {}).get("webhooks") or []:
            svc = (hook.get("clientConfig") or {}).get("service") or {}
            if svc.get("name") and svc.get("namespace"):
                facts.webhook_services.setdefault(f"{svc['namespace']}/{svc['name']}", None)
    for key in list(facts.webhook_services):
        s_ns, s_name = key.split("/", 1)
        facts.webhook_services[key] = await _get(kube, facts, "svc/" + key, CORE_SERVICES, s_name, s_ns, timeout)
        facts.webhook_slices[key] = await _slices(kube, facts, "svc/" + key, s_ns, s_name, timeout)

    facts.namespaces = await _list(kube, facts, "namespaces", NAMESPACES, None, timeout,
                                   label_selector=f"{C.NAMESPACE_LABEL}=true")
    for n in facts.namespaces:
        nsn = n["metadata"]["name"]
        for res in (PLAYGROUNDS, SERVICES):
            if facts.crds.get(f"{res.plural}.{res.group}") is not None:
                facts.workloads += await _list(kube, facts, "workloads", res, nsn, timeout)
        if facts.crds.get("scaledobjects.keda.sh") is not None:
            for so in await _list(kube, facts, "workloads", SCALEDOBJECTS, nsn, timeout):
                facts.scaled_objects[f"{nsn}/{so['metadata']['name']}"] = so
        if facts.crds.get(HTTP_CRD) is not None:
            for ir in await _list(kube, facts, "interceptorroutes", INTERCEPTORROUTES, nsn, timeout):
                facts.interceptor_routes[f"{nsn}/{ir['metadata']['name']}"] = ir
    if facts.crds.get("openmodels.llmaz.io") is not None:
        facts.models = await _list(kube, facts, "models", OPENMODELS, None, timeout)
    return facts
