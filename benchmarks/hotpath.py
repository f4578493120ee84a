"""In-process cost of one admission, step by step (no network, no TLS): decode, parse, rules + patch, encode.

    python benchmarks/hotpath.py [--repeat 5] [--json out.json] [--root DIR]

Each step is timed over many iterations and the best of ``--repeat`` runs is kept (least disturbed by other
processes on the machine). This is the number the profile-driven optimisations move; the end-to-end benchmark
(benchmarks/admission.py) adds TLS, HTTP and the event loop on top.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bodies  # noqa: E402

ITERATIONS = {"create": 4000, "update": 60}


def best_of(fn: Callable[[], Any], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def measure(workload: str, repeat: int) -> dict[str, float]:
    from webhook.admission import Brain
    from webhook.review import AdmissionRequest

    raw = bodies.body(workload)
    n = ITERATIONS[workload]
    brain = Brain()
    review = json.loads(raw)
    req = AdmissionRequest.from_review(review)
    result = brain.mutate(req)
    assert result.allowed and result.patch, result

    decode = best_of(lambda: json.loads(raw), n, repeat)
    parse = best_of(lambda: AdmissionRequest.from_review(review), n, repeat)
    rules = best_of(lambda: brain.mutate(req), n, repeat)
    encode = best_of(lambda: json.dumps(result.to_review(req.uid, req.api_version), separators=(",", ":")),
                     n, repeat)
    total = decode + parse + rules + encode
    return {"body_bytes": len(raw), "decode_us": decode * 1e6, "parse_us": parse * 1e6, "rules_us": rules * 1e6,
            "encode_us": encode * 1e6, "total_us": total * 1e6, "per_core_per_s": 1 / total}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--root", default=str(ROOT),
                   help="source tree whose webhook package is measured (e.g. an export of an older commit)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.root).resolve()))
    out = {"python": platform.python_version(), "workloads": {w: measure(w, args.repeat) for w in ITERATIONS}}
    print("| workload | body | decode | parse | rules + patch | encode | total | admissions/s (one core, "
          "no HTTP) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w, m in out["workloads"].items():
        print(f"| {w} | {m['body_bytes'] / 1000:.1f} KB | {m['decode_us']:.0f} µs | {m['parse_us']:.1f} µs | "
              f"{m['rules_us']:.0f} µs | {m['encode_us']:.1f} µs | {m['total_us']:.0f} µs | "
              f"{m['per_core_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
