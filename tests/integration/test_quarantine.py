"""The reconciler against hostile and refused objects, on a real kube-apiserver + etcd + controller-manager.

No webhook runs here, so objects are stored exactly as written: what a cluster holds after the webhook was off
(``failurePolicy: Ignore``) or before an upgrade tightened the rules. Such objects are quarantined without
holding up the others; workloads the rules tighten against keep their last good KEDA objects; two namespaces
with the same Playground name get distinct gateway routes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from tests.integration.test_reconciler import (ENABLED, POLICY_CM, akube, create_pg, events_for, ir_of,  # noqa: F401
                                               playground, so_of, start_controller, wait_for)
from tests.integration.test_tenant_boundary import ladder
from webhook import constants as C
from webhook.kube import CONFIGMAPS, SCALEDOBJECTS
from webhook.controller.metrics import reconciler_metrics


# ============================================================================================ reconciler

@pytest.mark.parametrize("with_hostile", [True, False], ids=["hostile", "baseline"])
async def test_hostile_objects_do_not_hold_up_the_others(start_controller, akube, namespace, capsys, with_hostile):
    """Objects stored with no webhook in the way: two alias bombs and a 5,000-deep nesting among N ordinary
    Playgrounds. Every ordinary one gets its ScaledObject; the hostile ones are quarantined with an Event. The
    baseline (the same N without them) runs right after, for the side-by-side figure in docs/security.md."""
    n = int(os.environ.get("LLMAZ_HOSTILE_N", "200"))
    namespaces = [namespace(labels=ENABLED), namespace(labels=ENABLED)]
    hostile = {} if not with_hostile else {
        "bomb-behavior": {C.ANN_BEHAVIOR: "{scaleUp: {tolerance: " + ladder() + "}}"},
        "bomb-raw": {C.ANN_TRIGGERS: "[{type: raw, trigger: {type: cpu, metadata: {value: '50'}, "
                                     "useCachedMetrics: " + ladder() + "}}]"},
        "deep": {C.ANN_TRIGGERS: "[" * 5000},
    }
    for name, ann in hostile.items():
        await create_pg(akube, namespaces[0], playground(name, annotations=ann))
    sem = asyncio.Semaphore(16)

    async def make(i: int) -> None:
        async with sem:
            await create_pg(akube, namespaces[i % 2], playground(f"pg-{i}"))
    await asyncio.gather(*(make(i) for i in range(n)))

    quarantined_before = reconciler_metrics().quarantined_workloads._value.get()
    t0 = time.perf_counter()
    r = await start_controller()

    async def all_served():
        counts = 0
        for ns in namespaces:
            counts += len((await akube.list(SCALEDOBJECTS, ns)).items)
        return counts >= n
    await wait_for(all_served, timeout=max(60, n * 0.3), interval=0.5, what=f"{n} ScaledObjects")
    elapsed = time.perf_counter() - t0
    for name in hostile:
        ev = await wait_for(lambda: events_for(akube, namespaces[0], name, "Rejected"), what=f"Rejected {name}")
        assert ev[0]["type"] == "Warning"
        assert await so_of(akube, namespaces[0], name) is None
        assert ("Playground", namespaces[0], name) in r.ctl.quarantine
    if with_hostile:
        assert "anchor" in (await events_for(akube, namespaces[0], "bomb-behavior", "Rejected"))[0]["message"]
        assert "nested more than" in (await events_for(akube, namespaces[0], "deep", "Rejected"))[0]["message"]
        assert reconciler_metrics().quarantined_workloads._value.get() >= quarantined_before + 3
    with capsys.disabled():
        print(f"\n[tenancy] {n} Playgrounds served with {len(hostile)} hostile objects among them in "
              f"{elapsed:.1f} s")

    # A resync judges the hostile objects again (cheaply) and writes nothing.
    await r.settle(30)
    writes = r.ctl.write_count
    r.ctl.enqueue_all()
    await r.settle(60)
    assert r.ctl.write_count == writes


async def test_tightened_rules_keep_the_last_good_objects(start_controller, akube, namespace):
    sys_ns = namespace(prefix="sys")
    ns = namespace(labels=ENABLED)
    r = await start_controller(system_ns=sys_ns)
    ann = {C.ANN_TRIGGERS: f"[http, {{type: redis, address: 'redis.{ns}:6379', listName: q}}]"}
    await create_pg(akube, ns, playground("kept", annotations=ann))
    so = await wait_for(lambda: so_of(akube, ns, "kept"), what="ScaledObject kept")
    # The admin narrows the boundary: redis is no longer lent to anyone.
    await akube.create(CONFIGMAPS, {"metadata": {"name": POLICY_CM},
                                    "data": {"policy.yaml": "tenancy: {triggerTypes: [http, queue-depth, cron]}\n"}},
                       sys_ns)
    ev = await wait_for(lambda: events_for(akube, ns, "kept", "Rejected"), what="Rejected kept")
    assert "redis triggers are not allowed" in ev[0]["message"]
    assert "keep their last good settings" in ev[0]["message"]
    await r.settle()
    live = await akube.get(SCALEDOBJECTS, "kept", ns)
    assert live["metadata"]["resourceVersion"] == so["metadata"]["resourceVersion"]
    assert ("Playground", ns, "kept") in r.ctl.quarantine
    # Widened again: the workload leaves quarantine.
    await akube.delete(CONFIGMAPS, POLICY_CM, sys_ns)

    async def released():
        return ("Playground", ns, "kept") not in r.ctl.quarantine
    await wait_for(released, what="quarantine released")


async def test_same_name_in_two_namespaces_gets_distinct_routes(start_controller, akube, namespace):
    a, b = namespace(labels=ENABLED), namespace(labels=ENABLED)
    await start_controller()
    for ns in (a, b):
        await create_pg(akube, ns, playground("qwen"))
    routes = [await wait_for(lambda ns=ns: ir_of(akube, ns, "qwen"), what=f"InterceptorRoute {ns}/qwen")
              for ns in (a, b)]
    rules = [json.dumps(rule, sort_keys=True) for ir in routes for rule in ir["spec"]["rules"]]
    assert len(rules) == len(set(rules)), rules
    gateway = [[h for rule in ir["spec"]["rules"] for h in rule.get("headers") or []] for ir in routes]
    assert gateway[0] == [{"name": "x-ai-eg-model", "value": f"{a}/qwen"}]
    assert gateway[1] == [{"name": "x-ai-eg-model", "value": f"{b}/qwen"}]
