"""``llmaz-serverless simulate`` and ``recommend``: replay a trace against a workload's resolved settings.

The workload file and the policy are loaded exactly as ``preview`` loads them, the settings come from the
webhook's own rules (``mutate`` -> ``analyze``), and the KEDA / HPA / HTTP add-on model is
``webhook.simulate.model``. Exit codes: 0 done, 1 the objective cannot be met, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..models import ModelCatalog
from ..policy import Policy, PolicyError, load_policy_file
from ..preview import InputError, load_documents
from ..triggers import duration_seconds
from . import report
from .baselines import SimulationError, baselines, describe, from_settings
from .learned import FleetRun, learns, print_fleet_extras, replay
from .model import PodTiming, Result
from .recommend import parse_objective, recommend, resolve
from .traces import FORMATS, ServiceModel, Trace, TraceError, load

EXIT_OK, EXIT_UNMET, EXIT_INPUT = 0, 1, 2


class _Usage(Exception):
    pass


def _seconds(text: str, what: str) -> float:
    secs = duration_seconds(text) if not text.replace(".", "", 1).isdigit() else float(text)
    if secs is None:
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
    for doc in load_documents(args.file):
        if doc.get("kind") == "OpenModel":
            models.put(doc)
        elif doc.get("kind") in ("Playground", "Service"):
            objects.append(doc)
    if len(objects) != 1:
        raise _Usage(f"{args.file}: holds {len(objects)} Playground/Service objects; give exactly one workload")
    return objects[0], policy, models


def _inputs(args: argparse.Namespace) -> tuple[dict[str, Any], Policy, ModelCatalog, list[Trace], PodTiming]:
    obj, policy, models = _workload(args)
    timing = PodTiming(scheduling_s=_seconds(args.scheduling, "--scheduling"),
                       image_pull_s=_seconds(args.image_pull, "--image-pull"),
                       model_load_s=_seconds(args.model_load, "--model-load"))
    service = ServiceModel(default_s=_seconds(args.service_time, "--service-time"))
    traces = load(args.trace, args.format, args.seed, service, args.time_column, args.limit)
    return obj, policy, models, traces, timing


def run_simulate(args: argparse.Namespace) -> int:
    obj, policy, models, traces, timing = _inputs(args)
    settings = resolve(obj, {}, policy, models)
    totals: dict[str, Result] = {}
    fleets: dict[str, FleetRun] = {}
    timelines: dict[str, list[tuple[float, int]]] = {}
    keep = len(traces) == 1
    until = _seconds(args.until, "--until") if args.until else 0.0
    for tr in traces:
        horizon = max(tr.horizon, until)
        ours = from_settings(settings, policy, horizon, tr.origin)
        configs = {"llmaz-serverless": ours, **{f"baseline {k}": v for k, v in baselines(obj, ours).items()}}
        for name, cfg in configs.items():
            learned = settings if name == "llmaz-serverless" else None
            r = replay(tr, cfg, timing, horizon, learned, fleets.setdefault(name, FleetRun()), keep)
            totals[name] = totals[name].merge(r) if name in totals else r
            if keep:
                timelines[name] = r.timeline
    first = traces[0]
    what = f"{len(traces)} workloads" if len(traces) > 1 else first.name
    title = (f"{what}: {sum(t.requests for t in traces):,} requests over {first.horizon / 3600:.1f} h "
             f"({first.source}); {describe(from_settings(settings, policy, first.horizon, first.origin), timing)}")
    if learns(settings):
        title += (f"; keep-alive learned per workload (objective {settings.cold_start_objective * 100:g}%, the "
                  f"cooldown until enough history)")
    report.print_simulation(sys.stdout, title, totals)
    print_fleet_extras(sys.stdout, fleets)
    if args.out:
        doc = {"trace": args.trace, "workloads": len(traces), "model_load_s": timing.model_load_s,
               "pod_start_s": timing.startup_s, "settings": json.loads(settings.as_annotation()),
               "results": {k: {**report.figures(v), **fleets[k].figures()} for k, v in totals.items()}}
        if keep:   # one workload: when each replica change happens, in seconds from the trace start
            doc["scale_events"] = [{"t": round(t, 3), "replicas": n} for t, n in timelines["llmaz-serverless"]]
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
    if args.plot:
        if len(traces) != 1:
            raise _Usage("--plot draws one workload's timeline; use it without a fleet trace")
        report.plot_timeline(args.plot, timelines, first.horizon)
    return EXIT_OK


def run_recommend(args: argparse.Namespace) -> int:
    try:
        objective = parse_objective(args.objective)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    obj, policy, models, traces, timing = _inputs(args)
    progress = (lambda line: print("  " + line, file=sys.stderr)) if args.verbose else None
    rec = recommend(obj, traces, objective, policy, models, timing, progress)
    report.print_recommendation(sys.stdout, rec)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report.recommendation_json(rec), fh, indent=2)
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
    p.add_argument("-f", "--file", required=True, help="the workload manifest (one Playground or Service)")
    p.add_argument("--policy", help="policy file (policy.yaml or a ConfigMap manifest); default: built-in")
    p.add_argument("--model-load", default="120s", help="model load time of a new replica (default 120s)")
    p.add_argument("--image-pull", default="20s", help="image pull time of a new replica (default 20s)")
    p.add_argument("--scheduling", default="2s", help="scheduling time of a new replica (default 2s)")
    p.add_argument("--service-time", default="5s", help="service time per request when the trace has no "
                   "token counts or durations (default 5s)")
    p.add_argument("--seed", type=int, default=1, help="seed for arrivals generated from counts or rates")
    p.add_argument("--time-column", help="timestamp column of a CSV trace (default: timestamp, time, ...)")
    p.add_argument("--limit", type=int, help="fleet traces: only the first N workloads")
    p.add_argument("--out", help="write the figures as JSON to this file")


def register(sub: Any) -> None:
    """Adds ``simulate`` and ``recommend``."""
    p = sub.add_parser("simulate", help="replay a request trace against a workload's scaling (offline)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--plot", help="draw replicas over time to this PNG (needs llmaz-serverless[plot])")
    p.add_argument("--until", help="replay until this long after the trace start, e.g. 1h (default: the last "
                   "request + 1 s), so the scale-in after the last request is counted")
    p.set_defaults(func=_guard(run_simulate))
    r = sub.add_parser("recommend", help="the cheapest scaling annotations meeting a latency objective",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(r)
    r.add_argument("--objective", required=True, help="cold-start-share<=1%%, added-wait-p99<=30s or "
                   "failed-share<=0.1%%")
    r.add_argument("-v", "--verbose", action="store_true", help="print every candidate as it is scored")
    r.set_defaults(func=_guard(run_recommend))
