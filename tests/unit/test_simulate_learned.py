"""``keep-alive: learned`` in the simulator: the learner replayed online, through KEDA's own fields, and the
annotations that ask for it."""

from __future__ import annotations

import json

import pytest
import yaml

from webhook import constants as C
from webhook.policy import Policy
from webhook.settings import analyze
from webhook.learn import Learner, Params
from webhook.simulate.learned import simulate_learned
from webhook.simulate.model import PodTiming, ScalingConfig, simulate
from webhook.cli import main

from .helpers import azure_invocations, catalog, playground

T = PodTiming(2, 20, 30)      # pod start 52 s
ZERO = ScalingConfig(min_replicas=0, max_replicas=4, cooldown_s=600, polling_s=15, start_at_zero=True)
EXAMPLE = "examples/gpu-chat-http.yaml"


def periodic(every: float, hours: float, jitter: float = 0.0) -> list[tuple[float, int, float]]:
    n = int(hours * 3600 // every)
    return [(i * every + (jitter if i % 2 else 0.0), 1, 5.0) for i in range(n)]


def test_periodic_requests_find_a_prewarmed_replica_after_learning() -> None:
    two, four = periodic(1800.0, 48), periodic(1800.0, 96)
    static = simulate(four, ZERO, T, 96 * 3600.0)
    assert static.waited_share == 1.0                    # a 600 s cooldown never reaches a request 30 min later
    learning = simulate_learned(two, ZERO, T, 48 * 3600.0, 0.01).result
    run = simulate_learned(four, ZERO, T, 96 * 3600.0, 0.01)
    r = run.result
    # The policy's cooldown until the history is trusted (10 idle times), then a pre-warm before each request:
    # the two more days add no wait at all.
    assert learning.waited <= 36 and r.waited == learning.waited
    assert run.result.prewarms >= 150 and run.result.unused_prewarms == 0
    # About 7 minutes warm per half hour (load ahead, margins the price of a spared request pays for, the
    # scale-in), not 10 min + a load.
    assert r.gpu_hours < 0.7 * static.gpu_hours and r.gpu_hours < 0.27 * 96
    assert "pre-warm" in run.final


def test_a_prewarm_that_finds_no_request_is_counted_unused_and_lapses_by_itself() -> None:
    arr = periodic(1800.0, 40)                           # then silence for 8 hours
    run = simulate_learned(arr, ZERO, T, 48 * 3600.0, 0.01, keep_timeline=True)
    assert run.result.unused_prewarms == 1
    t_last, n_last = run.result.timeline[-1]
    assert n_last == 0 and t_last < 40 * 3600 + 1800 + 600   # the window ended and KEDA scaled in


def test_keda_status_signal_learns_the_same_from_one_request_per_wake_up() -> None:
    """lastActiveTime tells wake-ups, not requests: where every wake-up is one request and no pre-warm is
    placed, both signals learn the same idle times and reach the same decisions and figures."""
    arr = [(i * 150.0 + (40.0 if i % 3 == 0 else 0.0), 1, 5.0) for i in range(400)]
    by_requests = simulate_learned(arr, ZERO, T, 400 * 150.0, 0.01)
    by_status = simulate_learned(arr, ZERO, T, 400 * 150.0, 0.01, signal="keda-status")
    assert by_status.final == by_requests.final and by_status.final.startswith("keep-alive")
    assert by_status.result.waited == by_requests.result.waited
    assert by_status.result.gpu_seconds == pytest.approx(by_requests.result.gpu_seconds)


def test_keda_status_signal_sees_the_requests_a_prewarm_serves() -> None:
    """Live, a pre-warm is a one-minute wake-up window and a hold by cooldown, so a request the pre-warm serves
    moves lastActiveTime and is seen: on a strict period the learner told only KEDA's lastActiveTime learns the
    same pre-warm as one told every request, and its requests find the replica warm."""
    arr = periodic(1800.0, 48)
    by_requests = simulate_learned(arr, ZERO, T, 48 * 3600.0, 0.01)
    by_status = simulate_learned(arr, ZERO, T, 48 * 3600.0, 0.01, signal="keda-status")
    assert "pre-warm" in by_requests.final and "pre-warm" in by_status.final
    assert by_status.final == by_requests.final                  # every idle time seen
    assert by_status.result.waited == by_requests.result.waited <= 6
    assert by_status.result.unused_prewarms == 0 and by_status.result.prewarms == by_requests.result.prewarms
    assert by_status.result.gpu_seconds == pytest.approx(by_requests.result.gpu_seconds, rel=0.01)


def test_keda_status_signal_counts_a_burst_as_one_request_and_skips_gaps_within_two_polls() -> None:
    # bursts of 40 requests every 50 minutes, each burst two groups 20 s apart (within two 15 s polls)
    arr = sorted([(i * 3000.0, 20, 5.0) for i in range(20)] + [(i * 3000.0 + 20.0, 20, 5.0) for i in range(20)])
    params = Params(half_life_s=1e9)
    by_requests, by_status = (Learner(0.01, T.startup_s, 15.0, params, fallback_s=600.0) for _ in range(2))
    simulate_learned(arr, ZERO, T, 20 * 3000.0, 0.01, params, learner=by_requests)
    simulate_learned(arr, ZERO, T, 20 * 3000.0, 0.01, params, learner=by_status, signal="keda-status")
    idle_times = lambda lr: sum(v[0] for v in lr.state.bins.values())   # noqa: E731
    assert idle_times(by_status) == pytest.approx(19.0, rel=1e-4)    # the 15 s gaps are KEDA's busy advance
    assert idle_times(by_requests) > 25                                # ... which a request count tells
    assert by_requests.state.requests == pytest.approx(800.0, rel=1e-4)
    assert by_status.state.requests == pytest.approx(19.0, rel=1e-4)  # one per wake-up it could measure


def test_request_counts_signal_counts_every_request_at_scrape_resolution() -> None:
    """As the reconciler reads Prometheus: every request of a burst is counted (unlike KEDA's status), a gap
    within two polls is no idle time (unlike exact arrivals), and the idle times are those of exact arrivals
    up to a scrape interval."""
    arr = sorted([(i * 3000.0, 20, 5.0) for i in range(20)] + [(i * 3000.0 + 20.0, 20, 5.0) for i in range(20)])
    params = Params(half_life_s=1e9)
    by_counts = Learner(0.01, T.startup_s, 15.0, params, fallback_s=600.0)
    simulate_learned(arr, ZERO, T, 20 * 3000.0, 0.01, params, learner=by_counts, signal="request-counts")
    bins = by_counts.state.bins
    assert sum(v[0] for v in bins.values()) == pytest.approx(19.0, rel=1e-4)
    assert by_counts.state.requests == pytest.approx(800.0, rel=1e-4)
    # the idle time between bursts: about 3000 s less a burst's 25 s of activity and a cooldown's hold, within
    # one scrape either way of what exact arrivals give
    by_requests = Learner(0.01, T.startup_s, 15.0, params, fallback_s=600.0)
    simulate_learned(arr, ZERO, T, 20 * 3000.0, 0.01, params, learner=by_requests)
    long_bins = lambda lr: {i for i, v in lr.state.bins.items() if v[0] > 0 and i > 0}   # noqa: E731
    assert long_bins(by_counts) and all(abs(a - b) <= 1 for a in long_bins(by_counts) for b in long_bins(by_requests))


def test_request_counts_signal_learns_a_period_as_exact_arrivals_do() -> None:
    arr = periodic(1800.0, 48)
    exact = simulate_learned(arr, ZERO, T, 48 * 3600.0, 0.01)
    counts = simulate_learned(arr, ZERO, T, 48 * 3600.0, 0.01, signal="request-counts")
    assert "pre-warm" in counts.final and counts.result.unused_prewarms == 0
    assert counts.result.waited <= exact.result.waited + 2
    assert counts.result.gpu_seconds == pytest.approx(exact.result.gpu_seconds, rel=0.05)


def test_keda_status_signal_an_unused_prewarm_lapses_and_places_no_other() -> None:
    arr = periodic(1800.0, 40)                           # then silence for 8 hours
    by_status = simulate_learned(arr, ZERO, T, 48 * 3600.0, 0.01, keep_timeline=True, signal="keda-status").result
    assert by_status.unused_prewarms == 1
    t_last, n_last = by_status.timeline[-1]
    assert n_last == 0 and t_last < 40 * 3600 + 3600 + 600   # the hold ended and KEDA scaled in for good


def test_without_enough_history_the_static_cooldown_applies() -> None:
    arr = [(0.0, 1, 5.0), (400.0, 1, 5.0), (800.0, 1, 5.0)]
    run = simulate_learned(arr, ZERO, T, 3000.0, 0.01, keep_timeline=True)
    static = simulate(arr, ZERO, T, 3000.0, keep_timeline=True)
    assert run.result.timeline == static.timeline and run.result.prewarms == 0


def test_annotations_are_validated_and_resolved() -> None:
    p = Policy.default()
    ok = analyze(playground(annotations={C.ANN_KEEP_ALIVE: "learned", C.ANN_COLD_START_OBJECTIVE: "0.5%"}), p,
                 catalog())
    assert ok.settings is not None and ok.settings.keep_alive == "learned"
    assert ok.settings.cold_start_objective == pytest.approx(0.005)
    assert json.loads(ok.settings.as_annotation())["keepAlive"] == "learned"
    bad = analyze(playground(annotations={C.ANN_KEEP_ALIVE: "smart", C.ANN_COLD_START_OBJECTIVE: "0%"}), p,
                  catalog())
    where = {pr.where: pr.what for pr in bad.problems}
    assert "not a keep-alive mode" in where[C.ANN_KEEP_ALIVE]
    assert "out of range" in where[C.ANN_COLD_START_OBJECTIVE]
    fixed = analyze(playground(annotations={C.ANN_COLD_START_OBJECTIVE: "1%"}), p, catalog())
    assert any("only steers keep-alive: learned" in w for w in fixed.warnings)
    pinned = analyze(playground(annotations={C.ANN_KEEP_ALIVE: "learned", C.ANN_MIN_REPLICAS: "1"}), p, catalog())
    assert any("has no effect with min-replicas 1" in w for w in pinned.warnings)


def test_startup_time_is_a_bounded_duration_with_a_policy_default() -> None:
    p = Policy.default()
    ok = analyze(playground(annotations={C.ANN_KEEP_ALIVE: "learned", C.ANN_STARTUP_TIME: "3s"}), p, catalog())
    assert ok.settings.startup_s == 3.0 and json.loads(ok.settings.as_annotation())["startupTime"] == "3s"
    assert analyze(playground(annotations={C.ANN_KEEP_ALIVE: "learned"}), p, catalog()).settings.startup_s == 142.0
    for value, what in (("0s", "out of range"), ("2h", "out of range"), ("soon", "not a duration")):
        bad = analyze(playground(annotations={C.ANN_KEEP_ALIVE: "learned", C.ANN_STARTUP_TIME: value}), p,
                      catalog())
        assert what in {pr.where: pr.what for pr in bad.problems}[C.ANN_STARTUP_TIME], value
    fixed = analyze(playground(annotations={C.ANN_STARTUP_TIME: "3s"}), p, catalog())
    assert any(C.ANN_STARTUP_TIME in w and "only steers keep-alive: learned" in w for w in fixed.warnings)
    layered = Policy.model_validate({"gpu": {"keepAlive": "learned", "startupTime": "90s"}})
    assert analyze(playground(), layered, catalog()).settings.startup_s == 90.0


def test_policy_layers_set_the_default_objective() -> None:
    p = Policy.model_validate({"gpu": {"keepAlive": "learned", "coldStartObjective": "2%"}})
    an = analyze(playground(), p, catalog())
    assert an.settings.keep_alive == "learned" and an.settings.cold_start_objective == pytest.approx(0.02)
    with pytest.raises(ValueError):
        Policy.model_validate({"gpu": {"coldStartObjective": "two percent"}})


def _learned_example(tmp_path):
    """The example manifest with ``keep-alive: learned`` on its Playground."""
    docs = [d for d in yaml.safe_load_all(open(EXAMPLE)) if d]
    for d in docs:
        if d["kind"] == "Playground":
            d["metadata"]["annotations"][C.ANN_KEEP_ALIVE] = "learned"
    manifest = tmp_path / "w.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    return manifest


def test_cli_simulate_learned_reports_prewarms_and_workload_shares(tmp_path, capsys) -> None:
    manifest = _learned_example(tmp_path)
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n" + "\n".join(str(i * 1800) for i in range(96)) + "\n")
    out = tmp_path / "r.json"
    code = main(["simulate", "--trace", str(trace), "-f", str(manifest), "--model-load", "30s", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "keep-alive learned per workload" in text and "pre-warms" in text
    assert "learning from KEDA's lastActiveTime, as live" in text            # what the reconciler is told
    ours = json.loads(out.read_text())["results"]["llmaz-serverless"]
    assert ours["prewarms"] > 50 and ours["unused_prewarms"] <= 1
    assert ours["waited_share"] < 0.4
    code = main(["simulate", "--trace", str(trace), "-f", str(manifest), "--model-load", "30s", "--out", str(out),
                 "--learn-from", "requests"])
    assert code == 0 and "learning from every request" in capsys.readouterr().out
    # one request per wake-up and no time-of-day window: both signals tell the learner the same
    assert json.loads(out.read_text())["results"]["llmaz-serverless"]["waited_share"] == ours["waited_share"]


def test_fleet_with_a_learned_keep_alive_counts_the_workloads_within_their_objective(tmp_path, capsys) -> None:
    manifest = _learned_example(tmp_path)
    # f1: one call in minute 1 and one in minute 300, each after hours at rest; f2: busy every minute
    inv = azure_invocations(tmp_path / "1350_inv.csv", {"f1": [1 if m in (1, 300) else 0 for m in range(1, 361)],
                                                        "f2": [5] * 360})
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(inv), "-f", str(manifest), "--start", "cold", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if l.startswith("workloads whose own waited share met"))
    assert "(1%)" in line and "llmaz-serverless 1 of 2" in line
    results = json.loads(out.read_text())["results"]
    assert results["llmaz-serverless"]["workloads_within_objective"] == 1
    assert results["llmaz-serverless"]["workloads"] == 2


def test_recommend_offers_the_learned_keep_alive(tmp_path, capsys) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n" + "\n".join(str(i * 1800) for i in range(96)) + "\n")
    out = tmp_path / "r.json"
    code = main(["recommend", "--trace", str(trace), "-f", EXAMPLE, "--model-load", "30s", "--out", str(out),
                 "--objective", "cold-start-share<=50%"])
    doc = json.loads(out.read_text())
    labels = [c["label"] for c in doc["candidates"]]
    assert code == 0 and any("keep-alive learned" in lb for lb in labels)
    learned = next(c for c in doc["candidates"] if "keep-alive learned" in c["label"])
    meeting = [c for c in doc["candidates"] if "keep-alive learned" not in c["label"] and c["value"] <= 0.5]
    # One request every 30 min: every fixed setting that meets the objective holds a replica from one request
    # to the next; the learner scales in between and pre-warms, after its learning period.
    assert learned["value"] <= 0.5 and learned["gpu_hours"] < 0.5 * min(c["gpu_hours"] for c in meeting)
    assert doc["picked"]["label"] == learned["label"]
