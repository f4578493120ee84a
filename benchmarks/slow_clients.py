"""Slow clients: N connections that never finish a request, against the old and the current server.

    python benchmarks/slow_clients.py --clients 1000 --baseline 853c4a9

For each server (``--baseline`` commit unpacked into a temp dir, then this tree), one after the other in the same
run: start ``python -m webhook serve --no-reconcile --cert-mode files`` (its defaults otherwise), open
``--clients`` connections as fast as the machine allows, and let each hang:

- ``tls``  : TLS handshake done, then half a request head (``POST /mutate HTTP/1.1`` + one header) and silence;
- ``tcp``  : TCP connect, then silence (the TLS handshake never starts).

Half the clients are of each kind. Recorded: the server's RSS before, its peak while the clients hang (sampled
every 0.25 s), after ``--watch`` seconds; how many connections the server closed and when (a client sees EOF or
a reset; a connection refused at once counts as closed at 0 s); and one ordinary admission sent on a fresh
connection 5 s into the flood (status and latency). Writes ``benchmarks/results/slow-clients-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import admission as adm  # noqa: E402
import bodies  # noqa: E402
import oldtree  # noqa: E402
from measure import Sampler, descendants, elapsed_ms, mib, rss_kib  # noqa: E402


async def hang(port: int, ctx: ssl.SSLContext, kind: str, t0: float, watch: float) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "connected": False, "closed_at": None}
    try:
        if kind == "tls":
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=watch), watch)
            writer.write(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\n")
            await writer.drain()
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), watch)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        out["closed_at"] = time.monotonic() - t0
        return out
    out["connected"] = True
    try:
        remaining = t0 + watch - time.monotonic()
        data = await asyncio.wait_for(reader.read(1), max(0.1, remaining))
        if data == b"" or data:
            out["closed_at"] = time.monotonic() - t0
    except asyncio.TimeoutError:
        pass
    except (OSError, ssl.SSLError):
        out["closed_at"] = time.monotonic() - t0
    finally:
        writer.transport.abort()
    return out


def helpers_rss_mb(pid: int) -> float:
    """RSS of the server's helper processes (the admission worker and its forkserver), summed."""
    return mib(sum(rss_kib(k) for k in descendants(pid)))


def one_admission(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    body = bodies.create_body(seed=7)
    req = urllib.request.Request(f"https://localhost:{port}/mutate", data=body,
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=20, context=ctx) as r:
            status = r.status
            allowed = json.loads(r.read())["response"]["allowed"]
    except Exception as exc:  # noqa: BLE001 - the figure is whether it worked
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200], "ms": round(elapsed_ms(t), 1)}
    return {"ok": status == 200 and allowed, "ms": round(elapsed_ms(t), 1)}


async def flood(port: int, ctx: ssl.SSLContext, n: int, watch: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t0 = time.monotonic()
    tasks = [asyncio.create_task(hang(port, ctx, "tls" if i % 2 == 0 else "tcp", t0, watch)) for i in range(n)]
    await asyncio.sleep(5)
    legit = await asyncio.to_thread(one_admission, port, ctx)
    legit["at_s"] = round(time.monotonic() - t0, 1)
    return await asyncio.gather(*tasks), legit


def run_one(label: str, root: Path, workdir: Path, args: argparse.Namespace, ctx: ssl.SSLContext) -> dict[str, Any]:
    server = adm.Ours(workdir, root=root)
    server.name = label
    server.log = workdir / f"{label}.log"
    server.start()
    try:
        time.sleep(1.0)
        before = rss_kib(server.pid)
        helpers = helpers_rss_mb(server.pid)
        sampler = Sampler(server.pid)
        sampler.start()
        results, legit = asyncio.run(flood(server.port, ctx, args.clients, args.watch))
        after_watch = rss_kib(server.pid)
        sampler.stop.set()
        sampler.join()
    finally:
        server.stop()
    peak = max(rss for _, rss in sampler.samples)
    closed = sorted(r["closed_at"] for r in results if r["closed_at"] is not None)
    by_kind = {}
    for kind in ("tls", "tcp"):
        mine = [r for r in results if r["kind"] == kind]
        times = sorted(r["closed_at"] for r in mine if r["closed_at"] is not None)
        by_kind[kind] = {"clients": len(mine), "connected": sum(r["connected"] for r in mine),
                         "closed": len(times), "last_closed_s": round(times[-1], 1) if times else None}
    return {
        "server": label, "root": str(root), "clients": args.clients, "watch_s": args.watch,
        "rss_before_mb": mib(before), "rss_peak_mb": mib(peak), "rss_growth_peak_mb": mib(peak - before),
        "rss_after_watch_mb": mib(after_watch), "helper_processes_rss_mb": helpers,
        "closed": len(closed), "closed_within_30s": sum(1 for c in closed if c <= 30),
        "last_closed_s": round(closed[-1], 1) if closed else None,
        "by_kind": by_kind, "admission_during_flood": legit,
    }


def report(runs: list[dict[str, Any]]) -> str:
    lines = ["| server | clients | RSS before (+ helper processes) | peak growth | closed within 30 s | closed by end | "
             "last closed | admission during flood |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        legit = r["admission_during_flood"]
        lines.append(f"| {r['server']} | {r['clients']} | {r['rss_before_mb']} (+{r['helper_processes_rss_mb']}) MB | "
                     f"+{r['rss_growth_peak_mb']} MB | "
                     f"{r['closed_within_30s']} | {r['closed']} (of {r['clients']}, {r['watch_s']:.0f} s) | "
                     f"{r['last_closed_s']} s | {'ok' if legit['ok'] else 'FAILED'} {legit['ms']} ms |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--watch", type=float, default=40.0, help="seconds to keep watching (default %(default)s)")
    p.add_argument("--baseline", default="853c4a9", help="commit to compare with ('' to skip)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    adm.make_tls(workdir)
    ctx = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
    runs = []
    if args.baseline:
        runs.append(run_one(f"before ({args.baseline})", oldtree.extract(args.baseline), workdir, args, ctx))
    runs.append(run_one("current", ROOT, workdir, args, ctx))
    data = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": adm.machine(),
            "runs": runs}
    out = args.out or adm.RESULTS_DIR / f"slow-clients-{_dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(report(runs))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
