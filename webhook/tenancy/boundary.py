"""The tenant boundary: what a namespace's workloads may make the KEDA operator reach, and as whom.

Anyone who may create a Playground in an opted-in namespace writes triggers that our ServiceAccount turns
into KEDA objects; the KEDA operator then connects to the addresses in them, from its own network position,
with whatever credentials the trigger names. So each reference a tenant writes is checked against what the
policy (``tenancy``) grants that namespace. Defaults are narrow and an admin widens them:

- trigger types: every preset except ``raw``;
- ClusterTriggerAuthentications: none (cluster-wide credentials are the admin's, lent by name per namespace);
- addresses, per KEDA scaler type: services of the tenant's own namespace (``<svc>.<namespace>[.svc...]``),
  the policy's own Prometheus, and the AWS SQS endpoints; nothing else;
- loopback, link-local (cloud metadata), unspecified and numeric-trick addresses and the Kubernetes API
  server are refused whatever a pattern says;
- the operator's own cloud identity (``identityOwner: operator``, an AWS trigger without credentials):
  nowhere;
- addresses read from the workload's environment (``hostFromEnv`` ...): nowhere (we cannot see the value);
- HTTP host names: ``<name>.<namespace>`` and ``<name>.<namespace>.svc``; ``*`` never.

Only what the tenant wrote (the ``triggers`` annotation) is checked; triggers from the policy's defaults and
profiles are the admin's own and trusted. Pure: (presets, workload, policy) -> problems.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import Problem
from ..triggers import (AuthRef, HTTPTrigger, KafkaTrigger, NATSJetStreamTrigger, Preset, QueueDepthTrigger,
                        RabbitMQTrigger, RawTrigger, RedisStreamsTrigger, RedisTrigger, SQSTrigger, _auth)

PRESET_TYPES = ("http", "queue-depth", "redis", "redis-streams", "rabbitmq", "kafka", "nats-jetstream", "sqs",
                "cron", "raw")
IN_NAMESPACE = ("*.{namespace}", "*.{namespace}.svc", "*.{namespace}.svc.cluster.local")
DEFAULT_ADDRESSES: dict[str, tuple[str, ...]] = {
    "redis": IN_NAMESPACE, "redis-streams": IN_NAMESPACE, "rabbitmq": IN_NAMESPACE, "kafka": IN_NAMESPACE,
    "nats-jetstream": IN_NAMESPACE, "aws-sqs-queue": ("sqs.*.amazonaws.com", "sqs.*.amazonaws.com.cn"),
}
DEFAULT_HOSTS = ("{name}.{namespace}", "{name}.{namespace}.svc")
# Names of cloud metadata services, refused whatever a pattern allows (as are the API server's names).
METADATA_NAMES = ("metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                  "instance-data.ec2.internal")
# The API server's ClusterIP as every pod sees it; read once at start (the process environment is fixed).
_ENV_API_SERVER = tuple(v for v in (os.environ.get("KUBERNETES_SERVICE_HOST"),) if v)


class Grant(BaseModel):
    """What one namespace may use on top of the cluster-wide grant (``tenancy.namespaces.<ns>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    triggerTypes: tuple[str, ...] = ()
    clusterTriggerAuthentications: tuple[str, ...] = ()
    addresses: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    httpHosts: tuple[str, ...] = ()
    operatorIdentity: bool = False
    addressesFromEnv: bool = False

    @field_validator("triggerTypes")
    @classmethod
    def _types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(v) - set(PRESET_TYPES))
        if unknown:
            raise ValueError(f"unknown trigger type(s) {unknown}; known: {', '.join(PRESET_TYPES)}")
        return v

    @field_validator("httpHosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            if "{namespace}" not in pattern:
                raise ValueError(f"host pattern {pattern!r} must contain {{namespace}}, so that one namespace "
                                 "never claims another's host names")
            if pattern.strip() == "*" or pattern.startswith("*{"):
                raise ValueError(f"host pattern {pattern!r} is too wide")
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for kind, patterns in v.items():
            for p in patterns:
                if p.strip() in ("*", "*:*", ""):
                    raise ValueError(f"addresses.{kind}: {p!r} allows every address; list the hosts (globs "
                                     "such as *.queues.example.com, optionally :port)")
        return v


class Tenancy(Grant):
    """Policy ``tenancy``: the grant every opted-in namespace has, and per-namespace additions."""

    triggerTypes: tuple[str, ...] = tuple(t for t in PRESET_TYPES if t != "raw")
    addresses: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(DEFAULT_ADDRESSES))
    httpHosts: tuple[str, ...] = DEFAULT_HOSTS
    apiServerAddresses: tuple[str, ...] = Field(
        default=(), description="more names or IPs of the API server (its ClusterIP, an external name)")
    namespaces: dict[str, Grant] = Field(default_factory=dict)


