"""A normal admission's latency while hostile (slow-to-evaluate) requests run in parallel, old vs current server.

    python benchmarks/hostile_admission.py --hostile 4 --duration 30 --baseline 853c4a9

The hostile request: a Playground CREATE whose triggers annotation lists ``--presets`` (4,000) cron presets,
about 258 KB, which the rules take seconds to evaluate when nothing bounds them. ``--hostile`` senders each post
it back to back on a keep-alive connection of their own; one prober posts an ordinary Playground CREATE every
50 ms on its own keep-alive connection (the way the API server reuses connections) and records each latency.
A first phase without hostile senders gives the quiet figure. Both servers (``--baseline`` commit unpacked into
a temp dir, then this tree) run one after the other in the same run with their defaults
(``serve --no-reconcile --cert-mode files``). Writes ``benchmarks/results/hostile-admission-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import json
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import admission as adm  # noqa: E402
import bodies  # noqa: E402
import oldtree  # noqa: E402
from measure import elapsed_ms, latency_summary, mib, proc_status  # noqa: E402

ANN = "serverless.llmaz.io/"


def hostile_body(presets: int) -> bytes:
    import random

    obj = bodies.small_playground(random.Random(3), 999)
    days = ["MON-FRI", "SAT", "SUN", "MON", "TUE"]
    lines = [f'- {{type: cron, start: "{i % 60} {i % 24} * * {days[i % 5]}", end: "{(i + 7) % 60} {(i + 1) % 24} '
             f'* * {days[i % 5]}"}}' for i in range(presets)]
    obj["metadata"]["annotations"][ANN + "triggers"] = "\n".join(lines)
    return json.dumps(bodies.review(obj, operation="CREATE", uid="hostile")).encode()


def post(conn: http.client.HTTPSConnection, body: bytes) -> dict[str, Any]:
    conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    out = json.loads(data)["response"]
    return {"status": resp.status, "allowed": out["allowed"], "message": (out.get("status") or {}).get("message", "")}


def connect(port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", port, context=ctx, timeout=60)


def hostile_loop(port: int, ctx: ssl.SSLContext, body: bytes, stop: threading.Event, out: list[dict[str, Any]]) -> None:
    conn = connect(port, ctx)
    while not stop.is_set():
        t = time.perf_counter()
        try:
            r = post(conn, body)
        except Exception as exc:  # noqa: BLE001
            r = {"status": 0, "allowed": None, "message": f"{type(exc).__name__}: {exc}"}
            conn.close()
            conn = connect(port, ctx)
        r["ms"] = elapsed_ms(t)
        out.append(r)
    conn.close()


def probe(port: int, ctx: ssl.SSLContext, duration: float) -> list[float]:
    conn = connect(port, ctx)
    body = bodies.create_body(seed=11)
    post(conn, body)  # warm the connection
    lat = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t = time.perf_counter()
        r = post(conn, body)
        assert r["status"] == 200 and r["allowed"], r
        lat.append(elapsed_ms(t))
        time.sleep(0.05)
    conn.close()
    return lat


def run_one(label: str, root: Path, workdir: Path, args: argparse.Namespace, ctx: ssl.SSLContext,
            body: bytes) -> dict[str, Any]:
    server = adm.Ours(workdir, root=root)
    server.name = label
    server.log = workdir / f"{label.split()[0]}.log"
    server.start()
    try:
        quiet = latency_summary(probe(server.port, ctx, args.quiet))
        stop = threading.Event()
        hostile: list[dict[str, Any]] = []
        threads = [threading.Thread(target=hostile_loop, args=(server.port, ctx, body, stop, hostile), daemon=True)
                   for _ in range(args.hostile)]
        rss0 = proc_status(server.pid)["VmRSS"]
        for t in threads:
            t.start()
        time.sleep(1.0)
        loaded = latency_summary(probe(server.port, ctx, args.duration))
        stop.set()
        for t in threads:
            t.join(120)
        rss = proc_status(server.pid)
    finally:
        server.stop()
    answers: dict[str, int] = {}
    for h in hostile:
        kind = ("allowed" if h["allowed"] else "deadline" if "longer than" in h["message"]
                else "denied" if h["allowed"] is False else "transport error")
        answers[kind] = answers.get(kind, 0) + 1
    hs = [h["ms"] for h in hostile]
    return {"server": label, "quiet": quiet, "with_hostile": loaded, "hostile_senders": args.hostile,
            "hostile_answers": answers, "hostile_latency": latency_summary(hs) if hs else None,
            "rss_before_hostile_mb": mib(rss0), "rss_hwm_mb": mib(rss.get("VmHWM", 0))}


def report(runs: list[dict[str, Any]]) -> str:
    lines = ["| server | quiet p50 / p99 | with hostile p50 / p99 / max | hostile answers | hostile latency p50 |",
             "|---|---|---|---|---|"]
    for r in runs:
        q, w, h = r["quiet"], r["with_hostile"], r["hostile_latency"] or {}
        lines.append(f"| {r['server']} | {q['p50_ms']} / {q['p99_ms']} ms | {w['p50_ms']} / {w['p99_ms']} / "
                     f"{w['max_ms']} ms (n={w['n']}) | {r['hostile_answers']} | {h.get('p50_ms')} ms |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hostile", type=int, default=4)
    p.add_argument("--presets", type=int, default=4000)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--quiet", type=float, default=5.0)
    p.add_argument("--baseline", default="853c4a9", help="commit to compare with ('' to skip)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hostile-"))
    adm.make_tls(workdir)
    ctx = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
    body = hostile_body(args.presets)
    runs = []
    if args.baseline:
        runs.append(run_one(f"before ({args.baseline})", oldtree.extract(args.baseline), workdir, args, ctx, body))
    runs.append(run_one("current", ROOT, workdir, args, ctx, body))
    data = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": adm.machine(),
            "hostile_body_bytes": len(body), "runs": runs}
    out = args.out or adm.RESULTS_DIR / f"hostile-admission-{_dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"hostile body: {len(body)} bytes")
    print(report(runs))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
