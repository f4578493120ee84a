"""keep-alive: learned on the live stack: real KEDA writes lastActiveTime, llmaz-serverless learns from it.

A request every 20 s against a 5 s policy cooldown: each of the first requests meets a cold start (the replica
went back to zero in between). Once 3 idle times are known (after fading: the fourth) the learner keeps a replica for its shortest keep-alive (60 s,
one histogram bin), which the reconciler writes as the ScaledObject's cooldownPeriod; the next requests find
it warm (no cold-start header).
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from webhook import constants as C

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
            so = wait_for(lambda: (lambda o: o if o and o["spec"]["cooldownPeriod"] == 60 else None)(
                get_or_none(custom, KEDA, ns, "scaledobjects", name)), 15, "cooldownPeriod 60")
            assert C.ANN_LEARNED_STATE in so["metadata"]["annotations"]
        time.sleep(max(0.0, PERIOD - (time.monotonic() - t0)))
    assert all(a.status == 200 for a in answers), [(a.status, a.error) for a in answers]
    cold = [a.cold_start == "true" for a in answers]
    print(f"\nlearned keep-alive, a request every {PERIOD:g} s: cold starts {cold}")
    assert cold[:5] == [True] * 5, "the 5 s policy cooldown applies until enough idle times are known"
    assert cold[5:] == [False, False], "the learned 60 s keep-alive keeps the replica for the next requests"
    pg = custom.get_namespaced_custom_object("inference.llmaz.io", "v1alpha1", ns, "playgrounds", name)
    assert pg["metadata"]["annotations"][C.ANN_LEARNED].startswith("keep-alive 60s")
