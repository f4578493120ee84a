"""The simulator against the live stack: one short HTTP scenario, played for real and replayed offline.

The same Playground manifest, the same policy and the same request times go to the live stack (real KEDA,
HTTP add-on, llmaz, LeaderWorkerSet) and to ``llmaz-serverless simulate`` (the command users run). The replica
changes must be the same, in the same order, each within one polling interval + 2 s of the live one.
The simulator's pod start is given from what this stack's pods do, not measured in the run: the stand-in
loads for 3 s (BackendRuntime ``STANDIN_LOAD_DELAY``) and the readiness probe runs every second, so
scheduling + first probe is given as 1 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from webhook import constants as C

from .http_client import Answer, burst
from .stack import MANIFESTS, LiveStack
from .test_http import apply_and_wait_ready, playground
from .test_zero_to_one import opted_in_namespace
from .timeline import Timeline

pytestmark = pytest.mark.e2e

POLLING, COOLDOWN = 2, 10
SERVICE_S = 1.0
# (seconds from the start, concurrent requests): a cold start, a request while warm, idle past the cooldown,
# a second cold start, idle again.
SCENARIO = [(0.0, 4), (6.0, 1), (30.0, 2)]
UNTIL = 75.0


def run_scenario(host: str) -> tuple[float, list[Answer]]:
    answers: list[Answer] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def batch(offset: float, n: int) -> None:
        time.sleep(max(0.0, t0 + offset - time.monotonic()))
        got = burst(n, host, service_seconds=SERVICE_S, timeout=120)
        with lock:
            answers.extend(got)

    threads = [threading.Thread(target=batch, args=b) for b in SCENARIO]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=180)
    return t0, answers


def simulate(tmp: Path, manifest: str, arrivals: list[float]) -> list[tuple[float, int]]:
    trace = tmp / "trace.csv"
    trace.write_text("timestamp,service_s\n" + "".join(f"{t:.3f},{SERVICE_S}\n" for t in arrivals))
    workload = tmp / "workload.yaml"
    workload.write_text(manifest + "---\n" + (MANIFESTS / "llmaz-models.yaml").read_text())
    out = tmp / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "webhook", "simulate", "--trace", str(trace), "-f", str(workload),
         "--policy", str(MANIFESTS / "policy.yaml"), "--model-load", "3s", "--image-pull", "0s",
         "--scheduling", "1s", "--start", "cold", "--until", f"{UNTIL}s", "--out", str(out)],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    assert doc["settings"]["pollingInterval"] == POLLING and doc["settings"]["cooldownPeriod"] == COOLDOWN
    return [(e["t"], e["replicas"]) for e in doc["scale_events"]]


def test_simulated_scale_events_match_the_live_ones(stack: LiveStack, tmp_path: Path):
    ns = opted_in_namespace(stack, "simcheck")
    name = "simcheck"
    manifest = playground(name, {C.ANN_COOLDOWN: str(COOLDOWN), C.ANN_POLLING: str(POLLING)})
    apply_and_wait_ready(stack, ns, name, manifest)
    api = stack.api()
    with Timeline(api, ns, name) as tl:
        t0, answers = run_scenario(f"{name}.{ns}")
        lost = [a for a in answers if a.status != 200]
        assert not lost and len(answers) == sum(n for _, n in SCENARIO), \
            [(a.status, a.error or a.body[:100]) for a in lost]
        remaining = t0 + UNTIL - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        history = list(tl.history)
    assert history[0][1] == 0, history        # at zero when the scenario started
    live = [(round(t - t0, 3), n) for t, n in history[1:]]
    assert client.CustomObjectsApi(api).get_namespaced_custom_object(
        "inference.llmaz.io", "v1alpha1", ns, "playgrounds", name)["spec"]["replicas"] == 0

    arrivals = sorted(a.sent - t0 for a in answers)
    simulated = simulate(tmp_path, manifest, arrivals)

    print(f"\nlive vs simulated replica changes (s from the first request; polling {POLLING} s, "
          f"cooldown {COOLDOWN} s, tolerance {POLLING + 2} s):")
    for i in range(max(len(live), len(simulated))):
        lv = live[i] if i < len(live) else None
        sm = simulated[i] if i < len(simulated) else None
        delta = f"{sm[0] - lv[0]:+6.2f} s" if lv and sm else ""
        print(f"  live {str(lv):<18} simulated {str(sm):<18} {delta}")
    assert [n for _, n in live] == [n for _, n in simulated] == [1, 0, 1, 0], (live, simulated)
    for (lt, _), (st, _) in zip(live, simulated):
        assert abs(lt - st) <= POLLING + 2, (live, simulated)
