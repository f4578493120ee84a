"""What the real KEDA operator says about a ScaledObject reaches the workload as an Event.

A Playground whose Redis trigger points at an address where nothing listens: KEDA's scaler fails, KEDA marks the
ScaledObject ``Ready=False``, and the reconciler turns that into a ``KEDANotReady`` Warning Event on the
Playground with KEDA's own reason, which ``kubectl describe`` shows. Fixing the address clears it
(``KEDAReady``).
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client

from webhook import constants as C

from .stack import LiveStack
from .test_http import playground
from .test_zero_to_one import KEDA, condition, get_or_none, opted_in_namespace, wait_for

pytestmark = pytest.mark.e2e


def trigger(address: str) -> str:
    return f"- {{type: redis, address: '{address}', listName: jobs-status, listLength: 1}}"


def events(stack: LiveStack, ns: str, name: str) -> list[dict]:
    out = stack.kubectl("get", "events", "-n", ns, "-o", "json")
    return [e for e in json.loads(out.stdout)["items"] if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "Playground"]


def test_a_trigger_keda_cannot_read_is_reported_on_the_workload(stack: LiveStack):
    ns = opted_in_namespace(stack, "broken")
    name = "broken"
    # a name that the stack's DNS does not know (the policy lends *.queues:6379): KEDA fails at once
    out = stack.kubectl("apply", "-n", ns, "-f", "-", input=playground(name, {
        C.ANN_POLLING: "2", C.ANN_COOLDOWN: "10", C.ANN_TRIGGERS: trigger("nowhere.queues:6379")}))
    assert f"playground.inference.llmaz.io/{name} created" in out.stdout, out.stdout + out.stderr
    custom = client.CustomObjectsApi(stack.api())
    t0 = time.monotonic()
    so = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("status") == "False" else None)(
        get_or_none(custom, KEDA, ns, "scaledobjects", name)), 60, "KEDA to mark the ScaledObject not ready")
    keda_reason = condition(so, "Ready").get("reason")
    ev = wait_for(lambda: [e for e in events(stack, ns, name) if e["reason"] == "KEDANotReady"], 30,
                  "the KEDANotReady Event on the Playground")[0]
    seen_after = time.monotonic() - t0
    assert ev["type"] == "Warning" and keda_reason and keda_reason in ev["message"], (keda_reason, ev["message"])
    described = stack.kubectl("describe", "playground", name, "-n", ns).stdout
    assert "KEDANotReady" in described

    # The user fixes the address: KEDA reports Ready again, and so does the workload's Event stream.
    stack.kubectl("annotate", "playground", name, "-n", ns, "--overwrite",
                  f"{C.ANN_TRIGGERS}={trigger('redis.queues:6379')}")
    wait_for(lambda: (condition(get_or_none(custom, KEDA, ns, "scaledobjects", name), "Ready") or {})
             .get("status") == "True", 60, "KEDA to report the fixed ScaledObject Ready")
    wait_for(lambda: [e for e in events(stack, ns, name) if e["reason"] == "KEDAReady"], 30,
             "the KEDAReady Event after the fix")
    stack.check_alive()
    print(f"\nbroken trigger: KEDA said Ready=False ({keda_reason}); KEDANotReady on the Playground "
          f"{seen_after:.2f} s after apply; KEDAReady after the fix")
