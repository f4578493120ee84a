"""The learner (webhook.learn) on hand-made activity: what it decides and why, and its stored form."""

from __future__ import annotations

import json
import math
import random

import pytest

from webhook.learn import Learner, Params, State, StateError, decide, decode, encode, parse_objective
from webhook.learn.state import BINS, MAX_ENCODED, SLOTS, observe_idle, observe_requests

STARTUP = 52.0     # 2 s scheduling + 20 s pull + 30 s load
POLL = 15.0
# One request per activity is the hardest case for a price per request spared. Tests of the mechanism fix the
# price bounds: CHEAP below the defaults (the cap bites), EAGER above CHEAP's cap so that the objective decides.
CHEAP = Params(min_price_s=40.0, price_s=150.0)
EAGER = Params(min_price_s=40.0, price_s=900.0)


def feed(learner: Learner, gaps: list[float], per_activity: int = 1, busy_s: float = 5.0, t: float = 0.0,
         day_offset: float = 0.0) -> float:
    """Activity of ``busy_s`` seconds with ``per_activity`` requests, then each idle time in turn."""
    learner.requests(t, per_activity)
    for g in gaps:
        t += busy_s + g
        learner.idle_ended(t, g, day_offset)
        learner.requests(t, per_activity)
    return t + busy_s


def test_the_price_cap_gives_up_a_costly_objective_and_says_so() -> None:
    # One request every 30 min (+-20 s): catching the early ones needs the window a minute wider, 60 GPU-s per
    # period for 0.4 requests spared. Under the default cap (150 GPU-s per request) that is given up;
    # with a higher cap the window covers them.
    rng = random.Random(3)
    gaps = [1800.0 + rng.uniform(-20, 20) for _ in range(60)]
    capped, eager = Learner(0.01, STARTUP, POLL, CHEAP), Learner(0.01, STARTUP, POLL, EAGER)
    feed(capped, gaps)
    t = feed(eager, gaps)
    c, e = capped.decision(t), eager.decision(t)
    assert c.prewarm is not None and e.prewarm is not None
    assert "would cost more than 150 GPU-seconds" in c.reason and c.share > e.share
    assert e.prewarm[0] < c.prewarm[0]


def test_too_little_history_keeps_the_policy_settings() -> None:
    lr = Learner(0.01, STARTUP, POLL)
    t = feed(lr, [600.0, 610.0])
    d = lr.decision(t)
    assert d.mode == "policy" and d.keep_alive_s is None
    assert "2.0 idle times learned" in d.reason


def test_periodic_traffic_is_prewarmed_just_before_the_next_request() -> None:
    lr = Learner(0.01, STARTUP, POLL, EAGER)
    rng = random.Random(3)
    t = feed(lr, [1800.0 + rng.uniform(-20, 20) for _ in range(60)])
    d = lr.decision(t)
    assert d.mode == "pre-warm"
    assert d.keep_alive_s == 60.0                       # scale in right after the request
    start, end = d.prewarm
    assert 1500 < start < 1780 - STARTUP                # loading starts one pod start before the request
    assert 1800 <= end <= 2 * 1860                      # and lapses by itself, at most twice the longest seen
    # The estimate counts an idle time longer than any seen (a prior that keeps short histories cautious).
    assert d.share < 0.03
    # Without the tail the unseen idle time is beyond reach: the window lapses right after it was due.
    plain = Learner(0.01, STARTUP, POLL, Params(min_price_s=40.0, price_s=900.0, tail_factor=0.0))
    t = feed(plain, [1800.0 + random.Random(3).uniform(-20, 20) for _ in range(60)])
    assert 1800 <= plain.decision(t).prewarm[1] <= 1920


def test_idle_times_that_keep_growing_get_a_keep_alive_past_the_longest_seen() -> None:
    # Traffic thinning out: every idle time a little longer than the last. A keep-alive that ends at the
    # longest idle time seen meets each new one with a cold start; the tail of the unseen idle time is worth
    # a keep-alive somewhat longer (and the stored state is not touched by it).
    gaps = [300.0 * 1.03 ** i for i in range(40)]          # 300 s .. about 960 s
    grown, plain = Learner(0.01, STARTUP, POLL), Learner(0.01, STARTUP, POLL, Params(tail_factor=0.0))
    t = feed(grown, gaps)
    feed(plain, gaps)
    before = json.dumps(grown.state.bins, sort_keys=True)
    g, p = grown.decision(t), plain.decision(t)
    assert json.dumps(grown.state.bins, sort_keys=True) == before
    assert _reach(p) <= 1020                               # the bin of the longest seen, no further
    assert 1.1 * gaps[-1] <= _reach(g) <= 2 * 1020        # within the tail: longer, bounded
    assert g.share < p.share
    # Once an idle time past the histogram was seen, the unseen one is counted there, out of reach.
    grown.idle_ended(t + 20000.0, 20000.0)
    grown.requests(t + 20000.0, 1)
    assert _reach(grown.decision(t + 20005.0)) <= 2 * 1020


