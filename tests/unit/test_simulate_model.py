"""The scaling model on hand-computed timelines (pod start 2 + 20 + 120 = 142 s unless said otherwise)."""

from __future__ import annotations

import pytest

from webhook.simulate.model import PodTiming, ScalingConfig, simulate

T = PodTiming(2, 20, 120)
ZERO = ScalingConfig(min_replicas=0, max_replicas=4, cooldown_s=600, polling_s=15, start_at_zero=True)


def test_single_request_at_zero():
    # push wake at 100.25; ready at 242.25; done 247.25; first poll after 247.25 + 600 is 855.
    r = simulate([(100.0, 1, 5.0)], ZERO, T, horizon=2000, keep_timeline=True)
    assert r.timeline == [(100.25, 1), (855, 0)]
    assert r.waits == [(pytest.approx(142.25), 1)]
    assert r.replica_seconds == pytest.approx(855 - 100.25)
    assert (r.activations, r.waited, r.failed, r.requests) == (1, 1, 0, 1)


def test_burst_scales_out_then_stabilised_scale_down():
    # 40 requests, target 16: the HPA sync at 105 wants ceil(40/16) = 3 (limit max(1+4, 2) = 5).
    # Load gone at 247.25; the 300 s down-stabilisation window keeps 3 until the sync at 540
    # (the last recommendation of 3 was at 240); KEDA scales to 0 at the first poll after 847.25.
    r = simulate([(100.0, 40, 5.0)], ZERO, T, horizon=2000, keep_timeline=True)
    assert r.timeline == [(100.25, 1), (105, 3), (540, 1), (855, 0)]
    assert r.waited == 40 and r.waiter_quantile(0.99) == pytest.approx(142.25)
    assert r.peak_replicas == 3


def test_trickle_just_under_the_cooldown_never_scales_in():
    # Gaps of 590 s after each 5 s request: the cooldown (600 s from the last activity) never passes.
    r = simulate([(0.0, 1, 5.0), (595.0, 1, 5.0), (1190.0, 1, 5.0)], ZERO, T, horizon=3000, keep_timeline=True)
    assert r.activations == 1
    assert r.timeline == [(0.25, 1), (1800, 0)]      # first poll after 1195 + 600


def test_gap_just_over_the_cooldown_is_a_second_cold_start():
    # ready 142.25, done 147.25, scaled in at 750; the next request at 760 wakes it again.
    r = simulate([(0.0, 1, 5.0), (760.0, 1, 5.0)], ZERO, T, horizon=3000, keep_timeline=True)
    assert r.activations == 2
    assert r.timeline[:3] == [(0.25, 1), (750, 0), (760.25, 1)]


def test_readiness_timeout_fails_held_requests():
    cfg = ScalingConfig(**{**ZERO.__dict__, "readiness_timeout_s": 60.0})
    r = simulate([(0.0, 1, 5.0)], cfg, T, horizon=2000, keep_timeline=True)
    assert (r.failed, r.waited, r.waits) == (1, 1, [(60.0, 1)])   # a failed request's wait: until it failed
    assert r.timeline == [(0.25, 1), (675, 0)]       # inactive from 60 s: first poll after 660


def test_polled_trigger_waits_for_the_poll_and_activation_is_strict():
    polled = ScalingConfig(**{**ZERO.__dict__, "push": False, "activation": 2.0})
    two = simulate([(100.0, 2, 5.0)], polled, T, horizon=2000)
    assert two.activations == 0 and two.failed == 2    # 2 is not > 2: never woken
    three = simulate([(100.0, 3, 5.0)], polled, T, horizon=2000, keep_timeline=True)
    assert three.timeline[0] == (105, 1)
    assert three.waits == [(pytest.approx(147.0), 3)]   # 105 + 142 - 100


def test_initial_cooldown_from_creation():
    cfg = ScalingConfig(min_replicas=0, max_replicas=2, cooldown_s=60, polling_s=15, initial_cooldown_s=300,
                        start_at_zero=False)
    r = simulate([], cfg, T, horizon=1000, keep_timeline=True, start="created")
    assert r.timeline == [(0.0, 1), (315, 0)]


def test_hpa_tolerance_and_default_scale_up_rate():
    warm = ScalingConfig(min_replicas=1, max_replicas=64, target=16.0)
    assert simulate([(10.0, 17, 100.0)], warm, T, horizon=100).peak_replicas == 1   # 17/16 within 10 %
    assert simulate([(10.0, 18, 100.0)], warm, T, horizon=100).peak_replicas == 2
    one = ScalingConfig(min_replicas=1, max_replicas=64, target=1.0)
    r = simulate([(10.0, 200, 1000.0)], one, T, horizon=80, keep_timeline=True)
    # max(+4 pods, +100 %) per 15 s: 1 -> 5 -> 10 -> 20 -> 40 -> 64 (max)
    assert [n for _, n in r.timeline] == [1, 5, 10, 20, 40, 64]
    assert [t for t, _ in r.timeline][1:] == [15, 30, 45, 60, 75]


def test_object_behavior_replaces_the_defaults():
    cfg = ScalingConfig(min_replicas=1, max_replicas=64, target=1.0, behavior={
        "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
        "scaleDown": {"stabilizationWindowSeconds": 0}})
    r = simulate([(10.0, 5, 100.0)], cfg, T, horizon=200, keep_timeline=True)
    assert r.timeline[:3] == [(0.0, 1), (15, 2), (75, 3)]
    assert r.timeline[-1] == (120, 1)     # load gone at 110, no down window: next sync


def test_fixed_replicas_and_cron_window():
    fixed = ScalingConfig(min_replicas=2, max_replicas=2, autoscale=False)
    assert simulate([(5.0, 1, 1.0)], fixed, T, horizon=3600).replica_hours == pytest.approx(2.0)
    cron = ScalingConfig(**{**ZERO.__dict__, "cron": ((1000.0, 2000.0, 1),)})
    r = simulate([(1500.0, 1, 5.0)], cron, T, horizon=4000, keep_timeline=True)
    # woken by the poll at 1005 (cron is polled), warm at 1147; last poll in the window 1995 -> 0 at 2610
    assert r.timeline == [(1005, 1), (2610, 0)]
    assert r.waited == 0 and r.activations == 1
