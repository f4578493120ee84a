"""Tables, JSON and the optional plot. Formatting only: every figure comes from a ``Result``."""

from __future__ import annotations

from typing import Any, Mapping, TextIO

from .model import Result
from .recommend import Recommendation

COLUMNS = ("config", "GPU-h", "replica-h", "cold starts", "waited", "waited %", "wait p50", "wait p99",
           "wait max", "failed", "peak")


def figures(r: Result) -> dict[str, Any]:
    """The JSON form of a result (waits are among the requests that waited)."""
    return {
        "gpu_hours": round(r.gpu_hours, 3), "replica_hours": round(r.replica_hours, 3),
        "requests": r.requests, "cold_starts": r.activations, "pod_starts": r.pod_starts,
        "waited": r.waited, "waited_share": round(r.waited_share, 6),
        "added_wait_s": {"p50": round(r.waiter_quantile(0.5), 2), "p99": round(r.waiter_quantile(0.99), 2),
                         "max": round(r.max_wait, 2)},
        "added_wait_p99_all_requests_s": round(r.wait_quantile(0.99), 2),
        "failed": r.failed, "overloaded": r.overloaded, "peak_replicas": r.peak_replicas, "events": r.events,
    }


def _row(name: str, r: Result) -> list[str]:
    return [name, f"{r.gpu_hours:.2f}", f"{r.replica_hours:.2f}", str(r.activations), str(r.waited),
            f"{r.waited_share * 100:.2f}", f"{r.waiter_quantile(0.5):.1f}s", f"{r.waiter_quantile(0.99):.1f}s",
            f"{r.max_wait:.1f}s", str(r.failed), str(r.peak_replicas)]


def table(rows: list[list[str]], header: tuple[str, ...] = COLUMNS) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(list(header)), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def print_simulation(out: TextIO, title: str, results: Mapping[str, Result]) -> None:
    out.write(title + "\n\n")
    out.write(table([_row(k, v) for k, v in results.items()]) + "\n")
    ours = results.get("llmaz-serverless")
    if ours is not None:
        for k, v in results.items():
            if k != "llmaz-serverless" and v.gpu_seconds > 0:
                out.write(f"saving against {k}: {(1 - ours.gpu_seconds / v.gpu_seconds) * 100:.1f}% of GPU-hours "
                          f"({v.gpu_hours - ours.gpu_hours:.2f} GPU-h)\n")


def print_recommendation(out: TextIO, rec: Recommendation) -> None:
    obj = rec.objective
    out.write(f"objective: {obj.metric} <= {obj.show(obj.limit)}; scored on {rec.scored_on}\n")
    if rec.window:
        out.write(f"learned warm window: {rec.window[0]:02d}:00-{rec.window[1]:02d}:00 UTC\n")
    for n in rec.notes:
        out.write(f"note: {n}\n")
    rows = [[("* " if c is rec.picked else "  ") + c.label, f"{c.result.gpu_hours:.2f}", obj.show(c.value),
             f"{c.result.waited_share * 100:.2f}", f"{c.result.wait_quantile(0.99):.1f}s", str(c.result.failed)]
            for c in rec.knee()]
    out.write("\ncost / latency around the pick:\n")
    out.write(table(rows, ("candidate", "GPU-h", obj.metric, "waited %", "wait p99 (all)", "failed")) + "\n")
    if rec.picked is None:
        return
    p, b = rec.picked, rec.baseline
    saving = (1 - p.result.gpu_seconds / b.gpu_seconds) * 100 if b.gpu_seconds else 0.0
    out.write(f"\nrecommended: {p.label}\n")
    out.write(f"predicted: {p.result.gpu_hours:.2f} GPU-h against {b.gpu_hours:.2f} with the current settings "
              f"({saving:.1f}% saved), {obj.metric} {obj.show(p.value)}\n")
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


def plot_timeline(path: str, timelines: Mapping[str, list[tuple[float, int]]], horizon: float) -> None:
    """Replicas over time per configuration (needs the optional ``plot`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'llmaz-serverless[plot]'") from None
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
