"""Trigger presets: a few parameters in, one KEDA trigger (and for ``http`` an InterceptorRoute) out.

Users name presets in the ``serverless.llmaz.io/triggers`` annotation, either as a comma-separated list
(``http, queue-depth``) or as a YAML/JSON list of mappings (``[{type: redis, address: ..., listName: jobs}]``).
Each preset is a small pydantic model with ``extra="forbid"``, so a misspelt parameter is an error that names
the preset's real parameters. Credentials never travel in trigger parameters: the presets take an
``authRef`` (a KEDA TriggerAuthentication) instead, and inline secrets are rejected before parsing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .durations import DurationError, duration_seconds, go_duration, is_duration  # noqa: F401 - re-exported
from .errors import Problem
from .tenancy.limits import Limits, load_annotation, trigger_count_problem


class PolicyView(Protocol):
    """The parts of the cluster policy (``webhook.policy.Policy``) that presets read.

    A protocol rather than an import: the policy validates its own trigger lists with this module, so this
    module must not import the policy back.
    """

    @property
    def http(self) -> Any: ...          # HTTPSettings: scalerAddress, concurrency, *Timeout, gatewayHeader

    @property
    def prometheus(self) -> Any: ...    # PrometheusSettings: serverAddress, namespaceLabel, podLabel, authRef

    @property
    def timezone(self) -> str: ...

# ---------------------------------------------------------------------------------------------- helpers

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_CREDENTIAL_KEYS = {
    "password", "passwd", "pass", "secret", "token", "apikey", "api_key", "accesskey", "accesskeyid",
    "secretaccesskey", "awsaccesskeyid", "awssecretaccesskey", "awssessiontoken", "connectionstring",
    "connection", "credentials", "bearertoken", "sasl.password", "privatekey", "key.pem", "clientsecret",
    "sharedaccesskey", "authtoken", "accesstoken", "tlskey", "clientkey", "keypassword",
}
# Any parameter whose name contains one of these is a credential, whatever the scaler calls it
# (``redisPassword``, ``saslPassword``, ``awsSessionToken``, ``sharedAccessKey``...).
_CREDENTIAL_PARTS = ("password", "passwd", "secret", "token", "apikey", "api_key", "accesskey", "privatekey",
                     "connectionstring", "credential", "sharedaccesskey", "sessionkey")
_USERINFO_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://[^/?#\s]*@")


def _credential_problems(params: dict[str, Any], where: str) -> list[Problem]:
    problems = []
    for key, value in params.items():
        k = str(key)
        if k.endswith("FromEnv") or k.endswith("FromEnvFile"):
            continue  # names an environment variable of the target container, not a secret
        low = k.lower()
        if low in _CREDENTIAL_KEYS or any(part in low for part in _CREDENTIAL_PARTS):
            problems.append(Problem(
                f"{where}.{k}", "credentials must not be written inline in trigger parameters",
                "store them in a Secret, reference it from a KEDA TriggerAuthentication, and set "
                "authRef: <its name> on the trigger"))
        elif isinstance(value, str) and _USERINFO_URL.match(value):
            problems.append(Problem(
                f"{where}.{k}", "this URL carries credentials (user:password@)",
                "drop the user info from the URL and supply it through a TriggerAuthentication "
                "(authRef)"))
    return problems


def _s(value: Any) -> str:
    """KEDA trigger metadata is a map of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class AuthRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Literal["TriggerAuthentication", "ClusterTriggerAuthentication"] = "TriggerAuthentication"

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _NAME.match(v) or len(v) > 253:
            raise ValueError("must be the name of a TriggerAuthentication (lowercase DNS name)")
        return v

    def to_keda(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind}


