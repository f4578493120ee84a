"""The reconciler against a real kube-apiserver + etcd + kube-controller-manager (garbage collector).

Each test starts its own controller (``run_controller``) on the test's event loop with its own "system"
namespace (Lease, policy ConfigMap) and its own workload namespaces. No webhook runs here: the reconciler is
tested alone, so objects are created exactly as written.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pytest

from webhook import constants as C
from webhook.drain import HOLD_TRIGGER
from webhook.admission import Brain
from webhook.keda import desired_objects
from webhook.kube import (CONFIGMAPS, EVENTS, HPAS, INTERCEPTORROUTES, LEASES, NAMESPACES, PLAYGROUNDS,
                          SCALEDOBJECTS, SERVICES, ApiError, Kube, NotFound)
from webhook.leader import LeaderElector
from webhook.policy import Policy
from webhook.controller.metrics import reconciler_metrics
from webhook.controller.reconciler import Controller, run_controller

POLICY_CM = "llmaz-serverless-policy"
ENABLED = {C.NAMESPACE_LABEL: "true"}


# ============================================================================================ helpers


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def playground(name: str, *, annotations: dict[str, str] | None = None, replicas: int | None = None,
               **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                           "metadata": {"name": name}, "spec": {"modelClaim": {"modelName": "qwen-7b"}, **spec}}
    if annotations:
        obj["metadata"]["annotations"] = dict(annotations)
    if replicas is not None:
        obj["spec"]["replicas"] = replicas
    return obj


def service(name: str, *, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": C.LLMAZ_API_VERSION, "kind": "Service", "metadata": {"name": name},
        "spec": {"modelClaims": {"models": [{"name": "qwen-7b"}]},
                 "workloadTemplate": {"leaderWorkerTemplate": {"size": 1, "workerTemplate": {"spec": {
                     "containers": [{"name": "model-runner", "image": "vllm/vllm-openai",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}}}
    if owner is not None:
        obj["metadata"]["ownerReferences"] = [{
            "apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return obj


async def wait_for(probe: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.05,
                   what: str = "condition") -> Any:
    """Poll ``probe`` until it returns something truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
        except NotFound:
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def get_or_none(kube: Kube, res, name: str, ns: str) -> dict[str, Any] | None:
    try:
        return await kube.get(res, name, ns)
    except NotFound:
        return None


