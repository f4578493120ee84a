"""Scaling figures on the live stack (real KEDA, HTTP add-on, llmaz, LeaderWorkerSet, kube-proxy, kwok).

    bash tests/e2e/netns.sh python3 -m benchmarks.live_scaling [--repeats 5] [--out FILE]

Starts the live stack once (tests/e2e/stack.py) and measures, each repeated ``--repeats`` times:

* HTTP cold start: first request -> Playground /scale = 1, -> pod Ready, -> first response; the stack's own
  overhead is the first response minus the stand-in's model load (3 s);
* a Redis job -> /scale = 1, for polling intervals 1, 2, 5 and 10 s (KEDA polls the queue);
* queue empty -> /scale = 0 against cooldowns of 5, 10 and 20 s;
* requests lost across all of it.
Prints a table and writes the raw numbers as JSON (default benchmarks/results/live-scaling-<date>.json).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from tests.e2e.http_client import chat  # noqa: E402
from tests.e2e.stack import LiveStack, in_private_netns  # noqa: E402
from tests.e2e.test_zero_to_one import KEDA, condition, get_or_none, wait_for  # noqa: E402
from tests.e2e.timeline import Timeline  # noqa: E402
from tests.integration.controlplane import cache_dir  # noqa: E402
from webhook import constants as C  # noqa: E402

LOAD_DELAY = 3.0


def apply(stack: LiveStack, ns: str, name: str, annotations: dict[str, str]) -> None:
    stack.ensure_namespace(ns, labels={C.NAMESPACE_LABEL: "true"})
    manifest = {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                "metadata": {"name": name, "annotations": annotations},
                "spec": {"modelClaim": {"modelName": "qwen2-5-7b-instruct"}}}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))
    custom = client.CustomObjectsApi(stack.api())
    wait_for(lambda: (condition(get_or_none(custom, KEDA, ns, "scaledobjects", name), "Ready") or {})
             .get("status") == "True", 60, f"ScaledObject {ns}/{name} Ready")


def http_cold_start(stack: LiveStack) -> dict:
    ns, name = f"bench-http-{uuid.uuid4().hex[:5]}", "chat"
    apply(stack, ns, name, {C.ANN_COOLDOWN: "5"})
    stack.dns.wait_for(ns, f"{name}-lb")
    time.sleep(5.5)   # Go's resolver re-reads the hosts file at most every 5 s
    with Timeline(stack.api(), ns, name) as tl:
        tl.expect("scale", lambda s: s.playground_replicas == 1)
        tl.expect("ready", lambda s: bool(s.ready))
        t0 = tl.mark("sent")
        a = chat(f"{name}.{ns}", timeout=120)
        tl.wait("ready", 10)
    stack.kubectl("delete", "namespace", ns, "--wait=false")
    return {"status": a.status, "cold_start_header": a.cold_start, "to_scale": tl.marks["scale"] - t0,
            "to_ready": tl.marks["ready"] - t0, "to_response": a.done - t0,
            "overhead": a.done - t0 - LOAD_DELAY}


def job_to_scale(stack: LiveStack, polling: int) -> dict:
    ns, name = f"bench-poll-{uuid.uuid4().hex[:5]}", "batch"
    queue = f"jobs-{ns}"
    apply(stack, ns, name, {C.ANN_POLLING: str(polling), C.ANN_COOLDOWN: "5", C.ANN_TRIGGERS:
                            f"- {{type: redis, address: '127.0.0.1:6379', listName: {queue}, listLength: 1}}"})
    time.sleep(random.uniform(0, polling))   # push at a random phase of KEDA's polling loop
    with Timeline(stack.api(), ns, name) as tl:
        tl.expect("scale", lambda s: s.playground_replicas == 1)
        t0 = tl.mark("push")
        stack.redis("LPUSH", queue, "job")
        tl.wait("scale", polling + 20)
    stack.redis("DEL", queue)
    stack.kubectl("delete", "namespace", ns, "--wait=false")
    return {"polling": polling, "to_scale": tl.marks["scale"] - t0}


def empty_to_zero(stack: LiveStack, cooldown: int) -> dict:
    ns, name = f"bench-cool-{uuid.uuid4().hex[:5]}", "summarizer"
    queue = "summarize-jobs"   # the one the stand-ins consume (BackendRuntime STANDIN_QUEUE)
    apply(stack, ns, name, {C.ANN_POLLING: "1", C.ANN_COOLDOWN: str(cooldown), C.ANN_TRIGGERS:
                            f"- {{type: redis, address: '127.0.0.1:6379', listName: {queue}, listLength: 1}}"})
    with Timeline(stack.api(), ns, name, extra={"queue": lambda: stack.redis("LLEN", queue)}) as tl:
        tl.expect("empty", lambda s: s.playground_replicas == 1 and s.extra["queue"] == 0)
        stack.redis("LPUSH", queue, "job")
        tl.wait("empty", 60)
        tl.expect("zero", lambda s: s.playground_replicas == 0)
        tl.wait("zero", cooldown + 30)
    stack.kubectl("delete", "namespace", ns, "--wait=false")
    return {"cooldown": cooldown, "empty_to_zero": tl.marks["zero"] - tl.marks["empty"]}


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s  min {min(values):6.2f}  max {max(values):6.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                   f"live-scaling-{time.strftime('%Y%m%d')}.json")
    args = p.parse_args()
    if not in_private_netns():
        print("run it inside the stack's network namespace: bash tests/e2e/netns.sh python3 -m "
              "benchmarks.live_scaling", file=sys.stderr)
        return 2
    random.seed(7)
    stack = LiveStack(cache_dir() / "bench-live" / time.strftime("%Y%m%d-%H%M%S"))
    stack.start()
    results: dict = {"stack_start": stack.timings, "http": [], "polling": [], "cooldown": []}
    try:
        for _ in range(args.repeats):
            results["http"].append(http_cold_start(stack))
        for polling in (1, 2, 5, 10):
            for _ in range(args.repeats):
                results["polling"].append(job_to_scale(stack, polling))
        for cooldown in (5, 10, 20):
            for _ in range(max(2, args.repeats // 2)):
                results["cooldown"].append(empty_to_zero(stack, cooldown))
    finally:
        stack.stop()
    lost = sum(1 for r in results["http"] if r["status"] != 200)
    print(f"\nlive stack up in {stack.timings['total']:.1f} s; {args.repeats} repeats")
    print("HTTP cold start (model load 3 s):")
    for key, label in (("to_scale", "first request -> /scale = 1"), ("to_ready", "first request -> pod Ready"),
                       ("to_response", "first request -> first response"),
                       ("overhead", "  minus the model load (stack overhead)")):
        print(f"  {label:<42} {summary([r[key] for r in results['http']])}")
    print(f"  requests lost: {lost} of {len(results['http'])}")
    print("Redis job -> /scale = 1, by polling interval:")
    for polling in (1, 2, 5, 10):
        print(f"  pollingInterval {polling:>2} s{'':<25} "
              f"{summary([r['to_scale'] for r in results['polling'] if r['polling'] == polling])}")
    print("queue empty -> /scale = 0, by cooldown (polling 1 s):")
    for cooldown in (5, 10, 20):
        print(f"  cooldownPeriod {cooldown:>2} s{'':<26} "
              f"{summary([r['empty_to_zero'] for r in results['cooldown'] if r['cooldown'] == cooldown])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"raw results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
