"""Tables, JSON and the optional plot. Formatting only: every figure comes from a ``Result``."""

from __future__ import annotations

from typing import Any, Mapping, TextIO

from .model import Result
from .recommend import Recommendation

COLUMNS = ("config", "GPU-h", "replica-h", "cold starts", "waited %", "wait p50", "wait p99", "wait max",
           "failed", "overloaded %", "peak")
FLEET_COLUMNS = ("waited % median wl", "waited % p90 wl")

LEGEND = {
    "llmaz-serverless": "the workload with the settings this webhook resolves (KEDA, scale to zero)",
    "baseline llmaz": "llmaz without an autoscaler: spec.replicas (1 when unset), always on",
    "baseline elastic": "llmaz elasticConfig: its own HPA on the same metric and target, never below 1",
    "baseline always-on": "maxReplicas replicas all the time (the latency and cost ceiling)",
}
DEFINITIONS = (
    "waited: requests held for a starting replica (a cold start); wait p50/p99/max: among them, the time held, "
    "including failed requests (held until they failed); failed: held past the readiness timeout (the "
    "interceptor answers 504), or nothing would ever wake the workload; overloaded: arrived while demand was "
    "above ready replicas x the per-replica target (queueing behind busy replicas is not modelled, so a "
    "cheap overloaded baseline is not a like-for-like saving)")


def figures(r: Result, objective: float | None = None) -> dict[str, Any]:
    """The JSON form of a result (waits are among the requests that waited, failed ones included);
    ``objective``: a learned keep-alive's cold-start objective, for a fleet's per-workload count."""
    doc = {
        "gpu_hours": round(r.gpu_hours, 3), "replica_hours": round(r.replica_hours, 3),
        "requests": r.requests, "cold_starts": r.activations, "pod_starts": r.pod_starts,
        "waited": r.waited, "waited_share": round(r.waited_share, 6),
        "added_wait_s": {"p50": round(r.waiter_quantile(0.5), 2), "p99": round(r.waiter_quantile(0.99), 2),
                         "max": round(r.max_wait, 2)},
        "added_wait_p99_all_requests_s": round(r.wait_quantile(0.99), 2),
        "failed": r.failed, "failed_share": round(r.failed_share, 6), "cut_by_the_end": r.cut,
        "overloaded": r.overloaded, "overloaded_share": round(r.overloaded / r.requests, 6) if r.requests else 0.0,
        "peak_replicas": r.peak_replicas, "events": r.events, "replayed_s": round(r.duration_s, 3),
        "scored_from_s": r.scored_from,
    }
    if r.prewarms:
        doc["prewarms"] = r.prewarms
        doc["unused_prewarms"] = r.unused_prewarms
    if r.workloads > 1:
        doc["workloads"] = r.workloads
        doc["waited_share_per_workload"] = {"median": round(r.workload_share_quantile(0.5), 6),
                                            "p90": round(r.workload_share_quantile(0.9), 6)}
        if objective is not None:
            doc["workloads_within_objective"] = r.workloads_within(objective)
    return doc


def _pct(part: int, whole: int) -> str:
    return f"{part / whole * 100:.2f}" if whole else "0.00"


def _row(name: str, r: Result, fleet: bool) -> list[str]:
    row = [name, f"{r.gpu_hours:.2f}", f"{r.replica_hours:.2f}", str(r.activations),
           _pct(r.waited, r.requests), f"{r.waiter_quantile(0.5):.1f}s", f"{r.waiter_quantile(0.99):.1f}s",
           f"{r.max_wait:.1f}s", str(r.failed), _pct(r.overloaded, r.requests), str(r.peak_replicas)]
    if fleet:
        row += [f"{r.workload_share_quantile(0.5) * 100:.2f}", f"{r.workload_share_quantile(0.9) * 100:.2f}"]
    return row


def change(ours: float, other: float) -> str:
    """'65.8 % fewer' or '84.1 % more' (never a negative saving)."""
    if other <= 0:
        return "n/a (the baseline holds no GPU)" if ours <= 0 else "more (the baseline holds no GPU)"
    d = (1 - ours / other) * 100
    return f"{d:.1f} % fewer" if d >= 0 else f"{-d:.1f} % more"