def _reach(d) -> float:
    """How long after the last request a replica can be ready: the keep-alive, or a pre-warm window's end."""
    return d.prewarm[1] if d.prewarm else d.keep_alive_s


def test_sparse_unpredictable_traffic_gets_a_short_keep_alive_and_no_prewarm() -> None:
    lr = Learner(0.01, STARTUP, POLL)
    rng = random.Random(5)
    t = feed(lr, [rng.expovariate(1 / 5400.0) + 120 for _ in range(150)])
    d = lr.decision(t)
    assert d.mode == "keep-alive" and d.prewarm is None and not d.daily
    assert d.keep_alive_s <= 300
    assert "would cost more" in d.reason                # the objective is given up, and it says so


def test_frequent_traffic_stays_warm_through_its_gaps() -> None:
    lr = Learner(0.01, STARTUP, POLL)
    rng = random.Random(7)
    t = feed(lr, [rng.uniform(100, 400) for _ in range(300)], per_activity=20)
    d = lr.decision(t)
    assert d.mode == "keep-alive" and d.keep_alive_s >= 400
    assert d.share <= 0.01


def test_bursts_with_long_unpredictable_pauses_are_not_held_warm_between_bursts() -> None:
    lr = Learner(0.01, STARTUP, POLL)
    rng = random.Random(11)
    gaps: list[float] = []
    for _ in range(40):
        gaps += [rng.uniform(1, 20) for _ in range(50)]          # inside a burst
        gaps.append(rng.uniform(3 * 3600, 12 * 3600))           # between bursts
    t = feed(lr, gaps)
    d = lr.decision(t)
    assert d.mode == "keep-alive" and 60 <= d.keep_alive_s <= 120    # covers the gaps inside a burst only


def _bursts(per_activity: int) -> tuple[Learner, float]:
    lr = Learner(0.01, STARTUP, POLL)
    rng = random.Random(13)
    gaps: list[float] = []
    for _ in range(12):
        gaps += [rng.uniform(1, 20) for _ in range(30)]          # inside a burst
        gaps.append(rng.uniform(5 * 3600, 7 * 3600))             # a pause past the histogram's 4 hours
    return lr, feed(lr, gaps, per_activity=per_activity)


def test_heavy_bursts_after_long_pauses_are_held_through_the_pauses() -> None:
    # Each pause ends in a burst a cold start would hold hundreds of requests of: 6 GPU-hours held per pause
    # spare them at about 40 GPU-seconds each. With one request per activity the same pauses are not worth
    # holding (thousands of GPU-seconds per request), and the keep-alive stays within the histogram.
    (heavy, t), (light, _) = _bursts(per_activity=100), _bursts(per_activity=1)
    h, li = heavy.decision(t), light.decision(t)
    assert h.mode == "keep-alive" and h.keep_alive_s == Params().long_keep_alive_s and h.share < 0.01
    assert li.mode == "keep-alive" and li.keep_alive_s <= 120
    off = Learner(0.01, STARTUP, POLL, Params(long_keep_alive_s=0.0), state=heavy.state)
    assert off.decision(t).keep_alive_s <= Params().max_keep_alive_s          # switched off: as before


def test_the_long_keep_alive_is_not_used_where_the_objective_is_met_without_it() -> None:
    # Busy every few minutes, with two 5-hour pauses whose bursts hold 0.3 % of the requests: holding the GPU
    # through them would spare those at ~150 GPU-seconds each, but the objective is met without it.
    lr = Learner(0.01, STARTUP, POLL)
    gaps = [180.0, 240.0, 200.0] * 200
    gaps[200] = gaps[400] = 5 * 3600.0
    t = feed(lr, gaps, per_activity=100)
    d = lr.decision(t)
    assert d.mode == "keep-alive" and d.keep_alive_s < Params().max_keep_alive_s and d.share <= 0.01
    eager = Learner(0.01, STARTUP, POLL, state=lr.state)
    assert eager.decision(t).keep_alive_s == d.keep_alive_s


