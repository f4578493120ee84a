"""Never stranded at zero, on a real control plane whose KEDA and HTTP add-on APIs come and go.

Each module-scoped control plane starts with only some CRDs (as a new user's cluster may), the reconciler runs
with a short discovery interval, and the tests install (and remove) the missing CRDs while it runs: workloads
that do not need the missing API are attached within seconds, the ones that do are kept above zero with an
Event that names what to install, and the full settings come back without a restart once the API appears.
A ScaledObject that no KEDA operator acts on is reported after the bound (no KEDA operator runs here; the
live stack in tests/e2e runs the real one).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from webhook import constants as C
from webhook.drain import HOLD_TRIGGER
from webhook.admission import Brain
from webhook.controller.metrics import reconciler_metrics
from webhook.controller.reconciler import Controller, run_controller
from webhook.kube import INTERCEPTORROUTES, NAMESPACES, PLAYGROUNDS, SCALEDOBJECTS, Kube, KubeConfig

from .controlplane import ControlPlane, crd_paths, partial_control_plane
from .test_deploy import CONTROLLER_SA_USER, SA_GROUPS, RecordingKube, manifest_docs
from .test_reconciler import _uid, events_for, get_or_none, playground, wait_for

def redis(ns: str) -> str:
    """A queue trigger at a Redis in the workload's own namespace (what the default tenant boundary lends)."""
    return f'[{{type: redis, address: "redis.{ns}:6379", listName: jobs}}]'


def http_and_redis(ns: str) -> str:
    return f'[http, {{type: redis, address: "redis.{ns}:6379", listName: jobs}}]'
DISCOVERY = 0.3


@pytest.fixture(scope="module")
def plane_without_keda(tmp_path_factory: pytest.TempPathFactory):
    with partial_control_plane(tmp_path_factory.mktemp("nokeda"), ("llmaz", "lws")) as cp:
        yield cp


@pytest.fixture(scope="module")
def plane_without_http_addon(tmp_path_factory: pytest.TempPathFactory):
    """KEDA's CRDs but not the HTTP add-on's, and the chart's cluster-wide RBAC for its ServiceAccounts: the
    reconciler here runs with exactly the permissions the chart grants (degraded mode writes ``/scale``)."""
    from kubernetes import client

    with partial_control_plane(tmp_path_factory.mktemp("nohttp"), ("llmaz", "lws", "keda")) as cp:
        api = cp.api_client()
        rbac = client.RbacAuthorizationV1Api(api)
        for doc in manifest_docs():
            if doc["kind"] == "ClusterRole":
                rbac.create_cluster_role(doc)
            elif doc["kind"] == "ClusterRoleBinding":
                rbac.create_cluster_role_binding(doc)
        api.close()
        yield cp


