"""The pure part of live learning (webhook.controller.learning): KEDA's lastActiveTime -> the learner -> the
ScaledObject (cooldownPeriod, a dated cron window that ends by itself, the bounded state annotation)."""

from __future__ import annotations

import datetime as dt
import json

from webhook import constants as C
from webhook.controller import learning as L
from webhook.controller.objects import live_matches, slim_owned
from webhook.keda import desired_objects
from webhook.learn import Learner, State, decode, encode
from webhook.learn.state import MAX_ENCODED
from webhook.policy import Policy
from webhook.triggers import cron_problem

from .helpers import catalog, playground

POLL = 30.0
T0 = 1_800_000_000.0        # 2027-01-15T08:00:00Z


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def scaled_object(annotations: dict[str, str] | None = None) -> dict:
    wl = playground(annotations={C.ANN_KEEP_ALIVE: "learned", **(annotations or {})}, replicas=0)
    wl["metadata"]["uid"] = "u1"
    so = desired_objects(wl, Policy.default(), catalog()).scaled_object
    assert so is not None
    return so


def live(so: dict | None = None) -> L.Live:
    lv, err = L.new_live(so, 0.01, POLL, 600.0, T0)
    assert err is None
    return lv


def test_time_parsing() -> None:
    assert L.parse_time("2027-01-15T08:00:00Z") == T0
    assert L.parse_time("not a time") is None and L.parse_time(None) is None
    assert L.last_active({"status": {"lastActiveTime": iso(T0)}}) == T0
    assert L.last_active({}) is None


def test_poll_advances_are_activity_and_a_jump_is_an_idle_time() -> None:
    lv = live()
    assert not L.observe(lv, T0, POLL)                       # the first time only sets the reference
    assert not L.observe(lv, T0 + POLL, POLL)                # busy: KEDA bumps it every poll
    assert not L.observe(lv, T0 + POLL, POLL)                # the same time again changes nothing
    assert L.observe(lv, T0 + POLL + 300, POLL)              # 300 s without activity
    st = lv.learner.state
    assert sum(v[0] for v in st.bins.values()) == 1.0
    assert 5 in st.bins                                      # the 5-minute bin
    assert st.requests == 1.0


def test_activity_inside_our_own_prewarm_window_is_not_demand() -> None:
    lv = live()
    L.observe(lv, T0, POLL)
    lv.windows = [(T0 + 600, T0 + 900)]
    assert not L.observe(lv, T0 + 660, POLL)                 # KEDA active because of our cron trigger
    assert not L.observe(lv, T0 + 900 + POLL, POLL)
    assert lv.prev == T0 + 900 + POLL and lv.in_window       # the reference moves, nothing is learned
    assert not L.observe(lv, T0 + 2000, POLL)                # measured from a window, not a request: skipped
    assert lv.learner.state.bins == {} and not lv.in_window
    assert L.observe(lv, T0 + 2000 + POLL + 400, POLL)       # the next idle time counts again
    assert 7 in lv.learner.state.bins                          # 430 s


def test_windows_chained_on_window_activity_are_bounded() -> None:
    """A workload that stops after a pre-warm decision: KEDA's bumps inside each window anchor the next one
    at most MAX_CHAIN times, then nothing is placed until demand is seen outside a window."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    placed = 0
    for _ in range(10):
        now = lv.prev + 2 * POLL
        p = L.plan(so, lv, now, POLL)
        lv.windows = p.windows
        if not p.windows:
            break
        placed += 1
        a, b = p.windows[0]
        L.observe(lv, a + POLL, POLL)                          # our cron trigger keeps KEDA active ...
        L.observe(lv, b, POLL)                                 # ... to its end; no request seen
    assert placed == L.MAX_CHAIN + 1
    L.observe(lv, lv.prev + 5000, POLL)                        # demand outside a window: chaining again
    assert lv.chain == 0 and L.plan(so, lv, lv.prev + 2 * POLL, POLL).windows


def test_a_window_holding_the_replica_stays_until_its_end() -> None:
    """KEDA's advances inside our window move the anchor; the window must not be re-planned away from under
    the replica it holds (that would end the pre-warm one keep-alive after it started)."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    p = L.plan(so, lv, lv.prev + 2 * POLL, POLL)
    lv.windows = p.windows
    (a, b), = p.windows
    L.observe(lv, a + POLL, POLL)                              # the window woke the workload
    mid = L.plan(so, lv, a + POLL + 1, POLL)
    assert mid.windows == [(a, b)]
    names = [t["name"] for t in mid.scaled_object["spec"]["triggers"] if t["name"].startswith(L.TRIGGER_PREFIX)]
    assert names == [f"{L.TRIGGER_PREFIX}-0"]
    lv.windows = mid.windows
    assert (a, b) not in L.plan(so, lv, b + 1, POLL).windows  # and goes once it ended (a chained one may follow)