def _auth(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


# ``authRef: my-auth`` is shorthand for ``authRef: {name: my-auth, kind: TriggerAuthentication}``.
OptionalAuthRef = Annotated[AuthRef | None, BeforeValidator(_auth)]


@dataclass(frozen=True)
class TriggerContext:
    """What a preset needs to know about the workload it scales."""

    kind: str
    name: str
    namespace: str
    policy: PolicyView
    min_replicas: int = 0
    backend: str = "vllm"


# ---------------------------------------------------------------------------------------------- presets

class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: str
    name: str | None = Field(default=None, description="trigger name; defaults to the preset type")

    keda_type: ClassVar[str] = ""
    # Can this trigger become active while the workload has no pods?
    wakes_from_zero: ClassVar[bool] = True
    resource_only: ClassVar[bool] = False

    @field_validator("name")
    @classmethod
    def _trigger_name(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME.match(v) or len(v) > 63):
            raise ValueError("must be a lowercase DNS label (a-z, 0-9, '-')")
        return v

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        raise NotImplementedError

    def warnings(self, ctx: TriggerContext) -> list[str]:
        return []

    def summary(self) -> str:
        return self.type

    @staticmethod
    def _with_auth(trigger: dict[str, Any], auth: AuthRef | None) -> dict[str, Any]:
        if auth is not None:
            trigger["authenticationRef"] = auth.to_keda()
        return trigger


class HTTPTrigger(Preset):
    """Scale from zero on HTTP traffic through the KEDA HTTP add-on interceptor."""

    type: Literal["http"] = "http"
    concurrency: int | None = Field(default=None, ge=1)
    requestRate: int | None = Field(default=None, ge=1)
    window: str | None = None
    granularity: str | None = None
    hosts: list[str] | None = None
    paths: list[str] | None = None
    headers: dict[str, str] | None = None
    readinessTimeout: str | None = None
    requestTimeout: str | None = None
    responseHeaderTimeout: str | None = None
    service: str | None = None
    port: int = Field(default=8080, ge=1, le=65535, description="llmaz serves on 8080 of <name>-lb")

    keda_type: ClassVar[str] = "external-push"

    @field_validator("window", "granularity", "readinessTimeout", "requestTimeout", "responseHeaderTimeout",
                     mode="before")
    @classmethod
    def _duration(cls, v: Any) -> str | None:
        # The add-on parses these with Go's time.ParseDuration: written in the one accepted form, sent in Go's.
        if v is None:
            return None
        try:
            return go_duration(v)
        except DurationError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            if not p.startswith("/"):
                raise ValueError(f"path {p!r} must start with '/'")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        for h in v or []:
            if not h or " " in h or "/" in h:
                raise ValueError(f"host {h!r} must be a hostname or a wildcard like *.example.com")
        return v

    @model_validator(mode="after")
    def _one_metric(self) -> "HTTPTrigger":
        if self.concurrency is not None and self.requestRate is not None:
            raise ValueError("set either concurrency or requestRate, not both")
        if (self.window or self.granularity) and self.requestRate is None:
            raise ValueError("window and granularity only apply with requestRate")
        return self

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        from .constants import interceptor_route_name

        return {
            "type": self.keda_type,
            "name": trigger_name,
            "metadata": {
                "scalerAddress": ctx.policy.http.scalerAddress,
                "interceptorRoute": interceptor_route_name(ctx.name),
            },
        }

    def effective_timeouts(self, policy: PolicyView) -> dict[str, str]:
        return {
            "readiness": self.readinessTimeout or policy.http.readinessTimeout,
            "request": self.requestTimeout or policy.http.requestTimeout,
            "responseHeader": self.responseHeaderTimeout or policy.http.responseHeaderTimeout,
        }

    def interceptor_route_spec(self, ctx: TriggerContext) -> dict[str, Any]:
        from .constants import lb_service_name

        rules: list[dict[str, Any]] = []
        hosts = self.hosts if self.hosts is not None else [
            f"{ctx.name}.{ctx.namespace}", f"{ctx.name}.{ctx.namespace}.svc"]
        rule: dict[str, Any] = {"hosts": list(hosts)}
        if self.paths:
            rule["paths"] = [{"value": p} for p in self.paths]
        if self.headers:
            rule["headers"] = [{"name": k, "value": v} for k, v in sorted(self.headers.items())]
        rules.append(rule)
        gateway = ctx.policy.http.gatewayHeader
        if gateway and self.hosts is None and not self.headers:
            # Requests forwarded by the llmaz Envoy AI Gateway name the model in a header.
            # The value names the namespace too: the interceptor is shared by the whole cluster, and two
            # namespaces' Playgrounds of one name must never claim the same route.
            value = ctx.policy.http.gatewayValue.replace("{namespace}", ctx.namespace).replace("{name}", ctx.name)
            rules.append({"hosts": ["*"], "headers": [{"name": gateway, "value": value}]})
        if self.requestRate is not None:
            metric: dict[str, Any] = {"requestRate": {"targetValue": self.requestRate,
                                                      "window": self.window or "1m",
                                                      "granularity": self.granularity or "1s"}}
        else:
            metric = {"concurrency": {"targetValue": self.concurrency or ctx.policy.http.concurrency}}
        return {
            "target": {"service": self.service or lb_service_name(ctx.name), "port": self.port},
            "rules": rules,
            "scalingMetric": metric,
            "timeouts": self.effective_timeouts(ctx.policy),
        }


class QueueDepthTrigger(Preset):
    """Scale on the model server's own queue, read from Prometheus."""

    type: Literal["queue-depth"] = "queue-depth"
    metric: Literal["waiting", "running", "kv-cache"] = "waiting"
    threshold: float | None = Field(default=None, gt=0)
    activationThreshold: float = Field(default=0, ge=0)
    serverAddress: str | None = None
    query: str | None = None
    backend: Literal["vllm", "llamacpp"] | None = None
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "prometheus"
    wakes_from_zero: ClassVar[bool] = False  # no pods, no metrics


    @model_validator(mode="after")
    def _backend_metric(self) -> "QueueDepthTrigger":
        if self.backend == "llamacpp" and self.metric == "kv-cache" and self.query is None:
            raise ValueError("llama.cpp exposes no KV-cache metric; use metric waiting or running, "
                             "or write your own query")
        if self.serverAddress is not None and not re.match(r"^https?://", self.serverAddress):
            raise ValueError("serverAddress must be an http:// or https:// URL")
        return self

    _METRICS: ClassVar[dict[tuple[str, str], tuple[str, str, float]]] = {
        # (backend, metric) -> (series, aggregation, default threshold per replica)
        ("vllm", "waiting"): ("vllm:num_requests_waiting", "sum", 5),
        ("vllm", "running"): ("vllm:num_requests_running", "sum", 16),
        ("vllm", "kv-cache"): ("vllm:kv_cache_usage_perc", "avg", 0.8),
        ("llamacpp", "waiting"): ("llamacpp:requests_deferred", "sum", 5),
        ("llamacpp", "running"): ("llamacpp:requests_processing", "sum", 4),
    }

    def _resolved(self, ctx: TriggerContext) -> tuple[str, str, float]:
        backend = self.backend or ("llamacpp" if ctx.backend == "llamacpp" else "vllm")
        return self._METRICS.get((backend, self.metric), self._METRICS[("vllm", self.metric)])

    def promql(self, ctx: TriggerContext) -> str:
        if self.query:
            return self.query
        series, agg, _ = self._resolved(ctx)
        p = ctx.policy.prometheus
        pods = re.escape(ctx.name).replace("\\-", "-") + "-[0-9]+(-[0-9]+)?"
        return f'{agg}({series}{{{p.namespaceLabel}="{ctx.namespace}",{p.podLabel}=~"{pods}"}})'

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        _, agg, default_threshold = self._resolved(ctx)
        threshold = self.threshold if self.threshold is not None else default_threshold
        # The policy's Prometheus credentials go only to the policy's Prometheus, never to an address the
        # tenant chose.
        own_server = self.serverAddress is None or self.serverAddress == ctx.policy.prometheus.serverAddress
        auth = self.authRef or (AuthRef(name=ctx.policy.prometheus.authRef)
                                if ctx.policy.prometheus.authRef and own_server else None)
        trigger: dict[str, Any] = {
            "type": "prometheus",
            "name": trigger_name,
            # A sum is shared out across replicas (per-replica target); a utilisation is compared as is.
            "metricType": "AverageValue" if agg == "sum" else "Value",
            "metadata": {
                "serverAddress": self.serverAddress or ctx.policy.prometheus.serverAddress,
                "query": self.promql(ctx),
                "threshold": _num(threshold),
                "activationThreshold": _num(self.activationThreshold),
                "ignoreNullValues": "true",
            },
        }
        return self._with_auth(trigger, auth)

    def summary(self) -> str:
        return f"queue-depth({self.metric})"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _AddressMixin(BaseModel):
    address: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    addressFromEnv: str | None = None
    hostFromEnv: str | None = None
    databaseIndex: int | None = Field(default=None, ge=0)
    enableTLS: bool | None = None

    def _address_metadata(self) -> dict[str, str]:
        md = {}
        for key in ("address", "host", "port", "addressFromEnv", "hostFromEnv", "databaseIndex", "enableTLS"):
            value = getattr(self, key)
            if value is not None:
                md[key] = _s(value)
        return md

    def _check_address(self) -> None:
        if not (self.address or self.addressFromEnv or self.host or self.hostFromEnv):
            raise ValueError("set address (host:port) or host, or addressFromEnv / hostFromEnv")
        if self.address and self.host:
            raise ValueError("set either address or host+port, not both")


class RedisTrigger(_AddressMixin, Preset):
    type: Literal["redis"] = "redis"
    listName: str
    listLength: int = Field(default=5, ge=1)
    activationListLength: int = Field(default=0, ge=0)
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "redis"

    @model_validator(mode="after")
    def _addr(self) -> "RedisTrigger":
        self._check_address()
        return self

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        md = self._address_metadata() | {"listName": self.listName, "listLength": _s(self.listLength),
                                         "activationListLength": _s(self.activationListLength)}
        return self._with_auth({"type": "redis", "name": trigger_name, "metadata": md}, self.authRef)


class RedisStreamsTrigger(_AddressMixin, Preset):
    type: Literal["redis-streams"] = "redis-streams"
    stream: str
    consumerGroup: str | None = None
    pendingEntriesCount: int | None = Field(default=None, ge=1)
    streamLength: int | None = Field(default=None, ge=1)
    lagCount: int | None = Field(default=None, ge=1)
    activationLagCount: int | None = Field(default=None, ge=0)
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "redis-streams"

    @model_validator(mode="after")
    def _mode(self) -> "RedisStreamsTrigger":
        self._check_address()
        modes = [m for m in ("pendingEntriesCount", "streamLength", "lagCount") if getattr(self, m) is not None]
        if len(modes) > 1:
            raise ValueError(f"set only one of pendingEntriesCount, streamLength, lagCount (got {modes})")
        if (self.pendingEntriesCount is not None or self.lagCount is not None) and not self.consumerGroup:
            raise ValueError("consumerGroup is required with pendingEntriesCount or lagCount")
        return self

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        md = self._address_metadata() | {"stream": self.stream}
        if self.consumerGroup:
            md["consumerGroup"] = self.consumerGroup
        if self.lagCount is not None:
            md["lagCount"] = _s(self.lagCount)
        elif self.streamLength is not None or not self.consumerGroup:
            md["streamLength"] = _s(self.streamLength or 5)
        else:
            md["pendingEntriesCount"] = _s(self.pendingEntriesCount or 5)
        if self.activationLagCount is not None:
            md["activationLagCount"] = _s(self.activationLagCount)
        return self._with_auth({"type": "redis-streams", "name": trigger_name, "metadata": md}, self.authRef)


class RabbitMQTrigger(Preset):
    type: Literal["rabbitmq"] = "rabbitmq"
    queueName: str
    mode: Literal["QueueLength", "MessageRate"] = "QueueLength"
    value: float = Field(default=5, gt=0)
    activationValue: float = Field(default=0, ge=0)
    protocol: Literal["auto", "http", "amqp"] = "auto"
    vhostName: str | None = None
    host: str | None = None
    hostFromEnv: str | None = None
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "rabbitmq"

    @model_validator(mode="after")
    def _host(self) -> "RabbitMQTrigger":
        if not (self.authRef or self.hostFromEnv or self.host):
            raise ValueError("the broker URL is required: set authRef (a TriggerAuthentication that provides "
                             "'host'), or hostFromEnv")
        if self.mode == "MessageRate" and self.protocol == "amqp":
            raise ValueError("mode MessageRate needs the management API (protocol http or auto)")
        return self

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        md = {"queueName": self.queueName, "mode": self.mode, "value": _num(self.value),
              "activationValue": _num(self.activationValue), "protocol": self.protocol}
        for key in ("vhostName", "host", "hostFromEnv"):
            if getattr(self, key) is not None:
                md[key] = getattr(self, key)
        return self._with_auth({"type": "rabbitmq", "name": trigger_name, "metadata": md}, self.authRef)

    def warnings(self, ctx: TriggerContext) -> list[str]:
        if self.host and not self.authRef:
            return ["rabbitmq trigger: an inline host without credentials connects as the broker's default "
                    "user; prefer authRef"]
        return []


class KafkaTrigger(Preset):
    type: Literal["kafka"] = "kafka"
    bootstrapServers: str | None = None
    consumerGroup: str
    topic: str | None = None
    lagThreshold: int = Field(default=10, ge=1)
    activationLagThreshold: int = Field(default=0, ge=0)
    offsetResetPolicy: Literal["latest", "earliest"] | None = None
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "kafka"

    @model_validator(mode="after")
    def _servers(self) -> "KafkaTrigger":
        if not self.bootstrapServers:
            raise ValueError("bootstrapServers is required (comma-separated host:port list)")
        return self

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        md = {"bootstrapServers": self.bootstrapServers, "consumerGroup": self.consumerGroup,
              "lagThreshold": _s(self.lagThreshold), "activationLagThreshold": _s(self.activationLagThreshold)}
        if self.topic:
            md["topic"] = self.topic
        if self.offsetResetPolicy:
            md["offsetResetPolicy"] = self.offsetResetPolicy
        return self._with_auth({"type": "kafka", "name": trigger_name, "metadata": md}, self.authRef)


class NATSJetStreamTrigger(Preset):
    type: Literal["nats-jetstream"] = "nats-jetstream"
    natsServerMonitoringEndpoint: str
    account: str = "$G"
    stream: str
    consumer: str
    lagThreshold: int = Field(default=10, ge=1)
    activationLagThreshold: int = Field(default=0, ge=0)
    useHttps: bool = False
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "nats-jetstream"

    @field_validator("natsServerMonitoringEndpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("give host:port of the monitoring endpoint without a scheme "
                             "(set useHttps: true for TLS)")
        return v

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        md = {"natsServerMonitoringEndpoint": self.natsServerMonitoringEndpoint, "account": self.account,
              "stream": self.stream, "consumer": self.consumer, "lagThreshold": _s(self.lagThreshold),
              "activationLagThreshold": _s(self.activationLagThreshold), "useHttps": _s(self.useHttps)}
        return self._with_auth({"type": "nats-jetstream", "name": trigger_name, "metadata": md},
                               self.authRef)


_SQS_URL = re.compile(r"^https://sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/\d+/[A-Za-z0-9_.-]+$")


class SQSTrigger(Preset):
    type: Literal["sqs"] = "sqs"
    queueURL: str
    queueLength: int = Field(default=5, ge=1)
    activationQueueLength: int = Field(default=0, ge=0)
    awsRegion: str | None = None
    authRef: OptionalAuthRef = None

    keda_type: ClassVar[str] = "aws-sqs-queue"

    @model_validator(mode="after")
    def _region(self) -> "SQSTrigger":
        if not self.queueURL.startswith("https://"):
            raise ValueError("queueURL must be the https:// URL of the queue")
        if self.awsRegion is None and not _SQS_URL.match(self.queueURL):
            raise ValueError("awsRegion is required when it cannot be read from queueURL")
        return self

    def region(self) -> str:
        if self.awsRegion:
            return self.awsRegion
        m = _SQS_URL.match(self.queueURL)
        return m.group(1) if m else ""

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        md = {"queueURL": self.queueURL, "queueLength": _s(self.queueLength),
              "activationQueueLength": _s(self.activationQueueLength), "awsRegion": self.region()}
        return self._with_auth({"type": "aws-sqs-queue", "name": trigger_name, "metadata": md}, self.authRef)

    def warnings(self, ctx: TriggerContext) -> list[str]:
        if self.authRef is None:
            return ["sqs trigger: no authRef, so KEDA reads the queue with the KEDA operator's own AWS "
                    "identity; set authRef to a TriggerAuthentication with podIdentity or keys"]
        return []


class CronTrigger(Preset):
    type: Literal["cron"] = "cron"
    start: str
    end: str
    timezone: str | None = None
    desiredReplicas: int = Field(default=1, ge=1)

    keda_type: ClassVar[str] = "cron"

    @field_validator("start", "end")
    @classmethod
    def _cron(cls, v: str) -> str:
        problem = cron_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            tz_problem = timezone_problem(v)
            if tz_problem:
                raise ValueError(tz_problem)
        return v

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        return {"type": "cron", "name": trigger_name, "metadata": {
            "timezone": self.timezone or ctx.policy.timezone, "start": self.start, "end": self.end,
            "desiredReplicas": _s(self.desiredReplicas)}}



# Scaler names known to KEDA 2.x; a raw trigger of another type would be rejected by KEDA only at run time.
KNOWN_KEDA_SCALERS = frozenset("""
activemq apache-kafka arangodb artemis-queue aws-cloudwatch aws-dynamodb aws-dynamodb-streams aws-kinesis-stream
aws-sqs-queue azure-app-insights azure-blob azure-data-explorer azure-eventhub azure-log-analytics azure-monitor
azure-pipelines azure-queue azure-servicebus beanstalkd cassandra couchdb cpu cron datadog dynatrace elasticsearch
etcd external external-push forgejo-runner gcp-cloudtasks gcp-pubsub gcp-stackdriver gcp-storage github-runner
graphite huawei-cloudeye ibmmq influxdb kafka kubernetes-resource kubernetes-workload liiklus loki memory
metrics-api mongodb mssql mysql nats-jetstream new-relic nsq openstack-metric openstack-swift postgresql
predictkube prometheus pulsar rabbitmq redis redis-cluster redis-cluster-streams redis-sentinel
redis-sentinel-streams redis-streams selenium-grid solace-event-queue solr splunk splunk-observability stan
temporal
""".split())


_METADATA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")


class RawTrigger(Preset):
    """Escape hatch: any KEDA trigger, written as KEDA expects it, still checked for the basics."""

    type: Literal["raw"] = "raw"
    trigger: dict[str, Any]

    keda_type: ClassVar[str] = "raw"

    @field_validator("trigger")
    @classmethod
    def _shape(cls, t: dict[str, Any]) -> dict[str, Any]:
        allowed = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
        extra = sorted(set(t) - allowed)
        if extra:
            raise ValueError(f"unknown field(s) {extra} in a KEDA trigger (allowed: {sorted(allowed)})")
        ktype = t.get("type")
        if not isinstance(ktype, str) or not ktype:
            raise ValueError("trigger.type is required (a KEDA scaler name such as prometheus)")
        if ktype not in KNOWN_KEDA_SCALERS:
            raise ValueError(f"trigger.type {ktype!r} is not a KEDA scaler")
        if "name" in t and not isinstance(t["name"], str):
            raise ValueError("trigger.name must be a string")
        if "useCachedMetrics" in t and not isinstance(t["useCachedMetrics"], bool):
            raise ValueError("trigger.useCachedMetrics must be true or false")
        md = t.get("metadata", {})
        if not isinstance(md, dict):
            raise ValueError("trigger.metadata must be a mapping of strings")
        for k, v in md.items():
            if not isinstance(k, str) or not _METADATA_KEY.match(k):
                raise ValueError(f"trigger.metadata key {str(k)[:64]!r} must be a parameter name "
                                 "(letters, digits, '.', '_', '-'; at most 128)")
            if not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"trigger.metadata.{k} must be a string, got {type(v).__name__}")
        if ktype in ("cpu", "memory"):
            if t.get("metricType") not in (None, "Utilization", "AverageValue"):
                raise ValueError("cpu/memory triggers take metricType Utilization or AverageValue")
            if "value" not in md:
                raise ValueError("cpu/memory triggers need metadata.value")
        if ktype == "cron":
            for key in ("start", "end"):
                if key in md and (p := cron_problem(str(md[key]))):
                    raise ValueError(f"trigger.metadata.{key}: {p}")
            if "timezone" in md and (p := timezone_problem(str(md["timezone"]))):
                raise ValueError(f"trigger.metadata.timezone: {p}")
        auth = t.get("authenticationRef")
        if auth is not None:
            AuthRef.model_validate(_auth(auth))
        if t.get("metricType") not in (None, "AverageValue", "Value", "Utilization"):
            raise ValueError("trigger.metricType must be AverageValue, Value or Utilization")
        return t

    @property
    def resource_metric(self) -> bool:
        return self.trigger.get("type") in ("cpu", "memory")

    def keda_trigger(self, ctx: TriggerContext, trigger_name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.trigger["type"], "name": trigger_name,
                               "metadata": {k: _s(v) for k, v in (self.trigger.get("metadata") or {}).items()}}
        for key in ("metricType", "useCachedMetrics"):
            if key in self.trigger:
                out[key] = self.trigger[key]
        if "authenticationRef" in self.trigger:
            out["authenticationRef"] = AuthRef.model_validate(_auth(self.trigger["authenticationRef"])).to_keda()
        return out

    def summary(self) -> str:
        return f"raw({self.trigger.get('type')})"


