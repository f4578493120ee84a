"""keep-alive: learned from request counts on the live stack: the HTTP add-on's interceptor counts every
request per route, Prometheus scrapes it, llmaz-serverless reads the counts (policy ``learnFrom``).

A workload kept warm (cooldown 60 s) gets a burst of 5 short requests every 15 s. KEDA's status can tell at
most one wake-up per burst (and a warm request shorter than the add-on's 500 ms sampling may not move it at
all); the counts tell every request and when it came. The stored state shows what the learner was told; the
policy switched back to ``keda-status`` makes the reconciler say so, live, without a restart.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from kubernetes import client

from webhook import constants as C
from webhook.learn import decode

from .http_client import chat
from .stack import MANIFESTS, OUR_NAMESPACE, LiveStack
from .test_http import apply_and_wait_ready, playground
from .test_learned import forget
from .test_zero_to_one import KEDA, LLMAZ, get_or_none, opted_in_namespace, wait_for

pytestmark = pytest.mark.e2e

VISITS, BURST, EVERY = 6, 5, 15.0


def set_learn_from(stack: LiveStack, learn_from: dict | None) -> None:
    """The stack's policy, with ``learnFrom`` replaced (None: as shipped with the stack)."""
    policy = yaml.safe_load((MANIFESTS / "policy.yaml").read_text())
    if learn_from is not None:
        policy["learnFrom"] = learn_from
    client.CoreV1Api(stack.api()).patch_namespaced_config_map(
        "llmaz-serverless-policy", OUR_NAMESPACE, {"data": {"policy.yaml": yaml.safe_dump(policy)}})


def events_of(stack: LiveStack, ns: str, name: str) -> list[str]:
    out = client.CoreV1Api(stack.api()).list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    return [e.message or "" for e in out.items]


def test_learner_reads_every_request_from_the_interceptors_counts(stack: LiveStack):
    ns = opted_in_namespace(stack, "counts")
    name = "counted"
    custom = client.CustomObjectsApi(stack.api())
    set_learn_from(stack, {"source": "requests", "interval": 2, "step": 1})
    try:
        apply_and_wait_ready(stack, ns, name, playground(name, {C.ANN_KEEP_ALIVE: "learned", C.ANN_COOLDOWN: "60",
                                                                C.ANN_POLLING: "2"}))
        gauge = f'llmaz_serverless_learned_from_requests{{kind="Playground",name="{name}",namespace="{ns}"}}'
        with ThreadPoolExecutor(BURST) as pool:
            for i in range(VISITS):
                t0 = time.monotonic()
                answers = list(pool.map(lambda _: chat(f"{name}.{ns}", timeout=120), range(BURST)))
                assert all(a.status == 200 for a in answers), [(a.status, a.error) for a in answers]
                time.sleep(max(0.0, EVERY - (time.monotonic() - t0)))

        wait_for(lambda: f"{gauge} 1.0" in stack.metrics_text(), 30, "the learner reading request counts")
        assert any("reads this workload's request counts from Prometheus" in m for m in events_of(stack, ns, name))

        # The first burst counted is the reference and so is the second (the idle time before it is not
        # known); each later one ends an idle time of about 15 s and brings 5 requests.
        def state():
            so = get_or_none(custom, KEDA, ns, "scaledobjects", name)
            text = ((so or {}).get("metadata", {}).get("annotations") or {}).get(C.ANN_LEARNED_STATE)
            st = decode(text) if text else None
            return st if st is not None and sum(v[0] for v in st.bins.values()) >= VISITS - 2.5 else None
        st = wait_for(state, 30, f"{VISITS - 2} idle times in the stored state")
        idle_times = sum(v[0] for v in st.bins.values())
        print(f"\nlearned from request counts: {idle_times:.2f} idle times, {st.requests:.2f} requests "
              f"(faded weights) from {VISITS} bursts of {BURST}; bins {sorted(st.bins)}")
        assert sorted(st.bins) == [0], "idle times of about 15 s: the first one-minute bin"
        assert st.requests >= (VISITS - 2) * BURST * 0.95, \
            "every request of a burst is counted (KEDA's status would count one per wake-up at most)"

        def learned_line(source: str):       # what `check` and `kubectl get -o yaml` show on the workload
            pg = get_or_none(custom, LLMAZ, ns, "playgrounds", name)
            line = ((pg or {}).get("metadata", {}).get("annotations") or {}).get(C.ANN_LEARNED) or ""
            return line if line.endswith(f"; learned from {source}") else None
        wait_for(lambda: learned_line("request counts"), 30, "the learned line naming request counts")

        set_learn_from(stack, None)        # back to keda-status: said on the workload, without a restart
        chat(f"{name}.{ns}", timeout=120)
        wait_for(lambda: f"{gauge} 0.0" in stack.metrics_text(), 60, "the learner back on KEDA's status")
        wait_for(lambda: any("reads KEDA's status (the policy's learnFrom.source is keda-status)" in m
                             for m in events_of(stack, ns, name)), 30, "the Event saying so")
        wait_for(lambda: learned_line("KEDA's status"), 30, "the learned line naming KEDA's status")
    finally:
        set_learn_from(stack, None)
        forget(stack, ns)