def grant_for(tenancy: Tenancy, namespace: str) -> Grant:
    """The cluster-wide grant plus the namespace's own additions."""
    extra = tenancy.namespaces.get(namespace)
    if extra is None:
        return tenancy
    addresses = {k: tuple(v) for k, v in tenancy.addresses.items()}
    for k, v in extra.addresses.items():
        addresses[k] = addresses.get(k, ()) + tuple(v)
    return Grant(triggerTypes=tuple(dict.fromkeys(tenancy.triggerTypes + extra.triggerTypes)),
                 clusterTriggerAuthentications=tenancy.clusterTriggerAuthentications
                 + extra.clusterTriggerAuthentications,
                 addresses=addresses, httpHosts=tenancy.httpHosts + extra.httpHosts,
                 operatorIdentity=tenancy.operatorIdentity or extra.operatorIdentity,
                 addressesFromEnv=tenancy.addressesFromEnv or extra.addressesFromEnv)


# ---------------------------------------------------------------------------------------------- addresses

# Addresses that inet_aton-style parsers read as IPv4 but that are not dotted quads: "2852039166",
# "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518" (every part a decimal, octal or 0x number).
_NUMBER = r"(0x[0-9a-f]+|[0-9]+)"
_NUMERIC_TRICK = re.compile(rf"^{_NUMBER}(\.{_NUMBER}){{0,3}}$")


def split_address(value: str) -> tuple[str, int | None]:
    """(host, port) of ``host``, ``host:port``, ``[v6]:port`` or a URL; host lowercased, no trailing dot."""
    text = value.strip()
    if "://" in text:
        try:
            parts = urlsplit(text)
            host, port = parts.hostname or "", parts.port
        except ValueError:
            return text.lower(), None
        return host.rstrip(".").lower(), port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text.isdigit() else None
    return host.rstrip(".").lower(), port


def never_reason(host: str, tenancy: Tenancy) -> str | None:
    """Why ``host`` may never be reached for a tenant, or None."""
    if not host:
        return "has no host"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        mapped = getattr(ip, "ipv4_mapped", None) or ip
        if mapped.is_loopback:
            return "is a loopback address"
        if mapped.is_link_local:
            return "is a link-local address (cloud metadata services live there)"
        if mapped.is_unspecified:
            return "is the unspecified address"
    elif _NUMERIC_TRICK.match(host):
        return "is a numeric address in an unusual form"
    if host == "localhost" or host.endswith((".localhost", ".localdomain")):
        return "is a loopback name"
    api = {a.lower().rstrip(".") for a in tenancy.apiServerAddresses + _ENV_API_SERVER}
    if host in api or host.startswith("kubernetes.default.svc.") or host in (
            "kubernetes", "kubernetes.default", "kubernetes.default.svc"):
        return "is the Kubernetes API server"
    if host in METADATA_NAMES:
        return "is a cloud metadata service"
    return None


def _pattern_matches(pattern: str, host: str, port: int | None, namespace: str) -> bool:
    pat = pattern.replace("{namespace}", namespace).lower()
    p_host, p_port = split_address(pat) if not pat.endswith(":*") else (pat[:-2], None)
    if p_port is not None and p_port != port:
        return False
    # '*' stands for exactly one DNS label, so '*.team-a' never matches 'x.y.team-a' or 'team-a'.
    regex = "^" + ".".join("[^.]+" if label == "*" else re.escape(label).replace(r"\*", "[^.]*")
                           for label in p_host.split(".")) + "$"
    return re.match(regex, host) is not None