PRESETS: dict[str, type[Preset]] = {
    "http": HTTPTrigger,
    "queue-depth": QueueDepthTrigger,
    "redis": RedisTrigger,
    "redis-streams": RedisStreamsTrigger,
    "rabbitmq": RabbitMQTrigger,
    "kafka": KafkaTrigger,
    "nats-jetstream": NATSJetStreamTrigger,
    "sqs": SQSTrigger,
    "cron": CronTrigger,
    "raw": RawTrigger,
}


# ---------------------------------------------------------------------------------------------- cron

_CRON_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        "jan feb mar apr may jun jul aug sep oct nov dec".split())}),
    ("day of week", 0, 7, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}),
)


def cron_problem(expr: str) -> str | None:
    """Check a standard 5-field cron expression as KEDA's cron scaler parses it; None when valid."""
    fields = expr.split()
    if len(fields) != 5:
        return (f"cron expression {expr!r} has {len(fields)} fields; KEDA expects 5 "
                "(minute hour day-of-month month day-of-week), e.g. '0 8 * * 1-5'")
    for text, (label, lo, hi, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            problem = _cron_part(part.lower(), lo, hi, names, label)
            if problem:
                return f"cron expression {expr!r}: {problem}"
    return None


def _cron_value(token: str, lo: int, hi: int, names: dict[str, int], label: str) -> int:
    if token in names:
        return names[token]
    if not token.isdigit():
        raise ValueError(f"{label} value {token!r} is not a number")
    value = int(token)
    if not lo <= value <= hi:
        raise ValueError(f"{label} value {value} is outside {lo}-{hi}")
    return value


def _cron_part(part: str, lo: int, hi: int, names: dict[str, int], label: str) -> str | None:
    try:
        base, _, step = part.partition("/")
        if step:
            if not step.isdigit() or int(step) == 0:
                return f"{label} step {step!r} must be a positive number"
        if base in ("*", "?"):
            if base == "?" and label not in ("day of month", "day of week"):
                return "'?' is only allowed in day of month or day of week"
            return None
        if not base:
            return f"empty {label} field"
        start, _, end = base.partition("-")
        a = _cron_value(start, lo, hi, names, label)
        if end:
            b = _cron_value(end, lo, hi, names, label)
            if a > b:
                return f"{label} range {base!r} runs backwards"
        return None
    except ValueError as exc:
        return str(exc)


def timezone_problem(tz: str) -> str | None:
    if not tz or tz.startswith("/") or ".." in tz:
        return f"timezone {tz!r} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {tz!r} is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"
    return None


# ---------------------------------------------------------------------------------------------- parsing

def _pydantic_problems(exc: ValidationError, where: str, preset: str) -> list[Problem]:
    model = PRESETS[preset]
    params = sorted(f for f in model.model_fields if f != "type")
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field_path = ".".join(loc)
        kind = err.get("type", "")
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], params, n=1) if loc else []
            hint = f"did you mean {close[0]}? " if close else ""
            out.append(Problem(f"{where}.{field_path}", f"unknown parameter for the {preset} trigger",
                               f"{hint}known parameters: {', '.join(params)}"))
        elif kind == "missing":
            out.append(Problem(f"{where}.{field_path}", f"required parameter of the {preset} trigger is missing",
                               "see docs/api.md#triggers"))
        else:
            out.append(Problem(f"{where}.{field_path}" if field_path else where, msg))
    return out


