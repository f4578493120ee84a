"""Admission and reconciliation as separate processes (the chart's two Deployments), on the real API server.

- ``serve --role admission`` and ``serve --role controller --leader-election`` side by side behind the shipped
  webhook configurations: the Playground is mutated by the one and gets its ScaledObject from the other; the
  Lease is held by the controller only; after the controller is killed (SIGKILL, as an OOM kill would) the
  admission process keeps answering through the API server.
- The Lease renewed on its own thread (``webhook.leader_thread``): a replica whose event loop is blocked steps
  down before its Lease can expire, and a second replica takes over; the two are never leader at once.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_serve_e2e import NS, service_namespace, wait_for  # noqa: F401 - fixture
from tests.integration.test_webhook_admission import apply_configurations, delete_configurations
from tests.integration.webhook_harness import (ROOT, free_port, serve_ready, shipped_webhook_configurations,
                                               stop_process_group)
from webhook import constants as C
from webhook.kube import LEASES, Kube
from webhook.leader_thread import ThreadedElector


def _start(args: list[str], log_path, pod: str) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "webhook", "serve", *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "POD_NAMESPACE": NS, "POD_NAME": pod},
                                start_new_session=True)


@pytest.fixture
def split(control_plane, kube, service_namespace, tmp_path):  # noqa: F811 - pytest fixture by name
    port, admission_metrics, controller_metrics = free_port(), free_port(), free_port()
    configs = []
    for cfg in shipped_webhook_configurations():
        cfg = copy.deepcopy(cfg)
        path = "/mutate" if cfg["kind"] == "MutatingWebhookConfiguration" else "/validate"
        for hook in cfg["webhooks"]:
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
        cfg["metadata"] = {"name": cfg["metadata"]["name"]}
        configs.append(cfg)
    apply_configurations(kube, configs)
    common = ["--host", "127.0.0.1", "--policy-configmap", f"{NS}/llmaz-serverless-policy",
              "--kubeconfig", str(control_plane.kubeconfig)]
    admission_log, controller_log = tmp_path / "admission.log", tmp_path / "controller.log"
    admission = _start([*common, "--role", "admission", "--port", str(port), "--metrics-port",
                        str(admission_metrics), "--cert-mode", "self-managed", "--cert-dir", str(tmp_path / "certs"),
                        "--cert-extra-san", "127.0.0.1"], admission_log, "roles-admission")
    controller = _start([*common, "--role", "controller", "--leader-election", "--metrics-port",
                         str(controller_metrics), "--resync", "60"], controller_log, "roles-controller")
    try:
        wait_for(lambda: serve_ready(admission, admission_metrics, admission_log), 60, "the admission process")
        wait_for(lambda: serve_ready(controller, controller_metrics, controller_log), 60, "the controller process")
        yield admission, controller, (admission_log, controller_log)
    finally:
        stop_process_group(controller)
        stop_process_group(admission)
        delete_configurations(kube)
        # A SIGKILLed controller cannot release its Lease: free it so the next test's leader need not wait
        # out the lease duration.
        try:
            client.CoordinationV1Api(kube).delete_namespaced_lease("llmaz-serverless-leader", NS)
        except ApiException as e:
            if e.status != 404:
                raise


def test_admission_survives_the_controller(kube, namespace, split):
    admission, controller, (admission_log, controller_log) = split
    custom = client.CustomObjectsApi(kube)
    ns = namespace(labels={C.NAMESPACE_LABEL: "true"}, prefix="roles")

    def playground(name: str) -> dict:
        return {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "metadata": {"name": name},
                "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen"},
                         "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}

    def mutated(name: str):
        try:
            obj = custom.create_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds",
                                                         playground(name), dry_run="All")
        except ApiException:
            return None
        return (obj.get("metadata", {}).get("annotations") or {}).get(C.ANN_MANAGED)

    wait_for(lambda: mutated("probe"), 20, "the admission process to answer through the API server")
    custom.create_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", playground("chat"))

    def scaled_object():
        try:
            return custom.get_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", "chat")
        except ApiException:
            return None

    wait_for(scaled_object, 20, "the controller process to create the ScaledObject")
    lease = client.CoordinationV1Api(kube).read_namespaced_lease("llmaz-serverless-leader", NS)
    assert lease.spec.holder_identity.startswith("roles-controller")
    assert "llmaz_serverless_admissions_total" not in controller_log.read_text()
    # The admission process has no webhook-independent work to lose: no reconciler, no Lease.
    assert "became leader" not in admission_log.read_text()

    os.killpg(controller.pid, signal.SIGKILL)
    controller.wait(timeout=10)
    custom.create_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", playground("after"))
    stored = custom.get_namespaced_custom_object(C.LLMAZ_GROUP, "v1alpha1", ns, "playgrounds", "after")
    assert stored["metadata"]["annotations"][C.ANN_MANAGED] == "true" and stored["spec"]["replicas"] == 0
    assert admission.poll() is None


async def test_blocked_loop_steps_down_before_a_successor_takes_over(control_plane, namespace):
    ns = namespace(prefix="lease")
    lease_duration, renew = 3.0, 0.3
    kube_a = Kube.from_kubeconfig(control_plane.kubeconfig)
    a = ThreadedElector(kube_a, ns, name="roles", identity="replica-a", lease_duration=lease_duration,
                        renew_period=renew)
    stop_a = asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    await asyncio.wait_for(a.leading.wait(), 15)

    # Replica b on a loop (and thread) of its own, as another pod would be.
    b_box: dict = {}
    b_started = threading.Event()

    def run_b() -> None:
        async def main() -> None:
            b = ThreadedElector(Kube.from_kubeconfig(control_plane.kubeconfig), ns, name="roles",
                                identity="replica-b", lease_duration=lease_duration, renew_period=renew)
            b_box["elector"], b_box["stop"], b_box["loop"] = b, asyncio.Event(), asyncio.get_running_loop()
            b_started.set()
            await b.run(b_box["stop"])
        asyncio.run(main())

    tb = threading.Thread(target=run_b, daemon=True)
    tb.start()
    assert b_started.wait(10)
    b = b_box["elector"]
    overlap = []
    watching = threading.Event()

    def watch() -> None:   # samples both flags from outside either loop
        while not watching.is_set():
            if a.is_leader and b.is_leader:
                overlap.append(time.monotonic())
            time.sleep(0.01)

    tw = threading.Thread(target=watch, daemon=True)
    tw.start()
    time.sleep(1.0)
    assert a.is_leader and not b.is_leader
    time.sleep(lease_duration * 2.5)     # replica a's loop is blocked: no heartbeat
    assert not a.is_leader and b.is_leader
    assert a.elector is not None and a.elector.skipped > 0
    watching.set()
    tw.join()
    assert not overlap
    # Once a's loop runs again it sees the Lease held by b and stays a follower.
    await asyncio.sleep(1.0)
    assert not a.is_leader and not a.leading.is_set() and b.is_leader
    lease = await kube_a.get(LEASES, "roles", ns)
    assert lease["spec"]["holderIdentity"] == "replica-b"
    stop_a.set()
    await task_a
    b_box["loop"].call_soon_threadsafe(b_box["stop"].set)
    await asyncio.to_thread(tb.join, 15)
    await kube_a.close()
