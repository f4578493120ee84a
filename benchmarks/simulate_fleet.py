"""Fleet simulation benchmark: the whole Azure Functions 2019 day, each function one GPU workload.

Reads the trace in place (../shared/data/traces or $TRACES), resolves the settings of
examples/gpu-chat-http.yaml with the built-in policy, replays all 1,350 workloads one after another on one
core, and reports wall and CPU time, peak memory (max RSS) and simulated events per second. Writes
benchmarks/results/simulate-fleet.json.

    python3 benchmarks/simulate_fleet.py [--model-load 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from webhook.models import ModelCatalog  # noqa: E402
from webhook.policy import Policy  # noqa: E402
from webhook.preview import load_documents  # noqa: E402
from webhook.simulate.baselines import from_settings  # noqa: E402
from webhook.simulate.model import PodTiming, Result, simulate  # noqa: E402
from webhook.simulate.recommend import resolve  # noqa: E402
from webhook.simulate.traces import load  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = os.environ.get("TRACES", "/work/shared/data/traces")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-load", type=float, default=120.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "simulate-fleet.json"))
    args = ap.parse_args()
    docs = load_documents(os.path.join(ROOT, "examples", "gpu-chat-http.yaml"))
    models = ModelCatalog()
    for d in docs:
        if d["kind"] == "OpenModel":
            models.put(d)
    obj = next(d for d in docs if d["kind"] == "Playground")
    policy = Policy.default()
    settings = resolve(obj, {}, policy, models)
    timing = PodTiming(model_load_s=args.model_load)

    w0, c0 = time.perf_counter(), time.process_time()
    traces = load(os.path.join(TRACES, "azure-functions-2019"), "azure-functions", seed=1)
    w1, c1 = time.perf_counter(), time.process_time()
    total = Result()
    for tr in traces:
        # as ``simulate`` replays by default: warm start, until back at rest
        total = total.merge(simulate(tr.arrivals, from_settings(settings, policy, tr.horizon), timing, None,
                                     start="warm").extend_to(tr.horizon))
    w2, c2 = time.perf_counter(), time.process_time()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = {
        "benchmark": "simulate_fleet", "trace": "azure-functions-2019 (1350_inv.csv, 1350_run.csv)",
        "workloads": len(traces), "requests": total.requests, "events": total.events,
        "model_load_s": args.model_load,
        "read_s": {"wall": round(w1 - w0, 2), "cpu": round(c1 - c0, 2)},
        "simulate_s": {"wall": round(w2 - w1, 2), "cpu": round(c2 - c1, 2)},
        "total_s": {"wall": round(w2 - w0, 2), "cpu": round(c2 - c0, 2)},
        "events_per_s": round(total.events / max(c2 - c1, 1e-9)),
        "max_rss_mib": round(rss_mib, 1),
        "fleet": {"gpu_hours": round(total.gpu_hours, 1), "cold_starts": total.activations,
                  "waited_share": round(total.waited_share, 4), "failed": total.failed},
        "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"{len(traces)} workloads, {total.requests:,} requests, {total.events:,} events: read "
          f"{c1 - c0:.1f}s + simulate {c2 - c1:.1f}s CPU ({doc['events_per_s']:,} events/s), "
          f"max RSS {rss_mib:.0f} MiB")
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