def parse_trigger(raw: Any, where: str) -> tuple[Preset | None, list[Problem]]:
    if isinstance(raw, str):
        raw = {"type": raw.strip()}
    if not isinstance(raw, dict):
        return None, [Problem(where, f"a trigger must be a preset name or a mapping, got {type(raw).__name__}",
                              "write e.g. {type: http} or just http")]
    ttype = raw.get("type")
    if not isinstance(ttype, str) or not ttype:
        return None, [Problem(f"{where}.type", "every trigger needs a type",
                              f"one of: {', '.join(PRESETS)}")]
    if ttype not in PRESETS:
        hint = f"one of: {', '.join(PRESETS)}"
        if ttype in KNOWN_KEDA_SCALERS:
            hint = f"{ttype} is a KEDA scaler without a preset here; write {{type: raw, trigger: {{type: {ttype}, metadata: {{...}}}}}}"
        return None, [Problem(f"{where}.type", f"unknown trigger type {ttype!r}", hint)]
    cred_scope = raw.get("trigger", {}).get("metadata", {}) if ttype == "raw" and isinstance(
        raw.get("trigger"), dict) and isinstance(raw["trigger"].get("metadata"), dict) else raw
    cred_where = f"{where}.trigger.metadata" if cred_scope is not raw else where
    problems = _credential_problems({k: v for k, v in cred_scope.items() if k != "type"}, cred_where)
    if problems:
        return None, problems
    try:
        return PRESETS[ttype].model_validate(raw), []
    except ValidationError as exc:
        return None, _pydantic_problems(exc, where, ttype)


