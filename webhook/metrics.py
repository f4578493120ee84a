"""Prometheus metrics of llmaz-serverless, in a dedicated registry.

``METRICS`` is the process-wide instance. Other parts (the reconciler, the policy watch, the certificate code)
add their own collectors to ``METRICS.registry`` or set the gauges defined here; ``/metrics`` renders the whole
registry. The global ``prometheus_client.REGISTRY`` is not used, so nothing from imported libraries leaks in.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import constants as C

ENDPOINTS = ("mutate", "validate")
RESULTS = ("patched", "allowed", "denied", "skipped", "error", "bad_request")
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")

# Admission is pure computation on one object: typically well under a millisecond, never near the API server's
# timeout. The buckets cover 100 us .. 1 s.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def kind_label(kind: str) -> str:
    """Bounded label value: anyone who can reach the port can send arbitrary strings."""
    return kind if kind in C.WORKLOAD_KINDS else ("" if not kind else "other")


def operation_label(operation: str) -> str:
    return operation if operation in OPERATIONS else ("" if not operation else "other")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.admissions = Counter(
            "llmaz_serverless_admissions",
            "Admission reviews answered, by endpoint, workload kind, operation and result.",
            ["endpoint", "kind", "operation", "result"], registry=r)
        self.admission_duration = Histogram(
            "llmaz_serverless_admission_duration_seconds",
            "Time to answer one admission review (decode, rules, encode).",
            ["endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.policy_valid = Gauge(
            "llmaz_serverless_policy_valid",
            "1 when the last policy document read was valid, 0 when it was rejected (the last good one stays).",
            registry=r)
        self.policy_errors = Counter(
            "llmaz_serverless_policy_errors",
            "Policy documents rejected as invalid.", registry=r)
        self.cert_not_after = Gauge(
            "llmaz_serverless_cert_not_after_seconds",
            "Expiry (unix time) of the serving certificate in use.", registry=r)
        self.policy_valid.set(1)

    def observe_admission(self, endpoint: str, kind: str, operation: str, result: str, seconds: float) -> None:
        self.admissions.labels(endpoint, kind_label(kind), operation_label(operation), result).inc()
        self.admission_duration.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS = Metrics()
