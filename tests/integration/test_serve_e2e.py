"""The whole service as shipped, against the real API server: ``llmaz-serverless serve`` with self-managed
certificates, the policy ConfigMap, leader election and the reconciler, behind the shipped webhook
configurations (only the client URL differs: loopback instead of the in-cluster Service)."""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.webhook_harness import (ROOT, free_port, serve_ready, shipped_webhook_configurations,
                                               stop_process_group)
from tests.integration.test_webhook_admission import apply_configurations, delete_configurations
from webhook import constants as C

NS = "llmaz-serverless-system"


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _delete_release_state(core) -> None:
    for name in ("llmaz-serverless-policy", "llmaz-serverless-ca"):
        for fn in (core.delete_namespaced_config_map, core.delete_namespaced_secret):
            try:
                fn(name, NS)
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture
def service_namespace(kube):
    core = client.CoreV1Api(kube)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    except ApiException as e:
        if e.status != 409:
            raise
    _delete_release_state(core)
    core.create_namespaced_config_map(NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="llmaz-serverless-policy"),
        data={"policy.yaml": "maxReplicasCap: 12\ngpu: {cooldownPeriod: 900}\n"}))
    yield NS
    # Later tests install the chart into the same namespace: leave no policy or CA of ours behind.
    _delete_release_state(core)


@pytest.fixture
def served(control_plane, kube, service_namespace, tmp_path):
    port, metrics_port = free_port(), free_port()
    configs = []
    for cfg in shipped_webhook_configurations():
        cfg = copy.deepcopy(cfg)
        path = "/mutate" if cfg["kind"] == "MutatingWebhookConfiguration" else "/validate"
        for hook in cfg["webhooks"]:
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}   # no caBundle: injected at run time
        cfg["metadata"] = {"name": cfg["metadata"]["name"]}
        configs.append(cfg)
    apply_configurations(kube, configs)
    log_path = tmp_path / "serve.log"
    args = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port), "--cert-mode", "self-managed", "--cert-dir", str(tmp_path / "certs"),
            "--cert-extra-san", "127.0.0.1", "--policy-configmap", f"{NS}/llmaz-serverless-policy",
            "--leader-election", "--kubeconfig", str(control_plane.kubeconfig), "--resync", "60"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "POD_NAMESPACE": NS, "POD_NAME": "e2e-0"},
                                start_new_session=True)
    try:
        t0 = time.monotonic()
        wait_for(lambda: serve_ready(proc, metrics_port, log_path), 60,
                 "readiness (cert issued, caBundle injected, policy read)")
        yield proc, metrics_port, time.monotonic() - t0, log_path
    finally:
        stop_process_group(proc)
        delete_configurations(kube)


def test_shipped_service_end_to_end(kube, namespace, served):
    proc, metrics_port, ready_after, log_path = served
    core, adm = client.CoreV1Api(kube), client.AdmissionregistrationV1Api(kube)
    custom = client.CustomObjectsApi(kube)

    secret = core.read_namespaced_secret("llmaz-serverless-ca", NS)
    assert {"ca.crt", "ca.key"} <= set(secret.data)
    ca_pem = base64.b64decode(secret.data["ca.crt"])
    for cfg in (adm.read_mutating_webhook_configuration("llmaz-serverless"),
                adm.read_validating_webhook_configuration("llmaz-serverless")):
        for hook in cfg.webhooks:
            bundle = hook.client_config.ca_bundle
            bundle = base64.b64decode(bundle) if isinstance(bundle, str) else bundle
            assert ca_pem.strip() in bundle

    ns = namespace(labels={C.NAMESPACE_LABEL: "true"}, prefix="e2e")
    playground = {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "metadata": {"name": "chat"},
                  "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen"},
                           "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}

    def mutated_create():
        try:
            return custom.create_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds",
                                                          playground, dry_run="All")
        except ApiException:
            return None
    # The API server notices the injected caBundle asynchronously.
    wait_for(lambda: (mutated_create() or {}).get("metadata", {}).get("annotations", {}).get(C.ANN_MANAGED),
             20, "the webhook to answer through the API server")

    t0 = time.monotonic()
    custom.create_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", playground)
    stored = custom.get_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", "chat")
    assert stored["spec"]["replicas"] == 0
    assert json.loads(stored["metadata"]["annotations"][C.ANN_RESOLVED])["cooldownPeriod"] == 900  # from the ConfigMap

    def scaled_object():
        try:
            return custom.get_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", "chat")
        except ApiException:
            return None
    so = wait_for(scaled_object, 15, "the ScaledObject")
    attach_seconds = time.monotonic() - t0
    assert so["spec"]["cooldownPeriod"] == 900
    assert so["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]
    custom.get_namespaced_custom_object("http.keda.sh", "v1beta1", ns, "interceptorroutes", "chat")

    lease = client.CoordinationV1Api(kube).read_namespaced_lease("llmaz-serverless-leader", NS)
    assert lease.spec.holder_identity.startswith("e2e-0")

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'llmaz_serverless_admissions_total{' in metrics and "llmaz_serverless_policy_valid 1.0" in metrics

    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, log_path.read_text()[-3000:]
    print(f"\nready after {ready_after:.2f}s; Playground -> ScaledObject in {attach_seconds:.3f}s")
