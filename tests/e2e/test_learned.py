"""keep-alive: learned on the live stack: real KEDA writes lastActiveTime, llmaz-serverless learns from it.

A request every 20 s against a 5 s policy cooldown: each of the first requests meets a cold start (the replica
went back to zero in between). Once 3 idle times are known (after fading: the fourth) the learner keeps a
replica for a learned keep-alive (a minute or two: whole histogram bins), which the reconciler writes as the
ScaledObject's cooldownPeriod; llmaz-serverless is then killed and started again, and the new process goes on
from the state stored on the ScaledObject; the next requests find the replica warm (no cold-start header).

A pre-warm is a dated one-minute cron window that wakes the workload and a longer cooldown that holds it; a
request it serves is warm and learned (it is seen: the hold is no trigger of ours), and, killed during the next
one, llmaz-serverless is not needed for the window to end and the workload to go back to zero.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from kubernetes import client

from webhook import constants as C
from webhook.controller.learning import cron_time
from webhook.learn import Learner, Params, decode, encode

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
    """Delete a learning test's namespace: a learned keep-alive or a pre-warm's hold would otherwise keep its
    model stand-in running into later tests, where it consumes their jobs from the shared Redis list."""
    stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def restart_ours(stack: LiveStack) -> None:
    stack.procs["llmaz-serverless"].stop(grace=0)   # SIGKILL: nothing is saved on the way out
    stack.start_ours()


IDLE = 250.0        # the history seeded below: an overnight pause, then idle times of about 4 minutes


def test_prewarm_serves_a_request_the_learner_sees_and_lapses_without_llmaz_serverless(stack: LiveStack):
    """The learned history is written as the ScaledObject's state while llmaz-serverless is down (the learner's
    own encoding of a 6-hour pause and 14 idle times of 250 s, so the test need not wait hours for them; a
    pause past the histogram's 4 hours tells the learner that its longest idle times are seen); the started service
    reads it back and pre-warms 175-300 s after the next request (startup-time 3 s): a one-minute wake-up window,
    then a hold. A request after the wake-up window is served warm, and learned. The next pre-warm is placed from
    it; killed once that one woke the workload, llmaz-serverless is not needed for the hold to end and the
    workload to return to zero."""
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

    def replicas() -> int:
        return custom.get_namespaced_custom_object("inference.llmaz.io", "v1alpha1", ns, "playgrounds",
                                                   name)["spec"].get("replicas", 0)

    def idle_times() -> float:
        so = get_or_none(custom, KEDA, ns, "scaledobjects", name)
        state = decode(so["metadata"]["annotations"][C.ANN_LEARNED_STATE])
        return sum(v[0] for v in state.bins.values())

    def wake_up(after: float) -> tuple[float, float, float]:
        """The next pre-warm's wake-up window (start, end) and when it woke the workload."""
        def placed() -> tuple[float, float] | None:
            w = window()
            a = cron_time(w["metadata"]["start"], time.time()) if w else None
            return (a, cron_time(w["metadata"]["end"], time.time())) if a is not None and a > after else None
        start, end = wait_for(placed, 60, "a pre-warm window on the ScaledObject")
        assert get_or_none(custom, KEDA, ns, "scaledobjects", name)["spec"]["cooldownPeriod"] == 60
        wait_for(lambda: replicas() == 0, max(5.0, start - time.time()), "the scale-in before the window", 0.5)
        woke = wait_for(lambda: time.time() if replicas() == 1 else None, end - time.time(),
                        "the pre-warm window to wake the workload", 0.5)
        assert start - 1 <= woke <= end and end - start == 60, (start, woke, end)
        return start, end, woke

    # The pre-warm serves the next request, and the learner sees it (the hold is not a trigger of ours).
    start, end, woke = wake_up(0.0)
    seen = idle_times()
    time.sleep(max(0.0, end + 15 - time.time()))           # after the wake-up window, inside the hold
    assert replicas() == 1, "the hold keeps the woken replica after the wake-up window"
    # 3 s at the server: the add-on's scaler samples the interceptor's concurrency every 500 ms, so a warm
    # request shorter than that may never make KEDA active (nor move lastActiveTime); model requests take longer
    served = chat(f"{name}.{ns}", service_seconds=3.0, timeout=120)
    assert served.status == 200 and served.cold_start != "true", (served.status, served.cold_start)
    wait_for(lambda: idle_times() >= seen + 0.9 or None, 30, "the request the pre-warm served, learned")
    first = (start, end, woke)

    # The next pre-warm is placed from that request; killed once it woke the workload, llmaz-serverless is not
    # needed for the hold to end.
    start, end, woke = wake_up(end)
    hold = get_or_none(custom, KEDA, ns, "scaledobjects", name)["spec"]["cooldownPeriod"]
    stack.procs["llmaz-serverless"].stop(grace=0)
    try:
        assert hold > 60, "after the one-minute wake-up a longer cooldown holds the replica"
        zero = wait_for(lambda: time.time() if replicas() == 0 else None, end + hold + 2 * 2 + 30 - time.time(),
                        "the workload back at zero after the hold, without llmaz-serverless", 0.5)
    finally:
        stack.start_ours()
    forget(stack, ns)
    # KEDA's lastActiveTime is its last poll inside the window (polling 2 s, whole seconds)
    assert zero >= end + hold - 2 * 2, "the hold kept the replica to the pre-warm's end"
    print(f"\npre-warm 1: woken {first[2] - first[0]:.1f} s after its wake-up window opened, the next request "
          f"answered in {served.done - served.sent:.2f} s, warm, learned; pre-warm 2: wake-up "
          f"{dt.datetime.fromtimestamp(start, dt.timezone.utc):%H:%M}-"
          f"{dt.datetime.fromtimestamp(end, dt.timezone.utc):%H:%M} and a {hold} s hold, woken "
          f"{woke - start:.1f} s after its start, llmaz-serverless killed, back at zero {zero - end - hold:+.1f} s "
          "from the hold's end")
