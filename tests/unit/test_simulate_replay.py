"""What a replay counts: GPUs per replica, where it starts and ends, warm-up, and what the output says."""

from __future__ import annotations

import json

import pytest
import yaml

from webhook.cli import main
from webhook.models import ModelCatalog
from webhook.policy import Policy
from webhook.simulate.baselines import cron_windows
from webhook.simulate.gpus import per_replica
from webhook.simulate.model import PodTiming, ScalingConfig, simulate
from webhook.simulate.recommend import parse_objective
from webhook.simulate.replay import merge
from webhook.simulate.result import Result
from webhook.triggers import CronTrigger

from .helpers import azure_invocations

T = PodTiming(2, 20, 120)
ZERO = ScalingConfig(min_replicas=0, max_replicas=4, cooldown_s=600, polling_s=15)
EXAMPLE = "examples/gpu-chat-http.yaml"

BIG_MODEL = """
apiVersion: llmaz.io/v1alpha1
kind: OpenModel
metadata: {name: llama-70b}
spec:
  familyName: llama
  source: {modelHub: {modelID: meta-llama/Llama-3.1-70B-Instruct}}
  inferenceConfig:
    flavors:
      - name: a100
        limits: {nvidia.com/gpu: 8}
        params: {PP: "2"}
      - name: h100
        limits: {nvidia.com/gpu: 4}
"""


def models(text: str = BIG_MODEL) -> ModelCatalog:
    return ModelCatalog([d for d in yaml.safe_load_all(text) if d])


def playground(flavors=None, resources=None):
    claim = {"modelName": "llama-70b", **({"inferenceFlavors": flavors} if flavors else {})}
    spec = {"modelClaim": claim}
    if resources:
        spec["backendRuntimeConfig"] = {"resources": resources}
    return {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
            "metadata": {"name": "big", "namespace": "ai"}, "spec": spec}


