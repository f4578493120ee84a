"""Soak: our webhook under a steady load for minutes; errors must stay 0 and memory flat.

    python benchmarks/soak.py                 # 3 minutes, 300 CREATE/s + 5 large UPDATE/s
    python benchmarks/soak.py --minutes 1 --rate 300 --update-rate 0

Loopback only. The server runs as ``python -m webhook serve`` pinned to core 1; the load generators
(``benchmarks/loadgen.py``, open loop) are pinned to core 0. The server's RSS is sampled every ``--sample``
seconds from ``/proc/<pid>/status``. Prints a markdown summary and writes
``benchmarks/results/soak-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from admission import (LOADGEN_CORE, RESULTS_DIR, Ours, machine, make_tls, pinned,  # noqa: E402
                       proc_cpu_seconds)
from measure import proc_status  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="soak length (default %(default)s)")
    p.add_argument("--rate", type=float, default=300.0, help="CREATE admissions per second (default %(default)s)")
    p.add_argument("--update-rate", type=float, default=5.0,
                   help="large UPDATE admissions (~520 KB bodies) per second on top; 0 disables (default %(default)s)")
    p.add_argument("--sample", type=float, default=10.0, help="RSS sampling period, seconds")
    p.add_argument("--out", help="results file (default benchmarks/results/soak-<date>.json)")
    args = p.parse_args()
    duration = args.minutes * 60

    workdir = Path(tempfile.mkdtemp(prefix="llmaz-soak-"))
    make_tls(workdir)
    server = Ours(workdir)
    server.start()
    samples: list[dict[str, Any]] = []
    generators: list[tuple[str, subprocess.Popen]] = []
    try:
        for workload, rate in (("create", args.rate), ("update", args.update_rate)):
            if rate <= 0:
                continue
            argv = [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", server.url,
                    "--ca", str(workdir / "ca.crt"), "--workload", workload, "--mode", "open", "--rate", str(rate),
                    "--duration", str(duration), "--warmup", "0", "--connections", "16"]
            generators.append((workload, subprocess.Popen(pinned(LOADGEN_CORE, argv), cwd=ROOT,
                                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                          text=True)))
        t0 = time.monotonic()
        cpu0 = proc_cpu_seconds(server.pid)
        next_sample = t0
        while any(g.poll() is None for _, g in generators):
            now = time.monotonic()
            if now >= next_sample:
                st = proc_status(server.pid)
                samples.append({"t_s": round(now - t0, 1), "rss_kib": st.get("VmRSS", 0),
                                "cpu_pct": round(100 * (proc_cpu_seconds(server.pid) - cpu0) / max(1e-9, now - t0),
                                                 1) if now > t0 else 0.0})
                print(f"   t={now - t0:6.1f}s  RSS {st.get('VmRSS', 0) / 1024:6.1f} MiB", file=sys.stderr,
                      flush=True)
                next_sample += args.sample
            if now - t0 > duration + 180:
                raise RuntimeError("load generators did not finish in time")
            time.sleep(0.2)
        st = proc_status(server.pid)
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_kib": st.get("VmRSS", 0)})
        loads = {}
        for workload, g in generators:
            out, err = g.communicate()
            if g.returncode != 0:
                raise RuntimeError(f"load generator ({workload}) failed: {err[-2000:]}")
            loads[workload] = json.loads(out)
        alive = server.proc is not None and server.proc.poll() is None
        peak = proc_status(server.pid).get("VmHWM", 0)
    finally:
        for _, g in generators:
            if g.poll() is None:
                g.kill()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    # "first" is the first sample under load (t >= one period): the idle RSS before it is reported apart.
    rss = [s["rss_kib"] for s in samples if s["t_s"] >= args.sample - 0.5] or [samples[-1]["rss_kib"]]
    errors = sum(r["errors"] for r in loads.values())
    data = {
        "benchmark": "soak", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]), "machine": machine(),
        "server_command": server.command, "minutes": args.minutes, "server_alive_at_end": alive,
        "loads": loads, "errors": errors,
        "rss_mib": {"idle": round(samples[0]["rss_kib"] / 1024, 1), "first": round(rss[0] / 1024, 1),
                    "last": round(rss[-1] / 1024, 1),
                    "max": round(max(rss) / 1024, 1), "peak_hwm": round(peak / 1024, 1)},
        "samples": samples,
    }
    out = Path(args.out) if args.out else RESULTS_DIR / f"soak-{_dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")

    print("| load | offered | sent & answered | errors | p50 | p99 | p99.9 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload, r in loads.items():
        lat = r["latency_ms"]
        print(f"| {workload} ({r['body_bytes'] / 1000:.1f} KB) | {r['offered_rate']:g}/s | {r['ok']} | {r['errors']} "
              f"| {lat['p50']:.2f} ms | {lat['p99']:.2f} ms | {lat['p99.9']:.2f} ms | {lat['max']:.2f} ms |")
    r = data["rss_mib"]
    print(f"\nRSS (sampled every {args.sample:g} s): idle {r['idle']} MiB; under load first {r['first']} MiB, "
          f"last {r['last']} MiB, max {r['max']} MiB "
          f"(VmHWM {r['peak_hwm']} MiB); errors {errors}; server alive at the end: {alive}")
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if errors == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
