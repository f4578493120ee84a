"""keep-alive: learned on a real kube-apiserver: the reconciler learns from the ScaledObject's
``status.lastActiveTime`` (written here through the status subresource, as KEDA's scale loop writes it), puts
the learned keep-alive into ``cooldownPeriod``, keeps its state on the ScaledObject across a restart, and falls
back to the policy settings with an Event when that state cannot be read.

No KEDA operator runs here: the test is KEDA's scale loop, writing lastActiveTime a poll apart while "busy" and
after an idle time when a request comes. Times are in the past (compressed): the learner only sees them.
"""

from __future__ import annotations

import datetime as dt
import json
import time

from tests.integration.test_reconciler import (ENABLED, akube, create_pg, events_for, playground, so_of,  # noqa: F401
                                               start_controller, wait_for)
from webhook import constants as C
from webhook.controller.metrics import reconciler_metrics
from webhook.kube import PLAYGROUNDS, SCALEDOBJECTS

POLL = 15
IDLE = 150          # every idle time; the policy's keep-alive (60 s) would meet a cold start each time
LEARNED = {C.ANN_KEEP_ALIVE: "learned", C.ANN_COOLDOWN: "60", C.ANN_POLLING: str(POLL)}


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def set_last_active(kube, ns: str, name: str, t: float) -> None:
    await kube.patch(SCALEDOBJECTS, name, {"status": {"lastActiveTime": iso(t)}}, ns, subresource="status")


async def activity(r, kube, ns: str, name: str, t: float) -> None:
    """One write of lastActiveTime, waited for until the reconciler has seen it."""
    key = ("Playground", ns, name)
    await set_last_active(kube, ns, name, t)

    async def seen():
        live = r.ctl.learning.get(key)
        return live is not None and live.prev == t
    await wait_for(seen, what=f"lastActiveTime {iso(t)} seen by the reconciler")


async def cooldown_is(kube, ns: str, name: str, want: int):
    so = await so_of(kube, ns, name)
    return so if so and so["spec"]["cooldownPeriod"] == want else None


async def test_learned_cooldown_reaches_the_scaledobject_and_survives_a_restart(start_controller, akube,
                                                                                 namespace):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    await create_pg(akube, ns, playground("periodic", annotations=LEARNED, replicas=0))
    so = await wait_for(lambda: so_of(akube, ns, "periodic"), what="ScaledObject")
    assert so["spec"]["cooldownPeriod"] == 60 and so["spec"]["minReplicaCount"] == 0

    t = float(int(time.time()) - 6 * 3600)        # whole seconds, as lastActiveTime is written
    await activity(r, akube, ns, "periodic", t)
    for _ in range(4):                       # busy one poll, then idle IDLE seconds until the next request
        t += POLL
        await activity(r, akube, ns, "periodic", t)
        t += IDLE
        await activity(r, akube, ns, "periodic", t)
    # 4 idle times of 150 s: keeping a replica is cheaper than a cold start each time; with so short a
    # history the keep-alive also covers the tail of a longer idle time not seen yet (twice the 180 s bin)
    so = await wait_for(lambda: cooldown_is(akube, ns, "periodic", 360), what="cooldownPeriod 360")
    state = so["metadata"]["annotations"][C.ANN_LEARNED_STATE]
    assert len(state) <= 8192 and json.loads(state)["b"]["2"][0] == 4

    pg = await wait_for(lambda: _learned_annotation(akube, ns, "periodic"), what="learned annotation")
    assert pg.startswith("keep-alive 360s")
    assert pg.endswith("; learned from KEDA's status")       # no Prometheus here: what it learned from is said
    events = await wait_for(lambda: events_for(akube, ns, "periodic", "Learned"), what="Learned event")
    assert any("keep-alive 360s" in e["message"] for e in events)
    gauge = reconciler_metrics().learned_keep_alive.labels(ns, "Playground", "periodic")
    assert gauge._value.get() == 360

    # Restart: a new reconciler reads the state from the ScaledObject; nothing is learned twice, nothing lost.
    await r.close()
    r2 = await start_controller()
    await r2.settle()
    live = await so_of(akube, ns, "periodic")
    assert live["spec"]["cooldownPeriod"] == 360
    assert live["metadata"]["annotations"][C.ANN_LEARNED_STATE] == state
    assert r2.ctl.learning[("Playground", ns, "periodic")].learner.state.effective(t, r2.ctl.learning[
        ("Playground", ns, "periodic")].learner.params) >= 3.99
    t += POLL
    await activity(r2, akube, ns, "periodic", t)
    t += IDLE
    await activity(r2, akube, ns, "periodic", t)

    async def five():
        so = await so_of(akube, ns, "periodic")
        doc = json.loads(so["metadata"]["annotations"][C.ANN_LEARNED_STATE])
        return so if abs(sum(v[0] for v in doc["b"].values()) - 5) < 0.05 else None
    await wait_for(five, what="the fifth idle time on top of the stored four")


