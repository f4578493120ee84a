"""Learned keep-alive and pre-warm against the uniform settings, on a whole fleet, in one run.

For one trace and one model load it replays every workload with: the GPU defaults of
examples/gpu-chat-http.yaml; every uniform cooldown the recommender sweeps (the best one meeting the objective
request-weighted is "best uniform"); llmaz with one fixed replica; llmaz elasticConfig; and
``keep-alive: learned`` (each workload learns its own, online). Prints one table (GPU-hours, saving against
one fixed replica, request-weighted cold-start share, median and p90 workload's share, pre-warms and unused
ones) and writes it as JSON.

    python3 benchmarks/simulate_learned.py --trace ../shared/data/traces/azure-functions-2019 --model-load 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from webhook.learn import Params  # noqa: E402
from webhook.models import ModelCatalog  # noqa: E402
from webhook.policy import Policy  # noqa: E402
from webhook.preview import load_documents  # noqa: E402
from webhook.simulate.baselines import baselines, from_settings  # noqa: E402
from webhook.simulate.learned import FleetRun, simulate_learned  # noqa: E402
from webhook.simulate.model import PodTiming, simulate  # noqa: E402
from webhook.simulate.recommend import COOLDOWNS, candidate_annotations, resolve  # noqa: E402
from webhook.simulate.traces import load  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--model-load", type=float, default=120.0)
    ap.add_argument("--objective", type=float, default=1.0, help="cold-start share objective, in %%")
    ap.add_argument("--param", action="append", default=[], help="learner hyperparameter override, name=value")
    ap.add_argument("--skip-uniform", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    params = Params(**{k: float(v) for k, v in (p.split("=", 1) for p in args.param)})
    docs = load_documents(os.path.join(ROOT, "examples", "gpu-chat-http.yaml"))
    obj = next(d for d in docs if d.get("kind") == "Playground")
    models = ModelCatalog()
    for d in docs:
        if d.get("kind") == "OpenModel":
            models.put(d)
    policy = Policy.default()
    timing = PodTiming(model_load_s=args.model_load)
    t0 = time.process_time()
    traces = load(args.trace, args.format, 1)
    read_s = time.process_time() - t0
    base = resolve(obj, {}, policy, models)
    runs: dict[str, FleetRun] = {}
    cpu: dict[str, float] = {}

    def replay(name: str, settings, which: str | None = None) -> None:
        fr = FleetRun()
        t = time.process_time()
        for tr in traces:
            cfg = from_settings(settings, policy, tr.horizon, tr.origin)
            if which:
                cfg = baselines(obj, cfg)[which]
            fr.add(simulate(tr.arrivals, cfg, timing, tr.horizon))
        cpu[name] = time.process_time() - t
        runs[name] = fr

    replay("GPU defaults", base)
    replay("llmaz, 1 fixed replica", base, "llmaz")
    replay("llmaz elasticConfig", base, "elastic")
    uniform = []
    if not args.skip_uniform:
        for cd in COOLDOWNS:
            name = f"uniform cooldown {cd}s"
            replay(name, resolve(obj, candidate_annotations(base, cd, 0, base.polling_interval, None), policy,
                                 models))
            uniform.append(name)
    fr = FleetRun()
    t = time.process_time()
    for tr in traces:
        cfg = from_settings(base, policy, tr.horizon, tr.origin)
        lr = simulate_learned(tr.arrivals, cfg, timing, tr.horizon, args.objective / 100, params, tr.day_offset())
        fr.add(lr.result, lr.prewarms, lr.unused_prewarms)
    cpu["learned"] = time.process_time() - t
    runs["learned"] = fr
    fixed = runs["llmaz, 1 fixed replica"].result.gpu_hours
    ok = [n for n in uniform if runs[n].result.waited_share <= args.objective / 100]
    best = (min(ok, key=lambda n: runs[n].result.gpu_hours) if ok
            else min(uniform, key=lambda n: runs[n].result.waited_share) if uniform else None)
    rows = []
    print(f"{args.trace}: {len(traces)} workloads, {sum(t.requests for t in traces):,} requests, model load "
          f"{args.model_load:g}s; read {read_s:.1f}s CPU")
    print(f"{'config':28} {'GPU-h':>9} {'saved':>7} {'waited':>7} {'median wl':>9} {'p90 wl':>7} "
          f"{'pre-warms':>9} {'unused':>7} {'CPU s':>6}")
    for name, r in runs.items():
        res = r.result
        tag = " (best uniform)" if name == best else ""
        row = {"config": name + tag, "gpu_hours": round(res.gpu_hours, 1),
               "saved_vs_fixed": round(1 - res.gpu_hours / fixed, 4) if fixed else None,
               "waited_share": round(res.waited_share, 5), "median_workload_share": round(r.workload_share(0.5), 4),
               "p90_workload_share": round(r.workload_share(0.9), 4), "prewarms": r.prewarms,
               "unused_prewarms": r.unused_prewarms, "cold_starts": res.activations, "cpu_s": round(cpu[name], 1)}
        rows.append(row)
        print(f"{row['config'][:28]:28} {res.gpu_hours:9.1f} {row['saved_vs_fixed'] * 100:6.1f}% "
              f"{res.waited_share * 100:6.2f}% {r.workload_share(0.5) * 100:8.1f}% {r.workload_share(0.9) * 100:6.1f}% "
              f"{r.prewarms:9d} {r.unused_prewarms:7d} {cpu[name]:6.1f}")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"trace": args.trace, "model_load_s": args.model_load, "objective": args.objective / 100,
                       "params": params.__dict__, "best_uniform": best, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
