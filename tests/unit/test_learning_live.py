"""The pure part of live learning (webhook.controller.learning): KEDA's lastActiveTime -> the learner -> the
ScaledObject (cooldownPeriod, a dated cron window that ends by itself, the bounded state annotation)."""

from __future__ import annotations

import datetime as dt
import json
import math

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


def test_activity_inside_our_own_window_is_not_demand_and_the_next_idle_time_counts_from_the_anchor() -> None:
    lv = live()
    L.observe(lv, T0, POLL)
    lv.windows = [(T0 + 600, T0 + 660)]                       # a pre-warm's one-minute wake-up
    assert not L.observe(lv, T0 + 600 + POLL, POLL)           # KEDA active because of our cron trigger
    assert not L.observe(lv, T0 + 660 + POLL, POLL)
    assert lv.prev == T0 + 660 + POLL and lv.in_window and lv.anchor == T0   # nothing learned, anchor kept
    assert L.observe(lv, T0 + 1000, POLL)                     # the request the pre-warm was for: seen
    assert 16 in lv.learner.state.bins and lv.anchor == T0 + 1000          # 1000 s after the last activity
    lv.windows = lv.daily = [(T0 + 2000, T0 + 4000)]          # a time-of-day window holds the replica throughout
    assert not L.observe(lv, T0 + 2000 + POLL, POLL) and lv.blind
    assert not L.observe(lv, T0 + 5000, POLL)                 # a request inside it may have come: not counted
    assert L.observe(lv, T0 + 5000 + POLL + 400, POLL)        # the next idle time counts again
    assert 7 in lv.learner.state.bins                         # 430 s


def test_an_unused_prewarm_lapses_and_places_no_other() -> None:
    """A workload that stops after a pre-warm decision: the wake-up and the hold lapse, and nothing more is
    placed until activity is seen again (the anchor did not move)."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    p = L.plan(so, lv, lv.prev + 2 * POLL, POLL)
    lv.windows = p.windows
    (a, w), = p.windows
    (_, b), = p.warm
    L.observe(lv, a + POLL, POLL)                              # our cron trigger wakes KEDA ...
    L.observe(lv, w, POLL)                                     # ... to its end; no request seen
    held = L.plan(so, lv, w + 1, POLL)
    assert held.scaled_object["spec"]["cooldownPeriod"] == math.ceil(b - w)
    lv.windows = held.windows
    after = L.plan(so, lv, b + 1, POLL)
    assert after.windows == [] and after.warm == [] and after.scaled_object["spec"]["cooldownPeriod"] == 60
    assert after.recheck_in is None


def test_a_window_holding_the_replica_stays_until_its_end() -> None:
    """KEDA's advances inside our window do not move the anchor, and the window that woke the replica is kept
    until its end (it is one minute long)."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    p = L.plan(so, lv, lv.prev + 2 * POLL, POLL)
    lv.windows = p.windows
    (a, w), = p.windows
    L.observe(lv, a + POLL, POLL)                              # the window woke the workload
    mid = L.plan(so, lv, a + POLL + 1, POLL)
    assert mid.windows == [(a, w)]
    names = [t["name"] for t in mid.scaled_object["spec"]["triggers"] if t["name"].startswith(L.TRIGGER_PREFIX)]
    assert names == [f"{L.TRIGGER_PREFIX}-0"]
    lv.windows = mid.windows
    assert L.plan(so, lv, w + 1, POLL).windows == []          # and goes once it ended; the hold goes on