async def _learned_annotation(kube, ns: str, name: str) -> str | None:
    pg = await kube.get(PLAYGROUNDS, name, ns)
    return ((pg.get("metadata") or {}).get("annotations") or {}).get(C.ANN_LEARNED)


async def test_unreadable_state_falls_back_to_the_policy_with_an_event(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    await start_controller(wait_synced=True)
    await create_pg(akube, ns, playground("broken", annotations=LEARNED, replicas=0))
    await wait_for(lambda: so_of(akube, ns, "broken"), what="ScaledObject")
    await akube.patch(SCALEDOBJECTS, "broken",
                      {"metadata": {"annotations": {C.ANN_LEARNED_STATE: "{not the learner's state"}}}, ns)
    r2 = await start_controller()            # a second reconciler (no leader election): reads it afresh
    await r2.settle()
    events = await wait_for(lambda: events_for(akube, ns, "broken", "LearnedStateInvalid"),
                            what="LearnedStateInvalid event")
    assert "not readable" in events[0]["message"] and events[0]["type"] == "Warning"
    so = await so_of(akube, ns, "broken")
    assert so["spec"]["cooldownPeriod"] == 60           # the policy's settings, nothing pinned
    assert not any(tr["name"].startswith("learned-prewarm") for tr in so["spec"]["triggers"])


async def test_prewarm_is_a_dated_cron_window_in_the_scaledobject(start_controller, akube, namespace):
    """A request every 10 minutes, 40 times: scale in after a minute and load again before the next one is
    due. The wake-up is a one-minute cron trigger with a dated start and end, which the API server stores as
    written; it goes away while the workload is busy again, and the workload's own triggers are never touched."""
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    await create_pg(akube, ns, playground("timer", annotations=LEARNED, replicas=0))
    so = await wait_for(lambda: so_of(akube, ns, "timer"), what="ScaledObject")
    own = [tr["name"] for tr in so["spec"]["triggers"]]
    now = float(int(time.time()))
    n, idle = 40, 600
    t = now - 7200 - n * (POLL + idle)         # history ending two hours ago: its windows all ended
    await activity(r, akube, ns, "timer", t)
    for _ in range(n):
        t += POLL
        await activity(r, akube, ns, "timer", t)
        t += idle
        await activity(r, akube, ns, "timer", t)
    t += POLL
    await activity(r, akube, ns, "timer", t)
    t = now - 40                               # the last request: idle two polls already, placed at once
    await activity(r, akube, ns, "timer", t)

    async def windowed():
        so = await so_of(akube, ns, "timer")
        mine = [tr for tr in so["spec"]["triggers"] if tr["name"].startswith("learned-prewarm")] if so else []
        return (so, mine[0]) if mine else None
    so, trig = await wait_for(windowed, what="a learned-prewarm cron trigger")
    assert so["spec"]["cooldownPeriod"] == 60                # scale in after a minute ...
    assert [tr["name"] for tr in so["spec"]["triggers"]][:len(own)] == own   # ... wake-up triggers kept
    live = r.ctl.learning[("Playground", ns, "timer")]
    (a, w), = live.windows
    assert t < a < t + idle and w == a + 60                  # ... woken before the next request is due
    md = trig["metadata"]
    for field_, at in (("start", a), ("end", w)):
        d = dt.datetime.fromtimestamp(at, dt.timezone.utc)
        assert md[field_] == f"{d.minute} {d.hour} {d.day} {d.month} *"
    assert md["desiredReplicas"] == "1" and md["timezone"] == "Etc/UTC"
    events = await wait_for(lambda: events_for(akube, ns, "timer", "Learned"), what="Learned event")
    assert any("pre-warm" in e["message"] for e in events)

    await activity(r, akube, ns, "timer", now)               # busy again: no window while a replica is up

    async def unwindowed():
        so = await so_of(akube, ns, "timer")
        return so if so and not any(tr["name"].startswith("learned-prewarm") for tr in so["spec"]["triggers"]) \
            else None
    await wait_for(unwindowed, what="the window taken out")


async def test_back_to_fixed_removes_what_was_learned(start_controller, akube, namespace):
    ns = namespace(labels=ENABLED)
    r = await start_controller()
    await create_pg(akube, ns, playground("switch", annotations=LEARNED, replicas=0))
    await wait_for(lambda: _learned_annotation(akube, ns, "switch"), what="learned annotation")
    await akube.patch(PLAYGROUNDS, "switch", {"metadata": {"annotations": {C.ANN_KEEP_ALIVE: "fixed"}}}, ns)

    async def cleared():
        return await _learned_annotation(akube, ns, "switch") is None
    await wait_for(cleared, what="the learned annotation removed")
    await r.settle()
    assert ("Playground", ns, "switch") not in r.ctl.learning

