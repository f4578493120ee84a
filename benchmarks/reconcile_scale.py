"""Reconciler at scale against a real control plane (etcd + kube-apiserver on loopback).

    python benchmarks/reconcile_scale.py                 # N=1000 Playgrounds over 4 opted-in namespaces
    python benchmarks/reconcile_scale.py -n 200 --namespaces 2 --timeout 300

What it does:

1. starts a ``tests.integration.controlplane.ControlPlane`` with the upstream CRDs (needs
   ``bash tests/integration/tools/provide.sh`` once);
2. creates N Playgrounds across a few namespaces labelled ``serverless.llmaz.io/enabled=true``;
3. starts the controller (``run_controller``, leader election on) **in a child process**, so its memory is
   measured alone (VmRSS from /proc/self/status, reported by the child);
4. measures: caches synced, initial sync (every Playground has its ScaledObject + InterceptorRoute), writes
   made, RSS after imports / in steady state, a full resync (must write nothing), and the latency of one
   changed workload (annotation edit -> ScaledObject updated, seen through the API);
5. prints a table. Every phase is bounded by ``--timeout`` (seconds, total).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ============================================================================================ child


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **data}), flush=True)


async def child_main(args: argparse.Namespace) -> None:
    emit("started", rss_kb=rss_kb())
    import logging

    from webhook.admission import Brain
    from webhook.kube import Kube
    from webhook.controller.reconciler import Controller, run_controller

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    emit("imported", rss_kb=rss_kb())
    kube = Kube.from_kubeconfig(args.kubeconfig)
    brain = Brain()
    stop = asyncio.Event()
    ctl = Controller(kube, brain, namespace=args.system_namespace, policy_configmap="llmaz-serverless-policy",
                     identity="bench", resync=3600, workers=args.workers)
    t0 = time.monotonic()
    task = asyncio.create_task(run_controller(kube, brain, namespace=args.system_namespace,
                                              policy_configmap="llmaz-serverless-policy", leader_election=True,
                                              identity="bench", stop=stop, controller=ctl))

    async def idle() -> None:
        while True:
            await asyncio.sleep(0.05)
            if len(ctl.queue) == 0 and not ctl.queue._processing:
                await asyncio.sleep(0.2)
                if len(ctl.queue) == 0 and not ctl.queue._processing:
                    return

    await ctl.synced.wait()
    emit("caches_synced", seconds=time.monotonic() - t0,
         sizes={inf.name: len(inf.cache) for inf in ctl.informers})
    while len(ctl.managed) < args.expect:
        await asyncio.sleep(0.02)
    emit("initial_sync", seconds=time.monotonic() - t0, writes=ctl.write_count, managed=len(ctl.managed),
         reconciles=ctl.reconcile_count)
    await idle()
    await asyncio.sleep(2)
    emit("steady", rss_kb=rss_kb(), writes=ctl.write_count, reconciles=ctl.reconcile_count)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        if line == "resync":
            w, n = ctl.write_count, ctl.reconcile_count
            t = time.monotonic()
            ctl.enqueue_all()
            await idle()
            emit("resync", seconds=time.monotonic() - t - 0.2, writes=ctl.write_count - w,
                 reconciles=ctl.reconcile_count - n, rss_kb=rss_kb())
        elif line == "rss":
            emit("rss", rss_kb=rss_kb(), writes=ctl.write_count)
    stop.set()
    await asyncio.wait_for(task, 20)
    await kube.close()
    emit("stopped")


# ============================================================================================ parent


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: dict[str, dict[str, Any]] = {}

    async def wait(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while name not in self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"controller did not report {name!r} in time")
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"controller exited (code {await self.proc.wait()}) before {name!r}")
            ev = json.loads(line)
            self.events[ev["event"]] = ev
        return self.events.pop(name)

    async def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((cmd + "\n").encode())
        await self.proc.stdin.drain()


def playground(name: str) -> dict[str, Any]:
    return {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground", "metadata": {"name": name},
            "spec": {"modelClaim": {"modelName": "qwen-7b"}}}


async def parent_main(args: argparse.Namespace) -> list[tuple[str, str]]:
    from tests.integration.controlplane import ControlPlane, crd_paths
    from webhook import constants as C
    from webhook.kube import NAMESPACES, PLAYGROUNDS, SCALEDOBJECTS, INTERCEPTORROUTES, Kube, NotFound

    deadline = time.monotonic() + args.timeout
    rows: list[tuple[str, str]] = []
    workdir = Path(tempfile.mkdtemp(prefix="reconcile-scale-"))
    cp = ControlPlane(workdir, with_controller_manager=args.controller_manager, crds=crd_paths())
    await asyncio.to_thread(cp.start)
    child: Child | None = None
    kube = Kube.from_kubeconfig(cp.kubeconfig)
    try:
        rows.append(("control plane start", f"{cp.startup_seconds:.1f} s"))
        await kube.create(NAMESPACES, {"metadata": {"name": "llmaz-serverless-system"}})
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        for ns in namespaces:
            await kube.create(NAMESPACES, {"metadata": {"name": ns, "labels": {C.NAMESPACE_LABEL: "true"}}})

        sem = asyncio.Semaphore(32)
        names = [(namespaces[i % len(namespaces)], f"pg-{i:05d}") for i in range(args.n)]

        async def make(ns: str, name: str) -> None:
            async with sem:
                await kube.create(PLAYGROUNDS, playground(name), ns)

        t = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(make(ns, n) for ns, n in names)), deadline - time.monotonic())
        rows.append((f"create {args.n} Playgrounds ({args.namespaces} namespaces)", f"{time.monotonic() - t:.1f} s"))

        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", "--kubeconfig", str(cp.kubeconfig),
            "--system-namespace", "llmaz-serverless-system", "--expect", str(args.n),
            "--workers", str(args.workers),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=2 ** 20)
        child = Child(proc)
        started = await child.wait("started", 30)
        imported = await child.wait("imported", 60)
        synced = await child.wait("caches_synced", deadline - time.monotonic())
        initial = await child.wait("initial_sync", deadline - time.monotonic())
        steady = await child.wait("steady", deadline - time.monotonic())

        sos = (await kube.list(SCALEDOBJECTS, label_selector=f"{C.LABEL_MANAGED_BY}={C.MANAGED_BY}")).items
        irs = (await kube.list(INTERCEPTORROUTES, label_selector=f"{C.LABEL_MANAGED_BY}={C.MANAGED_BY}")).items
        assert len(sos) == args.n and len(irs) == args.n, (len(sos), len(irs))

        rows.append(("controller: caches synced", f"{synced['seconds']:.2f} s"))
        rows.append(("controller: initial sync (all ScaledObjects + routes)",
                     f"{initial['seconds']:.2f} s ({initial['writes']} writes, {initial['reconciles']} reconciles)"))
        rows.append(("controller RSS after imports", f"{imported['rss_kb'] / 1024:.1f} MiB "
                     f"(interpreter alone {started['rss_kb'] / 1024:.1f} MiB)"))
        rows.append(("controller RSS steady state", f"{steady['rss_kb'] / 1024:.1f} MiB"))

        await child.send("resync")
        resync = await child.wait("resync", deadline - time.monotonic())
        rows.append((f"full resync of {args.n} workloads", f"{resync['seconds']:.2f} s, "
                     f"{resync['writes']} writes"))

        latencies = []
        for i in range(args.samples):
            ns, name = names[(i * 7919) % len(names)]
            want = 2 + i % 3
            t = time.monotonic()
            await kube.patch(PLAYGROUNDS, name, {"metadata": {"annotations": {C.ANN_MAX_REPLICAS: str(want)}}}, ns)
            while True:
                try:
                    so = await kube.get(SCALEDOBJECTS, name, ns)
                    if so["spec"]["maxReplicaCount"] == want:
                        break
                except NotFound:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("changed workload not reconciled in time")
                await asyncio.sleep(0.002)
            latencies.append(time.monotonic() - t)
        rows.append((f"one changed workload -> ScaledObject updated ({args.samples} samples)",
                     f"median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"))
        await child.send("rss")
        end = await child.wait("rss", 30)
        rows.append(("controller RSS at the end", f"{end['rss_kb'] / 1024:.1f} MiB"))
        await child.send("quit")
        await child.wait("stopped", 30)
        await asyncio.wait_for(proc.wait(), 30)
        child = None
    finally:
        if child is not None and child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()
        await kube.close()
        await asyncio.to_thread(cp.stop)
    shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1000, help="Playgrounds to create (default 1000)")
    p.add_argument("--namespaces", type=int, default=4, help="opted-in namespaces (default 4)")
    p.add_argument("--workers", type=int, default=4, help="reconcile workers (default 4)")
    p.add_argument("--samples", type=int, default=10, help="changed-workload latency samples (default 10)")
    p.add_argument("--timeout", type=float, default=600, help="bound on the whole run, seconds (default 600)")
    p.add_argument("--controller-manager", action="store_true",
                   help="also run kube-controller-manager (more load on the API server, as in a cluster)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    p.add_argument("--system-namespace", help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        asyncio.run(child_main(args))
        return 0
    t = time.monotonic()
    rows = asyncio.run(parent_main(args))
    width = max(len(k) for k, _ in rows)
    print(f"\nreconcile_scale: N={args.n}, {args.namespaces} namespaces, {args.workers} workers, "
          f"{os.cpu_count()} CPUs, total {time.monotonic() - t:.0f} s")
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
