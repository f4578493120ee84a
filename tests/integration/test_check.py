"""``llmaz-serverless check`` against a real kube-apiserver.

1. A broken control plane: only the llmaz and LeaderWorkerSet CRDs, no KEDA, no HTTP add-on, nothing of ours.
   ``check`` exits 1 and names every missing thing with its fix.
2. The healthiest cluster this control plane can give (all upstream CRDs, including the three KEDA CRDs the
   product does not use but the KEDA operator needs, our webhook configurations with a
   caBundle, the policy ConfigMap, an opted-in namespace, a Playground with the ScaledObject and
   InterceptorRoute our builders make for it). There is no KEDA operator here: it is SIMULATED - its Lease is
   written by the test, the ScaledObject's Ready condition is patched through the status subresource, and the
   HTTP add-on scaler's and our webhook's endpoints are hand-made EndpointSlices. The one check this control
   plane cannot pass is the KEDA metrics APIService (nothing serves external.metrics.k8s.io), and the test
   asserts exactly that. A run against the live stack with the real KEDA operator is separate.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.controlplane import ControlPlane, crd_paths, partial_control_plane
from webhook import cli
from webhook import constants as C
from webhook.check.gather import CORE_SERVICES, ENDPOINTSLICES, MWC, VWC
from webhook.check.judge import HTTP_CRD, KEDA_CRDS
from webhook.keda import desired_objects
from webhook.kube import (CONFIGMAPS, INTERCEPTORROUTES, LEASES, NAMESPACES, PLAYGROUNDS, SCALEDOBJECTS, Kube,
                          micro_time)
from webhook.models import ModelCatalog
from webhook.policy import policy_from_configmap


def run_check(capsys: Any, *args: str) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()
    code = cli.main(["check", *args, "-o", "json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


@pytest.fixture(scope="module")
def broken_plane(tmp_path_factory: pytest.TempPathFactory):
    with partial_control_plane(tmp_path_factory.mktemp("broken"), ("llmaz", "lws")) as cp:
        yield cp


def test_broken_control_plane_names_each_missing_thing(broken_plane: ControlPlane, capsys: Any) -> None:
    code, report, err = run_check(capsys, "--kubeconfig", str(broken_plane.kubeconfig), "--timeout", "5")
    assert code == 1, err
    by_name = {r["check"]: r for r in report["results"]}
    assert by_name["API server reachable"]["status"] == "ok"
    assert by_name["CRD playgrounds.inference.llmaz.io"]["status"] == "ok"
    for crd in KEDA_CRDS:
        assert by_name[f"CRD {crd}"]["status"] == "fail"
        assert "install KEDA" in by_name[f"CRD {crd}"]["fix"]
    assert by_name[f"CRD {HTTP_CRD}"]["status"] == "warn"        # no workload needs http
    assert by_name["KEDA operator running"]["status"] == "fail"
    assert by_name["APIService v1beta1.external.metrics.k8s.io"]["status"] == "fail"
    assert by_name["MutatingWebhookConfiguration"]["status"] == "fail"
    assert by_name["ValidatingWebhookConfiguration"]["status"] == "fail"
    assert by_name["opted-in namespaces"]["status"] == "fail"
    assert all(r["fix"] for r in report["results"] if r["status"] == "fail")


def test_unreachable_api_server_exits_2(tmp_path: Path, capsys: Any) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', "
                  "insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\n"
                  "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
    code, report, err = run_check(capsys, "--kubeconfig", str(kc), "--timeout", "2")
    assert code == 2
    assert "cannot reach the API server" in err and "Traceback" not in err


async def _healthy_cluster(kube: Kube, suffix: str) -> dict[str, str]:
    keda_ns, sys_ns, ns = f"keda-{suffix}", f"lls-{suffix}", f"ai-{suffix}"
    for name, labels in ((keda_ns, {}), (sys_ns, {}), (ns, {C.NAMESPACE_LABEL: "true"})):
        await kube.create(NAMESPACES, {"metadata": {"name": name, "labels": labels}})
    # the KEDA operator (simulated): its leader-election Lease, renewed now
    await kube.create(LEASES, {"metadata": {"name": "operator.keda.sh"}, "spec": {
        "holderIdentity": "keda-operator-sim", "leaseDurationSeconds": 60, "renewTime": micro_time(),
        "acquireTime": micro_time()}}, keda_ns)

    async def service_with_endpoint(namespace: str, name: str, port: int) -> None:
        await kube.create(CORE_SERVICES, {"metadata": {"name": name}, "spec": {
            "ports": [{"port": port, "protocol": "TCP"}]}}, namespace)
        await kube.create(ENDPOINTSLICES, {"metadata": {"name": name + "-sim", "labels": {
            "kubernetes.io/service-name": name}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}],
            "ports": [{"port": port, "protocol": "TCP"}]}, namespace)

    await service_with_endpoint(keda_ns, "keda-add-ons-http-external-scaler", 9090)
    await service_with_endpoint(sys_ns, "llmaz-serverless-webhook", 443)
    policy_cm = {"metadata": {"name": "policy"}, "data": {
        "policy.yaml": f"http:\n  scalerAddress: keda-add-ons-http-external-scaler.{keda_ns}:9090\n"}}
    await kube.create(CONFIGMAPS, policy_cm, sys_ns)
    hook = {"clientConfig": {"caBundle": "Q0E=", "service": {"namespace": sys_ns, "name": "llmaz-serverless-webhook",
                                                                "path": "/mutate"}},
            "rules": [{"apiGroups": [C.LLMAZ_GROUP], "apiVersions": ["v1alpha1"], "operations": ["CREATE"],
                       "resources": ["playgrounds"]}],
            # never called in this test: no object carries this label
            "objectSelector": {"matchLabels": {"check-it": "never"}},
            "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 1}
    config_name = f"check-it-{suffix}"
    await kube.create(MWC, {"metadata": {"name": config_name}, "webhooks": [{**hook, "name": "m.check.it"}]})
    await kube.create(VWC, {"metadata": {"name": config_name}, "webhooks": [{**hook, "name": "v.check.it"}]})

    pg = await kube.create(PLAYGROUNDS, {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                                         "metadata": {"name": "chat"},
                                         "spec": {"replicas": 0, "modelClaim": {"modelName": "qwen-7b"}}}, ns)
    desired = desired_objects(pg, policy_from_configmap(policy_cm), ModelCatalog())
    assert desired.interceptor_route is not None   # an unknown model is a GPU model: http trigger
    await kube.create(INTERCEPTORROUTES, desired.interceptor_route, ns)
    await kube.create(SCALEDOBJECTS, desired.scaled_object, ns)
    # KEDA (simulated) reports the ScaledObject Ready through the status subresource
    await kube.patch(SCALEDOBJECTS, "chat", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "simulated"}]}}, ns,
        subresource="status")
    return {"keda_ns": keda_ns, "policy": f"{sys_ns}/policy", "config": config_name, "ns": ns}


def test_healthy_control_plane_passes_but_metrics_api(control_plane: ControlPlane, capsys: Any) -> None:
    suffix = uuid.uuid4().hex[:6]
    # the session control plane carries the three KEDA CRDs the product uses; the operator needs all six
    control_plane.install_crds(crd_paths(("keda-extra",)))

    async def setup() -> dict[str, str]:
        async with Kube.from_kubeconfig(str(control_plane.kubeconfig)) as kube:
            return await _healthy_cluster(kube, suffix)

    names = asyncio.run(setup())
    code, report, err = run_check(capsys, "--kubeconfig", str(control_plane.kubeconfig),
                                  "--keda-namespace", names["keda_ns"], "--policy-configmap", names["policy"],
                                  "--webhook-config-name", names["config"])
    by_name = {r["check"]: r for r in report["results"]}
    mine = by_name[f"Playground {names['ns']}/chat"]
    assert mine["status"] == "ok", mine
    assert "operator.keda.sh" in by_name["KEDA operator running"]["detail"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert by_name[kind]["status"] == "ok"
    # other tests' namespaces may be opted in too; judge only what this test built, plus the cluster-wide lines
    others = [r for r in report["results"] if r["group"] == "workloads" and names["ns"] not in r["check"]
              and r["check"] not in ("opted-in namespaces", "managed workloads")]
    failed = {r["check"] for r in report["results"] if r["status"] == "fail" and r not in others}
    assert failed == {"APIService v1beta1.external.metrics.k8s.io"}, report
    assert code == 1


def test_workload_refused_by_tightened_policy_is_reported_with_kept_objects(control_plane: ControlPlane,
                                                                            capsys: Any) -> None:
    """A workload admitted under a wider policy, whose ScaledObject exists: after the admin narrows the tenant
    boundary, ``check`` reports it as refused and says its objects keep the last good settings."""
    suffix = uuid.uuid4().hex[:6]
    control_plane.install_crds(crd_paths(("keda-extra",)))

    async def setup() -> dict[str, str]:
        async with Kube.from_kubeconfig(str(control_plane.kubeconfig)) as kube:
            names = await _healthy_cluster(kube, suffix)
            ns = names["ns"]
            pg = await kube.create(PLAYGROUNDS, {
                "apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                "metadata": {"name": "queue", "annotations": {
                    C.ANN_TRIGGERS: f"[http, {{type: redis, address: 'redis.{ns}:6379', listName: q}}]"}},
                "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen-7b"}}}, ns)
            sys_ns, cm = names["policy"].split("/")
            policy = policy_from_configmap(await kube.get(CONFIGMAPS, cm, sys_ns))
            desired = desired_objects(pg, policy, ModelCatalog())
            await kube.create(SCALEDOBJECTS, desired.scaled_object, ns)
            await kube.create(INTERCEPTORROUTES, desired.interceptor_route, ns)
            await kube.patch(SCALEDOBJECTS, "queue", {"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "simulated"}]}}, ns,
                subresource="status")
            await kube.patch(CONFIGMAPS, cm, {"data": {"policy.yaml": (
                f"http:\n  scalerAddress: keda-add-ons-http-external-scaler.{names['keda_ns']}:9090\n"
                "tenancy:\n  triggerTypes: [http, queue-depth]\n")}}, sys_ns)
            return names

    names = asyncio.run(setup())
    code, report, err = run_check(capsys, "--kubeconfig", str(control_plane.kubeconfig),
                                  "--keda-namespace", names["keda_ns"], "--policy-configmap", names["policy"],
                                  "--webhook-config-name", names["config"])
    by_name = {r["check"]: r for r in report["results"]}
    line = by_name[f"Playground {names['ns']}/queue"]
    assert line["status"] == "fail", line
    assert "refused by the current rules" in line["detail"] and "keeps the last good settings" in line["detail"]
    assert "redis triggers are not allowed" in line["detail"]
    assert by_name[f"Playground {names['ns']}/chat"]["status"] == "ok"     # policy triggers are the admin's
    assert code == 1