def address_problem(value: str, kind: str, where: str, grant: Grant, tenancy: Tenancy, namespace: str,
                    always: tuple[str, ...] = ()) -> Problem | None:
    host, port = split_address(value)
    reason = never_reason(host, tenancy)
    if reason:
        return Problem(where, f"{value!r} {reason}; the KEDA operator never connects there for a workload",
                       "use an address of a service you run")
    if any(split_address(a) == (host, port) or (split_address(a)[0] == host and port is None) for a in always):
        return None
    patterns = grant.addresses.get(kind, ())
    if any(_pattern_matches(p, host, port, namespace) for p in patterns):
        return None
    allowed = ", ".join(p.replace("{namespace}", namespace) for p in patterns) or "none"
    return Problem(where, f"{value!r} is not an address this namespace may use for {kind} triggers "
                   f"(allowed: {allowed})",
                   f"use a service in namespace {namespace} (<service>.{namespace}:<port>), or ask the cluster "
                   f"admin to add the address to the policy's tenancy.addresses.{kind}")


# ---------------------------------------------------------------------------------------------- triggers

_RAW_ADDRESS_KEY = re.compile(r"(address|host|url|server|endpoint|broker|uri)s?$", re.IGNORECASE)
_CLOUD_PREFIXES = ("aws-", "gcp-", "azure-", "huawei-", "openstack-")


def _auth_problem(auth: AuthRef | None, where: str, grant: Grant, namespace: str) -> Problem | None:
    if auth is None or auth.kind != "ClusterTriggerAuthentication":
        return None
    if auth.name in grant.clusterTriggerAuthentications:
        return None
    lent = ", ".join(grant.clusterTriggerAuthentications) or "none"
    return Problem(where, f"ClusterTriggerAuthentication {auth.name!r} holds cluster-wide credentials that are "
                   f"not lent to namespace {namespace} (lent: {lent})",
                   "use a TriggerAuthentication in your own namespace, or ask the cluster admin to add it to "
                   f"the policy's tenancy.namespaces.{namespace}.clusterTriggerAuthentications")


def _from_env_problem(field: str, where: str, grant: Grant) -> Problem | None:
    if grant.addressesFromEnv:
        return None
    return Problem(f"{where}.{field}", "an address read from the workload's environment cannot be checked "
                   "against the addresses this namespace may use",
                   "write the address itself, or ask the cluster admin for tenancy.addressesFromEnv")


def _identity_problem(where: str, grant: Grant, what: str) -> Problem | None:
    if grant.operatorIdentity:
        return None
    return Problem(where, f"{what} would act with the KEDA operator's own cloud identity, which is not lent to "
                   "workloads", "set authRef to a TriggerAuthentication with your own credentials or pod "
                   "identity, or ask the cluster admin for tenancy.namespaces.<ns>.operatorIdentity")


def _preset_addresses(p: Preset) -> list[tuple[str, str]]:
    """(field, value) of every address a preset's KEDA trigger will carry."""
    out: list[tuple[str, str]] = []
    if isinstance(p, (RedisTrigger, RedisStreamsTrigger)):
        if p.address:
            out.append(("address", p.address))
        if p.host:
            out.append(("host", f"{p.host}:{p.port}" if p.port else p.host))
    elif isinstance(p, RabbitMQTrigger) and p.host:
        out.append(("host", p.host))
    elif isinstance(p, KafkaTrigger) and p.bootstrapServers:
        out.extend(("bootstrapServers", s.strip()) for s in p.bootstrapServers.split(",") if s.strip())
    elif isinstance(p, NATSJetStreamTrigger):
        out.append(("natsServerMonitoringEndpoint", p.natsServerMonitoringEndpoint))
    elif isinstance(p, SQSTrigger):
        out.append(("queueURL", p.queueURL))
    elif isinstance(p, QueueDepthTrigger) and p.serverAddress:
        out.append(("serverAddress", p.serverAddress))
    return out