def test_a_new_process_keeps_the_window_an_earlier_one_placed() -> None:
    """After a restart or a leader change the windows on the ScaledObject are read back: one holding the
    replica is kept to its end and KEDA's activity inside it is not taken for demand."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    p = L.plan(so, lv, lv.prev + 2 * POLL, POLL)
    (a, b), = p.windows
    stored = p.scaled_object
    stored["metadata"]["annotations"] = dict(stored["metadata"].get("annotations") or {})
    stored["status"] = {"lastActiveTime": iso(a + POLL)}
    fresh, err = L.new_live(stored, 0.01, POLL, 600.0, a + POLL + 1)
    assert err is None and fresh.windows == [(a, b)]
    assert L.plan(stored, fresh, a + POLL + 1, POLL).windows == [(a, b)]
    assert not L.observe(fresh, a + 3 * POLL, POLL) and fresh.in_window
    junk = {"spec": {"triggers": [{"name": f"{L.TRIGGER_PREFIX}-0", "metadata": {"start": "x", "end": "61 1 1 1 *"}},
                                  "not a trigger"]}}
    assert L.placed_windows(junk, T0) == []


def periodic(lv: L.Live, n: int, every: float, start: float = T0) -> float:
    t = start
    L.observe(lv, t, POLL)
    for _ in range(n):
        t += every
        L.observe(lv, t, POLL)
        L.observe(lv, t + POLL, POLL)
        t += POLL
    return t


def test_too_little_history_keeps_the_policy_settings() -> None:
    so = scaled_object()
    lv = live(so)
    periodic(lv, 1, 300)
    p = L.plan(so, lv, T0 + 400, POLL)
    assert p.decision.mode == "policy"
    assert p.scaled_object["spec"]["cooldownPeriod"] == so["spec"]["cooldownPeriod"]
    assert not any(t["name"].startswith(L.TRIGGER_PREFIX) for t in p.scaled_object["spec"]["triggers"])
    assert C.ANN_LEARNED_STATE in p.scaled_object["metadata"]["annotations"]


def test_learned_keep_alive_becomes_the_cooldown_and_the_state_round_trips() -> None:
    so = scaled_object()
    lv = live(so)
    end = periodic(lv, 40, 300)                              # a request every ~5.5 minutes
    p = L.plan(so, lv, end + 1, POLL)
    assert p.decision.mode in ("keep-alive", "pre-warm")
    if p.decision.mode == "keep-alive":
        assert p.scaled_object["spec"]["cooldownPeriod"] == int(p.decision.keep_alive_s)
        assert p.scaled_object["spec"]["cooldownPeriod"] != so["spec"]["cooldownPeriod"]
    text = p.scaled_object["metadata"]["annotations"][C.ANN_LEARNED_STATE]
    assert len(text) <= MAX_ENCODED
    # after a restart: the same state from the ScaledObject, the same decision
    again = live(p.scaled_object)
    assert L.decision_key(again.learner.decision(end)) == L.decision_key(p.decision)
    # the stored state is stable while nothing new is observed (no write on every reconcile)
    assert L.plan(so, lv, end + 5, POLL).scaled_object["metadata"]["annotations"][C.ANN_LEARNED_STATE] == text


def test_prewarm_is_a_dated_cron_window_placed_once_idle() -> None:
    so = scaled_object()
    lv = live(so)
    end = periodic(lv, 40, 1800)                             # every half hour: longer than a keep-alive pays
    d = lv.learner.decision(lv.prev)
    assert d.mode == "pre-warm" and d.prewarm is not None
    busy = L.plan(so, lv, lv.prev + 5, POLL)                 # just active: no window yet, look again later
    assert busy.windows == [] and busy.recheck_in is not None and 0 < busy.recheck_in <= 2 * POLL
    idle = L.plan(so, lv, lv.prev + 2 * POLL, POLL)
    assert len(idle.windows) == 1
    a, b = idle.windows[0]
    assert a % 60 == 0 and b % 60 == 0 and lv.prev < a < b
    trig = [t for t in idle.scaled_object["spec"]["triggers"] if t["name"].startswith(L.TRIGGER_PREFIX)]
    assert len(trig) == 1
    md = trig[0]["metadata"]
    assert md["timezone"] == "Etc/UTC" and md["desiredReplicas"] == "1"
    for key, t in (("start", a), ("end", b)):
        assert cron_problem(md[key]) is None
        w = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        assert md[key] == f"{w.minute} {w.hour} {w.day} {w.month} *"   # one date: it ends by itself
    assert idle.recheck_in == b - (lv.prev + 2 * POLL) + 1.0        # and is taken out after it ended
    gone = L.plan(so, lv, b + 1, POLL)
    assert gone.windows == []
    assert end > 0


def test_corrupt_or_oversized_state_falls_back_with_a_reason() -> None:
    for bad in ("{not json", json.dumps({"v": 99}), "x" * (MAX_ENCODED + 1),
                json.dumps({"v": 1, "t": 1, "b": {"999": [1, 1, 1]}}),
                json.dumps({"v": 1, "t": 5, "first": 1, "r": 3, "b": {"3": [3, 3, 540]}})):   # time base far off
        so = scaled_object()
        so["metadata"]["annotations"] = {C.ANN_LEARNED_STATE: bad}
        lv, err = L.new_live(so, 0.01, POLL, 600.0, T0)
        assert err and lv.learner.state.first is None
        assert lv.learner.decision(T0).mode == "policy"


def test_learner_is_the_simulators_learner_unchanged() -> None:
    lv = live()
    assert type(lv.learner) is Learner
    s = State()
    assert decode(encode(s, 0.0, lv.learner.params)).bins == {}


def test_live_matches_sees_a_changed_state_annotation_and_slim_keeps_last_active() -> None:
    so = scaled_object()
    so["metadata"]["annotations"] = {C.ANN_LEARNED_STATE: "a"}
    live_obj = json.loads(json.dumps(so))
    live_obj["metadata"]["managedFields"] = []
    changed = json.loads(json.dumps(so))
    changed["metadata"]["annotations"][C.ANN_LEARNED_STATE] = "b"
    assert not live_matches(changed, live_obj)
    slim = slim_owned({**so, "status": {"lastActiveTime": iso(T0), "other": 1}})
    assert slim["status"] == {"lastActiveTime": iso(T0)}


def test_visible_line_names_the_window() -> None:
    lv = live()
    periodic(lv, 40, 1800)
    d = lv.learner.decision(lv.prev)
    line = L.visible(d, [(T0, T0 + 600)])
    assert "keep-alive" in line and "warm 2027-01-15T08:00Z-08:10Z" in line


def test_state_round_trip_keeps_an_epoch_time_base() -> None:
    """The reconciler's times are epoch seconds: the stored time base must be exact, not 3 digits."""
    lv = live()
    end = periodic(lv, 5, 300)
    p = lv.learner.params
    back = decode(encode(lv.learner.state, lv.learner.state.t0, p))
    assert abs(back.t0 - lv.learner.state.t0) < 1.0
    assert abs(back.effective(end, p) - lv.learner.state.effective(end, p)) < 0.05
