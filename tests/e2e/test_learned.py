"""keep-alive: learned on the live stack: real KEDA writes lastActiveTime, llmaz-serverless learns from it.

A request every 20 s against a 5 s policy cooldown: each of the first requests meets a cold start (the replica
went back to zero in between). Once 3 idle times are known (after fading: the fourth) the learner keeps a
replica for a learned keep-alive (a minute or two: whole histogram bins), which the reconciler writes as the
ScaledObject's cooldownPeriod; llmaz-serverless is then killed and started again, and the new process goes on
from the state stored on the ScaledObject; the next requests find the replica warm (no cold-start header).

A pre-warm is a dated cron window on the ScaledObject: killed while one holds the replica, llmaz-serverless is
not needed for the window to end and the workload to go back to zero.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from kubernetes import client

from webhook import constants as C
from webhook.controller.learning import cron_time
from webhook.learn import Learner, Params, encode

from .http_client import chat
from .stack import LiveStack
from .test_http import apply_and_wait_ready, playground
from .test_zero_to_one import KEDA, get_or_none, opted_in_namespace, wait_for

pytestmark = pytest.mark.e2e

PERIOD = 20.0


def test_learned_keep_alive_keeps_a_periodic_workload_warm(stack: LiveStack):
    ns = opted_in_namespace(stack, "learn")
    name = "timer"
    apply_and_wait_ready(stack, ns, name, playground(name, {C.ANN_KEEP_ALIVE: "learned", C.ANN_COOLDOWN: "5",
                                                            C.ANN_POLLING: "2"}))
    custom = client.CustomObjectsApi(stack.api())
    answers = []
    for i in range(7):
        t0 = time.monotonic()
        answers.append(chat(f"{name}.{ns}", timeout=120))
        if i == 4:      # four idle times seen: the learned keep-alive reaches the ScaledObject
            so = wait_for(lambda: (lambda o: o if o and o["spec"]["cooldownPeriod"] >= 60 else None)(
                get_or_none(custom, KEDA, ns, "scaledobjects", name)), 15, "a learned cooldownPeriod")
            assert C.ANN_LEARNED_STATE in so["metadata"]["annotations"]
            learned = so["spec"]["cooldownPeriod"]
            restart_ours(stack)
            gauge = (f'llmaz_serverless_learned_keep_alive_seconds{{kind="Playground",name="{name}",'
                     f'namespace="{ns}"}} {float(learned)}')
            wait_for(lambda: gauge in stack.metrics_text(), 45,
                     f"the restarted service to decide {learned} s again, from the stored state alone")
        time.sleep(max(0.0, PERIOD - (time.monotonic() - t0)))
    assert all(a.status == 200 for a in answers), [(a.status, a.error) for a in answers]
    cold = [a.cold_start == "true" for a in answers]
    print(f"\nlearned keep-alive, a request every {PERIOD:g} s: cold starts {cold}")
    assert cold[:5] == [True] * 5, "the 5 s policy cooldown applies until enough idle times are known"
    assert cold[5:] == [False, False], "the learned keep-alive keeps the replica for the next requests"
    pg = custom.get_namespaced_custom_object("inference.llmaz.io", "v1alpha1", ns, "playgrounds", name)
    assert pg["metadata"]["annotations"][C.ANN_LEARNED].startswith(f"keep-alive {learned}s")
    print(f"learned keep-alive {learned} s, kept across a kill and restart of llmaz-serverless")
    forget(stack, ns)


def forget(stack: LiveStack, ns: str) -> None:
    """Delete a learning test's namespace: a learned keep-alive or a chained pre-warm would otherwise keep its
    model stand-in running into later tests, where it consumes their jobs from the shared Redis list."""
    stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def restart_ours(stack: LiveStack) -> None:
    stack.procs["llmaz-serverless"].stop(grace=0)   # SIGKILL: nothing is saved on the way out
    stack.start_ours()


IDLE = 250.0        # the history seeded below: an overnight pause, then idle times of about 4 minutes


def test_prewarm_window_lapses_by_itself_when_llmaz_serverless_is_killed(stack: LiveStack):
    """The learned history is written as the ScaledObject's state while llmaz-serverless is down (the learner's
    own encoding of a 6-hour pause and 14 idle times of 250 s, so the test need not wait hours for them; a
    pause past the histogram's 4 hours tells the learner that its longest idle times are seen); the started service
    reads it back and pre-warms 175-300 s after the next request (startup-time 3 s). Killed while that window
    holds the replica, it is not needed for the window to end and the workload to return to zero."""
    ns = opted_in_namespace(stack, "prewarm")
    name = "waker"
    apply_and_wait_ready(stack, ns, name, playground(name, {
        C.ANN_KEEP_ALIVE: "learned", C.ANN_COOLDOWN: "5", C.ANN_POLLING: "2", C.ANN_STARTUP_TIME: "3s"}))
    api = stack.api()
    custom = client.CustomObjectsApi(api)
    stack.procs["llmaz-serverless"].stop(grace=0)
    try:
        learner = Learner(0.01, 3.0, 2.0, fallback_s=5.0)
        t = time.time() - 15 * (IDLE + 10) - 6 * 3600
        learner.requests(t, 1)
        t += 6 * 3600
        learner.idle_ended(t, 6 * 3600 - 5)
        learner.requests(t, 1)
        for _ in range(14):
            t += IDLE + 10
            learner.idle_ended(t, IDLE)
            learner.requests(t, 1)
        state = encode(learner.state, learner.state.t0, Params())
        custom.patch_namespaced_custom_object(*KEDA, ns, "scaledobjects", name, {
            "metadata": {"annotations": {C.ANN_LEARNED_STATE: state}}})
    finally:
        stack.start_ours()

    def learned() -> str:
        pg = custom.get_namespaced_custom_object("inference.llmaz.io", "v1alpha1", ns, "playgrounds", name)
        return (pg["metadata"].get("annotations") or {}).get(C.ANN_LEARNED, "")

    line = wait_for(lambda: learned() if "pre-warm" in learned() else None, 45, "the stored history read back")
    assert line.startswith("keep-alive 60s, pre-warm 175-300s after the last request"), line

    answer = chat(f"{name}.{ns}", timeout=120)
    assert answer.status == 200 and answer.cold_start == "true", (answer.status, answer.error)

    def window() -> dict | None:
        so = get_or_none(custom, KEDA, ns, "scaledobjects", name)
        return next((tr for tr in so["spec"]["triggers"] if tr.get("name", "").startswith("learned-prewarm")),
                    None) if so else None

    cron = wait_for(window, 30, "a pre-warm window on the ScaledObject")
    start = cron_time(cron["metadata"]["start"], time.time())
    end = cron_time(cron["metadata"]["end"], time.time())
    assert get_or_none(custom, KEDA, ns, "scaledobjects", name)["spec"]["cooldownPeriod"] == 60

    def replicas() -> int:
        return custom.get_namespaced_custom_object("inference.llmaz.io", "v1alpha1", ns, "playgrounds",
                                                   name)["spec"].get("replicas", 0)

    wait_for(lambda: replicas() == 0, max(5.0, start - time.time()), "the scale-in before the window", 0.5)
    woke = wait_for(lambda: time.time() if replicas() == 1 else None, end - time.time(),
                    "the pre-warm window to wake the workload", 0.5)
    stack.procs["llmaz-serverless"].stop(grace=0)
    try:
        assert start - 1 <= woke <= end, (start, woke, end)
        zero = wait_for(lambda: time.time() if replicas() == 0 else None, end + 60 + 2 * 2 + 30 - time.time(),
                        "the workload back at zero after the window, without llmaz-serverless", 0.5)
    finally:
        stack.start_ours()
    forget(stack, ns)
    assert zero >= end + 55, "the window held the replica until it ended, then the 60 s keep-alive"
    print(f"\npre-warm window {dt.datetime.fromtimestamp(start, dt.timezone.utc):%H:%M}-"
          f"{dt.datetime.fromtimestamp(end, dt.timezone.utc):%H:%M}: woken {woke - start:.1f} s after its start, "
          f"llmaz-serverless killed, back at zero {zero - end:.1f} s after its end")