def _busy_with_pauses(days: float, p: Params) -> tuple[Learner, float]:
    """Busy every few minutes (100 requests an activity), with a 2-hour pause each half day whose burst a
    cold start holds: 0.5 % of the requests, within a 1 % objective without holding through the pauses."""
    rng = random.Random(5)
    gaps: list[float] = []
    while sum(gaps) + 5 * len(gaps) < days * 86400:
        gaps += [rng.uniform(150, 250) for _ in range(200)] + [rng.uniform(6500, 7500)]
    lr = Learner(0.01, STARTUP, POLL, p)
    return lr, feed(lr, gaps, per_activity=100)


def test_a_settled_history_spends_only_what_the_objective_asks() -> None:
    # One day in, the minimum price (300 GPU-s per request) makes the 100 requests of each pause's burst worth
    # two hours of GPU: the keep-alive holds through the pauses. Four days in, the history has seen its daily
    # cycle and the minimum is a tie-breaker: a short keep-alive meets the objective. With the settled
    # minimum switched off, the four-day history still holds through the pauses.
    young, t1 = _busy_with_pauses(1, Params())
    settled, t4 = _busy_with_pauses(4, Params())
    off, t_off = _busy_with_pauses(4, Params(settled_days=0))
    y, s, o = young.decision(t1), settled.decision(t4), off.decision(t_off)
    assert young.state.days(t1, Params()) < Params().settled_days <= settled.state.days(t4, Params())
    assert y.keep_alive_s > 7500 and "300 GPU-seconds" in y.reason
    assert s.keep_alive_s <= 600 and 0.0 < s.share <= 0.01 and "5 GPU-seconds" in s.reason
    assert o.keep_alive_s > 7500


def test_idle_seconds_past_the_histogram_are_counted_up_to_a_day() -> None:
    s, p = State(), Params()
    observe_idle(s, p, 10.0, 5 * 3600.0, STARTUP)
    observe_idle(s, p, 20.0, 3 * 86400.0, STARTUP)
    w = s.weight(20.0, p)
    assert s.bins[BINS][0] == pytest.approx(1 + w, rel=1e-3)
    assert s.bins[BINS][2] == pytest.approx(5 * 3600.0 + w * 86400.0, rel=1e-3)


def test_daily_wake_up_is_prewarmed_by_time_of_day() -> None:
    lr = Learner(0.01, STARTUP, POLL, EAGER)
    t = 0.0
    lr.requests(t, 1)
    for day in range(6):
        for k in range(30):                                   # 09:00-09:30 busy, then idle until the next day
            t = day * 86400 + 9 * 3600 + k * 60
            if k == 0 and day:
                lr.idle_ended(t, t - last)
            elif k:
                lr.idle_ended(t, 55.0)
            lr.requests(t, 3)
        last = t + 5
    d = lr.decision(last)
    assert d.daily, d
    start, end = d.daily[0]
    assert start <= 9 * 3600 - STARTUP and end >= 9 * 3600 + 1800


def test_old_history_fades_when_the_pattern_changes() -> None:
    p = Params(half_life_s=6 * 3600.0, trust_idle_times=3.0, price_s=900.0)
    lr = Learner(0.01, STARTUP, POLL, p)
    t = feed(lr, [1800.0] * 100)                               # two days every 30 min
    a, b = lr.decision(t).prewarm
    assert a < 1800 - STARTUP and 1800 <= b <= 2 * 1860        # at most the tail of an unseen longer one
    t = feed(lr, [3 * 3600.0] * 40, t=t)                        # then every 3 hours, for five days
    d = lr.decision(t)
    assert d.prewarm is not None and d.prewarm[0] > 2 * 3600, d


def test_a_prewarm_that_would_mostly_go_unused_is_not_made() -> None:
    # A third of the idle times are 30 min, the rest 5-12 hours: a window at 30 min would be wasted GPU time
    # two times out of three.
    rng = random.Random(2)
    gaps = [1800.0 if i % 3 == 0 else rng.uniform(5 * 3600, 12 * 3600) for i in range(90)]
    lr = Learner(0.01, STARTUP, POLL, Params(half_life_s=1e9, price_s=900.0))
    t = feed(lr, gaps)
    assert lr.decision(t).prewarm is None
    regular = Learner(0.01, STARTUP, POLL, Params(half_life_s=1e9, price_s=900.0))
    t = feed(regular, [1800.0 if i % 3 else rng.uniform(5 * 3600, 12 * 3600) for i in range(90)])
    assert regular.decision(t).prewarm is not None     # two times out of three: worth it