def parse_trigger_list(value: Any, where: str, limits: Limits | None = None) -> tuple[list[Preset], list[Problem]]:
    """``limits`` caps the count (tenant input); the policy's own lists are parsed without it."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return [], [Problem(where, "triggers must be a list", "write e.g. [http, queue-depth]")]
    if limits is not None and (too_many := trigger_count_problem(len(value), where, limits)):
        return [], [too_many]
    presets, problems = [], []
    for i, item in enumerate(value):
        preset, errs = parse_trigger(item, f"{where}[{i}]")
        problems.extend(errs)
        if preset is not None:
            presets.append(preset)
    names = [p.type for p in presets]
    if names.count("http") > 1:
        problems.append(Problem(where, "at most one http trigger per workload",
                                "list hosts, paths or headers in the one http trigger"))
    explicit = [p.name for p in presets if p.name]
    dupes = sorted({n for n in explicit if explicit.count(n) > 1})
    if dupes:
        problems.append(Problem(where, f"duplicate trigger names {dupes}", "give each trigger a unique name"))
    return presets, problems


def parse_triggers_annotation(text: str, where: str, limits: Limits | None = None) -> tuple[list[Preset], list[Problem]]:
    """``http, queue-depth`` or a YAML/JSON list (or single mapping) of presets, parsed within ``limits``
    (bytes, depth, YAML nodes, trigger count; the policy's, else the defaults)."""
    limits = limits or _DEFAULT_LIMITS
    stripped = text.strip()
    if not stripped:
        return [], [Problem(where, "is empty", "remove the annotation or name at least one trigger")]
    if stripped[0] in "[{" or "\n" in stripped or ":" in stripped:
        value, problems = load_annotation(stripped, where, limits, trigger_list=True)
        if problems:
            for p in problems:
                if not p.fix:
                    p.fix = ("write a comma-separated list of preset names (http, queue-depth) or a YAML list "
                             "such as [{type: redis, address: redis.<namespace>:6379, listName: jobs}]")
            return [], problems
        return parse_trigger_list(value, where, limits)
    names = [n.strip() for n in stripped.split(",")]
    if any(not n for n in names):
        return [], [Problem(where, f"{text[:80]!r} has an empty entry", "write e.g. http, queue-depth")]
    return parse_trigger_list(names, where, limits)


_DEFAULT_LIMITS = Limits()


def assign_names(presets: list[Preset]) -> list[tuple[str, Preset]]:
    """Stable, unique KEDA trigger names: the explicit name, else the preset type, numbered on repeats."""
    taken = {p.name for p in presets if p.name}
    seen: dict[str, int] = {}
    out = []
    for p in presets:
        if p.name:
            out.append((p.name, p))
            continue
        base = p.type if p.type != "raw" else str(p.trigger.get("type", "raw"))  # type: ignore[attr-defined]
        n = seen.get(base, 0) + 1
        seen[base] = n
        name = base if n == 1 else f"{base}-{n}"
        while name in taken:
            n += 1
            seen[base] = n
            name = f"{base}-{n}"
        taken.add(name)
        out.append((name, p))
    return out
