"""``llmaz-serverless simulate`` and ``recommend``: replay a trace against a workload's resolved settings.

The workload file and the policy are loaded exactly as ``preview`` loads them, the settings come from the
webhook's own rules (``mutate`` -> ``analyze``), and the KEDA / HPA / HTTP add-on model is
``webhook.simulate.model``. Exit codes: 0 done, 1 the objective cannot be met, 2 unusable input.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from typing import Any

from .. import constants as C
from ..models import ModelCatalog
from ..policy import Policy, PolicyError, load_policy_file
from ..preview import InputError, load_documents
from ..triggers import duration_seconds
from . import report
from .baselines import SimulationError, baselines, describe, from_settings
from .gpus import per_replica
from .learned import SIGNALS, LearnedConfig, learned_config
from .model import PodTiming, Result
from .recommend import parse_objective, recommend, resolve
from .replay import STARTS, Replay, run_configs
from .traces import FORMATS, TIME_UNITS, ServiceModel, Trace, TraceError, load

# What the title says the learner was told, per ``--learn-from``.
LEARN_FROM = {"keda-status": "KEDA's lastActiveTime, as live", "requests": "every request",
              "request-counts": "request counts scraped by Prometheus, as live where it counts them"}

EXIT_OK, EXIT_UNMET, EXIT_INPUT = 0, 1, 2


class _Usage(Exception):
    pass


def _seconds(text: str, what: str) -> float:
    secs = duration_seconds(text) if not text.replace(".", "", 1).isdigit() else float(text)
    if secs is None or not math.isfinite(secs) or secs < 0:
        raise _Usage(f"{what} {text!r} is not a duration; write e.g. 120s, 2m or 90")
    return secs


def _workload(args: argparse.Namespace) -> tuple[dict[str, Any], Policy, ModelCatalog]:
    try:
        policy = load_policy_file(args.policy) if args.policy else Policy.default()
    except PolicyError as exc:
        raise _Usage(f"{args.policy}: {exc}") from None
    except OSError as exc:
        raise _Usage(f"cannot read policy {args.policy}: {exc.strerror}") from None
    models = ModelCatalog()
    objects = []
    for path in list(args.file) + list(args.models or []):
        for doc in load_documents(path):
            if doc.get("kind") == "OpenModel":
                models.put(doc)
            elif doc.get("kind") in ("Playground", "Service") and path in args.file:
                objects.append(doc)
    if len(objects) != 1:
        raise _Usage(f"{', '.join(args.file)}: holds {len(objects)} Playground/Service objects; give exactly one "
                     "workload")
    return objects[0], policy, models


def _annotations(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for item in args.annotation or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _Usage(f"--annotation {item!r}: write KEY=VALUE, e.g. serverless.llmaz.io/cooldown=300")
        key = key.strip()
        if key not in C.USER_ANNOTATIONS:
            near = difflib.get_close_matches(key, C.USER_ANNOTATIONS, n=1)
            raise _Usage(f"--annotation {key!r} is not an annotation of llmaz-serverless"
                         + (f"; did you mean {near[0]}?" if near else f"; known: {', '.join(C.USER_ANNOTATIONS)}"))
        out[key] = value
    return out


def _replay(args: argparse.Namespace) -> Replay:
    until = _seconds(args.until, "--until") if args.until else None
    if until is not None and until <= 0:
        raise _Usage(f"--until {args.until!r} must be longer than 0 s")
    gpus = args.gpus_per_replica
    if gpus is not None and not 0 <= gpus <= 4096:
        raise _Usage(f"--gpus-per-replica {gpus} is out of range; give 0 to 4096")
    return Replay(start=args.start, warm_up_s=_seconds(args.warm_up, "--warm-up"), until_s=until,
                  gpus_per_replica=gpus, learn_from=args.learn_from)


def _inputs(args: argparse.Namespace) -> tuple[dict[str, Any], Policy, ModelCatalog, list[Trace], PodTiming]:
    if args.plot:
        report.check_plot()
    obj, policy, models = _workload(args)
    timing = PodTiming(scheduling_s=_seconds(args.scheduling, "--scheduling"),
                       image_pull_s=_seconds(args.image_pull, "--image-pull"),
                       model_load_s=_seconds(args.model_load, "--model-load"))
    service = ServiceModel(default_s=_seconds(args.service_time, "--service-time"))
    traces = load(args.trace, args.format, args.seed, service, args.time_column, args.limit, args.time_unit)
    return obj, policy, models, traces, timing


def _warnings(cfg: Any, timing: PodTiming) -> list[str]:
    """What makes every cold start fail, said before the figures that would show it."""
    out = []
    if cfg.readiness_timeout_s and cfg.readiness_timeout_s < timing.startup_s:
        out.append(f"the readiness timeout ({cfg.readiness_timeout_s:g}s) is shorter than a replica's start "
                   f"({timing.startup_s:g}s = scheduling + image pull + model load): every request that meets a "
                   "cold start fails with 504; raise the http trigger's readinessTimeout (or the policy's "
                   "http.readinessTimeout)")
    return out


def _gpus(obj: dict[str, Any], policy: Policy, models: ModelCatalog, settings: Any, replay: Replay) -> tuple[int, str]:
    if replay.gpus_per_replica is not None:
        return replay.gpus_per_replica, "--gpus-per-replica"
    g = per_replica(obj, policy, models, settings.gpu)
    return g.per_replica, g.why


def run_simulate(args: argparse.Namespace) -> int:
    replay = _replay(args)
    extra = _annotations(args)
    obj, policy, models, traces, timing = _inputs(args)
    settings = resolve(obj, extra, policy, models)
    gpus, why = _gpus(obj, policy, models, settings, replay)
    totals: dict[str, Result] = {}
    timelines: dict[str, list[tuple[float, int]]] = {}
    keep = len(traces) == 1
    for tr in traces:
        ours = from_settings(settings, policy, tr.horizon, tr.origin, gpus)
        configs = {"llmaz-serverless": learned_config(settings, ours, replay.learn_from),
                   **{f"baseline {k}": v for k, v in baselines(obj, ours).items()}}
        for name, r in run_configs(tr, configs, timing, replay, keep_timeline=keep).items():
            totals[name] = totals[name].merge(r) if name in totals else r
            if keep:
                timelines[name] = r.timeline
    first = traces[0]
    span = max(r.duration_s for r in totals.values())
    what = f"{len(traces)} workloads" if len(traces) > 1 else first.name
    cfg0 = from_settings(settings, policy, first.horizon, first.origin, gpus)
    warm = f", first {replay.warm_up_s / 3600:g} h not scored (warm-up)" if replay.warm_up_s else ""
    title = (f"{what}: {sum(t.requests for t in traces):,} requests over {first.horizon / 3600:.2f} h "
             f"({first.source}); {describe(cfg0, timing)}; {gpus} GPU(s) per replica ({why}); "
             f"start {replay.start}{warm}; replayed {span / 3600:.2f} h "
             + ("(to --until)" if replay.until_s is not None else "(until back at rest)"))
    objective = None
    if isinstance(learned_config(settings, cfg0), LearnedConfig):
        objective = settings.cold_start_objective
        title += (f"; keep-alive learned per workload (objective {settings.cold_start_objective * 100:g}%; the "
                  f"cooldown until it has enough history; learning from {LEARN_FROM[replay.learn_from]})")
    notes = sorted({n for t in traces for n in t.notes})
    warnings = _warnings(cfg0, timing)
    for w in warnings:
        print(f"llmaz-serverless: warning: {w}", file=sys.stderr)
    report.print_simulation(sys.stdout, title, totals, notes + [f"warning: {w}" for w in warnings], objective)
    if args.out:
        doc = {"trace": args.trace, "workloads": len(traces), "model_load_s": timing.model_load_s,
               "pod_start_s": timing.startup_s, "gpus_per_replica": gpus, "gpus_per_replica_from": why,
               "start": replay.start, "warm_up_s": replay.warm_up_s, "until_s": replay.until_s,
               "notes": notes, "warnings": warnings, "settings": json.loads(settings.as_annotation()),
               "results": {k: report.figures(v, objective) for k, v in totals.items()}}
        if keep:   # one workload: when each replica change happens, in seconds from the trace start
            doc["scale_events"] = [{"t": round(t, 3), "replicas": n} for t, n in timelines["llmaz-serverless"]]
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
    if args.plot:
        if len(traces) != 1:
            raise _Usage("--plot draws one workload's timeline; use it without a fleet trace")
        report.plot_timeline(args.plot, timelines, span)
    return EXIT_OK


def run_recommend(args: argparse.Namespace) -> int:
    try:
        objective = parse_objective(args.objective)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    replay = _replay(args)
    extra = _annotations(args)
    obj, policy, models, traces, timing = _inputs(args)
    if extra:
        meta = obj.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **extra}
    if args.plot and len(traces) != 1:
        raise _Usage("--plot draws one workload's timeline; use it without a fleet trace")
    progress = (lambda line: print("  " + line, file=sys.stderr)) if args.verbose else None
    rec = recommend(obj, traces, objective, policy, models, timing, progress, replay)
    report.print_recommendation(sys.stdout, rec)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report.recommendation_json(rec), fh, indent=2)
    if args.plot and rec.picked is not None:
        base = resolve(obj, {}, policy, models)
        gpus, _ = _gpus(obj, policy, models, base, replay)
        tr = traces[0]
        configs = {"current settings": from_settings(base, policy, tr.horizon, tr.origin, gpus),
                   "recommended": from_settings(rec.picked.settings, policy, tr.horizon, tr.origin, gpus)}
        runs = run_configs(tr, configs, timing, replay, keep_timeline=True)
        report.plot_timeline(args.plot, {k: r.timeline for k, r in runs.items()},
                             max(r.duration_s for r in runs.values()))
    return EXIT_OK if rec.picked is not None else EXIT_UNMET


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (TraceError, InputError, SimulationError, _Usage, report.PlotUnavailable) as exc:
            print(f"llmaz-serverless: {exc}", file=sys.stderr)
            return EXIT_INPUT
        except OSError as exc:
            print(f"llmaz-serverless: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
            return EXIT_INPUT
    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="trace file or directory")
    p.add_argument("--format", default="auto", choices=FORMATS, help="trace format (default: from the file)")
    p.add_argument("--time-unit", default="auto", choices=TIME_UNITS, help="unit of numeric timestamps (default: "
                   "from the data: Mooncake's millisecond field, epoch magnitudes in s/ms/us/ns, else seconds)")
    p.add_argument("-f", "--file", action="append", required=True,
                   help="manifest holding the workload (one Playground or Service), and its OpenModels")
    p.add_argument("--models", action="append", help="file with OpenModel objects; repeatable")
    p.add_argument("--policy", help="policy file (policy.yaml or a ConfigMap manifest); default: built-in")
    p.add_argument("--model-load", default="120s", help="model load time of a new replica (default 120s)")
    p.add_argument("--image-pull", default="20s", help="image pull time of a new replica (default 20s)")
    p.add_argument("--scheduling", default="2s", help="scheduling time of a new replica (default 2s)")
    p.add_argument("--service-time", default="5s", help="service time per request when the trace has no "
                   "token counts or durations (default 5s)")
    p.add_argument("--annotation", action="append", metavar="KEY=VALUE", help="set this annotation on the "
                   "workload before resolving it (try a setting without editing the manifest); repeatable")
    p.add_argument("--gpus-per-replica", type=int, help="GPUs one replica holds (default: from the OpenModel "
                   "flavor limits, hosts per replica and the Service's workloadTemplate)")
    p.add_argument("--start", default="warm", choices=STARTS, help="state at the trace start: warm = a request "
                   "was just served (max(min, 1) replicas ready, cooldown running; at rest if the trace opens "
                   "idle for longer than the cooldown), cold = idle for long (default warm)")
    p.add_argument("--warm-up", default="0", help="replay but do not count this long from the trace start, "
                   "e.g. 1h (default 0)")
    p.add_argument("--until", help="cut (or extend) the replay this long after the trace start, e.g. 1h "
                   "(default: until the last request is served and the workload is back at rest)")
    p.add_argument("--seed", type=int, default=1, help="seed for arrivals generated from counts or rates")
    p.add_argument("--time-column", help="timestamp column of a CSV trace (default: timestamp, time, ...)")
    p.add_argument("--limit", type=int, help="fleet traces: only the first N workloads")
    p.add_argument("--learn-from", default="keda-status", choices=SIGNALS,
                   help="keep-alive: learned only: what the learner is told. keda-status (default) = what the "
                   "reconciler reads live, KEDA's lastActiveTime (each wake-up one request, a pre-warm's own "
                   "requests not seen); request-counts = every request as the reconciler reads them from "
                   "Prometheus (seen at the interceptor counter's next scrape, 15 s assumed); requests = every "
                   "request, exactly")
    p.add_argument("--out", help="write the figures as JSON to this file")
    p.add_argument("--plot", help="draw replicas over time to this PNG (one workload; needs matplotlib: "
                   "pip install '.[plot]' from a clone)")


SIMULATE_HELP = """Replay a request trace against a workload's scaling, offline, next to three baselines.

