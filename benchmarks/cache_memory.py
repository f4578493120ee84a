"""Memory of a replica's caches with many Playgrounds, on a real control plane (etcd + kube-apiserver).

    python benchmarks/cache_memory.py -n 10000 --namespaces 500 --opted-in 50 --baseline 853c4a9

1. starts a ``tests.integration.controlplane.ControlPlane`` with the upstream CRDs;
2. creates ``--namespaces`` namespaces, ``--opted-in`` of them labelled ``serverless.llmaz.io/enabled=true``, and
   ``-n`` Playgrounds spread evenly over them, each as ``kubectl apply`` leaves it (a
   ``kubectl.kubernetes.io/last-applied-configuration`` copy of itself, the server's managedFields), with a
   realistic spec (``benchmarks/bodies.py``);
3. for each variant, in a child process of its own, starts the caches of ``Controller`` against it, waits until
   they are synced, collects garbage and reports VmRSS (and the RSS of the same child before the caches):
   - ``before``: the ``--baseline`` commit's ``Controller.run_informers`` (what every replica ran);
   - ``controller``: this tree's, as ``serve --role controller`` runs them;
   - ``admission``: this tree's ``run_informers(admission_only=True)``, as ``serve --role admission`` runs them.
   No reconcile workers run: the figure is the caches, not KEDA objects being written.
Writes ``benchmarks/results/cache-memory-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import mib  # noqa: E402

# Run with the webhook code of the tree measured (PYTHONPATH); ``measure`` comes from this tree's benchmarks/.
CHILD = r'''
import asyncio, gc, json, sys, time
sys.path.append(sys.argv[3])
from measure import rss_kib as rss
async def main(kubeconfig, admission_only):
    from webhook.admission import Brain
    from webhook.controller.reconciler import Controller
    from webhook.kube import Kube
    kube = Kube.from_kubeconfig(kubeconfig)
    ctl = Controller(kube, Brain(), namespace="llmaz-serverless-system", policy_configmap=None)
    gc.collect()
    before = rss()
    stop = asyncio.Event()
    kw = {"admission_only": True} if admission_only else {}
    task = asyncio.create_task(ctl.run_informers(stop, **kw))
    t = time.monotonic()
    informers = ctl.admission_informers if admission_only else ctl.core_informers
    while not all(i.synced.is_set() for i in informers):
        await asyncio.sleep(0.1)
    seconds = time.monotonic() - t
    await asyncio.sleep(2)
    gc.collect()
    out = {"rss_before_kb": before, "rss_kb": rss(), "sync_s": round(seconds, 2),
           "cached": {i.name: len(i.cache) for i in ctl.informers}}
    stop.set()
    await task
    await kube.close()
    print(json.dumps(out))
asyncio.run(main(sys.argv[1], sys.argv[2] == "1"))
'''


def playground(i: int, ns: str) -> dict[str, Any]:
    import random

    import bodies

    obj = bodies.small_playground(random.Random(i), i)
    obj["metadata"] = {"name": f"pg-{i:05d}", "namespace": ns, "labels": obj["metadata"]["labels"],
                       "annotations": dict(obj["metadata"]["annotations"])}
    applied = json.dumps(obj, separators=(",", ":"))
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = applied
    return obj


def measure(root: Path, kubeconfig: Path, admission_only: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-c", CHILD, str(kubeconfig), "1" if admission_only else "0",
                          str(ROOT / "benchmarks")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


async def populate(cp: Any, n: int, namespaces: int, opted_in: int) -> float:
    from webhook import constants as C
    from webhook.kube import NAMESPACES, PLAYGROUNDS, Kube

    kube = Kube.from_kubeconfig(cp.kubeconfig)
    try:
        await kube.create(NAMESPACES, {"metadata": {"name": "llmaz-serverless-system"}})
        names = [f"mem-{i:03d}" for i in range(namespaces)]
        sem = asyncio.Semaphore(32)

        async def ns(i: int, name: str) -> None:
            async with sem:
                labels = {C.NAMESPACE_LABEL: "true"} if i < opted_in else {}
                await kube.create(NAMESPACES, {"metadata": {"name": name, "labels": labels}})

        await asyncio.gather(*(ns(i, name) for i, name in enumerate(names)))

        async def make(i: int) -> None:
            async with sem:
                target = names[i % namespaces]
                await kube.create(PLAYGROUNDS, playground(i, target), target)

        t = time.monotonic()
        await asyncio.gather(*(make(i) for i in range(n)))
        return time.monotonic() - t
    finally:
        await kube.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--namespaces", type=int, default=500)
    p.add_argument("--opted-in", type=int, default=50)
    p.add_argument("--baseline", default="853c4a9", help="commit to compare with ('' to skip)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from tests.integration.controlplane import ControlPlane, crd_paths

    import oldtree

    workdir = Path(tempfile.mkdtemp(prefix="cache-memory-"))
    cp = ControlPlane(workdir, with_controller_manager=False, crds=crd_paths())
    cp.start()
    try:
        created_s = asyncio.run(populate(cp, args.n, args.namespaces, args.opted_in))
        runs = {}
        if args.baseline:
            runs[f"before ({args.baseline})"] = measure(oldtree.extract(args.baseline), cp.kubeconfig, False)
        runs["controller"] = measure(ROOT, cp.kubeconfig, False)
        runs["admission"] = measure(ROOT, cp.kubeconfig, True)
    finally:
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    one = playground(0, "mem-000")
    data = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "playgrounds": args.n, "namespaces": args.namespaces, "opted_in": args.opted_in,
            "playground_json_bytes": len(json.dumps(one)), "create_s": round(created_s, 1), "runs": runs}
    out = args.out or ROOT / "benchmarks" / "results" / f"cache-memory-{_dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    print("| variant | RSS before caches | RSS with caches synced | caches | sync |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {mib(r['rss_before_kb']):.1f} MiB | {mib(r['rss_kb']):.1f} MiB | "
              f"{r['cached']} | {r['sync_s']} s |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