async def events_for(kube: Kube, ns: str, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    items = (await kube.list(EVENTS, ns, field_selector=f"involvedObject.name={name}")).items
    return [e for e in items if reason is None or e.get("reason") == reason]


def assert_equals_desired(live: dict[str, Any], want: dict[str, Any]) -> None:
    """Field by field: spec, our labels, name/namespace and the controller ownerReference."""
    assert live["metadata"]["name"] == want["metadata"]["name"]
    assert live["metadata"]["namespace"] == want["metadata"]["namespace"]
    for k, v in want["metadata"]["labels"].items():
        assert live["metadata"]["labels"].get(k) == v, k
    assert live["metadata"]["ownerReferences"] == want["metadata"]["ownerReferences"]
    for k, v in want["spec"].items():
        assert live["spec"].get(k) == v, f"spec.{k}: live {live['spec'].get(k)!r} != desired {v!r}"


@dataclass
class Running:
    ctl: Controller
    kube: Kube
    stop: asyncio.Event
    task: asyncio.Task
    system_ns: str

    async def close(self) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(self.task, 20)
        finally:
            await self.kube.close()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the work queue is empty and no worker is busy."""
        async def idle():
            await asyncio.sleep(0.2)
            return len(self.ctl.queue) == 0 and not self.ctl.queue._processing
        await wait_for(idle, timeout, what="an idle work queue")


@pytest.fixture
async def akube(control_plane):
    k = Kube.from_kubeconfig(control_plane.kubeconfig)
    yield k
    await k.close()


@pytest.fixture
async def start_controller(control_plane, namespace):
    """Factory: start ``run_controller`` in the background; everything is stopped at teardown."""
    running: list[Running] = []

    async def start(*, system_ns: str | None = None, policy_configmap: str | None = POLICY_CM,
                    leader_election: bool = False, identity: str | None = None, wait_synced: bool = True,
                    resync: float = 300, **kw: Any) -> Running:
        ns = system_ns or namespace(prefix="sys")
        kube = Kube.from_kubeconfig(control_plane.kubeconfig)
        brain = Brain()
        stop = asyncio.Event()
        ctl = Controller(kube, brain, namespace=ns, policy_configmap=policy_configmap,
                         identity=identity or f"it-{_uid()}", resync=resync)
        task = asyncio.create_task(run_controller(
            kube, brain, namespace=ns, policy_configmap=policy_configmap, leader_election=leader_election,
            identity=ctl.identity, stop=stop, controller=ctl, **kw))
        r = Running(ctl, kube, stop, task, ns)
        running.append(r)
        if wait_synced:
            await asyncio.wait_for(ctl.synced.wait(), 30)
        return r

    yield start
    for r in running:
        if not r.task.done():
            await r.close()
        else:
            await r.kube.close()


async def create_pg(kube: Kube, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    return await kube.create(PLAYGROUNDS, obj, ns)


async def so_of(kube: Kube, ns: str, name: str):
    return await get_or_none(kube, SCALEDOBJECTS, name, ns)


async def ir_of(kube: Kube, ns: str, name: str):
    return await get_or_none(kube, INTERCEPTORROUTES, name, ns)


# ============================================================================================ tests


async def test_playground_gets_keda_objects_equal_to_desired(start_controller, akube, namespace, capsys):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    latencies = []
    for i in range(10):
        name = f"chat-{i}"
        t0 = time.perf_counter()
        pg = await create_pg(akube, ns, playground(name))
        await wait_for(lambda: so_of(akube, ns, name), 10, interval=0.002, what=f"ScaledObject {name}")
        latencies.append(time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[reconciler] Playground create -> ScaledObject present: median "
              f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms (10 samples)")
    assert statistics.median(latencies) < 1.0

    pg = await akube.get(PLAYGROUNDS, "chat-0", ns)
    want = desired_objects(pg, Policy.default(), r.ctl.brain.models)
    so = await akube.get(SCALEDOBJECTS, "chat-0", ns)
    ir = await wait_for(lambda: ir_of(akube, ns, "chat-0"), what="InterceptorRoute")
    assert want.scaled_object and want.interceptor_route
    assert_equals_desired(so, want.scaled_object)
    assert_equals_desired(ir, want.interceptor_route)
    ref = so["metadata"]["ownerReferences"][0]
    assert ref["uid"] == pg["metadata"]["uid"] and ref["controller"] is True and ref["kind"] == "Playground"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                                            "name": "chat-0"}
    assert await wait_for(lambda: events_for(akube, ns, "chat-0", "Attached"), what="Attached event")

    # Steady state: a full resync writes nothing.
    await r.settle()
    writes, rv = r.ctl.write_count, so["metadata"]["resourceVersion"]
    done = r.ctl.reconcile_count
    r.ctl.enqueue_all()
    await wait_for(lambda: asyncio.sleep(0, r.ctl.reconcile_count >= done + 10), what="a resync")
    await r.settle()
    assert r.ctl.write_count == writes
    assert (await akube.get(SCALEDOBJECTS, "chat-0", ns))["metadata"]["resourceVersion"] == rv


async def test_annotation_edits_update_objects(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    await start_controller()
    await create_pg(akube, ns, playground("edit"))
    await wait_for(lambda: ir_of(akube, ns, "edit"), what="InterceptorRoute")
    so = await wait_for(lambda: so_of(akube, ns, "edit"))
    assert so["spec"]["maxReplicaCount"] == 4

    await akube.patch(PLAYGROUNDS, "edit", {"metadata": {"annotations": {C.ANN_MAX_REPLICAS: "3"}}}, ns)

    async def max3():
        so = await so_of(akube, ns, "edit")
        return so if so and so["spec"]["maxReplicaCount"] == 3 else None
    await wait_for(max3, what="maxReplicaCount 3")

    # http dropped from the triggers: the InterceptorRoute goes, the ScaledObject follows.
    await akube.patch(PLAYGROUNDS, "edit", {"metadata": {"annotations": {C.ANN_TRIGGERS: "queue-depth"}}}, ns)

    async def prometheus_only():
        so = await so_of(akube, ns, "edit")
        types = [t["type"] for t in so["spec"]["triggers"] if t.get("name") != HOLD_TRIGGER] if so else []
        return so if types == ["prometheus"] else None
    await wait_for(prometheus_only, what="triggers [prometheus]")
    await wait_for(lambda: _absent(akube, INTERCEPTORROUTES, "edit", ns), what="InterceptorRoute deleted")
    assert await wait_for(lambda: events_for(akube, ns, "edit", "Updated"), what="Updated event")


async def _absent(kube: Kube, res, name: str, ns: str) -> bool:
    return await get_or_none(kube, res, name, ns) is None


async def test_deleted_scaledobject_is_recreated(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    await start_controller()
    await create_pg(akube, ns, playground("again"))
    first = await wait_for(lambda: so_of(akube, ns, "again"))
    await akube.delete(SCALEDOBJECTS, "again", ns)

    async def recreated():
        so = await so_of(akube, ns, "again")
        return so if so and so["metadata"]["uid"] != first["metadata"]["uid"] else None
    await wait_for(recreated, what="ScaledObject recreated")


async def test_deleting_playground_garbage_collects_keda_objects(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    await start_controller()
    await create_pg(akube, ns, playground("gone"))
    await wait_for(lambda: so_of(akube, ns, "gone"))
    await wait_for(lambda: ir_of(akube, ns, "gone"))
    await akube.delete(PLAYGROUNDS, "gone", ns)
    await wait_for(lambda: _absent(akube, SCALEDOBJECTS, "gone", ns), 60, 0.25, "ScaledObject garbage-collected")
    await wait_for(lambda: _absent(akube, INTERCEPTORROUTES, "gone", ns), 60, 0.25, "InterceptorRoute GC")


async def test_opt_out_removes_objects_and_restores_replicas(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    await start_controller()
    await create_pg(akube, ns, playground("zero", replicas=0))                       # GPU default: min 0
    await create_pg(akube, ns, playground("warm", replicas=0, annotations={C.ANN_MIN_REPLICAS: "2"}))
    await wait_for(lambda: so_of(akube, ns, "zero"))
    so_warm = await wait_for(lambda: so_of(akube, ns, "warm"))
    assert so_warm["spec"]["minReplicaCount"] == 2
    for name in ("zero", "warm"):
        await akube.patch(PLAYGROUNDS, name, {"metadata": {"annotations": {C.ANN_ENABLED: "false"}}}, ns)
    for name, expected in (("zero", 1), ("warm", 2)):
        await wait_for(lambda: _absent(akube, SCALEDOBJECTS, name, ns), what=f"{name}: ScaledObject removed")
        await wait_for(lambda: _absent(akube, INTERCEPTORROUTES, name, ns), what=f"{name}: route removed")
        pg = await akube.get(PLAYGROUNDS, name, ns)
        assert pg["spec"]["replicas"] == expected, name
        ev = await wait_for(lambda: events_for(akube, ns, name, "Removed"), what="Removed event")
        assert "stranded" in ev[0]["message"]


async def test_namespace_label_removed_cleans_up(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    await start_controller()
    await create_pg(akube, ns, playground("pg", replicas=0))
    await wait_for(lambda: so_of(akube, ns, "pg"))
    await akube.patch(NAMESPACES, ns, {"metadata": {"labels": {C.NAMESPACE_LABEL: None}}})
    await wait_for(lambda: _absent(akube, SCALEDOBJECTS, "pg", ns), what="ScaledObject removed")
    await wait_for(lambda: _absent(akube, INTERCEPTORROUTES, "pg", ns), what="route removed")
    assert (await akube.get(PLAYGROUNDS, "pg", ns))["spec"]["replicas"] == 1


async def test_namespace_labelled_later_adopts_existing_playgrounds(start_controller, akube, namespace):
    ns = namespace()
    r = await start_controller()
    for i in range(3):
        await create_pg(akube, ns, playground(f"old-{i}"))
    await r.settle()
    assert await so_of(akube, ns, "old-0") is None          # not opted in: nothing
    await akube.patch(NAMESPACES, ns, {"metadata": {"labels": ENABLED}})
    for i in range(3):
        await wait_for(lambda: so_of(akube, ns, f"old-{i}"), what=f"old-{i} adopted")


async def test_standalone_service_is_managed_and_playground_owned_service_ignored(start_controller, akube,
                                                                                   namespace):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    await akube.create(SERVICES, service("standalone"), ns)
    so = await wait_for(lambda: so_of(akube, ns, "standalone"), what="ScaledObject of the standalone Service")
    assert so["spec"]["scaleTargetRef"]["kind"] == "Service"
    assert so["metadata"]["labels"][C.LABEL_WORKLOAD_KIND] == "Service"
    assert so["metadata"]["ownerReferences"][0]["kind"] == "Service"

    owner = await create_pg(akube, ns, playground("owner"))
    await akube.create(SERVICES, service("owned", owner=owner), ns)
    await wait_for(lambda: so_of(akube, ns, "owner"), what="the Playground's ScaledObject")
    await r.settle()
    assert await so_of(akube, ns, "owned") is None
    assert not await events_for(akube, ns, "owned")


async def test_policy_configmap_last_good_and_changes(start_controller, akube, namespace, control_plane):
    sys_ns = namespace(prefix="sys")
    ns = namespace(labels=ENABLED)

    def doc(max_replicas: int) -> str:
        return (f"defaults: {{minReplicas: 0, maxReplicas: {max_replicas}, cooldownPeriod: 60, pollingInterval: 10,"
                f" initialCooldownPeriod: 0, startAtZero: true, triggers: [http]}}\n")

    await akube.create(CONFIGMAPS, {"metadata": {"name": POLICY_CM}, "data": {"policy.yaml": doc(5)}}, sys_ns)
    r = await start_controller(system_ns=sys_ns)
    for name in ("p1", "p2"):
        await create_pg(akube, ns, playground(name))

    async def all_max(n):
        sos = [await so_of(akube, ns, x) for x in ("p1", "p2")]
        return all(so and so["spec"]["maxReplicaCount"] == n for so in sos)
    await wait_for(lambda: all_max(5), what="maxReplicaCount 5 from the policy")
    rv = (await akube.get(SCALEDOBJECTS, "p1", ns))["metadata"]["resourceVersion"]

    # An invalid policy: rejected, the last good one stays, an Event on the ConfigMap, the gauge drops to 0.
    errors_before = reconciler_metrics().policy_errors._value.get()
    await akube.patch(CONFIGMAPS, POLICY_CM, {"data": {"policy.yaml": "maxReplicasCap: [1, 2]\n"}}, sys_ns)
    ev = await wait_for(lambda: events_for(akube, sys_ns, POLICY_CM, "PolicyInvalid"), what="PolicyInvalid event")
    assert "maxReplicasCap" in ev[0]["message"] and ev[0]["type"] == "Warning"
    assert reconciler_metrics().policy_valid._value.get() == 0
    assert reconciler_metrics().policy_errors._value.get() == errors_before + 1
    assert r.ctl.brain.policy.defaults.maxReplicas == 5
    await r.settle()
    assert (await akube.get(SCALEDOBJECTS, "p1", ns))["metadata"]["resourceVersion"] == rv

    # A valid change applies to every workload.
    await akube.patch(CONFIGMAPS, POLICY_CM, {"data": {"policy.yaml": doc(6)}}, sys_ns)
    await wait_for(lambda: all_max(6), what="maxReplicaCount 6 everywhere")
    assert reconciler_metrics().policy_valid._value.get() == 1

    # Deleting the ConfigMap falls back to the built-in policy.
    await akube.delete(CONFIGMAPS, POLICY_CM, sys_ns)
    await wait_for(lambda: all_max(Policy.default().defaults.maxReplicas), what="built-in default policy")


async def test_invalid_annotation_keeps_existing_objects(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    await create_pg(akube, ns, playground("typo"))
    so = await wait_for(lambda: so_of(akube, ns, "typo"))
    await akube.patch(PLAYGROUNDS, "typo", {"metadata": {"annotations": {C.ANN_MAX_REPLICAS: "lots"}}}, ns)
    ev = await wait_for(lambda: events_for(akube, ns, "typo", "Rejected"), what="Rejected event")
    assert "max-replicas" in ev[0]["message"] and ev[0]["type"] == "Warning"
    await r.settle()
    live = await akube.get(SCALEDOBJECTS, "typo", ns)
    assert live["metadata"]["resourceVersion"] == so["metadata"]["resourceVersion"]
    assert await ir_of(akube, ns, "typo") is not None


async def test_foreign_scaledobject_is_not_taken_over(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    foreign = {"apiVersion": C.KEDA_API_VERSION, "kind": "ScaledObject", "metadata": {"name": "mine"},
               "spec": {"scaleTargetRef": {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": "mine"},
                        "maxReplicaCount": 7,
                        "triggers": [{"type": "cron", "metadata": {"timezone": "Etc/UTC", "start": "0 8 * * *",
                                                                   "end": "0 18 * * *", "desiredReplicas": "1"}}]}}
    created = await akube.create(SCALEDOBJECTS, foreign, ns)
    await create_pg(akube, ns, playground("mine"))
    ev = await wait_for(lambda: events_for(akube, ns, "mine", "Rejected"), what="Rejected event")
    assert "not managed by" in ev[0]["message"]
    await r.settle()
    live = await akube.get(SCALEDOBJECTS, "mine", ns)
    assert live["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert C.LABEL_MANAGED_BY not in (live["metadata"].get("labels") or {})


async def test_elastic_config_and_llmaz_hpa_are_replaced(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    pg = await create_pg(akube, ns, playground("legacy", elasticConfig={"minReplicas": 1, "maxReplicas": 3}))
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "legacy", "ownerReferences": [{
               "apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": "legacy",
               "uid": pg["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
           "spec": {"scaleTargetRef": {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": "legacy"},
                    "minReplicas": 1, "maxReplicas": 3,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                        "type": "Utilization", "averageUtilization": 80}}}]}}
    await akube.create(HPAS, hpa, ns)
    await start_controller()

    so = await wait_for(lambda: so_of(akube, ns, "legacy"), what="ScaledObject")
    assert so["spec"]["maxReplicaCount"] == 3                       # carried over from elasticConfig
    await wait_for(lambda: _absent(akube, HPAS, "legacy", ns), what="llmaz HPA deleted")
    live = await akube.get(PLAYGROUNDS, "legacy", ns)
    assert "elasticConfig" not in live["spec"]
    assert live["metadata"]["annotations"][C.ANN_MAX_REPLICAS] == "3"
    ev = await wait_for(lambda: events_for(akube, ns, "legacy", "HPAReplaced"), what="HPAReplaced event")
    assert "elasticConfig" in ev[0]["message"]


async def test_leader_election_failover(start_controller, akube, namespace):
    sys_ns = namespace(prefix="sys")
    ns = namespace(labels=ENABLED)
    lease = dict(leader_election=True, lease_duration=4.0, renew_period=0.5)
    a = await start_controller(system_ns=sys_ns, identity="replica-a", **lease)
    await wait_for(lambda: asyncio.sleep(0, a.ctl.elector.is_leader), 10, what="replica-a leading")
    b = await start_controller(system_ns=sys_ns, identity="replica-b", **lease)
    await asyncio.sleep(1.5)
    assert not b.ctl.elector.is_leader and not b.ctl.leading      # one leader only

    await create_pg(akube, ns, playground("before"))
    await wait_for(lambda: so_of(akube, ns, "before"))
    assert b.ctl.write_count == 0

    t0 = time.monotonic()
    await a.close()                                                # graceful: releases the Lease
    await wait_for(lambda: asyncio.sleep(0, b.ctl.leading), 4.0, 0.05, "replica-b takes over")
    took = time.monotonic() - t0
    assert took < 4.0
    await create_pg(akube, ns, playground("after"))
    await wait_for(lambda: so_of(akube, ns, "after"), what="the new leader reconciles")
    assert b.ctl.write_count >= 2
    lease_obj = await akube.get(LEASES, "llmaz-serverless-leader", sys_ns)
    assert lease_obj["spec"]["holderIdentity"] == "replica-b"


async def test_leader_lease_expires_when_holder_dies(akube, namespace):
    """A holder that stops renewing without releasing (crash): the other replica waits for the lease to
    expire, then takes over; never two leaders at once."""
    sys_ns = namespace(prefix="sys")
    a = LeaderElector(akube, sys_ns, identity="crash-a", lease_duration=3.0, renew_period=0.3)
    b = LeaderElector(akube, sys_ns, identity="crash-b", lease_duration=3.0, renew_period=0.3)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    ta = asyncio.create_task(a.run(stop_a, release=False))
    await wait_for(lambda: asyncio.sleep(0, a.is_leader), 5, what="a leading")
    tb = asyncio.create_task(b.run(stop_b))
    await asyncio.sleep(1.0)
    assert not b.is_leader
    stop_a.set()
    await ta
    t0 = time.monotonic()
    await wait_for(lambda: asyncio.sleep(0, b.is_leader), 8, 0.05, "b takes over after expiry")
    took = time.monotonic() - t0
    assert 1.5 < took < 3.0 + 2.0, took            # about the lease duration after a's last renewal
    stop_b.set()
    await tb


async def test_watches_recover_after_apiserver_restart(start_controller, akube, namespace, control_plane, capsys):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    await create_pg(akube, ns, playground("pre"))
    await wait_for(lambda: so_of(akube, ns, "pre"))
    took = await asyncio.to_thread(control_plane.restart_apiserver)
    t0 = time.monotonic()
    await create_pg(akube, ns, playground("post"))
    await wait_for(lambda: so_of(akube, ns, "post"), 30, 0.1, "reconcile after the apiserver restart")
    with capsys.disabled():
        print(f"\n[reconciler] apiserver restarted in {took:.1f}s; a Playground created afterwards was "
              f"reconciled {time.monotonic() - t0:.2f}s after creation")
    assert sum(inf.errors for inf in r.ctl.informers) > 0         # the watches did break ...
    assert all(inf.synced.is_set() for inf in r.ctl.informers)     # ... and came back


# The least-privilege rules listed in webhook/controller/reconciler.py's docstring (the chart must grant at least these).
CLUSTER_RULES = [
    {"apiGroups": ["inference.llmaz.io"], "resources": ["playgrounds", "services"],
     "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["inference.llmaz.io"], "resources": ["playgrounds/finalizers", "services/finalizers"],
     "verbs": ["update"]},
    {"apiGroups": ["llmaz.io"], "resources": ["openmodels"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["http.keda.sh"], "resources": ["interceptorroutes"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
     "verbs": ["list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def namespace_rules(policy_cm: str, lease: str) -> list[dict[str, Any]]:
    return [
        # list/watch with a metadata.name fieldSelector are authorised against resourceNames.
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [policy_cm],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease],
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]


async def test_least_privilege_rbac_with_impersonation(akube, namespace, control_plane):
    """The controller works impersonating a ServiceAccount that has only the documented permissions."""
    from webhook.kube import Resource

    sys_ns = namespace(prefix="sys")
    ns = namespace(labels=ENABLED)
    sa = f"rbac-{_uid()}"
    roles = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False)
    crbs = Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
                    namespaced=False)
    nroles = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
    rbs = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
    subject = [{"kind": "ServiceAccount", "name": sa, "namespace": sys_ns}]
    await akube.create(Resource("", "v1", "serviceaccounts", "ServiceAccount"), {"metadata": {"name": sa}}, sys_ns)
    await akube.create(roles, {"metadata": {"name": sa}, "rules": CLUSTER_RULES})
    await akube.create(crbs, {"metadata": {"name": sa}, "subjects": subject,
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": sa}})
    await akube.create(nroles, {"metadata": {"name": sa},
                                "rules": namespace_rules(POLICY_CM, "llmaz-serverless-leader")}, sys_ns)
    await akube.create(rbs, {"metadata": {"name": sa}, "subjects": subject,
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa}},
                       sys_ns)
    await akube.create(CONFIGMAPS, {"metadata": {"name": POLICY_CM},
                                    "data": {"policy.yaml": "maxReplicasCap: 10\n"}}, sys_ns)
    await akube.create(CONFIGMAPS, {"metadata": {"name": "not-ours"}, "data": {}}, sys_ns)

    user = f"system:serviceaccount:{sys_ns}:{sa}"
    kube = Kube.from_kubeconfig(control_plane.kubeconfig).impersonating(user)
    try:
        # RBAC really applies: other ConfigMaps are out of reach.
        with pytest.raises(ApiError) as exc:
            await kube.get(CONFIGMAPS, "not-ours", sys_ns)
        assert exc.value.status == 403

        pg = await create_pg(akube, ns, playground("rbac", replicas=0,
                                                   elasticConfig={"minReplicas": 1, "maxReplicas": 2}))
        await akube.create(HPAS, {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "rbac", "ownerReferences": [{
                "apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": "rbac",
                "uid": pg["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"scaleTargetRef": {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": "rbac"},
                     "minReplicas": 1, "maxReplicas": 2,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": 80}}}]}}, ns)
        brain, stop = Brain(), asyncio.Event()
        ctl = Controller(kube, brain, namespace=sys_ns, policy_configmap=POLICY_CM, identity="rbac")
        task = asyncio.create_task(run_controller(kube, brain, namespace=sys_ns, policy_configmap=POLICY_CM,
                                                  leader_election=True, identity="rbac", stop=stop,
                                                  controller=ctl, lease_duration=4.0, renew_period=0.5))
        try:
            await asyncio.wait_for(ctl.synced.wait(), 20)
            assert brain.policy.maxReplicasCap == 10                # the policy ConfigMap was readable
            so = await wait_for(lambda: so_of(akube, ns, "rbac"), 20, what="ScaledObject made as the SA")
            assert so["spec"]["maxReplicaCount"] == 2
            await wait_for(lambda: _absent(akube, HPAS, "rbac", ns), what="llmaz HPA deleted as the SA")
            await wait_for(lambda: events_for(akube, ns, "rbac", "Attached"), what="event recorded as the SA")
            await akube.patch(PLAYGROUNDS, "rbac", {"metadata": {"annotations": {C.ANN_ENABLED: "false"}}}, ns)
            await wait_for(lambda: _absent(akube, SCALEDOBJECTS, "rbac", ns), what="removed as the SA")
            assert (await akube.get(PLAYGROUNDS, "rbac", ns))["spec"]["replicas"] == 1
            assert sum(inf.errors for inf in ctl.informers) == 0      # no 403 anywhere
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        lease = await akube.get(LEASES, "llmaz-serverless-leader", sys_ns)
        assert lease["spec"].get("holderIdentity") in (None, "")       # released as the SA
    finally:
        await kube.close()
        await akube.delete(crbs, sa)
        await akube.delete(roles, sa)
