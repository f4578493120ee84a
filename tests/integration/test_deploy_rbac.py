"""Each component of the chart with exactly its own ServiceAccount, on a real kube-apiserver (RBAC enforced).

The committed manifest (``test_deploy.installed``) gives the webhook pods the ServiceAccount
``llmaz-serverless`` and the reconciler pods ``llmaz-serverless-controller``, each bound to what its role calls.

1. SubjectAccessReviews, call by call (the tables of ``tests/unit/test_chart.py``, which reads the rendered
   rules; here the API server judges them): the webhook's ServiceAccount may make the calls of
   ``serve --role admission`` (policy and OpenModel caches, CA Secret, caBundle) and none of the reconciler's
   (``create scaledobjects.keda.sh``, workload patches, HPA deletes, Events, the Lease); the controller's may
   make the reconciler's and none of the certificates'.
2. The processes as the chart runs them, side by side, each authenticated with a token of its own
   ServiceAccount (TokenRequest, as a pod's projected token; no impersonation): ``serve --role admission``
   manages its certificates, caches the policy and the OpenModels and answers the API server's admission
   calls; ``serve --role controller --leader-election`` takes the Lease, attaches KEDA to a Playground and
   removes it again on opt-out. Neither process logs a single refused request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.unit.test_chart import CACHE_CALLS, CERTIFICATE_CALLS, RECONCILER_CALLS
from webhook import constants as C

from .test_deploy import (CONTROLLER_SA_NAME, CONTROLLER_SA_USER, LEASE, NS, SA_GROUPS, SA_NAME, SA_USER,  # noqa: F401
                          WEBHOOK_CONFIG, api, gpu_playground, installed, mapper,
                          no_leftover_webhook_configurations)
from .test_serve_e2e import wait_for
from .test_webhook_admission import apply_configurations, delete_configurations
from .webhook_harness import ROOT, free_port, serve_ready, shipped_webhook_configurations, stop_process_group

POLICY = f"{NS}/llmaz-serverless-policy"


# ================================================================== 1. what the API server allows whom


def _allowed(api, user: str, call) -> bool:
    verb, group, resource, namespace, name = call
    resource, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": subresource,
                  "namespace": namespace or "", "name": name or ""}
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": list(SA_GROUPS), "resourceAttributes": attributes}}
    status, body, _ = api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert status == 201, body
    return bool(body["status"].get("allowed"))


def test_each_service_account_may_make_exactly_its_roles_calls(installed, api):
    refused = ("create", "keda.sh", "scaledobjects", "ai", None)
    assert refused in RECONCILER_CALLS
    assert not _allowed(api, SA_USER, refused), "the admission ServiceAccount may create ScaledObjects"
    assert _allowed(api, CONTROLLER_SA_USER, refused)
    wrong = []
    for user, allowed, refused_calls in ((SA_USER, CACHE_CALLS + CERTIFICATE_CALLS, RECONCILER_CALLS),
                                         (CONTROLLER_SA_USER, CACHE_CALLS + RECONCILER_CALLS, CERTIFICATE_CALLS)):
        wrong += [f"{user} refused {call}" for call in allowed if not _allowed(api, user, call)]
        wrong += [f"{user} allowed {call}" for call in refused_calls if _allowed(api, user, call)]
    assert not wrong, "\n".join(wrong)


# ================================================================ 2. the processes, with their own tokens


def _kubeconfig(api, control_plane, sa: str, path: Path) -> Path:
    """A kubeconfig holding a fresh token of ServiceAccount ``sa``: what a pod of it authenticates with."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    status, body, _ = api("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{sa}/token", request)
    assert status == 201, body
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": sa,
        "clusters": [{"name": "test", "cluster": {"server": control_plane.server,
                                                   "certificate-authority": str(control_plane.ca_cert)}}],
        "users": [{"name": sa, "user": {"token": body["status"]["token"]}}],
        "contexts": [{"name": sa, "context": {"cluster": "test", "user": sa}}]}))
    return path


def _start(args: list[str], log_path: Path, pod: str) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", *args], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "POD_NAMESPACE": NS, "POD_NAME": pod})


def _refusals(log_path: Path) -> list[str]:
    """Log lines about a request the API server refused (403 Forbidden: "... is forbidden: User ...")."""
    return [line for line in log_path.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]


def _no_refusals(*logs: Path):
    """Fails at once when a process logged a refused request, instead of after a wait's whole timeout."""
    refused = [line for log in logs for line in _refusals(log)]
    assert not refused, "requests refused by the chart's RBAC:\n" + "\n".join(refused[:20])


def _get(custom, group: str, version: str, ns: str, plural: str, name: str):
    try:
        return custom.get_namespaced_custom_object(group, version, ns, plural, name)
    except ApiException as e:
        if e.status != 404:
            raise
        return None


