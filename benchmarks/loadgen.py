"""HTTPS load generator for admission webhooks (one process, aiohttp client, keep-alive connections).

Two modes:

- ``open``: requests are *scheduled* at a fixed rate (request i at t0 + i/rate) whatever the server does, and
  each latency is measured from its scheduled time to the last byte of the answer, so a server that falls behind
  is charged for the queueing it causes (no coordinated omission). ``client_lag`` reports how late the
  generator itself sent requests (its own event-loop delay), so the reader can tell generator noise from server
  latency.
- ``closed``: ``--connections`` workers send back to back (each waits for its answer): saturation throughput.

Each answer is checked: HTTP 200, an AdmissionReview whose ``response.uid`` is the request's uid and whose
``allowed`` is true (bodies are pre-encoded with distinct uids). Anything else counts as an error.

Prints one JSON document on stdout. Used by benchmarks/admission.py and benchmarks/soak.py; run alone as e.g.::

    python benchmarks/loadgen.py --url https://127.0.0.1:9443/mutate --ca ca.crt --workload create \
        --mode open --rate 500 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bodies  # noqa: E402

VARIANTS = 32


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summary_ms(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    out = {f"p{p:g}": round(percentile(v, p) * 1000, 3) for p in (50, 90, 99, 99.9)}
    out["max"] = round(v[-1] * 1000, 3) if v else float("nan")
    out["mean"] = round(sum(v) / len(v) * 1000, 3) if v else float("nan")
    return out


def make_variants(workload: str, n: int = VARIANTS) -> list[tuple[bytes, str]]:
    """``n`` copies of the workload's body, each with its own uid (a same-length substitution)."""
    base = bodies.body(workload)
    uid = json.loads(base)["request"]["uid"]
    out = []
    for i in range(n):
        new_uid = uid[:-8] + f"{i:08x}"
        out.append((base.replace(uid.encode(), new_uid.encode(), 1), new_uid))
    return out


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.first_error = ""

    def error(self, what: str) -> None:
        self.errors += 1
        self.statuses[what] = self.statuses.get(what, 0) + 1
        if not self.first_error:
            self.first_error = what


async def one(session: aiohttp.ClientSession, url: str, body: bytes, uid: str, rec: Recorder,
              start: float, record: bool) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            data = await resp.read()
            status = resp.status
        end = loop.time()
        if not record:
            return
        if status != 200:
            rec.error(f"http {status}")
            return
        out = json.loads(data)
        r = out.get("response") or {}
        if r.get("uid") != uid or r.get("allowed") is not True:
            rec.error("bad review: " + data[:300].decode(errors="replace"))
            return
        rec.statuses["200"] = rec.statuses.get("200", 0) + 1
        rec.latencies.append(end - start)
    except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
        if record:
            rec.error(f"{type(exc).__name__}: {exc}"[:200])


async def open_loop(session: aiohttp.ClientSession, url: str, variants: list[tuple[bytes, str]], rate: float,
                    duration: float, warmup: float) -> tuple[Recorder, float]:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    tasks: set[asyncio.Task] = set()
    total = int((warmup + duration) * rate)
    n_warm = int(warmup * rate)
    t0 = loop.time() + 0.05
    i = 0
    while i < total:
        now = loop.time()
        # Send everything that is due (the loop may wake late under load: those requests are charged).
        while i < total and t0 + i / rate <= now:
            body, uid = variants[i % len(variants)]
            scheduled = t0 + i / rate
            record = i >= n_warm
            if record:
                rec.lags.append(now - scheduled)
            t = loop.create_task(one(session, url, body, uid, rec, scheduled, record))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    measured_start = t0 + n_warm / rate
    if tasks:
        await asyncio.wait(set(tasks), timeout=60)
    elapsed = max(loop.time() - measured_start, duration)
    return rec, elapsed


async def closed_loop(session: aiohttp.ClientSession, url: str, variants: list[tuple[bytes, str]],
                      connections: int, duration: float, warmup: float) -> tuple[Recorder, float]:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker(w: int) -> None:
        k = w
        while True:
            t = loop.time()
            if t >= stop_at:
                return
            body, uid = variants[k % len(variants)]
            k += connections
            await one(session, url, body, uid, rec, t, t >= measure_from)

    await asyncio.gather(*(worker(w) for w in range(connections)))
    return rec, loop.time() - measure_from


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=args.ca)
    variants = make_variants(args.workload)
    limit = args.connections
    connector = aiohttp.TCPConnector(ssl=ctx, limit=limit, limit_per_host=limit, keepalive_timeout=120)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open the keep-alive connections (TLS handshakes) before anything is measured.
        pre = Recorder()
        await asyncio.gather(*(one(session, args.url, *variants[i % len(variants)], pre, 0.0, False)
                               for i in range(limit)))
        t_cpu = time.process_time()
        if args.mode == "open":
            rec, elapsed = await open_loop(session, args.url, variants, args.rate, args.duration, args.warmup)
        else:
            rec, elapsed = await closed_loop(session, args.url, variants, args.connections, args.duration,
                                             args.warmup)
        cpu = time.process_time() - t_cpu
    ok = len(rec.latencies)
    out: dict[str, Any] = {
        "workload": args.workload, "mode": args.mode, "url": args.url, "body_bytes": len(variants[0][0]),
        "connections": args.connections, "duration_s": round(elapsed, 3),
        "offered_rate": args.rate if args.mode == "open" else None,
        "ok": ok, "errors": rec.errors, "statuses": rec.statuses, "first_error": rec.first_error,
        "throughput": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": summary_ms(rec.latencies),
        "loadgen_cpu_s": round(cpu, 2),
    }
    if args.mode == "open":
        out["client_lag_ms"] = summary_ms(rec.lags)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True, help="CA bundle that signed the server's certificate")
    p.add_argument("--workload", choices=sorted(bodies.WORKLOADS), default="create")
    p.add_argument("--mode", choices=("open", "closed"), default="open")
    p.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (closed: workers)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds sent before measuring")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
