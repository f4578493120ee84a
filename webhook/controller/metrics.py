"""The reconciler's Prometheus metrics, shared with the server's registry when it is present."""

from __future__ import annotations

from typing import Any, Callable


class ReconcilerMetrics:
    """Adapter over ``webhook.metrics.METRICS`` (when present) so this module also works without it."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        try:
            from ..metrics import METRICS as shared  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - metrics module absent or broken: keep private collectors
            shared = None
        self.registry = getattr(shared, "registry", None) or CollectorRegistry()
        r = self.registry

        def find(attr: str, make: Callable[[], Any]) -> Any:
            existing = getattr(shared, attr, None)
            return existing if existing is not None else make()

        self.policy_valid = find("policy_valid", lambda: Gauge(
            "llmaz_serverless_policy_valid", "1 when the policy ConfigMap is valid, 0 when rejected.", registry=r))
        self.policy_errors = find("policy_errors", lambda: Counter(
            "llmaz_serverless_policy_errors", "Policy documents rejected as invalid.", registry=r))
        self.reconciles = find("reconciles", lambda: Counter(
            "llmaz_serverless_reconciles", "Reconciles of workloads, by result.", ["result"], registry=r))
        self.reconcile_duration = find("reconcile_duration", lambda: Histogram(
            "llmaz_serverless_reconcile_duration_seconds", "Time to reconcile one workload.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=r))
        self.queue_depth = find("queue_depth", lambda: Gauge(
            "llmaz_serverless_reconcile_queue_depth", "Workloads waiting to be reconciled.", registry=r))
        self.managed_workloads = find("managed_workloads", lambda: Gauge(
            "llmaz_serverless_managed_workloads", "Workloads with KEDA objects managed by llmaz-serverless.",
            registry=r))
        self.prerequisite_ok = find("prerequisite_ok", lambda: Gauge(
            "llmaz_serverless_prerequisite_ok",
            "1 when the optional API `name` (keda, http-add-on) is served by the API server, 0 when it is not.",
            ["name"], registry=r))
        self.degraded_workloads = find("degraded_workloads", lambda: Gauge(
            "llmaz_serverless_degraded_workloads",
            "Managed workloads kept above zero because an API they need is not installed.", registry=r))
        self.quarantined_workloads = find("quarantined_workloads", lambda: Gauge(
            "llmaz_serverless_quarantined_workloads",
            "Workloads whose KEDA objects cannot be built from their settings (denied by the current rules, or "
            "failed); their existing KEDA objects keep the last good settings.", registry=r))
        self.quarantines = find("quarantines", lambda: Counter(
            "llmaz_serverless_quarantines", "Workloads put in quarantine, by reason (denied, error).", ["reason"],
            registry=r))
        self.learned_keep_alive = find("learned_keep_alive", lambda: Gauge(
            "llmaz_serverless_learned_keep_alive_seconds",
            "The keep-alive (cooldownPeriod) learned for a workload with keep-alive: learned; absent while it "
            "still uses its policy settings.", ["namespace", "kind", "name"], registry=r))
        self.learned_decisions = find("learned_decisions", lambda: Counter(
            "llmaz_serverless_learned_decisions",
            "Changes of a learned decision, by mode (policy, keep-alive, pre-warm).", ["mode"], registry=r))
        self.learned_from_requests = find("learned_from_requests", lambda: Gauge(
            "llmaz_serverless_learned_from_requests",
            "1 while a workload with keep-alive: learned learns from request counts read from Prometheus, 0 while "
            "it reads KEDA's status.", ["namespace", "kind", "name"], registry=r))
        self.request_counts_up = find("request_counts_up", lambda: Gauge(
            "llmaz_serverless_request_counts_up",
            "1 when the last read of request counts from Prometheus (policy learnFrom) succeeded.", registry=r))
        self.learned_state_errors = find("learned_state_errors", lambda: Counter(
            "llmaz_serverless_learned_state_errors",
            "Stored learned states that could not be read (the workload starts learning afresh).", registry=r))


_METRICS: ReconcilerMetrics | None = None


def reconciler_metrics() -> ReconcilerMetrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = ReconcilerMetrics()
    return _METRICS
