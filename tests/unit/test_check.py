"""The judging of ``llmaz-serverless check`` on hand-made fact sets: each check passes on healthy facts, fails
(with a fix) on the broken variant, and the exit code follows."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest

from tests.unit.helpers import catalog, playground
from webhook import constants as C
from webhook.check import EXIT_FAILED, EXIT_OK, exit_code, policy_of, render
from webhook.check.judge import (FAIL, HTTP_CRD, KEDA_CRDS, LLMAZ_CRDS, LWS_CRD, OK, WARN, Facts, judge_all,
                                 parse_scaler_address, ready_endpoints)
from webhook.policy import Policy

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def crd(name: str, versions: tuple[str, ...] = ("v1alpha1",), spec_props: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"properties": {"spec": {"properties": spec_props or {}}}}}
    return {"metadata": {"name": name}, "spec": {"versions": [
        {"name": v, "served": True, "storage": True, "schema": schema} for v in versions]},
        "status": {"conditions": [{"type": "Established", "status": "True"}]}}


def slices(n: int, ready: bool = True) -> list[dict[str, Any]]:
    return [{"endpoints": [{"addresses": [f"10.0.0.{i}"], "conditions": {"ready": ready}} for i in range(n)]}]


def ready_so(ns: str, name: str, uid: str, ready: str = "True", message: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "ownerReferences": [
        {"uid": uid, "controller": True, "kind": "Playground", "name": name}]},
        "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": message}]}}


def healthy() -> Facts:
    f = Facts(now=NOW, policy_ref="llmaz-serverless-system/llmaz-serverless-policy")
    f.version = {"gitVersion": "v1.31.0"}
    for n in LLMAZ_CRDS + (LWS_CRD,) + KEDA_CRDS:
        f.crds[n] = crd(n, spec_props={"replicas": {"type": "integer"}})
    f.crds[HTTP_CRD] = crd(HTTP_CRD, ("v1beta1",))
    f.apiservice = {"status": {"conditions": [{"type": "Available", "status": "True"}]}}
    f.keda_deployment = {"status": {"readyReplicas": 1}}
    f.scaler_service = {"metadata": {"name": "keda-add-ons-http-external-scaler"}}
    f.scaler_slices = slices(1)
    f.policy_configmap = {"metadata": {"name": "p"}, "data": {"policy.yaml": "{}\n"}}
    f.webhook_configs = {k: {"webhooks": [{"name": "w", "clientConfig": {"caBundle": "Q0E="}}]}
                         for k in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")}
    f.webhook_services = {"llmaz-serverless-system/llmaz-serverless-webhook": {"metadata": {}}}
    f.webhook_slices = {"llmaz-serverless-system/llmaz-serverless-webhook": slices(2)}
    f.namespaces = [{"metadata": {"name": "ai", "labels": {C.NAMESPACE_LABEL: "true"}}}]
    pg = playground(name="chat", namespace="ai")
    pg["metadata"]["uid"] = "u-1"
    f.workloads = [pg]
    f.models = [catalog().get("qwen-7b")]   # a GPU model: the default policy gives it an http trigger
    f.scaled_objects = {"ai/chat": ready_so("ai", "chat", "u-1")}
    f.interceptor_routes = {"ai/chat": {"metadata": {"name": "chat", "namespace": "ai"}}}
    return f


def judge(f: Facts) -> list[Any]:
    policy, error = policy_of(f.policy_configmap)
    return judge_all(f, policy, error)


def failures(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results if r.status == FAIL}


def test_healthy_facts_pass() -> None:
    results = judge(healthy())
    assert failures(results) == {}
    assert exit_code(results) == EXIT_OK
    assert any(r.name == "Playground ai/chat" and r.status == OK for r in results)


def test_unreachable_api_server_stops_there() -> None:
    f = Facts(api_error="connection refused")
    results = judge(f)
    assert [r.status for r in results] == [FAIL]
    assert "kubeconfig" in results[0].fix


@pytest.mark.parametrize("missing", list(LLMAZ_CRDS) + [LWS_CRD] + list(KEDA_CRDS))
def test_each_missing_crd_fails_with_fix(missing: str) -> None:
    f = healthy()
    f.crds[missing] = None
    fails = failures(judge(f))
    assert f"CRD {missing}" in fails
    assert "install" in fails[f"CRD {missing}"].fix


def test_service_without_replicas_warns() -> None:
    f = healthy()
    f.crds["services.inference.llmaz.io"] = crd("services.inference.llmaz.io")
    r = {x.name: x for x in judge(f)}["Service spec.replicas"]
    assert r.status == WARN and "v0.1.4" in r.fix


def test_keda_operator_seen_through_fresh_lease_only() -> None:
    f = healthy()
    f.keda_deployment = None
    f.keda_lease = {"spec": {"holderIdentity": "keda-0", "leaseDurationSeconds": 15,
                             "renewTime": (NOW - dt.timedelta(seconds=3)).isoformat()}}
    r = {x.name: x for x in judge(f)}["KEDA operator running"]
    assert r.status == OK and "keda-0" in r.detail
    f.keda_lease["spec"]["renewTime"] = (NOW - dt.timedelta(seconds=60)).isoformat()
    r = {x.name: x for x in judge(f)}["KEDA operator running"]
    assert r.status == FAIL and "60s ago" in r.detail


def test_keda_operator_absent_fails() -> None:
    f = healthy()
    f.keda_deployment = {"status": {"readyReplicas": 0}}
    assert "KEDA operator running" in failures(judge(f))


def test_metrics_apiservice_not_available() -> None:
    f = healthy()
    f.apiservice = {"status": {"conditions": [{"type": "Available", "status": "False",
                                               "reason": "FailedDiscoveryCheck"}]}}
    fails = failures(judge(f))
    assert "FailedDiscoveryCheck" in fails["APIService v1beta1.external.metrics.k8s.io"].detail


def test_http_addon_absent_warns_without_http_workloads_and_fails_with() -> None:
    f = healthy()
    f.crds[HTTP_CRD] = None
    f.scaler_service = None
    f.interceptor_routes = {}
    workloads, f.workloads = f.workloads, []
    statuses = {r.name: r.status for r in judge(f)}
    assert statuses[f"CRD {HTTP_CRD}"] == WARN
    f.workloads = workloads
    statuses = {r.name: r.status for r in judge(f)}
    assert statuses[f"CRD {HTTP_CRD}"] == FAIL
    assert statuses["external scaler keda-add-ons-http-external-scaler.keda:9090"] == FAIL
    # the workload itself: Ready ScaledObject but no InterceptorRoute
    assert any(r.name == "Playground ai/chat" and "InterceptorRoute" in r.detail for r in judge(f))


def test_scaler_without_ready_endpoints() -> None:
    f = healthy()
    f.scaler_slices = slices(1, ready=False)
    r = {x.name: x for x in judge(f)}["external scaler keda-add-ons-http-external-scaler.keda:9090"]
    assert r.status == FAIL and "no ready endpoints" in r.detail


def test_invalid_policy_fails_absent_warns() -> None:
    f = healthy()
    f.policy_configmap = {"metadata": {"name": "p"}, "data": {"policy.yaml": "defaults: [1, 2\n"}}
    assert any(n.startswith("policy ConfigMap") for n in failures(judge(f)))
    f.policy_configmap = None
    assert any(r.name.startswith("policy ConfigMap") and r.status == WARN for r in judge(f))


def test_webhook_without_cabundle_or_endpoints() -> None:
    f = healthy()
    f.webhook_configs["MutatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]["caBundle"] = ""
    f.webhook_slices["llmaz-serverless-system/llmaz-serverless-webhook"] = []
    fails = failures(judge(f))
    assert "empty caBundle" in fails["MutatingWebhookConfiguration"].detail
    assert "no ready endpoints" in fails["webhook Service llmaz-serverless-system/llmaz-serverless-webhook"].detail
    f.webhook_configs["ValidatingWebhookConfiguration"] = None
    assert "ValidatingWebhookConfiguration" in failures(judge(f))


def test_no_opted_in_namespace() -> None:
    f = healthy()
    f.namespaces = []
    assert C.NAMESPACE_LABEL in failures(judge(f))["opted-in namespaces"].fix


def test_scaled_object_not_ready_prints_keda_message() -> None:
    f = healthy()
    f.scaled_objects["ai/chat"] = ready_so("ai", "chat", "u-1", ready="False", message="scaler error: boom")
    assert "scaler error: boom" in failures(judge(f))["Playground ai/chat"].detail


def test_stranded_at_zero() -> None:
    f = healthy()
    f.workloads[0]["spec"]["replicas"] = 0
    f.scaled_objects = {}
    results = [r for r in judge(f) if r.name == "Playground ai/chat"]
    assert any(r.status == FAIL and "stranded at zero" in r.detail for r in results)
    assert any("no ScaledObject" in r.detail for r in results)
    # at zero with a Ready ScaledObject: fine (KEDA wakes it)
    f.scaled_objects = {"ai/chat": ready_so("ai", "chat", "u-1")}
    assert not [r for r in judge(f) if r.name == "Playground ai/chat" and r.status == FAIL]


def test_unowned_scaled_object_warns() -> None:
    f = healthy()
    f.scaled_objects["ai/chat"]["metadata"]["ownerReferences"] = []
    assert any(r.name == "Playground ai/chat" and r.status == WARN for r in judge(f))


def test_opted_out_workload_not_judged_as_managed() -> None:
    f = healthy()
    f.workloads[0]["metadata"]["annotations"] = {C.ANN_ENABLED: "false"}
    f.scaled_objects = {}
    assert exit_code(judge(f)) == EXIT_OK


def test_unreadable_fact_is_a_failure_with_rbac_fix() -> None:
    f = healthy()
    f.errors["crd/" + KEDA_CRDS[0]] = "403 Forbidden"
    r = failures(judge(f))[f"CRD {KEDA_CRDS[0]}"]
    assert "403" in r.detail and "access" in r.fix
    assert exit_code(judge(f)) == EXIT_FAILED


def test_render_ascii_and_utf8() -> None:
    f = healthy()
    f.namespaces = []
    results = judge(f)

    class Out(io.StringIO):
        def __init__(self, encoding: str) -> None:
            super().__init__()
            self._enc = encoding

        @property
        def encoding(self) -> str:  # type: ignore[override]
            return self._enc

    a, u = Out("ascii"), Out("utf-8")
    render(results, a)
    render(results, u)
    assert "[FAIL] opted-in namespaces" in a.getvalue() and "fix: kubectl label" in a.getvalue()
    assert "\u2716 opted-in namespaces" in u.getvalue()
    a.getvalue().encode("ascii")


@pytest.mark.parametrize("address,expected", [
    ("keda-add-ons-http-external-scaler.keda:9090", ("keda", "keda-add-ons-http-external-scaler", "9090")),
    ("scaler.other.svc.cluster.local:9090", ("other", "scaler", "9090")),
    ("scaler:9090", ("keda", "scaler", "9090")),
])
def test_parse_scaler_address(address: str, expected: tuple[str, str, str]) -> None:
    assert parse_scaler_address(address, "keda") == expected


def test_ready_endpoints_unset_condition_counts_as_ready() -> None:
    assert ready_endpoints([{"endpoints": [{"addresses": ["a"]}, {"addresses": ["b"], "conditions": {"ready": False}}]}]) == 1


def test_readiness_timeout_shorter_than_the_model_load_warns() -> None:
    f = healthy()
    assert not [r for r in judge(f) if "readinessTimeout" in r.detail]
    f.policy_configmap = {"metadata": {"name": "p"}, "data": {"policy.yaml": "http: {readinessTimeout: 1m}\n"}}
    warned = [r for r in judge(f) if "readinessTimeout 1m" in r.detail]
    assert len(warned) == 1 and warned[0].status == WARN and warned[0].name == "Playground ai/chat"
    assert "504" in warned[0].detail and "readinessTimeout" in warned[0].fix


def test_misspelt_annotation_on_a_stored_workload_warns() -> None:
    f = healthy()
    f.workloads[0]["metadata"]["annotations"] = {"serverless.llmaz.io/min-replica": "1"}
    warned = [r for r in judge(f) if "did you mean" in r.detail]
    assert len(warned) == 1 and warned[0].status == WARN and C.ANN_MIN_REPLICAS in warned[0].detail


def test_workload_refused_by_tightened_rules_is_reported_with_its_kept_objects() -> None:
    f = healthy()
    f.workloads[0]["metadata"]["annotations"] = {
        C.ANN_TRIGGERS: "[http, {type: redis, address: 'redis.ai:6379', listName: q}]"}
    assert failures(judge(f)) == {}
    f.policy_configmap = {"metadata": {"name": "p"}, "data": {"policy.yaml": "tenancy: {triggerTypes: [http]}\n"}}
    line = failures(judge(f))["Playground ai/chat"]
    assert "refused by the current rules" in line.detail and "keeps the last good settings" in line.detail
    assert "redis triggers are not allowed" in line.detail
    f.scaled_objects.clear()
    assert "settings invalid" in failures(judge(f))["Playground ai/chat"].detail


def test_unforeseen_object_is_a_finding_not_a_crash() -> None:
    f = healthy()
    f.workloads[0]["metadata"]["annotations"] = {C.ANN_TRIGGERS: "[" * 5000}
    line = failures(judge(f))["Playground ai/chat"]
    assert "nested more than" in line.detail


def test_learned_keep_alive_has_a_line() -> None:
    from webhook.learn import Params, State, encode
    f = healthy()
    f.workloads[0]["metadata"].setdefault("annotations", {})[C.ANN_KEEP_ALIVE] = "learned"

    def learning() -> list[Any]:
        return [r for r in judge(f) if r.group == "learning"]
    (fresh,) = learning()
    assert fresh.status == OK and "no idle time seen yet" in fresh.detail
    s = State(t0=1000.0, first=900.0, requests=4.0, bins={2: [4.0, 4.0, 600.0]})
    f.scaled_objects["ai/chat"]["metadata"]["annotations"] = {C.ANN_LEARNED_STATE: encode(s, 1000.0, Params())}
    f.scaled_objects["ai/chat"]["spec"] = {"cooldownPeriod": 180}
    f.workloads[0]["metadata"]["annotations"][C.ANN_LEARNED] = "keep-alive 180s (estimated ...)"
    (line,) = learning()
    assert line.status == OK and "keep-alive 180s" in line.detail and "cooldownPeriod 180" in line.detail
    f.scaled_objects["ai/chat"]["metadata"]["annotations"] = {C.ANN_LEARNED_STATE: "{broken"}
    (bad,) = learning()
    assert bad.status == WARN and "unreadable" in bad.detail
    f.workloads[0]["metadata"]["annotations"][C.ANN_KEEP_ALIVE] = "fixed"
    assert learning() == []
