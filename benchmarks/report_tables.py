"""Render the scaling report's tables from ``simulate_learned.py`` results, so that every figure in a table is
the one in the results file (no hand copying).

    python3 benchmarks/report_tables.py benchmarks/results/simulate-learned-azure-functions-{30,120}s.json \
        --subset held-out

One table per call, one block of rows per results file (its model load), in the order given."""

from __future__ import annotations

import argparse
import json
import sys

HEADER = ("| model load | configuration | GPU-h | saved against one fixed replica | saved against `elasticConfig` "
          "| requests that waited | median / p90 workload | workloads within {obj} | pre-warms (unused) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|")


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x * 100:.{digits}f} %" if x >= -1e-9 else f"{-x * 100:.{digits}f} % more"


def _gpu_h(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def _label(config: str, waited: float, objective: float, none_within: bool = False) -> str | None:
    """The table's name for a results row; None: not a row of the report's tables."""
    closest = " (none meets {obj}; the closest)" if waited > objective + 1e-12 else ""
    base = config.replace(" (best uniform per workload)", "").replace(" (best uniform)", "")
    out = []
    if config.endswith(" (best uniform)") or " (best uniform) " in config:
        out.append(f"best uniform: {base.removeprefix('uniform ')}{closest}")
    if "(best uniform per workload)" in config:
        out.append(f"best uniform per workload: {base.removeprefix('uniform ')}")
    if out:
        return " = ".join(out)
    return {"GPU defaults": "GPU defaults (cooldown 600 s)",
            "llmaz, 1 fixed replica": "llmaz, one fixed replica",
            "llmaz elasticConfig": "llmaz `elasticConfig`",
            "learned": "**learned**",
            "hindsight: own cooldown per workload": "hindsight: each workload's own cooldown" + closest,
            "hindsight: each workload its own objective":
                "hindsight: each workload's cheapest cooldown meeting its own objective"
                + (" (none meets {obj}; the fewest waiting)" if none_within else "")}.get(base)


ORDER = ("GPU defaults", "best uniform:", "best uniform per workload:", "llmaz, one", "llmaz `", "**learned",
         "hindsight: each workload's own", "hindsight: each workload's cheapest")


def rows(doc: dict, subset: str | None) -> tuple[float, list[str]]:
    objective = doc["objective"]
    found = doc["rows"] if subset is None else doc["subsets"][subset]["rows"]
    load = f"{doc['model_load_s']:g} s"
    out = []
    for r in found:
        label = _label(r["config"], r["waited_share"], objective, r.get("workloads_within_objective") == 0)
        if label is None:
            continue
        label = label.format(obj=f"{objective * 100:g} %")
        prewarms = f"{r['prewarms']:,} ({r['unused_prewarms']:,})" if r["prewarms"] else "-"
        within = (f"{r['workloads_within_objective']:,} of {r['workloads']:,}"
                  if "workloads_within_objective" in r else "-")
        out.append((next(i for i, p in enumerate(ORDER) if label.startswith(p)),
                    f"| {load} | {label} | {_gpu_h(r['gpu_hours'])} | {_pct(r['saved_vs_fixed'])} | "
                    f"{_pct(r['saved_vs_elastic'])} | {r['waited_share'] * 100:.2f} % | "
                    f"{r['median_workload_share'] * 100:.1f} % / {r['p90_workload_share'] * 100:.1f} % | "
                    f"{within} | {prewarms} |"))
    return objective, [line for _, line in sorted(out, key=lambda x: x[0])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="simulate_learned.py --out files, one per model load")
    ap.add_argument("--subset", choices=["tune", "held-out"], help="the rows of this half (results of --split)")
    args = ap.parse_args(argv)
    body: list[str] = []
    objective = 0.01
    for path in args.results:
        with open(path, encoding="utf-8") as fh:
            objective, lines = rows(json.load(fh), args.subset)
        body += lines
    print(HEADER.format(obj=f"{objective * 100:g} %"))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