def trigger_problems(presets: list[Preset], where: str, *, name: str, namespace: str, tenancy: Tenancy,
                     prometheus_address: str) -> list[Problem]:
    """Every reference in the tenant's triggers that the namespace's grant does not cover."""
    grant = grant_for(tenancy, namespace)
    problems: list[Problem] = []

    def add(p: Problem | None) -> None:
        if p is not None:
            problems.append(p)

    for i, p in enumerate(presets):
        w = f"{where}[{i}]"
        if p.type not in grant.triggerTypes:
            allowed = ", ".join(grant.triggerTypes) or "none"
            add(Problem(f"{w}.type", f"{p.type} triggers are not allowed in namespace {namespace} "
                        f"(allowed: {allowed})", "use a preset, or ask the cluster admin to allow it in the "
                        "policy's tenancy.triggerTypes"))
            continue
        add(_auth_problem(getattr(p, "authRef", None), f"{w}.authRef", grant, namespace))
        for field in ("addressFromEnv", "hostFromEnv"):
            if getattr(p, field, None):
                add(_from_env_problem(field, w, grant))
        kind = p.keda_type
        always = (prometheus_address,) if isinstance(p, QueueDepthTrigger) else ()
        for field, value in _preset_addresses(p):
            add(address_problem(value, kind, f"{w}.{field}", grant, tenancy, namespace, always))
        if isinstance(p, SQSTrigger) and p.authRef is None:
            add(_identity_problem(f"{w}.authRef", grant, "an sqs trigger without authRef"))
        if isinstance(p, HTTPTrigger):
            problems.extend(host_problems(p, w, name=name, namespace=namespace, grant=grant))
        if isinstance(p, RawTrigger):
            problems.extend(_raw_problems(p, w, grant, tenancy, namespace))
    return problems


def _raw_problems(p: RawTrigger, where: str, grant: Grant, tenancy: Tenancy, namespace: str) -> list[Problem]:
    t = p.trigger
    ktype = str(t.get("type"))
    md: dict[str, Any] = t.get("metadata") or {}
    problems: list[Problem] = []
    auth = AuthRef.model_validate(_auth(t["authenticationRef"])) if t.get("authenticationRef") else None
    if (a := _auth_problem(auth, f"{where}.trigger.authenticationRef", grant, namespace)):
        problems.append(a)
    for key, value in md.items():
        k = str(key)
        if k.endswith("FromEnv") and _RAW_ADDRESS_KEY.search(k[:-len("FromEnv")]):
            if (e := _from_env_problem(k, f"{where}.trigger.metadata", grant)):
                problems.append(e)
            continue
        text = str(value)
        if _RAW_ADDRESS_KEY.search(k) or "://" in text:
            for part in [s for s in text.split(",") if s.strip()] or [text]:
                if (e := address_problem(part.strip(), ktype, f"{where}.trigger.metadata.{k}", grant, tenancy,
                                         namespace)):
                    problems.append(e)
    if str(md.get("identityOwner", "")).lower() == "operator":
        if (e := _identity_problem(f"{where}.trigger.metadata.identityOwner", grant, "identityOwner: operator")):
            problems.append(e)
    elif ktype.startswith(_CLOUD_PREFIXES) and auth is None and not any(str(k).endswith("FromEnv") for k in md):
        if (e := _identity_problem(f"{where}.trigger.authenticationRef", grant,
                                   f"a {ktype} trigger without authenticationRef")):
            problems.append(e)
    return problems


# ---------------------------------------------------------------------------------------------- http hosts

def host_problems(p: HTTPTrigger, where: str, *, name: str, namespace: str, grant: Grant) -> list[Problem]:
    if p.hosts is None:
        return []
    if not p.hosts:
        return [Problem(f"{where}.hosts", "is empty; an InterceptorRoute rule without hosts would match "
                        "requests for every host", "list your host names, or leave hosts out for the defaults")]
    patterns = [pt.replace("{name}", name).replace("{namespace}", namespace).lower() for pt in grant.httpHosts]
    problems = []
    for i, host in enumerate(p.hosts):
        h = host.lower().rstrip(".")
        if h == "*" or h.startswith("*") and "." not in h:
            problems.append(Problem(f"{where}.hosts[{i}]", f"{host!r} would claim every host name on the shared "
                                    "interceptor", "list your own host names"))
            continue
        if not any(_host_matches(pt, h) for pt in patterns):
            problems.append(Problem(f"{where}.hosts[{i}]", f"{host!r} is not a host name namespace {namespace} "
                                    f"may claim (allowed: {', '.join(patterns) or 'none'})",
                                    "use one of the allowed names, or ask the cluster admin to add a pattern "
                                    "with {namespace} to the policy's tenancy.httpHosts"))
    return problems


def _host_matches(pattern: str, host: str) -> bool:
    """``*`` in a pattern stands for one DNS label; a wildcard host (``*.x``) matches only a ``*`` there."""
    p_labels, h_labels = pattern.split("."), host.split(".")
    if len(p_labels) != len(h_labels):
        return False
    return all(p == h or (p == "*" and (h == "*" or "*" not in h)) for p, h in zip(p_labels, h_labels))
