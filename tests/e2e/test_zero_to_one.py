"""Zero -> one -> zero, for real: a queued job wakes a GPU Playground through KEDA, llmaz and LeaderWorkerSet.

The user's manifest is applied with ``kubectl apply -f`` in an opted-in namespace. Nothing in this file
scales anything: KEDA's operator writes ``/scale``, llmaz copies the replicas to its Service and
LeaderWorkerSet, LeaderWorkerSet makes the pod, kube-scheduler places it on a GPU node, kwok gives it an IP,
the pod agent starts the model-server stand-in and marks the pod Ready when its readiness probe answers, and
the stand-in consumes the job. Each step's time from its cause is printed with the test (``-s`` or the
report's captured output) and recorded in docs/performance.md.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from webhook import constants as C

from .stack import MANIFESTS, LiveStack
from .timeline import Timeline

pytestmark = pytest.mark.e2e

KEDA = ("keda.sh", "v1alpha1")
LLMAZ = ("inference.llmaz.io", "v1alpha1")


def opted_in_namespace(stack: LiveStack, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    stack.ensure_namespace(name, labels={C.NAMESPACE_LABEL: "true"})
    return name


def condition(obj: dict | None, typ: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == typ:
            return c
    return None


def get_or_none(custom: client.CustomObjectsApi, gv: tuple[str, str], ns: str, plural: str, name: str) -> dict | None:
    try:
        return custom.get_namespaced_custom_object(*gv, ns, plural, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def gpu_request(pod: dict) -> str | None:
    for ctr in (pod.get("spec") or {}).get("containers") or []:
        limits = (ctr.get("resources") or {}).get("limits") or {}
        if "nvidia.com/gpu" in limits:
            return limits["nvidia.com/gpu"]
    return None


def test_redis_job_wakes_gpu_playground_from_zero_and_it_returns_to_zero(stack: LiveStack):
    api = stack.api()
    custom = client.CustomObjectsApi(api)
    ns = opted_in_namespace(stack, "batch")
    queue = "summarize-jobs"
    stack.redis("DEL", queue, f"{queue}:done")

    # --- 1. apply as a user does; stored at zero, ScaledObject Ready, no pod
    applied = stack.kubectl("apply", "-n", ns, "-f", str(MANIFESTS / "playground-redis.yaml"))
    assert "playground.inference.llmaz.io/summarizer created" in applied.stdout, applied.stdout
    pg = custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "summarizer")
    assert pg["spec"]["replicas"] == 0, "a GPU workload with a queue trigger is stored at zero"
    resolved = json.loads(pg["metadata"]["annotations"][C.ANN_RESOLVED])
    assert resolved["gpu"] is True and resolved["cooldownPeriod"] == 10 and resolved["pollingInterval"] == 2

    t_apply = time.monotonic()
    so = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("status") == "True" else None)(
        get_or_none(custom, KEDA, ns, "scaledobjects", "summarizer")), 60, "KEDA to report the ScaledObject Ready")
    so_ready_after = time.monotonic() - t_apply
    assert so["spec"]["scaleTargetRef"]["kind"] == "Playground"
    assert so["spec"]["triggers"][0]["type"] == "redis"
    assert (condition(so, "Active") or {}).get("status") != "True"
    hpa_name = f"keda-hpa-{so['metadata']['name']}"
    hpa = wait_for(lambda: _read_hpa(api, ns, hpa_name), 30, "KEDA's HPA")
    assert hpa.spec.scale_target_ref.kind == "Playground"
    time.sleep(3)   # more than one polling interval at rest: nothing may start without a job
    assert client.CoreV1Api(api).list_namespaced_pod(ns).items == []
    assert custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "summarizer")["spec"]["replicas"] == 0

    # --- 2. a job arrives: 0 -> 1 through the whole chain, the job is consumed
    with Timeline(api, ns, "summarizer", extra={"queue": lambda: stack.redis("LLEN", queue)}) as tl:
        tl.expect("scale", lambda s: s.playground_replicas == 1)
        tl.expect("service", lambda s: s.service_replicas == 1)
        tl.expect("lws", lambda s: s.lws_replicas == 1)
        tl.expect("pod-created", lambda s: bool(s.pods))
        tl.expect("scheduled", lambda s: bool(s.scheduled))
        tl.expect("ready", lambda s: bool(s.ready))
        tl.expect("queue-empty", lambda s: s.playground_replicas == 1 and s.extra["queue"] == 0)
        tl.mark("push")
        assert stack.redis("LPUSH", queue, "job-1") == 1

        tl.wait("scale", 30)
        tl.wait("scheduled", 30)
        tl.wait("ready", 60)
        done = wait_for(lambda: stack.redis("LRANGE", f"{queue}:done", "0", "-1"), 30, "the job to be consumed",
                        interval=0.05)
        assert stack.redis("LLEN", queue) == 0

        snap = tl.last
        pod = snap.ready[0]
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        assert gpu_request(pod) == "1", "the GPU flavor of the OpenModel reaches the pod"
        assert done[0].decode() == f"job-1|{pod['metadata']['name']}"
        record = stack.agent.record_for(ns, pod["metadata"]["name"])
        assert record is not None and record.answered and record.probes >= 2, \
            "the pod turned Ready only after its stand-in answered (the stand-in loads for 3 s)"
        assert record.ready_written >= record.answered

        # --- 3. queue empty: back to zero after the cooldown, the pod is gone
        tl.expect("zero", lambda s: s.playground_replicas == 0)
        tl.expect("pods-gone", lambda s: not s.pods)
        tl.wait("zero", 10 + 2 + 40)
        tl.wait("pods-gone", 30)

    so = custom.get_namespaced_custom_object(*KEDA, ns, "scaledobjects", "summarizer")
    assert (condition(so, "Ready") or {}).get("status") == "True"
    steps = {
        "ScaledObject Ready after apply": so_ready_after,
        "job pushed -> Playground /scale = 1": tl.between("push", "scale"),
        "/scale -> llmaz Service replicas 1": tl.between("scale", "service"),
        "/scale -> LeaderWorkerSet replicas 1": tl.between("scale", "lws"),
        "/scale -> pod created": tl.between("scale", "pod-created"),
        "pod created -> scheduled on a GPU node": tl.between("pod-created", "scheduled"),
        "scheduled -> Ready (stand-in loads 3 s)": tl.between("scheduled", "ready"),
        "job pushed -> job taken off the queue": tl.between("push", "queue-empty"),
        "queue empty -> Playground /scale = 0 (cooldown 10 s)": tl.between("queue-empty", "zero"),
        "/scale = 0 -> pod gone": tl.between("zero", "pods-gone"),
    }
    print("\nzero -> one -> zero on the live stack (polling interval 2 s, cooldown 10 s; "
          f"observed every {tl.interval * 1000:.0f} ms):")
    for what, seconds in steps.items():
        print(f"  {what:<56} {seconds:6.2f} s")
    stack.check_alive()
    # KEDA writes 1 within one polling interval (+ its own request time) of the job being queued.
    assert steps["job pushed -> Playground /scale = 1"] <= 2 + 3
    # KEDA counts the cooldown from the last poll that saw the trigger active (at most one polling interval
    # before the queue emptied) and acts on the first poll after it has passed.
    assert 10 - 2 <= steps["queue empty -> Playground /scale = 0 (cooldown 10 s)"] <= 10 + 2 + 3


def _read_hpa(api: client.ApiClient, ns: str, name: str):
    try:
        return client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(name, ns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_llmaz_hpa_is_handed_over_to_keda_while_llmaz_runs(stack: LiveStack):
    """A Playground with elasticConfig stored while our service was down: llmaz made its HPA. Once our service
    is back, the reconciler converts elasticConfig and removes llmaz's HPA; the workload ends under KEDA's HPA
    alone, and stays so while llmaz's controller keeps reconciling the Playground."""
    api = stack.api()
    custom = client.CustomObjectsApi(api)
    hpas = client.AutoscalingV2Api(api)
    ns = opted_in_namespace(stack, "handover")
    playground = {
        "apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
        # a queue trigger: this stack has no HTTP add-on, and the default http trigger would need it
        "metadata": {"name": "chat", "namespace": ns, "annotations": {
            C.ANN_TRIGGERS: "- {type: redis, address: 'redis.queues:6379', listName: chat-jobs}"}},
        "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen2-5-7b-instruct"},
                 "elasticConfig": {"minReplicas": 1, "maxReplicas": 3},
                 "backendRuntimeConfig": {"scaleTrigger": {"hpa": {"metrics": [
                     {"type": "Resource", "resource": {"name": "cpu",
                                                       "target": {"type": "Utilization", "averageUtilization": 80}}}]}}}},
    }
    ours = stack.procs["llmaz-serverless"]
    ours.stop(grace=10)
    try:
        # failurePolicy Ignore: with our webhook down the object is stored as written
        stack.apply_objects([playground])
        stored = custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "chat")
        assert "elasticConfig" in stored["spec"]
        llmaz_hpa = wait_for(lambda: _read_hpa(api, ns, "chat"), 30, "llmaz to create its HPA")
        assert llmaz_hpa.spec.scale_target_ref.kind == "Playground" and llmaz_hpa.spec.max_replicas == 3
    finally:
        stack.start_ours()
    t0 = time.monotonic()

    def handed_over():
        pg = custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "chat")
        so = get_or_none(custom, KEDA, ns, "scaledobjects", "chat")
        names = sorted(h.metadata.name for h in hpas.list_namespaced_horizontal_pod_autoscaler(ns).items)
        ready = (condition(so, "Ready") or {}).get("status") == "True"
        return ("elasticConfig" not in pg["spec"] and ready and names == ["keda-hpa-chat"]) and (pg, so)
    pg, so = wait_for(handed_over, 60, "the handover to KEDA (elasticConfig converted, llmaz HPA gone, "
                                       "ScaledObject Ready, KEDA's HPA the only one)")
    handover_seconds = time.monotonic() - t0
    # maxReplicas carries over; minReplicas 1 is llmaz's default, so the GPU default (scale to zero) applies
    assert so["spec"]["maxReplicaCount"] == 3 and so["spec"]["minReplicaCount"] == 0

    # llmaz keeps reconciling the Playground (its status is refreshed) and never brings its HPA back
    stable_until = time.monotonic() + 20
    while time.monotonic() < stable_until:
        names = sorted(h.metadata.name for h in hpas.list_namespaced_horizontal_pod_autoscaler(ns).items)
        assert names == ["keda-hpa-chat"], f"a second HPA appeared: {names}"
        time.sleep(0.5)
    stack.check_alive()
    events = stack.kubectl("get", "events", "-n", ns, "-o", "json")
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]
               if e["involvedObject"].get("name") == "chat"}
    assert "HPAReplaced" in reasons, reasons
    print(f"\nllmaz HPA handed over to KEDA {handover_seconds:.2f} s after our service came back")