def table(rows: list[list[str]], header: tuple[str, ...] = COLUMNS) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(list(header)), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def print_simulation(out: TextIO, title: str, results: Mapping[str, Result], notes: list[str] = (),
                     objective: float | None = None) -> None:
    """``objective``: a learned keep-alive's cold-start objective; a fleet's report then counts the workloads
    that kept their own share within it (the per-workload contract, beside the request-weighted share)."""
    out.write(title + "\n")
    for n in notes:
        out.write(f"note: {n}\n")
    fleet = any(r.workloads > 1 for r in results.values())
    header = COLUMNS + (FLEET_COLUMNS if fleet else ())
    out.write("\n" + table([_row(k, v, fleet) for k, v in results.items()], header) + "\n\n")
    ours = results.get("llmaz-serverless")
    if ours is not None:
        unit = "GPU-hours" if any(v.gpu_seconds for v in results.values()) else "replica-hours"
        for k, v in results.items():
            if k == "llmaz-serverless":
                continue
            a, b = (ours.gpu_seconds, v.gpu_seconds) if unit == "GPU-hours" else (ours.replica_seconds,
                                                                                     v.replica_seconds)
            over = f"; {k} overloaded {_pct(v.overloaded, v.requests)} % of requests" if v.overloaded else ""
            out.write(f"llmaz-serverless against {k}: {change(a, b)} {unit} "
                      f"({a / 3600:,.2f} against {b / 3600:,.2f}){over}\n")
    if ours is not None and ours.prewarms:
        out.write(f"pre-warms: {ours.prewarms} (a learned window woke the workload before a request), "
                  f"{ours.unused_prewarms} of them unused (back to zero without serving a request)\n")
    if ours is not None and ours.cut:
        out.write(f"cut: {ours.cut} requests were still waiting for a replica when --until ended the replay "
                  "(not counted as failed)\n")
    if fleet:
        out.write("waited % median wl / p90 wl: the share of its own requests that waited, for the median "
                  "workload and the 90th-percentile workload (waited % is over all requests)\n")
        if objective is not None:
            counts = "; ".join(f"{k} {v.workloads_within(objective)} of {len(v.workload_shares)}"
                               for k, v in results.items())
            out.write(f"workloads whose own waited share met the cold-start objective ({objective * 100:g}%): "
                      f"{counts}\n")
    out.write("legend: " + "; ".join(f"{k}: {v}" for k, v in LEGEND.items() if k in results) + "\n")
    out.write(DEFINITIONS + "\n")


def print_recommendation(out: TextIO, rec: Recommendation) -> None:
    obj = rec.objective
    out.write(f"objective: {obj.metric} <= {obj.show(obj.limit)}; scored on {rec.scored_on}\n")
    if rec.window:
        out.write(f"learned warm window: {rec.window[0]:02d}:00-{rec.window[1]:02d}:00 UTC\n")
    for n in rec.notes:
        out.write(f"note: {n}\n")
    fleet = rec.baseline.workloads > 1
    rows = [[("* " if c is rec.picked else "  ") + c.label, f"{c.result.gpu_hours:.2f}", obj.show(c.value),
             f"{c.result.waited_share * 100:.2f}", f"{c.result.wait_quantile(0.99):.1f}s", str(c.result.failed)]
            + ([f"{c.result.workload_share_quantile(0.5) * 100:.2f}",
                f"{c.result.workload_share_quantile(0.9) * 100:.2f}"] if fleet else [])
            for c in rec.knee()]
    out.write("\ncost / latency around the pick:\n")
    out.write(table(rows, ("candidate", "GPU-h", obj.metric, "waited %", "wait p99 (all)", "failed")
                    + (FLEET_COLUMNS if fleet else ())) + "\n")
    if rec.picked is None:
        return
    p, b = rec.picked, rec.baseline
    out.write(f"\nrecommended: {p.label}\n")
    out.write(f"predicted: {p.result.gpu_hours:.2f} GPU-h against {b.gpu_hours:.2f} with the current settings "
              f"({change(p.result.gpu_seconds, b.gpu_seconds)}), {obj.metric} {obj.show(p.value)}, "
              f"{p.result.waited_share * 100:.2f} % of requests waited\n")
    out.write("annotations:\n")
    for k, v in p.annotations.items():
        out.write(f"  {k}: {v!r}\n" if "[" in v else f"  {k}: \"{v}\"\n")


def recommendation_json(rec: Recommendation) -> dict[str, Any]:
    return {
        "objective": {"metric": rec.objective.metric, "limit": rec.objective.limit},
        "scored_on": rec.scored_on, "warm_window_utc": list(rec.window) if rec.window else None,
        "notes": rec.notes, "current": figures(rec.baseline),
        "picked": None if rec.picked is None else {"label": rec.picked.label, "annotations": rec.picked.annotations,
                                                   **figures(rec.picked.result)},
        "candidates": [{"label": c.label, "gpu_hours": round(c.result.gpu_hours, 3), "value": c.value}
                       for c in rec.candidates],
    }


class PlotUnavailable(Exception):
    pass


PLOT_HINT = ("--plot needs matplotlib: pip install matplotlib (or, from a clone of this repository, "
             "pip install '.[plot]')")


def check_plot() -> None:
    """Fail before a long replay, not after it, when the plot library is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(PLOT_HINT) from None


def plot_timeline(path: str, timelines: Mapping[str, list[tuple[float, int]]], horizon: float) -> None:
    """Replicas over time per configuration (needs the optional ``plot`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(PLOT_HINT) from None
    fig, ax = plt.subplots(figsize=(8, 3), dpi=80)
    for name, tl in timelines.items():
        xs, ys, cur = [0.0], [tl[0][1] if tl and tl[0][0] == 0 else 0], 0
        for t, n in tl:
            xs += [t / 3600, t / 3600]
            ys += [ys[-1], n]
            cur = n
        xs.append(horizon / 3600)
        ys.append(cur)
        ax.plot(xs, ys, label=name, linewidth=1)
    ax.set_xlabel("hours")
    ax.set_ylabel("replicas")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
