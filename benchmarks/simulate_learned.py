"""Learned keep-alive and pre-warm against the uniform settings, on a whole fleet, in one run.

For one trace, one model load and one start (default warm, as ``simulate``) it replays every workload with:
the GPU defaults of examples/gpu-chat-http.yaml; every uniform cooldown the recommender sweeps (the best one meeting the objective
request-weighted is "best uniform"); llmaz with one fixed replica; llmaz elasticConfig; and
``keep-alive: learned`` (each workload learns its own, online). Prints one table (GPU-hours, saving against
one fixed replica, request-weighted cold-start share, median and p90 workload's share, pre-warms and unused
ones) and writes it as JSON.

    python3 benchmarks/simulate_learned.py --trace ../shared/data/traces/azure-functions-2019 --model-load 30
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from webhook.learn import Params  # noqa: E402
from webhook.models import ModelCatalog  # noqa: E402
from webhook.policy import Policy  # noqa: E402
from webhook.preview import load_documents  # noqa: E402
from webhook.simulate.baselines import baselines, from_settings  # noqa: E402
from webhook.simulate.learned import SIGNALS, LearnedConfig  # noqa: E402
from webhook.simulate.model import PodTiming  # noqa: E402
from webhook.simulate.recommend import COOLDOWNS, candidate_annotations, resolve  # noqa: E402
from webhook.simulate.replay import STARTS, Replay, merge, run_configs  # noqa: E402
from webhook.simulate.result import within as share_within  # noqa: E402
from webhook.simulate.traces import load  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_SALT = "llmaz-serverless learn split 1"


def half(name: str) -> str:
    """The fixed tuning / held-out split of a fleet trace by workload: SHA-256 of ``SPLIT_SALT:name``, first
    byte even -> "tune", odd -> "held-out". Fixed so that what was tuned on is never reported as held out."""
    return "tune" if hashlib.sha256(f"{SPLIT_SALT}:{name}".encode()).digest()[0] % 2 == 0 else "held-out"


def example_workload(max_replicas: int | None = None) -> tuple[dict, ModelCatalog, Policy]:
    """The Playground of examples/gpu-chat-http.yaml, its OpenModel and the built-in policy: the workload every
    trace's workloads are replayed as. ``max_replicas`` replaces its max-replicas annotation (every
    configuration, ``elasticConfig`` included, scales out to it)."""
    docs = load_documents(os.path.join(ROOT, "examples", "gpu-chat-http.yaml"))
    models = ModelCatalog()
    for d in docs:
        if d.get("kind") == "OpenModel":
            models.put(d)
    obj = next(d for d in docs if d.get("kind") == "Playground")
    if max_replicas is not None:
        obj["metadata"]["annotations"]["serverless.llmaz.io/max-replicas"] = str(max_replicas)
    return obj, models, Policy.default()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--model-load", type=float, default=120.0)
    ap.add_argument("--start", default="warm", choices=STARTS)
    ap.add_argument("--warm-up", type=float, default=0.0,
                    help="hours replayed before scoring starts (every configuration; the learner learns from them)")
    ap.add_argument("--objective", type=float, default=1.0, help="cold-start share objective, in %%")
    ap.add_argument("--param", action="append", default=[], help="learner hyperparameter override, name=value")
    ap.add_argument("--skip-uniform", action="store_true", help="only the baselines and the learner")
    ap.add_argument("--only", choices=["tune", "held-out"], help="replay only this half of the workloads")
    ap.add_argument("--split", action="store_true", help="also report each half of the workloads on its own")
    ap.add_argument("--hindsight-up-to", type=float, default=3600.0,
                    help="the hindsight row may also pick cooldowns up to this many seconds (2, 4, 8, 12, 24 h; "
                         "replayed for that row only)")
    ap.add_argument("--within-trace", action="store_true",
                    help="bill every configuration only up to the trace's end (GPU time after it is not counted)")
    ap.add_argument("--signal", action="append", choices=SIGNALS,
                    help="what the learner is told (default requests; given twice, one row each, side by side)")
    ap.add_argument("--max-replicas", type=int,
                    help="every configuration scales out to at most this many replicas (default: the example's 4); "
                         "1 compares like for like with one fixed replica on a trace one replica cannot serve")
    ap.add_argument("--out")
    args = ap.parse_args()
    signals = args.signal or ["requests"]
    learned = {("learned" if sig == "requests" else f"learned ({sig})"): sig for sig in signals}
    params = Params(**{k: float(v) for k, v in (p.split("=", 1) for p in args.param)})
    obj, models, policy = example_workload(args.max_replicas)
    timing = PodTiming(model_load_s=args.model_load)
    replay = Replay(start=args.start, warm_up_s=args.warm_up * 3600.0)
    t0, w0 = time.process_time(), time.time()
    traces = load(args.trace, args.format, 1)
    if args.only:
        traces = [t for t in traces if half(t.name) == args.only]
    read_s = time.process_time() - t0
    base = resolve(obj, {}, policy, models)
    uniform = {} if args.skip_uniform else {
        f"uniform cooldown {cd}s": resolve(obj, candidate_annotations(base, cd, 0, base.polling_interval, None),
                                           policy, models) for cd in COOLDOWNS}
    longer = {} if args.skip_uniform else {
        f"cooldown {cd}s (hindsight only)": resolve(obj, candidate_annotations(base, cd, 0, base.polling_interval,
                                                                              None), policy, models)
        for cd in LONGER_COOLDOWNS if cd <= args.hindsight_up_to}
    names = ["GPU defaults", "llmaz, 1 fixed replica", "llmaz elasticConfig", *uniform, *longer, *learned]
    per: dict[str, list] = {n: [] for n in names}
    cpu = {n: 0.0 for n in names}
    for tr in traces:
        ours = from_settings(base, policy, tr.horizon, tr.origin, 1)
        b = baselines(obj, ours)
        configs = {"GPU defaults": ours, "llmaz, 1 fixed replica": b["llmaz"], "llmaz elasticConfig": b["elastic"],
                   **{n: from_settings(s, policy, tr.horizon, tr.origin, 1) for n, s in {**uniform, **longer}.items()},
                   **{n: LearnedConfig(ours, args.objective / 100, params, sig) for n, sig in learned.items()}}
        for n, cfg in configs.items():      # one at a time for the CPU figure; billed to a common end below
            t = time.process_time()
            rp = replace(replay, until_s=tr.horizon) if args.within_trace else replay
            per[n].append(run_configs(tr, {n: cfg}, timing, rp)[n])
            cpu[n] += time.process_time() - t
    # Bill every configuration of a trace over the same span (the longest of them), as ``simulate`` does; a
    # longer cooldown of the hindsight row does not stretch that span (it is billed to its own rest, beyond).
    for i, tr in enumerate(traces):
        end = max([tr.horizon] + [per[n][i].duration_s for n in names if n not in longer])
        for n in names:
            per[n][i] = per[n][i].extend_to(end)
    subsets = {"all": list(range(len(traces)))}
    if args.split:
        for h in ("tune", "held-out"):
            subsets[h] = [i for i, tr in enumerate(traces) if half(tr.name) == h]
    print(f"{args.trace}: {len(traces)} workloads, {sum(t.requests for t in traces):,} requests, model load "
          f"{args.model_load:g}s, start {args.start}, scored after {args.warm_up:g} h, at most "
          f"{base.max_replicas} replicas; read {read_s:.1f}s CPU")
    report = {sub: table(names, per, ix, uniform, list(longer), cpu, args.objective / 100, sub, traces)
              for sub, ix in subsets.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"learned: reading {read_s:.1f}s + replay {' / '.join(f'{cpu[n]:.1f}' for n in learned)}s CPU; "
          f"max RSS {rss} MiB "
          f"(whole run, {time.time() - w0:.0f}s wall)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"trace": args.trace, "model_load_s": args.model_load, "start": args.start,
                       "warm_up_h": args.warm_up, "max_replicas": args.max_replicas,
                       "objective": args.objective / 100, "params": params.__dict__,
                       "hindsight_up_to_s": args.hindsight_up_to, "within_trace": args.within_trace,
                       "best_uniform": report["all"][0], "best_uniform_per_workload": report["all"][2],
                       "only": args.only,
                       "split": f"sha256('{SPLIT_SALT}:<workload>')[0] even: tune, odd: held-out",
                       "read_cpu_s": round(read_s, 1), "max_rss_mib": rss, "rows": report["all"][1],
                       "subsets": {k: {"workloads": len(subsets[k]), "best_uniform": v[0],
                                       "best_uniform_per_workload": v[2], "rows": v[1]}
                                   for k, v in report.items() if k != "all"}}, fh, indent=2)
    return 0


HINDSIGHT = "hindsight: own cooldown per workload"
HINDSIGHT_OWN = "hindsight: each workload its own objective"
LONGER_COOLDOWNS = (7200, 14400, 28800, 43200, 86400)


def hindsight(per: dict, ix: list[int], uniform: list[str], objective: float):
    """A reference no online learner can be held to: each workload's own uniform cooldown (from the same
    sweep), chosen with hindsight of the whole trace. One price of a waiting request for the whole set (a
    Lagrange multiplier, so that a request spared costs the same GPU time everywhere): each workload takes
    the cooldown minimising GPU-seconds + price x its requests that waited; the cheapest price at which
    the set meets the objective request-weighted wins (else the one that comes closest)."""
    best = None
    for k in range(0, 96):
        price = 2.0 ** (k / 4)
        pick = [min(uniform, key=lambda n: (per[n][i].gpu_seconds + price * per[n][i].waited, n)) for i in ix]
        res = merge([per[n][i] for n, i in zip(pick, ix)])
        if res.waited_share <= objective:
            return res
        if best is None or res.waited_share < best.waited_share:
            best = res
    return best


def hindsight_own(per: dict, ix: list[int], uniform: list[str], objective: float):
    """The reference for the per-workload contract: each workload's cheapest cooldown (from the same sweep,
    with hindsight of the whole trace) that keeps *its own* waited share within the objective; where none
    does, the one that lets the fewest of its requests wait."""
    def own(i: int) -> str:
        ok = [n for n in uniform if share_within(per[n][i].waited_share, objective)]
        if ok:
            return min(ok, key=lambda n: (per[n][i].gpu_seconds, n))
        return min(uniform, key=lambda n: (per[n][i].waited, per[n][i].gpu_seconds, n))
    return merge([per[own(i)][i] for i in ix])


def table(names: list[str], per: dict, ix: list[int], uniform: dict, longer: list[str], cpu: dict, objective: float,
          sub: str, traces: list) -> tuple[str | None, list[dict], str | None]:
    """The rows of one set of workloads (``ix``), its best uniform cooldown and its best uniform cooldown per
    workload, both chosen on that set. The longer cooldowns are candidates of the hindsight rows only."""
    runs = {n: merge([per[n][i] for i in ix]) for n in names if n not in longer}
    if uniform:
        runs[HINDSIGHT] = hindsight(per, ix, [*uniform, *longer], objective)
        runs[HINDSIGHT_OWN] = hindsight_own(per, ix, [*uniform, *longer], objective)
        cpu = {**cpu, HINDSIGHT: 0.0, HINDSIGHT_OWN: 0.0}
    fixed = runs["llmaz, 1 fixed replica"].gpu_hours
    elastic = runs["llmaz elasticConfig"].gpu_hours
    ok = [n for n in uniform if runs[n].waited_share <= objective]
    best = (min(ok, key=lambda n: runs[n].gpu_hours) if ok
            else min(uniform, key=lambda n: runs[n].waited_share) if uniform else None)
    # The per-workload view: the cheapest uniform cooldown under which at least as many workloads keep their
    # own share within the objective as under the learner (else the one under which the most do).
    within = {n: r.workloads_within(objective) for n, r in runs.items()}
    bar = max((within[n] for n in runs if n.startswith("learned")), default=None)
    best_own = None
    if uniform and bar:
        enough = [n for n in uniform if within[n] >= bar]
        best_own = (min(enough, key=lambda n: runs[n].gpu_hours) if enough
                    else max(uniform, key=lambda n: (within[n], -runs[n].gpu_hours)))
    rows = []
    print(f"-- {sub}: {len(ix)} workloads, {sum(traces[i].requests for i in ix):,} requests")
    print(f"{'config':64} {'GPU-h':>9} {'saved':>7} {'vs el.':>7} {'waited':>7} {'median wl':>9} {'p90 wl':>7} "
          f"{'within':>7} {'pre-warms':>9} {'unused':>7} {'CPU s':>6}")
    for name, res in runs.items():
        tag = " (best uniform)" if name == best else ""
        tag += " (best uniform per workload)" if name == best_own else ""
        row = {"config": name + tag, "gpu_hours": round(res.gpu_hours, 1),
               "saved_vs_fixed": round(1 - res.gpu_hours / fixed, 4) if fixed else None,
               "saved_vs_elastic": round(1 - res.gpu_hours / elastic, 4) if elastic else None,
               "waited_share": round(res.waited_share, 5),
               "median_workload_share": round(res.workload_share_quantile(0.5), 4),
               "p90_workload_share": round(res.workload_share_quantile(0.9), 4),
               "workloads_within_objective": within[name], "workloads": len(res.workload_shares),
               "prewarms": res.prewarms,
               "unused_prewarms": res.unused_prewarms, "cold_starts": res.activations,
               "cpu_s": round(cpu[name], 1) if sub == "all" else None}
        rows.append(row)
        print(f"{row['config'][:64]:64} {res.gpu_hours:9.1f} {row['saved_vs_fixed'] * 100:6.1f}% "
              f"{row['saved_vs_elastic'] * 100:6.1f}% {res.waited_share * 100:6.2f}% "
              f"{res.workload_share_quantile(0.5) * 100:8.1f}% {res.workload_share_quantile(0.9) * 100:6.1f}% "
              f"{within[name]:7d} {res.prewarms:9d} {res.unused_prewarms:7d} {cpu[name]:6.1f}")
    return best, rows, best_own


if __name__ == "__main__":
    sys.exit(main())