def test_state_is_bounded_and_round_trips() -> None:
    p = Params()
    s = State()
    rng = random.Random(1)
    t = 0.0
    for _ in range(20000):
        t += rng.uniform(0, 10 * 3600)
        observe_idle(s, p, t, rng.uniform(0, 6 * 3600), STARTUP)
        observe_requests(s, p, t, rng.randint(1, 1000))
    assert len(s.bins) <= BINS + 1 and len(s.slots) <= SLOTS
    text = encode(s, t, p)
    assert len(text) <= MAX_ENCODED
    back = decode(text)
    d1 = decide(s, p, t, 0.01, STARTUP, POLL)
    d2 = decide(back, p, t, 0.01, STARTUP, POLL)
    assert d1.mode == d2.mode and d1.keep_alive_s == d2.keep_alive_s and d1.prewarm == d2.prewarm


@pytest.mark.parametrize("text, message", [
    ("not json", "not readable"),
    (json.dumps({"v": 99, "t": 0}), "version 99"),
    (json.dumps({"v": 1, "t": 0, "b": {"999": [1, 1, 1]}}), "bin '999' out of range"),
    (json.dumps({"v": 1, "t": 0, "s": {"48": 1}}), "slot '48' out of range"),
    ("x" * (MAX_ENCODED + 1), "more than"),
    ("[1, 2]", "not a JSON object"),
    ('{"v": 1, "t": NaN}', "its time is not a time"),
    ('{"v": 1, "t": 0, "x": Infinity}', "the anchor is not a time"),
    (json.dumps({"v": 1, "t": 0, "r": -5}), "the request count is -5"),
    (json.dumps({"v": 1, "t": 0, "r": 1e300}), "not a count between 0 and"),
    ('{"v": 1, "t": 0, "b": {"5": [NaN, 1, 300]}}', "bin 5 is nan"),
    (json.dumps({"v": 1, "t": 0, "b": {"5": [1, -1, 300]}}), "bin 5 is -1"),
    (json.dumps({"v": 1, "t": 0, "b": {"5": ["nan", 1, 300]}}), "bin 5 is 'nan'"),
    (json.dumps({"v": 1, "t": 0, "s": {"3": "inf"}}), "slot 3 is 'inf'"),
    (json.dumps({"v": 1, "t": 0, "w": [1]}), "not readable"),
    (json.dumps({"v": 1, "t": 0, "first": 10}), "first observation is later than its time"),
])
def test_unreadable_state_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(StateError, match=message):
        decode(text)


def test_any_state_that_decodes_gives_a_bounded_decision() -> None:
    """The state is read back from the cluster, where it may have been edited: whatever ``decode`` accepts,
    ``decide`` returns without raising, with a finite keep-alive no longer than the learner's last resort."""
    rng = random.Random(7)
    p = Params()
    values = [0, 1e-9, 0.5, 3, 1e3, 1e9, 1e15]
    accepted = 0
    for _ in range(400):
        t = rng.choice([0.0, 1e5, 1e9])
        doc = {"v": 1, "t": t, "first": t - rng.choice([0, 60, 86400 * 30]), "r": rng.choice(values),
               "b": {str(rng.randint(0, BINS)): [rng.choice(values) for _ in range(3)]
                     for _ in range(rng.randint(0, 8))},
               "s": {str(rng.randint(0, 47)): rng.choice(values) for _ in range(rng.randint(0, 3))}}
        w = sorted(rng.choice(values) for _ in range(2))
        if rng.random() < 0.5:
            doc["w"] = w
        s = decode(json.dumps(doc))
        accepted += 1
        d = decide(s, p, t + rng.choice([0.0, 60.0, 86400.0]), 0.01, STARTUP, POLL, 600.0)
        if d.keep_alive_s is not None:
            assert math.isfinite(d.keep_alive_s) and 0 < d.keep_alive_s <= p.long_keep_alive_s, (doc, d)
        for a, b in ([d.prewarm] if d.prewarm else []) + list(d.daily):
            assert math.isfinite(a) and math.isfinite(b) and a < b, (doc, d)
        assert math.isfinite(d.share), (doc, d)
    assert accepted == 400


@pytest.mark.parametrize("text, share", [("1%", 0.01), (" 0.5% ", 0.005), ("50%", 0.5)])
def test_objective_parses(text: str, share: float) -> None:
    assert parse_objective(text) == pytest.approx(share)


@pytest.mark.parametrize("text, message", [("1", "not a percentage"), ("0%", "out of range"),
                                           ("51%", "out of range"), ("x%", "not a percentage")])