class Harness:
    """A reconciler on ``cp`` in its own system namespace, and helpers to look at what it did."""

    def __init__(self, cp: ControlPlane, as_chart: bool = False) -> None:
        self.cp = cp
        self.kube = Kube.from_kubeconfig(cp.kubeconfig)     # the admin: creates and reads
        # The reconciler's own client: the admin, or the controller's ServiceAccount with every refusal recorded.
        self.ctl_kube: Kube = (RecordingKube(KubeConfig.from_kubeconfig(cp.kubeconfig),
                                             impersonate_user=CONTROLLER_SA_USER, impersonate_groups=SA_GROUPS)
                               if as_chart else self.kube)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.ctl: Controller | None = None

    async def namespace(self, enabled: bool = True) -> str:
        name = f"pre-{_uid()}"
        labels = {C.NAMESPACE_LABEL: "true"} if enabled else {}
        await self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": name, "labels": labels}})
        return name

    async def start(self, **kw: Any) -> Controller:
        system = await self.namespace(enabled=False)
        brain = Brain()
        self.ctl = Controller(self.ctl_kube, brain, namespace=system, policy_configmap=None,
                              identity=f"it-{_uid()}", discovery_interval=DISCOVERY, **kw)
        self.task = asyncio.create_task(run_controller(
            self.ctl_kube, brain, namespace=system, policy_configmap=None, leader_election=False,
            identity=self.ctl.identity, stop=self.stop, controller=self.ctl))
        await asyncio.wait_for(self.ctl.synced.wait(), 30)
        return self.ctl

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 20)
        if self.ctl_kube is not self.kube:
            await self.ctl_kube.close()
        await self.kube.close()

    def denied(self) -> list[str]:
        """Refusals by RBAC. While a CRD is being deleted the API server answers 403 "create not allowed while
        custom resource definition is terminating" to every write of its kind, whoever asks; discovery still
        lists the API then, so the reconciler may try (and retry with backoff) until discovery sees it gone."""
        return [d for d in getattr(self.ctl_kube, "denied", [])
                if "custom resource definition is terminating" not in d]

    async def replicas(self, ns: str, name: str) -> int:
        scale = await self.kube.request("GET", self.kube.path(PLAYGROUNDS, ns, name, "scale"))
        return (scale.get("spec") or {}).get("replicas") or 0

    async def event(self, ns: str, name: str, reason: str, contains: str = "") -> dict[str, Any] | None:
        for e in await events_for(self.kube, ns, name, reason):
            if contains in e.get("message", ""):
                return e
        return None

    async def install(self, project: str) -> float:
        """Install a project's CRDs (blocking client: off the loop the reconciler runs on); returns the time."""
        await asyncio.to_thread(self.cp.install_crds, crd_paths((project,)), settle=False)
        return time.monotonic()

    async def uninstall(self, crd: str) -> None:
        def delete() -> None:
            status, body = self.cp.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
            assert status in (200, 202), (status, body[:300])
        await asyncio.to_thread(delete)


@pytest.fixture
async def harness_factory():
    made: list[Harness] = []

    def make(cp: ControlPlane, **kw: Any) -> Harness:
        h = Harness(cp, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


def gauge(name: str) -> float:
    return reconciler_metrics().prerequisite_ok.labels(name)._value.get()


def test_webhook_does_not_store_at_zero_without_keda(plane_without_keda, tmp_path):
    """The shipped webhook (admission only, discovery through --kubeconfig) on a cluster without KEDA: a GPU
    Playground is stored with 1 replica, not 0, and the client is told why. Runs before the test below, which
    installs KEDA's CRDs on this module's control plane."""
    from kubernetes import client

    from .test_webhook_admission import (GROUP, VERSION, apply_configurations, delete_configurations,
                                         gpu_playground, wait_until_webhook_active)
    from .webhook_harness import WebhookProcess, loopback_configurations

    api = plane_without_keda.api_client()
    proc = WebhookProcess(tmp_path / "webhook", extra_args=(
        "--kubeconfig", str(plane_without_keda.kubeconfig), "--discovery-interval", str(DISCOVERY)))
    proc.start()
    try:
        apply_configurations(api, loopback_configurations(proc.port, proc.ca_pem))
        ns = f"adm-{_uid()}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": ns, "labels": {C.NAMESPACE_LABEL: "true"}}})
        wait_until_webhook_active(api, ns)
        obj = gpu_playground("chat")
        del obj["spec"]["replicas"]
        custom = client.CustomObjectsApi(api)
        stored, status, headers = custom.create_namespaced_custom_object_with_http_info(
            GROUP, VERSION, ns, "playgrounds", obj)
        assert status == 201
        assert stored["spec"]["replicas"] == 1, "without KEDA nothing could wake it from 0"
        assert "KEDA is not installed" in headers.get("Warning", "") and "install KEDA" in headers["Warning"]
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "playgrounds", "chat")
    finally:
        delete_configurations(api)
        proc.stop()
        api.close()


