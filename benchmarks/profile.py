"""Profile our webhook server on a saturation run with py-spy (``pip install py-spy``).

    python benchmarks/profile.py --workload create            # or update
    python benchmarks/profile.py --ours-root /tmp/before      # an export of an older tree, for before/after

Starts ``python -m webhook serve`` pinned to core 1, drives it with ``benchmarks/loadgen.py`` in closed loop from
core 0, samples it with ``py-spy record`` (100 Hz) for the measured seconds and prints the share of samples
(inclusive) of the parts of an admission: TLS and HTTP, JSON decode, the rules, the JSON Patch diff, copies,
encoding, metrics. ``--folded FILE`` keeps the raw folded stacks (flame graph input).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from admission import LOADGEN_CORE, Ours, make_tls, pinned  # noqa: E402

# (label, a substring of a folded frame, a substring that must not be in the stack): inclusive shares.
PARTS = [
    ("admission handler (all of _admit)", "_admit (webhook/server.py", None),
    ("  JSON decode of the body", "loads (json/__init__.py", None),
    ("  Brain.mutate (rules + patch)", "Brain.mutate (webhook/admission.py", None),
    ("    settings.analyze", "analyze (webhook/settings.py", None),
    ("    copy.deepcopy", "deepcopy (copy.py", None),
    ("    JSON Patch diff (jsonpatch)", "(jsonpatch.py", None),
    ("  response encoding (json.dumps)", "dumps (json/__init__.py", "Brain.mutate"),
    ("  metrics", "observe_admission (webhook/metrics.py", None),
    ("TLS (asyncio sslproto)", "(asyncio/sslproto.py", None),
    ("aiohttp and asyncio outside the handler", "", "_admit (webhook/server.py"),
]


def summarize(folded: Path) -> list[tuple[str, float]]:
    total = 0
    counts: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        for label, needle, exclude in PARTS:
            if needle in stack and not (exclude and exclude in stack):
                counts[label] += int(n)
    return [(label, 100 * counts[label] / max(1, total)) for label, _, _ in PARTS]


def print_table(folded: Path) -> None:
    print("| part | share of samples |")
    print("|---|---:|")
    for label, share in summarize(folded):
        depth = (len(label) - len(label.lstrip())) // 2
        print(f"| {'… ' * depth}{label.strip()} | {share:.1f}% |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("create", "update"), default="create")
    p.add_argument("--connections", type=int, default=0, help="default: 16 for create, 4 for update")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--ours-root", default=str(ROOT))
    p.add_argument("--folded", help="keep the folded stacks here")
    p.add_argument("--summarize", metavar="FOLDED", help="only print the table of an earlier --folded file")
    args = p.parse_args()
    if args.summarize:
        print_table(Path(args.summarize))
        return 0
    if not shutil.which("py-spy"):
        p.error("py-spy is not installed (pip install py-spy)")
    conns = args.connections or (16 if args.workload == "create" else 4)

    workdir = Path(tempfile.mkdtemp(prefix="llmaz-profile-"))
    folded = Path(args.folded) if args.folded else workdir / "profile.folded"
    make_tls(workdir)
    server = Ours(workdir, Path(args.ours_root).resolve())
    server.start()
    try:
        load = subprocess.Popen(pinned(LOADGEN_CORE, [
            sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", server.url, "--ca",
            str(workdir / "ca.crt"), "--workload", args.workload, "--mode", "closed", "--connections", str(conns),
            "--duration", str(args.seconds + 2), "--warmup", "1"]), cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        spy = subprocess.run(["py-spy", "record", "-p", str(server.pid), "-d", str(int(args.seconds)), "-r", "100",
                              "-f", "raw", "-o", str(folded)], capture_output=True, text=True)
        out, _ = load.communicate(timeout=args.seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {spy.stderr[-1000:]}")
    finally:
        server.stop()
    result = json.loads(out)
    print(f"{args.workload}, {conns} connections: {result['throughput']:.0f} admissions/s while sampled "
          f"(py-spy pauses the process to sample: lower than unprofiled)")
    print_table(folded)
    if not args.folded:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