The workload file and the policy are loaded as `preview` loads them, the settings come from the webhook's
own rules, and the KEDA / HPA / HTTP add-on model is the one in docs/scaling-report.md. Reports GPU-hours
and replica-hours, cold starts, the requests that waited and for how long, failed and overloaded requests.
Exit codes: 0 done, 2 unusable input.
"""

RECOMMEND_HELP = """Find the cheapest scaling annotations that meet a latency objective on a trace.

Sweeps cooldown, polling, a daily warm window (learned on the first half of a trace of two days or more and
scored on the second half) and min-replicas 1; every candidate is resolved by the webhook's own rules and
replayed as `simulate` replays it. Exit codes: 0 a pick, 1 the objective cannot be met, 2 unusable input.
"""


def register(sub: Any) -> None:
    """Adds ``simulate`` and ``recommend``."""
    p = sub.add_parser("simulate", help="replay a request trace against a workload's scaling (offline)",
                       description=SIMULATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.set_defaults(func=_guard(run_simulate))
    r = sub.add_parser("recommend", help="the cheapest scaling annotations meeting a latency objective",
                       description=RECOMMEND_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(r)
    r.add_argument("--objective", required=True, help="cold-start-share<=1%%, failed-share<=0.1%% or "
                   "added-wait-p99<=30s (the unit is required; shares are 0-100 %%)")
    r.add_argument("-v", "--verbose", action="store_true", help="print every candidate as it is scored")
    r.set_defaults(func=_guard(run_recommend))