def pod(gpus, name="model-runner"):
    return {"spec": {"containers": [{"name": name, "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}


# ------------------------------------------------------------------------------------------ GPUs per replica

def test_flavor_limits_times_pipeline_parallel_hosts():
    p = Policy.default()
    g = per_replica(playground(), p, models(), True)
    assert (g.per_replica, g.hosts) == (16, 2) and "PP=2" in g.why
    # the second flavor claimed: 4 GPUs, one host; the flavor overwrites backendRuntimeConfig's GPU count
    g = per_replica(playground(["h100"], {"limits": {"nvidia.com/gpu": 1}}), p, models(), True)
    assert (g.per_replica, g.hosts) == (4, 1)
    # no flavor: backendRuntimeConfig.resources; an unknown model treated as GPU: 1 per pod, said so
    assert per_replica(playground(resources={"limits": {"nvidia.com/gpu": 2}}), p, ModelCatalog(), True).per_replica == 2
    unknown = per_replica(playground(), p, ModelCatalog(), True)
    assert unknown.per_replica == 1 and "--gpus-per-replica" in unknown.why
    assert per_replica(playground(), p, ModelCatalog(), False).per_replica == 0


@pytest.mark.parametrize("nested", [False, True])
def test_service_group_of_leader_and_workers_in_both_shapes(nested):
    lwt = {"size": 2, "leaderTemplate": pod(8), "workerTemplate": pod(8)}
    wt = {"leaderWorkerTemplate": lwt} if nested else lwt
    svc = {"kind": "Service", "metadata": {"name": "s", "namespace": "ai"},
           "spec": {"modelClaims": {"models": [{"name": "unknown"}]}, "workloadTemplate": wt}}
    g = per_replica(svc, Policy.default(), ModelCatalog(), True)
    assert (g.per_replica, g.hosts) == (16, 2)
    # no leader template: the leader is a worker; size defaults to 1
    del lwt["leaderTemplate"]
    lwt.pop("size")
    assert per_replica(svc, Policy.default(), ModelCatalog(), True).per_replica == 8


def write_workload(tmp_path, model=BIG_MODEL, annotations=None):
    pg = playground()
    pg["metadata"]["annotations"] = {"serverless.llmaz.io/triggers": "http", **(annotations or {})}
    path = tmp_path / "w.yaml"
    path.write_text(model + "---\n" + yaml.safe_dump(pg))
    return str(path)


def test_cli_reports_gpu_hours_of_a_16_gpu_replica_and_the_override(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n0\n")
    out = tmp_path / "r.json"
    wl = write_workload(tmp_path)
    assert main(["simulate", "--trace", str(trace), "-f", wl, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    fixed = doc["results"]["baseline llmaz"]
    assert doc["gpus_per_replica"] == 16
    assert fixed["gpu_hours"] == pytest.approx(16 * fixed["replica_hours"], abs=0.01) and fixed["gpu_hours"] > 0
    assert main(["simulate", "--trace", str(trace), "-f", wl, "--gpus-per-replica", "3", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    ours = doc["results"]["llmaz-serverless"]
    assert doc["gpus_per_replica"] == 3 and ours["gpu_hours"] == pytest.approx(3 * ours["replica_hours"], abs=0.01)


# ------------------------------------------------------------------------------------------ start and end

def test_warm_start_serves_the_first_request_and_scales_in_one_cooldown_later():
    warm = simulate([(0.0, 1, 5.0)], ZERO, T, start="warm", keep_timeline=True)
    assert warm.waited == 0 and warm.activations == 0
    # last active 5 s (stored 5), first poll strictly after 605 s -> 615 s; the final cooldown is billed
    assert warm.timeline == [(0.0, 1), (615, 0)] and warm.replica_seconds == pytest.approx(615)
    cold = simulate([(0.0, 1, 5.0)], ZERO, T, start="cold")
    assert cold.waited == 1 and cold.activations == 1
    # first request within the cooldown: warm at t = 0, billed from 0, served at once
    r = simulate([(500.0, 1, 5.0)], ZERO, T, start="warm", keep_timeline=True)
    assert r.waited == 0 and r.timeline == [(0.0, 1), (1110, 0)]
    # an idle opening longer than the cooldown (or no request at all): at rest, as it would be by then
    late = simulate([(700.0, 1, 5.0)], ZERO, T, start="warm")
    assert late.waited == 1 and late.replica_seconds == pytest.approx(simulate([(700.0, 1, 5.0)], ZERO, T,
                                                                               start="cold").replica_seconds)
    assert simulate([], ZERO, T, start="warm").replica_seconds == 0


def test_default_end_is_back_at_rest_and_nothing_cut_is_failed():
    r = simulate([(100.0, 1, 5.0)], ZERO, T, start="cold")       # no horizon: until at rest
    assert (r.failed, r.cut, r.waited) == (0, 0, 1)
    assert r.duration_s == 855 and r.replica_seconds == pytest.approx(855 - 100.25) and r.rest_replicas == 0
    cut = simulate([(100.0, 1, 5.0)], ZERO, T, horizon=101, start="cold")
    assert (cut.failed, cut.cut, cut.waited) == (0, 1, 0)
    # nothing can ever wake a polled trigger that never passes its activation: that is failed, not cut
    never = simulate([(100.0, 2, 5.0)], ScalingConfig(**{**ZERO.__dict__, "push": False, "activation": 2.0}), T,
                     start="cold")
    assert (never.failed, never.cut) == (2, 0)
    # an HPA that never scales down (selectPolicy Disabled) still ends: at rest at its size
    stuck = ScalingConfig(min_replicas=1, max_replicas=8, target=1.0,
                          behavior={"scaleDown": {"selectPolicy": "Disabled"}})
    r = simulate([(10.0, 5, 30.0)], stuck, T, start="cold")
    assert r.rest_replicas == 5 and r.duration_s < 2000


def test_common_end_bills_every_configuration_over_the_same_span():
    r = simulate([(0.0, 1, 5.0)], ZERO, T, start="warm")
    fixed = simulate([(0.0, 1, 5.0)], ScalingConfig(min_replicas=1, max_replicas=1, autoscale=False), T,
                     start="warm")
    assert fixed.duration_s == pytest.approx(5.0)
    assert fixed.extend_to(r.duration_s).replica_seconds == pytest.approx(615)
    assert r.extend_to(2000).replica_seconds == pytest.approx(615)           # at rest at 0: nothing added


def test_warm_up_is_replayed_but_not_counted():
    arr = [(10.0, 1, 5.0), (5000.0, 1, 5.0)]
    r = simulate(arr, ZERO, T, start="cold", score_from=3600)
    # the request at 10 s and its cold start are in the warm-up; the one at 5000 s is a second cold start
    assert (r.requests, r.waited, r.activations) == (1, 1, 1)
    assert r.replica_seconds == pytest.approx(r.duration_s - 5000.25)


def test_one_request_trace_does_not_buy_capacity_against_failures(tmp_path, capsys):
    trace = tmp_path / "one.csv"
    trace.write_text("timestamp\n0\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(trace), "-f", EXAMPLE, "--start", "cold", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())["results"]["llmaz-serverless"]
    assert ours["failed"] == 0 and ours["gpu_hours"] > 0.15         # the final cooldown is billed
    capsys.readouterr()
    assert main(["recommend", "--trace", str(trace), "-f", EXAMPLE, "--objective", "failed-share<=0.1%"]) == 0
    assert "recommended: min 0" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ objectives, output

@pytest.mark.parametrize("text,words", [
    ("cold-start-share<=1", "needs its unit"), ("cold-start-share<=150%", "between 0 and 100"),
    ("failed-share<=nan%", "not a number"), ("failed-share<=-1%", "a number >= 0"), ("added-wait-p99<=30", "needs its unit"),
    ("cold-start-share<=1s", "written in %"),
])
def test_objectives_need_their_unit_and_range(text, words):
    with pytest.raises(ValueError, match=words):
        parse_objective(text)
    assert parse_objective("cold-start-share<=100%").limit == 1.0


def test_failed_requests_are_in_the_waits_and_the_table_says_so(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n0\n1\n2\n")
    wl = tmp_path / "w.yaml"
    text = open(EXAMPLE).read().replace('serverless.llmaz.io/triggers: "http, queue-depth"',
                                        'serverless.llmaz.io/triggers: \'[{"type": "http", "readinessTimeout": "60s"}]\'')
    wl.write_text(text)
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(trace), "-f", str(wl), "--start", "cold", "--out", str(out)]) == 0
    res = capsys.readouterr()
    ours = json.loads(out.read_text())["results"]["llmaz-serverless"]
    assert ours["failed"] == 3 and ours["added_wait_s"]["p50"] == pytest.approx(60.0)
    assert "readiness timeout (60s) is shorter than a replica's start (142s" in res.err
    assert "failed: held past the readiness timeout" in res.out and "overloaded %" in res.out
    assert "legend:" in res.out and "baseline elastic: llmaz elasticConfig" in res.out


def test_savings_wording_and_overload_column(tmp_path, capsys):
    trace = tmp_path / "busy.csv"
    trace.write_text("timestamp\n" + "".join(f"{i * 0.01}\n" for i in range(300)))
    assert main(["simulate", "--trace", str(trace), "-f", EXAMPLE, "--service-time", "60"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("llmaz-serverless against baseline llmaz:"))
    assert "% more GPU-hours" in line and "-" not in line.split(":")[1].split("%")[0]
    assert "baseline llmaz overloaded" in line
    row = next(l for l in out.splitlines() if l.startswith("baseline llmaz "))
    assert float(row.split()[-2]) > 90            # overloaded % of the single fixed replica


def test_fleet_reports_median_and_p90_workload_shares(tmp_path, capsys):
    # f1: one call in minute 1 and one in minute 60 (2 of 2 cold with a cold start); f2: busy every minute
    inv = azure_invocations(tmp_path / "1350_inv.csv", {"f1": [1 if m in (1, 60) else 0 for m in range(1, 61)],
                                                        "f2": [5] * 60})
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(inv), "-f", EXAMPLE, "--start", "cold", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())["results"]["llmaz-serverless"]
    assert ours["workloads"] == 2
    per = ours["waited_share_per_workload"]
    assert per["p90"] == pytest.approx(1.0) and per["median"] < 0.1 < ours["waited_share"] * 10
    assert "waited % median wl" in capsys.readouterr().out


def test_workloads_within_objective_counts_each_workload_not_requests():
    # one busy workload that never waits and three small ones that mostly do: request-weighted the fleet
    # meets 1 %, yet only one workload of four keeps its own share within it
    busy = Result(requests=100_000, waited=0, workload_shares=[0.0], workloads=1)
    small = [Result(requests=100, waited=w, workload_shares=[w / 100], workloads=1) for w in (1, 2, 50)]
    fleet = merge([busy, *small])
    assert fleet.waited_share < 0.01
    assert fleet.workloads_within(0.01) == 2          # 0.0 and exactly 1 % are within; 2 % and 50 % are not
    assert fleet.workloads_within(0.005) == 1
    assert Result().workloads_within(0.01) == 0


# ------------------------------------------------------------------------------------------ cron, plot

def test_cron_windows_in_an_iana_timezone_follow_daylight_saving():
    import datetime as dt
    trig = CronTrigger(type="cron", start="0 8 * * *", end="0 18 * * *", timezone="Europe/Berlin",
                       desiredReplicas=2)
    summer = dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc)
    (w,) = [w for w in cron_windows(trig, 86400, summer, Policy.default()) if w[0] < 86400 and w[1] > 0][:1]
    assert w == (6 * 3600, 16 * 3600, 2)               # CEST = UTC+2
    winter = dt.datetime(2024, 1, 15, tzinfo=dt.timezone.utc)
    (w,) = cron_windows(trig, 86400, winter, Policy.default())
    assert w == (7 * 3600, 17 * 3600, 2)               # CET = UTC+1


def test_cpu_example_with_a_berlin_cron_simulates(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n2024-07-01T09:00:00Z\n2024-07-01T20:00:00Z\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(trace), "-f", "examples/cpu-model.yaml", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["gpus_per_replica"] == 0
    # two replicas inside the office-hours window (Monday 1 July 2024, 08-18 Berlin = 06-16 UTC)
    assert doc["results"]["llmaz-serverless"]["peak_replicas"] == 2


def test_plot_without_matplotlib_fails_before_reading_the_trace(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    for cmd in (["simulate"], ["recommend", "--objective", "cold-start-share<=1%"]):
        assert main(cmd + ["--trace", str(tmp_path / "missing.csv"), "-f", EXAMPLE,
                           "--plot", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert "pip install '.[plot]'" in err and "missing.csv" not in err


def test_annotation_flag_tries_a_setting_without_editing_the_manifest(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n0\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "--trace", str(trace), "-f", EXAMPLE, "--annotation",
                 "serverless.llmaz.io/cooldown-period=120", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["cooldownPeriod"] == 120
    # warm: served at once; last active 5 s, first poll strictly after 125 s is 135 s
    assert doc["scale_events"] == [{"t": 0.0, "replicas": 1}, {"t": 135.0, "replicas": 0}]
    assert main(["simulate", "--trace", str(trace), "-f", EXAMPLE, "--annotation", "cooldown"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(trace), "-f", EXAMPLE, "--annotation",
                 "serverless.llmaz.io/cooldown=120"]) == 2
    assert "did you mean serverless.llmaz.io/cooldown-period?" in capsys.readouterr().err


def test_simulate_and_recommend_take_the_same_flags(tmp_path, capsys):
    docs = [d for d in yaml.safe_load_all(open(EXAMPLE)) if d]
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(next(d for d in docs if d["kind"] == "OpenModel")))
    workload = tmp_path / "w.yaml"
    workload.write_text(yaml.safe_dump(next(d for d in docs if d["kind"] == "Playground")))
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n0\n100\n")
    common = ["--trace", str(trace), "-f", str(workload), "--models", str(models), "--until", "1h",
              "--start", "cold", "--warm-up", "0", "--gpus-per-replica", "2"]
    for cmd in (["simulate"], ["recommend", "--objective", "added-wait-p99<=10m"]):
        assert main(cmd + common) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "2 GPU(s) per replica (--gpus-per-replica)" in out and "recommended:" in out
    # without --models the OpenModel is unknown: the policy's unknown-model rule decides, and one GPU per pod
    assert main(["simulate", "--trace", str(trace), "-f", str(workload)]) == 0
    assert "1 GPU(s) per replica (a GPU workload with no accelerator count readable" in capsys.readouterr().out