async def test_without_keda_nothing_is_stranded_and_keda_installed_later_is_attached(
        plane_without_keda, harness_factory, capsys):
    h = harness_factory(plane_without_keda)
    ns = await h.namespace()
    # Stored at 0, as the webhook stores a GPU workload on a cluster where KEDA is running.
    await h.kube.create(PLAYGROUNDS, playground("chat", replicas=0), ns)
    await h.kube.create(PLAYGROUNDS, playground("batch", replicas=0, annotations={C.ANN_TRIGGERS: redis(ns)}), ns)
    ctl = await h.start()
    assert ctl.discovery.installed.keda is False and ctl.brain.installed.keda is False
    assert gauge("keda") == 0 and gauge("http-add-on") == 0

    for name in ("chat", "batch"):
        await wait_for(lambda: h.replicas(ns, name), 10, what=f"{name} lifted from 0")
        assert await h.replicas(ns, name) == 1
        e = await wait_for(lambda: h.event(ns, name, "PrerequisiteMissing", "KEDA is not installed"), 10,
                           what=f"PrerequisiteMissing on {name}")
        assert e["type"] == "Warning" and "install KEDA" in e["message"]
        assert await wait_for(lambda: h.event(ns, name, "ScaledUpFromZero"), 10, what="ScaledUpFromZero")
    assert {k for k in ctl.degraded if k[1] == ns} == {("Playground", ns, "chat"), ("Playground", ns, "batch")}

    # KEDA's CRDs appear: the queue workload is attached without a restart; the http one still needs the add-on.
    installed_at = await h.install("keda")
    so = await wait_for(lambda: get_or_none(h.kube, SCALEDOBJECTS, "batch", ns), 15, interval=0.05,
                        what="ScaledObject batch after KEDA appeared")
    picked_up = time.monotonic() - installed_at
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["triggers"][0]["type"] == "redis"
    assert gauge("keda") == 1
    assert await wait_for(lambda: h.event(ns, "chat", "PrerequisiteMissing", "KEDA HTTP add-on is not installed"),
                          10, what="chat now waits for the HTTP add-on")
    assert await get_or_none(h.kube, SCALEDOBJECTS, "chat", ns) is None
    assert {k for k in ctl.degraded if k[1] == ns} == {("Playground", ns, "chat")}
    with capsys.disabled():
        print(f"\n[prerequisites] KEDA CRDs installed -> ScaledObject of a waiting workload: {picked_up:.2f}s "
              f"(discovery every {DISCOVERY}s)")
    assert picked_up < 10


async def test_http_addon_absent_then_installed_then_removed(plane_without_http_addon, harness_factory, capsys):
    h = harness_factory(plane_without_http_addon, as_chart=True)
    ns = await h.namespace()
    t0 = time.monotonic()
    ctl = await h.start()
    assert ctl.discovery.installed.keda is True and ctl.discovery.installed.http_addon is False
    await h.kube.create(PLAYGROUNDS, playground("queue", replicas=0, annotations={C.ANN_TRIGGERS: redis(ns)}), ns)
    await h.kube.create(PLAYGROUNDS, playground("both", replicas=0, annotations={C.ANN_TRIGGERS: http_and_redis(ns)}),
                        ns)
    await h.kube.create(PLAYGROUNDS, playground("web", replicas=0), ns)   # http only (the default)

    # Non-http workloads are not held up by the missing add-on: attached at once, untouched at 0.
    so = await wait_for(lambda: get_or_none(h.kube, SCALEDOBJECTS, "queue", ns), 10, interval=0.02,
                        what="ScaledObject queue")
    first = time.monotonic() - t0
    assert so["spec"]["minReplicaCount"] == 0 and await h.replicas(ns, "queue") == 0
    # http + redis: attached on redis alone, never below 1, and told why.
    so = await wait_for(lambda: get_or_none(h.kube, SCALEDOBJECTS, "both", ns), 10, what="ScaledObject both")
    assert so["spec"]["minReplicaCount"] == 1 and [t["type"] for t in so["spec"]["triggers"]] == ["redis"]
    await wait_for(lambda: h.replicas(ns, "both"), 10, what="both lifted from 0")
    e = await wait_for(lambda: h.event(ns, "both", "PrerequisiteMissing", "scales on its other triggers only"),
                       10, what="PrerequisiteMissing on both")
    assert "install the KEDA HTTP add-on" in e["message"] and e["type"] == "Warning"
    # http only: no ScaledObject can wake it, so it is kept at 1.
    await wait_for(lambda: h.replicas(ns, "web"), 10, what="web lifted from 0")
    assert await wait_for(lambda: h.event(ns, "web", "PrerequisiteMissing", "http is its only trigger"), 10,
                          what="PrerequisiteMissing on web")
    assert await get_or_none(h.kube, SCALEDOBJECTS, "web", ns) is None

    # The add-on is installed: full settings, InterceptorRoutes, scale to zero allowed again.
    installed_at = await h.install("http-add-on")
    ir = await wait_for(lambda: get_or_none(h.kube, INTERCEPTORROUTES, "web", ns), 15, interval=0.05,
                        what="InterceptorRoute web after the add-on appeared")
    picked_up = time.monotonic() - installed_at
    assert ir["spec"]["target"]["service"] == "web-lb"

    async def full_settings() -> bool:
        so = await get_or_none(h.kube, SCALEDOBJECTS, "both", ns)
        # http + redis, besides the hold trigger every ScaledObject that may go to zero carries (webhook/drain.py)
        ours = [t for t in so["spec"]["triggers"] if t.get("name") != HOLD_TRIGGER] if so else []
        return bool(so) and so["spec"]["minReplicaCount"] == 0 and len(ours) == 2
    await wait_for(full_settings, 10, what="both back on http + redis with min 0")
    assert await wait_for(lambda: get_or_none(h.kube, SCALEDOBJECTS, "web", ns), 10, what="ScaledObject web")
    assert not ctl.degraded and gauge("http-add-on") == 1

    # The add-on goes away again: the http-only workload loses its ScaledObject and is held at >= 1.
    await h.uninstall("interceptorroutes.http.keda.sh")

    async def web_detached() -> bool:
        return await get_or_none(h.kube, SCALEDOBJECTS, "web", ns) is None and ("Playground", ns, "web") in ctl.degraded
    await wait_for(web_detached, 15, what="web degraded after the add-on was removed")
    assert gauge("http-add-on") == 0 and await h.replicas(ns, "web") >= 1
    assert not h.denied(), "the chart's RBAC refused requests of the reconciler:\n" + "\n".join(h.denied())
    with capsys.disabled():
        print(f"\n[prerequisites] reconciler start -> first ScaledObject with the HTTP add-on absent: {first:.2f}s; "
              f"add-on CRDs installed -> InterceptorRoute: {picked_up:.2f}s")
    assert first < 10 and picked_up < 10