def test_a_new_process_keeps_the_window_and_the_hold_an_earlier_one_placed() -> None:
    """After a restart or a leader change the windows on the ScaledObject are read back (KEDA's activity inside
    them is not taken for demand), and the anchor comes with the stored state, so the hold goes on."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    p = L.plan(so, lv, lv.prev + 2 * POLL, POLL)
    (a, w), = p.windows
    (_, b), = p.warm
    stored = p.scaled_object
    stored["metadata"]["annotations"] = dict(stored["metadata"].get("annotations") or {})
    stored["status"] = {"lastActiveTime": iso(a + POLL)}
    fresh, err = L.new_live(stored, 0.01, POLL, 600.0, a + POLL + 1)
    assert err is None and fresh.windows == [(a, w)] and fresh.anchor == lv.anchor
    again = L.plan(stored, fresh, a + POLL + 1, POLL)
    assert again.windows == [(a, w)] and again.warm == [(a, b)]
    assert again.scaled_object["spec"]["cooldownPeriod"] == math.ceil(b - w)
    assert not L.observe(fresh, a + 3 * POLL, POLL) and fresh.in_window
    junk = {"spec": {"triggers": [{"name": f"{L.TRIGGER_PREFIX}-0", "metadata": {"start": "x", "end": "61 1 1 1 *"}},
                                  "not a trigger"]}}
    assert L.placed_windows(junk, T0) == []
    forged = json.loads(stored["metadata"]["annotations"][C.ANN_LEARNED_STATE])
    forged["x"] = T0 + 10 * 86400                             # an anchor in the future: not believed
    stored["metadata"]["annotations"][C.ANN_LEARNED_STATE] = json.dumps(forged)
    odd, err = L.new_live(stored, 0.01, POLL, 600.0, a + POLL + 1)
    assert err is None and odd.anchor == a + POLL


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


def test_prewarm_is_a_dated_one_minute_wake_up_then_a_hold_by_cooldown() -> None:
    so = scaled_object()
    lv = live(so)
    end = periodic(lv, 40, 1800)                             # every half hour: longer than a keep-alive pays
    d = lv.learner.decision(lv.prev)
    assert d.mode == "pre-warm" and d.prewarm is not None
    busy = L.plan(so, lv, lv.prev + 5, POLL)                 # just active: no window yet, look again later
    assert busy.windows == [] and busy.recheck_in is not None and 0 < busy.recheck_in <= 2 * POLL
    now = lv.prev + 2 * POLL
    idle = L.plan(so, lv, now, POLL)
    assert len(idle.windows) == 1
    a, w = idle.windows[0]
    (_, b), = idle.warm
    assert a % 60 == 0 and w == a + 60 and b % 60 == 0 and lv.prev < a < w < b
    assert idle.scaled_object["spec"]["cooldownPeriod"] == 60    # the learned keep-alive until the hold
    trig = [t for t in idle.scaled_object["spec"]["triggers"] if t["name"].startswith(L.TRIGGER_PREFIX)]
    assert len(trig) == 1
    md = trig[0]["metadata"]
    assert md["timezone"] == "Etc/UTC" and md["desiredReplicas"] == "1"
    for key, t in (("start", a), ("end", w)):
        assert cron_problem(md[key]) is None
        x = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        assert md[key] == f"{x.minute} {x.hour} {x.day} {x.month} *"   # one date: it ends by itself
    assert idle.recheck_in == a - 30 - now                   # the hold goes in 30 s before the wake-up
    held = L.plan(so, lv, a - 30, POLL)
    assert held.scaled_object["spec"]["cooldownPeriod"] == b - w  # from the window's end to the pre-warm's
    assert held.recheck_in == 91.0                           # the window taken out once it ended, then the hold
    gone = L.plan(so, lv, b + 1, POLL)
    assert gone.windows == [] and gone.scaled_object["spec"]["cooldownPeriod"] == 60
    assert end > 0


def test_busy_advances_do_not_change_the_stored_state() -> None:
    """While a workload is busy KEDA advances lastActiveTime every poll and the anchor follows, but the stored
    state (the ScaledObject's annotation, written by server-side apply) changes only when an idle time ends or
    a pre-warm is placed: a busy workload causes no writes."""
    so = scaled_object()
    lv = live(so)
    periodic(lv, 40, 1800)
    t = lv.prev + 1800
    assert L.observe(lv, t, POLL)                               # a request: an idle time ended
    texts = set()
    for k in range(1, 20):                                      # busy for ten minutes, a poll at a time
        L.observe(lv, t + k * POLL, POLL)
        texts.add(L.plan(so, lv, t + k * POLL + 1, POLL).scaled_object["metadata"]["annotations"][
            C.ANN_LEARNED_STATE])
    assert len(texts) == 1 and lv.anchor == t + 19 * POLL


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


def test_a_window_longer_than_any_we_place_is_not_kept() -> None:
    """Windows are read back from the ScaledObject after a restart, where anyone who may edit it could have
    written one: a wake-up window longer than a wake-up, or a time-of-day window longer than a day and its
    lead, would hold a replica that long, and is left out; ours are kept."""
    so = scaled_object()
    ours = L.cron_trigger(f"{L.TRIGGER_PREFIX}-0", T0 - 60, T0 - 60 + 60)
    day = L.cron_trigger(f"{L.DAILY_PREFIX}-0", T0 - 600, T0 + 1800)
    months = L.cron_trigger(f"{L.TRIGGER_PREFIX}-1", T0 - 60, T0 + 200 * 86400)
    long_day = L.cron_trigger(f"{L.DAILY_PREFIX}-1", T0 - 600, T0 + 3 * 86400)
    so["spec"]["triggers"] = list(so["spec"]["triggers"]) + [ours, day, months, long_day]
    lv, err = L.new_live(so, 0.01, POLL, 600.0, T0)
    assert err is None
    assert lv.windows == [(T0 - 600, T0 + 1800), (T0 - 60, T0)]
    assert lv.daily == [(T0 - 600, T0 + 1800)]
    kept = L.plan(so, lv, T0 - 30, POLL).windows
    assert (T0 - 60, T0 + 200 * 86400) not in kept and (T0 - 600, T0 + 3 * 86400) not in kept


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
