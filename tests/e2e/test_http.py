"""HTTP through the real KEDA HTTP add-on: a cold start that answers every request, scale-out on vLLM queue
depth, and the faults that must not lose a request.

Requests go where a cluster's clients send them: to the interceptor's Service
(``keda-add-ons-http-interceptor-proxy.keda:8080``, resolved and routed by the stack's cluster DNS and the real
kube-proxy), with the ``Host`` our InterceptorRoute matches (``<name>.<namespace>``) or the Envoy AI Gateway's
``x-ai-eg-model`` header. The interceptor forwards to the llmaz ``<name>-lb`` Service, again through kube-proxy.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time

import pytest
import yaml
from kubernetes import client

from webhook import constants as C

from .addons import prometheus_query
from .http_client import SteadyLoad, burst, chat
from .stack import MANIFESTS, LiveStack, load_yaml_docs
from .test_zero_to_one import KEDA, condition, get_or_none, opted_in_namespace, wait_for
from .timeline import Timeline

pytestmark = pytest.mark.e2e

LOAD_DELAY = 3.0   # the stand-in's model load (BackendRuntime STANDIN_LOAD_DELAY)


def playground(name: str, annotations: dict[str, str], backend: str | None = None) -> str:
    spec: dict = {"modelClaim": {"modelName": "qwen2-5-7b-instruct"}}
    if backend:
        spec["backendRuntimeConfig"] = {"backendName": backend}
    return yaml.safe_dump({"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                           "metadata": {"name": name, "annotations": annotations}, "spec": spec}, sort_keys=False)


def apply_and_wait_ready(stack: LiveStack, ns: str, name: str, manifest: str) -> dict:
    out = stack.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    assert f"playground.inference.llmaz.io/{name} created" in out.stdout, out.stdout + out.stderr
    custom = client.CustomObjectsApi(stack.api())
    so = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("status") == "True" else None)(
        get_or_none(custom, KEDA, ns, "scaledobjects", name)), 60, f"ScaledObject {name} Ready")
    wait_for(lambda: get_or_none(custom, ("http.keda.sh", "v1beta1"), ns, "interceptorroutes", name), 30,
             "the InterceptorRoute")
    stack.dns.wait_for(ns, f"{name}-lb")
    time.sleep(5.5)   # Go's resolver re-reads a changed hosts file at most every 5 s (see network.py)
    return so


def test_http_cold_start_answers_every_request_then_returns_to_zero(stack: LiveStack):
    ns = opted_in_namespace(stack, "chat")
    name = "chat"
    apply_and_wait_ready(stack, ns, name, playground(name, {C.ANN_COOLDOWN: "10", C.ANN_POLLING: "2"}))
    api = stack.api()
    assert client.CustomObjectsApi(api).get_namespaced_custom_object(
        "inference.llmaz.io", "v1alpha1", ns, "playgrounds", name)["spec"]["replicas"] == 0

    with Timeline(api, ns, name) as tl:
        tl.expect("scale", lambda s: s.playground_replicas == 1)
        tl.expect("ready", lambda s: bool(s.ready))
        t_sent = tl.mark("sent")
        gateway: list = []
        side = threading.Thread(target=lambda: gateway.append(
            chat("gateway.example", headers={"x-ai-eg-model": f"{ns}/{name}"}, timeout=120)))
        side.start()
        answers = burst(50, f"{name}.{ns}", timeout=120)
        side.join(timeout=130)
        answers += gateway

        lost = [a for a in answers if a.status != 200]
        assert not lost, f"{len(lost)} of {len(answers)} requests not answered 200: " \
                         f"{[(a.status, a.error or a.body[:120]) for a in lost[:5]]}"
        assert all(f"answered by {name}-0" in a.body for a in answers)
        assert gateway and gateway[0].status == 200, "the AI-gateway header rule routes too"
        cold = [a for a in answers if a.cold_start == "true"]
        assert len(cold) == len(answers), f"{len(answers) - len(cold)} answers without the cold-start header"
        first = min(a.done for a in answers)
        t_scale, t_ready = tl.marks["scale"], tl.marks["ready"]

        tl.expect("zero", lambda s: s.playground_replicas == 0)
        tl.expect("pods-gone", lambda s: not s.pods)
        last = max(a.done for a in answers)
        tl.wait("zero", 10 + 2 + 40)
        tl.wait("pods-gone", 30)
        path = tl.replica_path()
    assert path == [0, 1, 0], f"replicas went {path}: one cold start, one scale-in"

    durations = sorted(a.seconds for a in answers)
    steps = {
        "first request -> Playground /scale = 1": t_scale - t_sent,
        "first request -> pod Ready": t_ready - t_sent,
        "first request -> first response": first - t_sent,
        "  minus the model load (3 s): the stack's own overhead": first - t_sent - LOAD_DELAY,
        "pod Ready -> first response (interceptor sees the endpoint)": first - t_ready,
        "response time p50 / max of the 51 held requests": statistics.median(durations),
        "  max": durations[-1],
        "last response -> /scale = 0 (cooldown 10 s)": tl.marks["zero"] - last,
    }
    print(f"\nHTTP cold start through the interceptor (51 requests, {len(lost)} lost):")
    for what, seconds in steps.items():
        print(f"  {what:<60} {seconds:6.2f} s")
    # The add-on pushes activation: /scale is written well before a 2 s polling interval would allow.
    assert steps["first request -> Playground /scale = 1"] < 2.0
    assert 10 - 2 <= steps["last response -> /scale = 0 (cooldown 10 s)"] <= 10 + 2 + 3


def test_queue_depth_scales_out_to_max_and_back(stack: LiveStack):
    ns = opted_in_namespace(stack, "burst")
    name = "burst"
    behavior = {"scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 4,
                                                                           "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 10, "policies": [{"type": "Percent", "value": 100,
                                                                             "periodSeconds": 15}]}}
    so = apply_and_wait_ready(stack, ns, name, playground(name, {
        C.ANN_TRIGGERS: "http, queue-depth", C.ANN_MAX_REPLICAS: "3", C.ANN_COOLDOWN: "20", C.ANN_POLLING: "2",
        C.ANN_BEHAVIOR: yaml.safe_dump(behavior)}))
    types = [(t["name"], t["type"]) for t in so["spec"]["triggers"]]
    assert types == [("http", "external-push"), ("queue-depth", "prometheus"), ("llmaz-hold", "prometheus")], types
    api = stack.api()
    hpa = wait_for(lambda: _hpa(api, ns, f"keda-hpa-{name}"), 30, "KEDA's HPA")
    assert hpa.spec.max_replicas == 3
    assert hpa.spec.behavior.scale_down.stabilization_window_seconds == 10, "our behaviour reaches the HPA"

    with Timeline(api, ns, name) as tl:
        tl.expect("one", lambda s: s.playground_replicas == 1)
        tl.expect("max", lambda s: s.playground_replicas == 3)
        tl.expect("all-ready", lambda s: len(s.ready) == 3)
        t0 = tl.mark("load")
        # 4 slots per stand-in: 20 requests in flight keep ~16 waiting on one replica (target 5 per replica)
        with SteadyLoad(f"{name}.{ns}", concurrency=20, service_seconds=2.0) as load:
            tl.wait("one", 30)
            waiting = wait_for(lambda: _waiting_above(ns, 5), 30,
                               "Prometheus (pod discovery) to see more than 5 requests waiting")
            tl.wait("max", 90)
            hpa = _hpa(api, ns, f"keda-hpa-{name}")
            seen = {m.external.metric.name: m.external.current.average_value
                    for m in hpa.status.current_metrics or [] if m.type == "External"}
            tl.wait("all-ready", 60)
            time.sleep(8)   # serve a while at max
        t_stop = tl.mark("stop")
        tl.expect("zero", lambda s: s.playground_replicas == 0)
        tl.wait("zero", 10 + 20 + 2 + 60)
        path = tl.replica_path()

    answers = load.answers
    lost = [a for a in answers if a.status != 200]
    assert not lost, f"{len(lost)} of {len(answers)} lost: {[(a.status, a.error) for a in lost[:5]]}"
    served_by = {a.body.split("answered by ")[-1].split('"')[0] for a in answers}
    assert max(p for p in path if p is not None) == 3 and path[-1] == 0, path
    print(f"\n1 -> N on queue depth (Prometheus saw {waiting:.0f} waiting; the HPA read {seen}): replicas {path}; "
          f"load -> 1 in {tl.between('load', 'one'):.2f} s, 1 -> 3 in {tl.between('one', 'max'):.2f} s, "
          f"3 Ready {tl.between('max', 'all-ready'):.2f} s later; load stopped -> 0 in "
          f"{tl.marks['zero'] - t_stop:.2f} s; {len(answers)} requests, 0 lost, served by {sorted(served_by)}")
    assert len(served_by) >= 2, "requests reach the new replicas through the Service"


def _waiting_above(ns: str, threshold: float) -> float | None:
    result = prometheus_query(f'sum(vllm:num_requests_waiting{{namespace="{ns}"}})')
    value = float(result[0]["value"][1]) if result else 0.0
    return value if value > threshold else None


def _hpa(api, ns, name):
    try:
        return client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(name, ns)
    except client.ApiException:
        return None


def test_request_wakes_the_model_while_our_service_is_down(stack: LiveStack):
    """KEDA and the HTTP add-on do not depend on llmaz-serverless at run time."""
    ns = opted_in_namespace(stack, "nous")
    apply_and_wait_ready(stack, ns, "solo", playground("solo", {C.ANN_COOLDOWN: "10"}))
    stack.procs["llmaz-serverless"].stop(grace=0)   # SIGKILL
    try:
        a = chat(f"solo.{ns}", timeout=60)
        assert a.status == 200 and a.cold_start == "true", (a.status, a.error, a.body[:200])
    finally:
        stack.start_ours()
    print(f"\nour service killed, workload at zero: answered in {a.seconds:.2f} s")


def test_keda_operator_restart_during_cold_start_loses_nothing(stack: LiveStack):
    ns = opted_in_namespace(stack, "restart")
    apply_and_wait_ready(stack, ns, "phoenix", playground("phoenix", {C.ANN_COOLDOWN: "10"}))
    results: list = []
    t = threading.Thread(target=lambda: results.extend(burst(5, f"phoenix.{ns}", timeout=90)))
    t.start()
    time.sleep(0.2)
    op = stack.procs["keda-operator"]
    t_kill = time.monotonic()
    op.stop(grace=0)
    op.start()
    t.join(timeout=100)
    assert len(results) == 5 and all(a.status == 200 for a in results), \
        [(a.status, a.error or a.body[:100]) for a in results]
    print(f"\nKEDA operator restarted 0.2 s into a cold start: 5/5 answered, slowest "
          f"{max(a.done for a in results) - t_kill:.2f} s after the restart")


def test_model_that_never_becomes_ready_fails_after_the_readiness_timeout(stack: LiveStack):
    ns = opted_in_namespace(stack, "stuck")
    # a backend whose server never finishes loading (its stand-in waits a day before it listens)
    runtimes = [d for d in load_yaml_docs(MANIFESTS / "llmaz-models.yaml") if d["kind"] == "BackendRuntime"]
    stuck = copy.deepcopy(runtimes[0])
    stuck["metadata"] = {"name": "vllm-never-ready"}
    stuck["spec"]["envs"] = [e if e["name"] != "STANDIN_LOAD_DELAY" else {"name": e["name"], "value": "86400"}
                             for e in stuck["spec"]["envs"]]
    stack.apply_objects([stuck])
    triggers = "- {type: http, readinessTimeout: 8s}"
    apply_and_wait_ready(stack, ns, "stuck", playground(
        "stuck", {C.ANN_TRIGGERS: triggers, C.ANN_COOLDOWN: "10"}, backend="vllm-never-ready"))
    a = chat(f"stuck.{ns}", timeout=60)
    assert a.status == 504, (a.status, a.error, a.body[:300])
    assert 8 <= a.seconds <= 8 + 5, f"answered after {a.seconds:.2f} s"
    print(f"\nnever-ready model: {a.status} after {a.seconds:.2f} s (readinessTimeout 8 s): {a.body[:160]!r}")