async def test_scaled_object_no_keda_operator_acts_on_is_reported(control_plane, harness_factory):
    h = harness_factory(control_plane)
    ns = await h.namespace()
    ctl = await h.start(keda_ready_bound=2.0)
    # The clock starts before the create: the 2 s bound counts from the ScaledObject's creation (whole seconds),
    # so the Event comes no sooner than 1 s after this point however late the test itself sees the object.
    t0 = time.monotonic()
    await h.kube.create(PLAYGROUNDS, playground("idle", annotations={C.ANN_TRIGGERS: redis(ns)}), ns)
    await wait_for(lambda: get_or_none(h.kube, SCALEDOBJECTS, "idle", ns), 10, what="ScaledObject idle")
    # No KEDA operator runs on this control plane: nobody writes status.conditions.
    e = await wait_for(lambda: h.event(ns, "idle", "KEDANotReconciling"), 15, what="KEDANotReconciling")
    assert time.monotonic() - t0 >= 1.0 and e["type"] == "Warning"
    assert "within 2s" in e["message"] and "KEDA operator is running" in e["message"]

    # What KEDA writes when a scaler cannot work, and when it recovers (written here as the operator would).
    async def set_conditions(*conds: tuple[str, str, str, str]) -> None:
        status = {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conds]}
        await h.kube.patch(SCALEDOBJECTS, "idle", {"status": status}, ns, subresource="status")
    await set_conditions(("Ready", "False", "ScaledObjectCheckFailed", "error connecting to redis.jobs:6379"))
    e = await wait_for(lambda: h.event(ns, "idle", "KEDANotReady"), 10, what="KEDANotReady")
    assert "ScaledObjectCheckFailed: error connecting to redis.jobs:6379" in e["message"]
    await set_conditions(("Ready", "True", "ScaledObjectReady", ""), ("Active", "False", "", ""))
    e = await wait_for(lambda: h.event(ns, "idle", "KEDAReady"), 10, what="KEDAReady after recovery")
    assert e["type"] == "Normal" and ("Playground", ns, "idle") not in ctl._keda_warned
