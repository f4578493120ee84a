"""The requests no learner of a workload's own past can spare on a trace: the first burst of a workload that
opens the trace at rest.

A workload with ``keep-alive: learned`` starts with no history, under the policy's keep-alive (a replay that
starts warm keeps its replica for that long after t = 0; ``webhook/simulate/replay.py``). If its first request
comes later, the workload is at zero then, nothing it has seen could have foretold the request, and the
requests that arrive while the first replica starts wait, whatever is learned afterwards. This replays every
workload once, from the state the policy's keep-alive leaves it in at its first request, with a keep-alive
long enough that nothing after the first cold start waits: the requests that wait are that floor.

    python3 benchmarks/first_bursts.py --trace ../shared/data/traces/azure-functions-2019 --model-load 120 --split
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from simulate_learned import example_workload, half  # noqa: E402
from webhook.simulate.baselines import from_settings  # noqa: E402
from webhook.simulate.model import PodTiming  # noqa: E402
from webhook.simulate.recommend import candidate_annotations, resolve  # noqa: E402
from webhook.simulate.replay import Replay, run_configs  # noqa: E402
from webhook.simulate.traces import load  # noqa: E402

NEVER_S = 7 * 86400        # a keep-alive no trace here outlasts: after the first cold start nothing waits


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--model-load", type=float, default=120.0)
    ap.add_argument("--initial", type=float, action="append",
                    help="the keep-alive a workload starts with, in seconds (default: the policy's cooldown; "
                         "may be given more than once)")
    ap.add_argument("--split", action="store_true", help="also report the tuning and held-out halves")
    ap.add_argument("--out")
    args = ap.parse_args()
    obj, models, policy = example_workload()
    base = resolve(obj, {}, policy, models)
    hold = resolve(obj, candidate_annotations(base, NEVER_S, 0, base.polling_interval, None), policy, models)
    timing = PodTiming(model_load_s=args.model_load)
    traces = load(args.trace, args.format, 1)
    rows = []
    for initial in args.initial or [float(base.cooldown_period)]:
        sums: dict[str, list[int]] = {}
        for tr in traces:
            first = tr.arrivals[0][0] if tr.arrivals else None
            # at rest at the first request when the initial keep-alive (and the poll acting on it) has run out
            start = "cold" if first is not None and first > initial + base.polling_interval else "warm"
            r = run_configs(tr, {"x": from_settings(hold, policy, tr.horizon, tr.origin, 1)}, timing,
                            Replay(start=start))["x"]
            for sub in ["all"] + ([half(tr.name)] if args.split else []):
                acc = sums.setdefault(sub, [0, 0, 0, 0])
                acc[0] += r.waited
                acc[1] += r.requests
                acc[2] += start == "cold"
                acc[3] += 1
        for sub, (waited, requests, at_rest, n) in sums.items():
            rows.append({"subset": sub, "initial_keep_alive_s": initial, "workloads": n,
                         "open_at_rest": at_rest, "requests": requests, "first_burst_waits": waited,
                         "share": round(waited / requests, 5) if requests else 0.0})
            print(f"{sub:9} initial keep-alive {initial:>6g}s: {at_rest:4d} of {n} workloads open at rest; "
                  f"{waited:,} of {requests:,} requests wait in their first burst ({waited / requests * 100:.2f} %)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"trace": args.trace, "model_load_s": args.model_load, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
