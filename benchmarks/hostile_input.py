"""Hostile annotations, side by side: today's tree against the tree before bounded input (commit 853c4a9).

    python benchmarks/hostile_input.py                   # every case, both trees, one table
    python benchmarks/hostile_input.py --cases alias-tolerance --old-timeout 60

Each (tree, case) runs in a fresh child process with that tree on ``PYTHONPATH``, so the two never share
imports, caches or heap. The child first warms up on a benign Playground, then measures, for the hostile one:

1. **admission**: the mutating rules (``mutation.mutate``) then the validating rules (``validation.validate``),
   exactly what the webhook runs per request: denied or admitted, and the time;
2. **build**: what the reconciler does with an admitted object: ``keda.desired_objects`` and the JSON body of
   the server-side apply (``json.dumps`` of every object). Skipped when admission denied it and the build also
   denies (the reconciler applies the same rules).

Time is wall clock; RSS growth is the peak resident set (``ru_maxrss``) above the level after warm-up. The old
tree's child runs under an address-space limit (``--old-memory-mb``, default 1500) and a timeout, so an alias
bomb ends as a MemoryError or a kill instead of taking the machine with it; both are reported as such.

The old tree is exported with ``git archive`` into a temporary directory (no change to the repository).
Targets: every hostile case denied at admission in under 100 ms with under 10 MB of RSS growth. The ``benign``
case is the reference: a typical admission's median (and p99) over 500 runs in each tree.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "853c4a9"


def _ladder(leaf: str, levels: int, width: int = 10) -> str:
    """``[&a0 [x, x, ...], &a1 [*a0, *a0, ...], ...]``: ``width**levels`` leaves in a few hundred bytes."""
    parts = [f"&a0 [{', '.join([leaf] * width)}]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "[" + ", ".join(parts) + "]"


def cases() -> dict[str, dict[str, str]]:
    cron = "{type: cron, start: '0 8 * * *', end: '0 9 * * *'}"
    redis = "{type: redis, address: 'redis.attacker.example:6379', listName: q}"
    return {
        # scale-behavior's scaleUp.tolerance was passed through untyped: 10^7 leaves
        "alias-tolerance": {"serverless.llmaz.io/min-replicas": "1", "serverless.llmaz.io/scale-behavior":
                            "{scaleUp: {tolerance: " + _ladder("x", 7) + "}}"},
        # a raw trigger's useCachedMetrics was passed through untyped: 10^7 leaves
        "alias-raw-cached": {"serverless.llmaz.io/min-replicas": "1", "serverless.llmaz.io/triggers":
                             "[{type: raw, trigger: {type: cpu, metricType: Utilization, metadata: {value: '50'}, "
                             "useCachedMetrics: " + _ladder("x", 7) + "}}]"},
        "4000-cron-triggers": {"serverless.llmaz.io/triggers": "[" + ", ".join([cron] * 4000) + "]"},
        "4000-redis-outside": {"serverless.llmaz.io/triggers": "[" + ", ".join([redis] * 4000) + "]"},
        "nested-5000": {"serverless.llmaz.io/triggers": "[" * 5000},
        # the same 4,000 triggers under a policy whose admin raised the byte and node caps: the trigger cap
        # still refuses it (the old tree has no caps: its run is the 4000-cron-triggers case again)
        "4000-cron-wide-caps": {"serverless.llmaz.io/triggers": "[" + ", ".join([cron] * 4000) + "]"},
        # not hostile: a typical admission (three triggers and a behavior), median of 500, for the cost of
        # the bounded loader and the boundary checks on the normal path
        "benign": {"serverless.llmaz.io/triggers": "[http, {type: redis, address: 'redis.ai:6379', listName: q}, "
                                                   + cron + "]",
                   "serverless.llmaz.io/scale-behavior": '{"scaleDown": {"stabilizationWindowSeconds": 300, '
                                                         '"policies": [{"type": "Pods", "value": 1, '
                                                         '"periodSeconds": 60}]}}'},
    }


# Policies per case (new tree only; the old tree has no ``limits``).
WIDE = ("limits: {annotationBytes: 262144, totalAnnotationBytes: 1048576, yamlNodes: 100000, "
        "nestingDepth: 64}")
CASE_POLICY = {"4000-cron-wide-caps": WIDE}


# ============================================================================================ child


def child(case: str) -> None:
    import gc

    from webhook.keda import desired_objects
    from webhook.models import ModelCatalog
    from webhook.mutation import mutate
    from webhook.policy import Policy
    from webhook.validation import validate
    from webhook.errors import Denied

    def playground(annotations: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                "metadata": {"name": "chat", "namespace": "ai", "uid": "u-1", "annotations": annotations},
                "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen-7b"}}}

    from webhook.policy import parse_policy

    policy, models = Policy.default(), ModelCatalog()
    if case in CASE_POLICY and os.environ.get("HOSTILE_TREE") == "new":
        policy = parse_policy(CASE_POLICY[case])
    benign = playground({"serverless.llmaz.io/triggers": "[http, {type: cron, start: '0 8 * * *', end: '0 9 * * *'}]",
                         "serverless.llmaz.io/scale-behavior": '{"scaleDown": {"stabilizationWindowSeconds": 60}}'})
    for _ in range(3):
        mutate(benign, None, "CREATE", policy, models)
        validate(benign, None, "CREATE", policy, models)
        json.dumps([o for o in desired_objects(benign, policy, models).objects()])
    obj = playground(cases()[case])
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {"case": case, "annotation_bytes": sum(len(v.encode()) for v in cases()[case].values())}

    if case == "benign":
        times = []
        for _ in range(500):
            t0 = time.perf_counter()
            mutate(obj, None, "CREATE", policy, models)
            verdict = validate(obj, None, "CREATE", policy, models)
            times.append(time.perf_counter() - t0)
        times.sort()
        out.update(admission="admitted" if verdict.allowed else "denied", admission_ms=round(
            times[len(times) // 2] * 1000, 3), admission_p99_ms=round(times[int(len(times) * 0.99)] * 1000, 3))
        out["admission_rss_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)
        out["build"] = "skipped"
        print(json.dumps(out), flush=True)
        return

    t0 = time.perf_counter()
    try:
        mutate(obj, None, "CREATE", policy, models)
        verdict = validate(obj, None, "CREATE", policy, models)
        out["admission"] = "admitted" if verdict.allowed else "denied"
        out["message"] = "; ".join(str(p) for p in verdict.problems)[:300]
    except Denied as d:
        out["admission"], out["message"] = "denied", d.message[:300]
    except BaseException as exc:  # noqa: BLE001 - what the old tree did is the measurement
        out["admission"], out["message"] = f"crashed ({type(exc).__name__})", str(exc)[:200]
    out["admission_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    out["admission_rss_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)
    print(json.dumps(out), flush=True)

    t0 = time.perf_counter()
    try:
        body = json.dumps([o for o in desired_objects(obj, policy, models).objects()])
        out["build"], out["build_bytes"] = "built", len(body)
    except Denied:
        out["build"] = "denied"
    except BaseException as exc:  # noqa: BLE001
        out["build"] = f"crashed ({type(exc).__name__})"
    out["build_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    out["build_rss_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)
    print(json.dumps(out), flush=True)


# ============================================================================================ parent


def run_case(tree: Path, case: str, timeout: float, memory_mb: int | None) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), HOSTILE_TREE="new" if tree == REPO else "old")
    code = f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import hostile_input; hostile_input.child({case!r})"

    def limit() -> None:
        if memory_mb:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limit, cwd=str(tree))
        lines, status = proc.stdout.splitlines(), f"exit {proc.returncode}"
        stderr = proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        lines, status, stderr = out.splitlines(), f"killed after {timeout:.0f} s", ""
    result: dict[str, Any] = {"case": case, "status": status, "wall_s": round(time.perf_counter() - t0, 2)}
    for line in lines:
        if line.startswith("{"):
            result.update(json.loads(line))
    if "build" not in result:
        result["build"] = status if "admission" in result else "-"
        if "MemoryError" in stderr:
            result["build"] = "MemoryError"
    if "admission" not in result:
        result["admission"] = status
        if "MemoryError" in stderr:
            result["admission"] = "MemoryError"
    return result


def export_old(dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "webhook"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def fmt(r: dict[str, Any]) -> str:
    adm = f"{r.get('admission')} {r.get('admission_ms', '-')} ms +{r.get('admission_rss_mb', '-')} MB"
    build = r.get("build", "-")
    if "build_ms" in r:
        ms = r["build_ms"]
        build += (f" {ms:.2f} ms" if ms < 1000 else f" {ms / 1000:.1f} s") + f" +{r.get('build_rss_mb')} MB"
    return f"{adm:<38} | {build}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=list(cases()))
    ap.add_argument("--old-timeout", type=float, default=90.0)
    ap.add_argument("--old-memory-mb", type=int, default=1500)
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                         f"hostile-input-{_dt.date.today():%Y%m%d}.json"))
    args = ap.parse_args()
    results: dict[str, Any] = {"old_commit": OLD_COMMIT, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="llmaz-old-") as tmp:
        old = None if args.skip_old else export_old(Path(tmp))
        print(f"{'case':<20} {'tree':<4} admission (decision, time, RSS growth) | reconciler build")
        for case in args.cases:
            new = run_case(REPO, case, 60.0, None)
            print(f"{case:<20} new  {fmt(new)}", flush=True)
            entry = {"new": new}
            if old is not None:
                before = run_case(old, case, args.old_timeout, args.old_memory_mb)
                print(f"{'':<20} old  {fmt(before)}", flush=True)
                entry["old"] = before
            results["cases"][case] = entry
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    ok = all(e["new"].get("admission") == "denied" and e["new"].get("admission_ms", 1e9) < 100
             and e["new"].get("admission_rss_mb", 1e9) < 10 for c, e in results["cases"].items() if c != "benign")
    print("targets (denied in < 100 ms, < 10 MB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