def test_admission_and_controller_run_with_their_own_service_accounts(installed, api, control_plane, kube,
                                                                         namespace, tmp_path):
    port, admission_metrics, controller_metrics = free_port(), free_port(), free_port()
    # The shipped configurations, pointed at the admission process on loopback (no caBundle: the admission
    # process injects its own, as in the cluster).
    configs = []
    for cfg in shipped_webhook_configurations():
        for hook in cfg["webhooks"]:
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{hook['clientConfig']['service']['path']}"}
        cfg["metadata"] = {"name": cfg["metadata"]["name"]}
        configs.append(cfg)
    apply_configurations(kube, configs)
    admission_log, controller_log = tmp_path / "admission.log", tmp_path / "controller.log"
    webhook_kubeconfig = _kubeconfig(api, control_plane, SA_NAME, tmp_path / "webhook.kubeconfig")
    controller_kubeconfig = _kubeconfig(api, control_plane, CONTROLLER_SA_NAME, tmp_path / "controller.kubeconfig")
    # The arguments of the chart's two Deployments (templates/deployment.yaml), on loopback.
    admission = _start(["--role", "admission", "--port", str(port), "--metrics-port", str(admission_metrics),
                        "--cert-mode", "self-managed", "--cert-dir", str(tmp_path / "certs"),
                        "--cert-extra-san", "127.0.0.1", "--policy-configmap", POLICY,
                        "--webhook-config-name", WEBHOOK_CONFIG, "--service-name", "llmaz-serverless-webhook",
                        "--kubeconfig", str(webhook_kubeconfig)], admission_log, "rbac-admission")
    controller = _start(["--role", "controller", "--leader-election", "--metrics-port", str(controller_metrics),
                         "--policy-configmap", POLICY, "--resync", "60", "--kubeconfig", str(controller_kubeconfig)],
                        controller_log, "rbac-controller")
    custom = client.CustomObjectsApi(kube)

    def until(probe, timeout: float, what: str):
        return wait_for(lambda: _no_refusals(admission_log, controller_log) or probe(), timeout, what)

    try:
        # Ready: the CA Secret created and the caBundle injected (self-managed certificates), the policy read,
        # the installed APIs discovered; then the OpenModel cache too.
        until(lambda: serve_ready(admission, admission_metrics, admission_log), 60, "the admission process")
        until(lambda: "caches synced" in admission_log.read_text(), 30, "the admission caches")
        until(lambda: serve_ready(controller, controller_metrics, controller_log), 60, "the controller process")
        adm = client.AdmissionregistrationV1Api(kube)
        hooks = (adm.read_mutating_webhook_configuration(WEBHOOK_CONFIG).webhooks
                 + adm.read_validating_webhook_configuration(WEBHOOK_CONFIG).webhooks)
        assert all(h.client_config.ca_bundle for h in hooks)
        secret = client.CoreV1Api(kube).read_namespaced_secret("llmaz-serverless-ca", NS)
        assert secret.metadata.labels.get("app.kubernetes.io/managed-by") == "llmaz-serverless"

        # Admission through the API server, as the webhook's ServiceAccount; the KEDA objects, Events and
        # Lease as the controller's.
        ns = namespace(labels={C.NAMESPACE_LABEL: "true"}, prefix="rbac")
        custom.create_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", gpu_playground("chat"))
        stored = custom.get_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", "chat")
        assert (stored["metadata"].get("annotations") or {}).get(C.ANN_MANAGED) == "true", "not admitted by us"
        until(lambda: _get(custom, "keda.sh", "v1alpha1", ns, "scaledobjects", C.scaled_object_name("chat")),
              30, "the ScaledObject")
        until(lambda: _get(custom, "http.keda.sh", "v1beta1", ns, "interceptorroutes",
                           C.interceptor_route_name("chat")), 30, "the InterceptorRoute")
        until(lambda: [e for e in client.CoreV1Api(kube).list_namespaced_event(ns).items if e.reason == "Attached"],
              30, "the Attached Event")
        lease = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, NS)
        assert lease.spec.holder_identity.startswith("rbac-controller")
        # Opt-out at zero replicas: the workload patched back above zero, the KEDA objects deleted.
        custom.patch_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", "chat",
                                              {"metadata": {"annotations": {C.ANN_ENABLED: "false"}}})
        until(lambda: not _get(custom, "keda.sh", "v1alpha1", ns, "scaledobjects", C.scaled_object_name("chat")),
              30, "the ScaledObject deleted")
        live = custom.get_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", "chat")
        assert live["spec"]["replicas"] >= 1
        time.sleep(1.0)   # a refusal logged right after the last write would otherwise go unseen
        assert admission.poll() is None and controller.poll() is None
        _no_refusals(admission_log, controller_log)
    finally:
        stop_process_group(controller)
        stop_process_group(admission)
        delete_configurations(kube)
    # A graceful stop releases the Lease, as the controller's ServiceAccount.
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, NS)
    assert not lease.spec.holder_identity
    _no_refusals(admission_log, controller_log)
    assert "became leader" not in admission_log.read_text()   # the admission process never elects