def test_objective_errors_say_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_objective(text)


def test_the_price_cap_follows_the_objective() -> None:
    # The same sparse, unpredictable traffic: a tighter objective raises what sparing a request may cost (in
    # proportion), a looser one keeps the 1 % cap; the reason names the cap that applied.
    rng = random.Random(5)
    gaps = [rng.expovariate(1 / 5400.0) + 120 for _ in range(150)]
    picks = {}
    for objective in (0.05, 0.01, 0.0025):
        lr = Learner(objective, STARTUP, POLL, CHEAP)
        t = feed(lr, gaps)
        picks[objective] = lr.decision(t)
    assert "more than 150 GPU-seconds" in picks[0.05].reason and "more than 150 GPU-seconds" in picks[0.01].reason
    assert "more than 600 GPU-seconds" in picks[0.0025].reason
    assert picks[0.0025].keep_alive_s >= picks[0.01].keep_alive_s and picks[0.0025].share <= picks[0.01].share


def feed_deciding(learner: Learner, gaps: list[float], busy_s: float = 5.0) -> float:
    """As ``feed``, one request per activity, asking for a decision whenever an activity ends (as a caller
    does: that is when the keep-alive is set)."""
    t = 0.0
    learner.requests(t, 1)
    for g in gaps:
        learner.decision(t + busy_s)
        t += busy_s + g
        learner.idle_ended(t, g)
        learner.requests(t, 1)
    return t + busy_s


def test_the_learner_counts_the_cold_starts_its_own_decisions_caused() -> None:
    lr = Learner(0.01, STARTUP, POLL, CHEAP, fallback_s=600.0)
    t = feed_deciding(lr, [300.0, 900.0, 300.0, 900.0])   # the policy's 600 s: the 900 s idle times wait
    lr.decision(t)
    s = lr.state
    assert s.judged > 0 and 0 < s.waited < s.judged
    t2 = t + 900.0
    lr.idle_ended(t2, 900.0)
    before = s.waited
    lr.requests(t2, 4)
    assert s.waited == pytest.approx(before + 4 * s.weight(t2, lr.params))


def test_without_the_policy_keep_alive_the_first_cold_starts_are_not_guessed() -> None:
    lr = Learner(0.01, STARTUP, POLL, CHEAP)              # no fallback_s: the policy's cooldown is not known
    feed_deciding(lr, [900.0, 900.0])                    # decided under the policy's settings only
    assert lr.state.judged == 0.0 and lr.state.waited == 0.0


def test_over_budget_aims_lower_and_under_budget_a_little_higher() -> None:
    p = Params(budget_span=2.0, price_s=3600.0)
    rng = random.Random(7)
    # A heavy tail (Pareto): each further minute of keep-alive spares fewer requests, so the target matters.
    gaps = [rng.uniform(100, 400) if i % 4 else min(400 * rng.paretovariate(1.5), 20000) for i in range(400)]
    picks = {}
    for name, waited in (("over", 0.05), ("none", None), ("under", 0.0)):
        lr = Learner(0.01, STARTUP, POLL, p)
        t = feed(lr, gaps, per_activity=5)
        s = lr.state
        if waited is None:
            s.waited = s.judged = 0.0
        else:
            s.judged, s.waited = s.requests, s.requests * waited
        picks[name] = decide(s, p, t, 0.01, STARTUP, POLL)
    assert "aiming at 0.50%" in picks["over"].reason and "aiming at 2.00%" in picks["under"].reason
    assert "aiming" not in picks["none"].reason
    assert picks["over"].keep_alive_s >= picks["none"].keep_alive_s > picks["under"].keep_alive_s
    assert picks["over"].share <= 0.005 < picks["under"].share <= 0.02


def test_the_budget_survives_encoding_and_old_state_still_decodes() -> None:
    p = Params()
    lr = Learner(0.01, STARTUP, POLL, fallback_s=600.0)
    t = feed_deciding(lr, [300.0, 900.0] * 5)
    back = decode(encode(lr.state, t, p))
    assert back.judged == pytest.approx(lr.state.judged / lr.state.weight(t, p), rel=0.01)
    assert back.waited == pytest.approx(lr.state.waited / lr.state.weight(t, p), rel=0.01)
    old = json.loads(encode(lr.state, t, p))
    del old["w"]                                     # written before the budget was kept
    s = decode(json.dumps(old))
    assert s.judged == 0.0 and s.waited == 0.0
    with pytest.raises(StateError, match="more requests waited"):
        decode(json.dumps({**old, "w": [5, 1]}))
