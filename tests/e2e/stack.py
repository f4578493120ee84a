"""The live scaling stack: every upstream component of the zero -> one -> zero chain, really running.

    kube-apiserver + etcd + kube-controller-manager   (tests.integration.controlplane, with aggregation on)
    kube-scheduler                                    places pods on nodes by their GPU requests
    kube-proxy (iptables) + cluster-DNS stand-in      Service routing and names (network.py)
    kwok + two fake GPU nodes                         node and pod status (manifests/kwok-stages.yaml)
    pod agent + model-server stand-ins                runs "containers", probes readiness (podagent.py)
    LeaderWorkerSet controller + its webhooks         LeaderWorkerSet -> pods
    llmaz manager                                     Playground -> Service -> LeaderWorkerSet
    KEDA operator + metrics adapter (APIService)      ScaledObject -> /scale (0 <-> 1) and HPA (1 <-> N)
    KEDA HTTP add-on interceptor + external scaler    holds requests at zero, pushes activation (addons.py)
    Prometheus                                        scrapes the stand-ins' vLLM metrics (addons.py)
    Redis                                             the job queue
    llmaz-serverless serve                            our webhook + reconciler, self-managed certificates

Everything binds inside the private network namespace that ``tests/e2e/run.sh`` makes (several upstream
listeners bind 0.0.0.0, and pods need routable non-loopback IPs: the pod CIDR is made local there). The
controllers run out of cluster with the admin kubeconfig; their flags are the ones each needs out of
cluster. Logs of every component are in ``<workdir>/logs``.
"""

from __future__ import annotations

import base64
import copy
import http.client
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.controlplane import (
    ControlPlane,
    ControlPlaneError,
    ControlPlaneUnavailable,
    _Proc,
    cache_dir,
    crd_paths,
    free_port,
)
from tests.integration.webhook_harness import shipped_webhook_configurations

from .addons import start_http_addon, start_prometheus
from .network import ClusterDNS, expose, start_kube_proxy
from .pki import StackPKI
from .podagent import PodAgent

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
MANIFESTS = HERE / "manifests"

POD_CIDR = "10.244.0.0/16"
OUR_NAMESPACE = "llmaz-serverless-system"
KEDA_NAMESPACE = "keda"
LLMAZ_NAMESPACE = "llmaz-system"
GPU_NODES = ("gpu-node-0", "gpu-node-1")
REDIS_PORT = 6379   # fixed: the namespace is private, and the user's manifests name this address
# Redis also listens on a non-loopback local address behind the Service queues/redis: a tenant's trigger may
# never name a loopback address (docs/security.md), so the manifests use redis.queues:6379, which the
# stack's policy lends to every namespace (manifests/policy.yaml).
REDIS_IP, REDIS_NS = "10.243.1.4", "queues"
STACK_BINARIES = ("kube-scheduler", "kube-proxy", "kubectl", "keda-operator", "keda-adapter", "llmaz-manager",
                  "lws-manager", "kwok", "redis-server", "keda-http-interceptor", "keda-http-scaler", "prometheus")
# Upstream CRDs besides the ones the integration tests use: KEDA's operator exits unless all six of its CRDs
# exist; the HTTP add-on's interceptor insists on httpscaledobjects.
EXTRA_CRD_DIRS = ("keda-extra", "http-add-on-extra")


def stack_binaries() -> dict[str, Path]:
    bin_dir = cache_dir() / "bin"
    found = {b: bin_dir / b for b in STACK_BINARIES}
    missing = [b for b, p in found.items() if not os.access(p, os.X_OK)]
    if missing:
        raise ControlPlaneUnavailable(
            f"live-stack binaries missing from {bin_dir}: {', '.join(missing)}. Provide them with:\n"
            "    bash tests/integration/tools/provide.sh stack\n"
            "(builds KEDA, its HTTP add-on, llmaz, LeaderWorkerSet, kwok, kube-scheduler, kube-proxy and kubectl from "
            "their Go modules and unpacks Redis and Prometheus from Debian's packages; about 15 minutes on a cold "
            "cache).")
    return found


def in_private_netns() -> bool:
    """True inside a network namespace of our own (not the machine's)."""
    try:
        return os.readlink("/proc/self/ns/net") != os.readlink("/proc/1/ns/net")
    except OSError:
        return os.environ.get("LLMAZ_SERVERLESS_E2E_NETNS") == "1"


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _get(host: str, port: int, path: str, tls: bool = False, timeout: float = 2) -> int:
    conn = (http.client.HTTPSConnection(host, port, context=_insecure(), timeout=timeout) if tls
            else http.client.HTTPConnection(host, port, timeout=timeout))
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def wait(what: str, timeout: float, probe: Callable[[], Any], proc: _Proc | None = None,
         interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.check_alive()
        try:
            value = probe()
            if value:
                return value
        except (OSError, ApiException):
            pass
        if time.monotonic() > deadline:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise ControlPlaneError(f"{what}: not within {timeout:.0f}s{tail}")
        time.sleep(interval)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class LiveStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.logs_dir = self.workdir / "logs"
        self.pki = StackPKI(self.workdir / "pki")
        self.bins = stack_binaries()
        crds = crd_paths() + sorted(p for d in EXTRA_CRD_DIRS for p in (cache_dir() / "crds" / d).glob("*.yaml"))
        self.front_proxy = self.pki.issue("front-proxy", common_name="front-proxy-client")
        self.cp = ControlPlane(self.workdir / "cp", with_controller_manager=True, crds=crds,
                               extra_apiserver_args=self._aggregation_args(),
                               extra_controller_manager_args=["--horizontal-pod-autoscaler-sync-period=15s"])
        self.procs: dict[str, _Proc] = {}
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.agent: PodAgent | None = None
        self.dns: ClusterDNS | None = None
        self.redis_port = 0

    # ------------------------------------------------------------------ helpers

    def _aggregation_args(self) -> list[str]:
        fp = self.front_proxy
        # All addresses of the private namespace (the last --bind-address wins): pods of the real node
        # (node.py) reach the API server through the kubernetes Service, on a non-loopback local address.
        return ["--bind-address", "0.0.0.0",
                "--requestheader-client-ca-file", str(fp.ca), "--requestheader-allowed-names", "front-proxy-client",
                "--requestheader-username-headers", "X-Remote-User",
                "--requestheader-group-headers", "X-Remote-Group",
                "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
                "--proxy-client-cert-file", str(fp.cert), "--proxy-client-key-file", str(fp.key)]

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    def api(self) -> client.ApiClient:
        return self.cp.api_client()

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HTTP_PROXY", "HTTPS_PROXY",
                                                                 "http_proxy", "https_proxy")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env.update(extra)
        return env

    def free_port(self, name: str) -> int:
        """A free loopback port, remembered under ``name`` (a restarted component keeps its port)."""
        if not self.ports.get(name):
            self.ports[name] = free_port()
        return self.ports[name]

    def spawn(self, name: str, args: list[Any], **env: str) -> _Proc:
        proc = _Proc(name, [str(a) for a in args], self.logs_dir / f"{name}.log", self._env(**env))
        proc.start()
        self.procs[name] = proc
        return proc

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bins["kubectl"]), "--kubeconfig", str(self.kubeconfig), *args],
                           input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def apply_objects(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input=yaml.safe_dump_all(objs, sort_keys=False))

    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.apply_objects([{"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": name, **({"labels": labels} if labels else {})}}])

    # ------------------------------------------------------------------ start / stop

    def start(self) -> "LiveStack":
        t0 = time.monotonic()
        try:
            self._timed("control-plane", self.cp.start)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self._timed("redis", self._start_redis)
            self._timed("scheduler", self._start_scheduler)
            self._timed("kwok+nodes", self._start_kwok)
            self._timed("cluster-dns", self._start_dns)
            self._timed("kube-proxy", lambda: start_kube_proxy(self))
            self._timed("redis-service", lambda: expose(self, REDIS_NS, "redis", REDIS_IP, REDIS_PORT, REDIS_PORT))
            self._timed("leaderworkerset", self._start_lws)
            self._timed("llmaz", self._start_llmaz)
            self._timed("keda", self._start_keda)
            self._timed("http-add-on", lambda: start_http_addon(self))
            self._timed("prometheus", lambda: start_prometheus(self))
            self._timed("llmaz-serverless", self._start_ours)
            self.agent = PodAgent(self.api, set(GPU_NODES), self.logs_dir)
            self.agent.start()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.dns is not None:
            self.dns.stop()
        for name in reversed(list(self.procs)):
            try:
                self.procs[name].stop(grace=5)
            except Exception:  # noqa: BLE001
                pass
        self.procs.clear()
        self.cp.stop()

    def check_alive(self) -> None:
        for proc in self.procs.values():
            proc.check_alive()

    # ------------------------------------------------------------------ components

    def _start_redis(self) -> None:
        self.redis_port = REDIS_PORT
        proc = self.spawn("redis", [self.bins["redis-server"], "--bind", "127.0.0.1", REDIS_IP, "--port", self.redis_port,
                                     # clients reach it through a ClusterIP from non-loopback addresses of the
                                     # private network namespace, which protected mode would refuse
                                     "--protected-mode", "no",
                                     "--save", "", "--appendonly", "no", "--dir", self.workdir])
        wait("redis answering", 20, lambda: self.redis("PING") == "PONG", proc)

    def redis(self, *args: str) -> Any:
        """One Redis command (tests use it to push jobs and read what was consumed)."""
        import asyncio

        from .standin import Redis

        async def one() -> Any:
            r = Redis("127.0.0.1", self.redis_port)
            await r.connect()
            try:
                return await r.call(*args)
            finally:
                await r.close()
        return asyncio.run(one())

    def _start_scheduler(self) -> None:
        port = self.ports["scheduler"] = free_port()
        kc = str(self.kubeconfig)
        proc = self.spawn("kube-scheduler", [self.bins["kube-scheduler"], "--kubeconfig", kc,
                                              "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
                                              "--bind-address", "127.0.0.1", "--secure-port", port,
                                              "--leader-elect=false"])
        wait("kube-scheduler healthy", 60, lambda: _get("127.0.0.1", port, "/healthz", tls=True) == 200, proc)

    def _start_kwok(self) -> None:
        port = self.ports["kwok"] = free_port()
        proc = self.spawn("kwok", [self.bins["kwok"], "--kubeconfig", self.kubeconfig,
                                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                                    "--cidr", POD_CIDR, "--node-ip", "10.243.0.1",
                                    "--node-lease-duration-seconds", "40",
                                    "--server-address", f"127.0.0.1:{port}",
                                    "-c", MANIFESTS / "kwok-stages.yaml"])
        self.apply_objects(load_yaml_docs(MANIFESTS / "gpu-nodes.yaml"))
        core = client.CoreV1Api(self.api())

        def nodes_ready() -> bool:
            for name in GPU_NODES:
                node = core.read_node(name)
                if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                    return False
            return True
        wait("kwok made the GPU nodes Ready", 60, nodes_ready, proc)

    def _start_dns(self) -> None:
        hosts = os.environ.get("LLMAZ_SERVERLESS_E2E_HOSTS")
        if not hosts:
            raise ControlPlaneError("no private hosts file: run the live stack through tests/e2e/netns.sh")
        self.dns = ClusterDNS(self.api, Path(hosts))
        self.dns.start()
        self.dns.wait_for("default", "kubernetes")

    def _register_webhooks(self, docs: list[dict[str, Any]], url_base: str, ca_pem: bytes,
                           prefix: str) -> None:
        out = []
        for doc in docs:
            doc = copy.deepcopy(doc)
            doc["metadata"] = {"name": f"{prefix}-{doc['metadata']['name']}"}
            for hook in doc.get("webhooks", []):
                path = hook["clientConfig"]["service"].get("path", "/")
                hook["clientConfig"] = {"url": f"{url_base}{path}",
                                        "caBundle": base64.b64encode(ca_pem).decode()}
            out.append(doc)
        self.apply_objects(out)

    def _start_lws(self) -> None:
        port, health = self.ports["lws-webhook"], self.ports["lws-health"] = free_port(), free_port()
        certs = self.pki.issue("lws-webhook", dns=("localhost",))
        config = self.workdir / "lws-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(certs.dir)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        }))
        proc = self.spawn("lws-manager", [self.bins["lws-manager"], "--config", config,
                                           "--kubeconfig", self.kubeconfig])
        wait("LeaderWorkerSet ready", 60, lambda: _get("127.0.0.1", health, "/readyz") == 200, proc)
        # Its defaulting webhook is not optional: the controller dereferences fields only the webhook sets.
        hooks = load_yaml_docs(cache_dir() / "crds" / "lws-webhook" / "manifests.yaml")
        self._register_webhooks(hooks, f"https://127.0.0.1:{port}", certs.ca_pem, "lws")
        wait("LeaderWorkerSet webhook serving", 30, lambda: _get("127.0.0.1", port, "/", tls=True) != 0, proc)

    def _start_llmaz(self) -> None:
        health = self.ports["llmaz-health"] = free_port()
        self.ensure_namespace(LLMAZ_NAMESPACE)
        certs = self.pki.issue("llmaz-webhook", dns=(f"llmaz-webhook-service.{LLMAZ_NAMESPACE}.svc",))
        core = client.CoreV1Api(self.api())
        # llmaz's certificate rotator gates its controllers on this Secret and on a serving certificate at a
        # fixed path (/tmp/k8s-webhook-server/serving-certs); /tmp is private to the test's mount namespace.
        try:
            core.create_namespaced_secret(LLMAZ_NAMESPACE, client.V1Secret(
                metadata=client.V1ObjectMeta(name="llmaz-webhook-server-cert"), type="kubernetes.io/tls",
                data={"tls.crt": base64.b64encode(certs.cert.read_bytes()).decode(),
                      "tls.key": base64.b64encode(certs.key.read_bytes()).decode(),
                      "ca.crt": base64.b64encode(certs.ca_pem).decode()}))
        except ApiException as e:
            if e.status != 409:
                raise
        fixed = Path("/tmp/k8s-webhook-server/serving-certs")
        fixed.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (fixed / name).write_bytes((certs.dir / name).read_bytes())
        proc = self.spawn("llmaz-manager", [self.bins["llmaz-manager"], "--kubeconfig", self.kubeconfig,
                                             "--namespace", LLMAZ_NAMESPACE, "--metrics-bind-address=0",
                                             f"--health-probe-bind-address=127.0.0.1:{health}"],
                           ENABLE_WEBHOOKS="false")
        wait("llmaz manager ready", 60, lambda: _get("127.0.0.1", health, "/readyz") == 200, proc)
        self.apply_objects(load_yaml_docs(MANIFESTS / "llmaz-models.yaml"))

    def _start_keda(self) -> None:
        self.ensure_namespace(KEDA_NAMESPACE)
        grpc, health, metrics = free_port(), free_port(), free_port()
        self.ports.update({"keda-grpc": grpc, "keda-health": health})
        certs = self.pki.issue("keda", dns=("localhost", f"keda-operator.{KEDA_NAMESPACE}.svc",
                                            f"keda-metrics-apiserver.{KEDA_NAMESPACE}.svc"))
        env = {"WATCH_NAMESPACE": "", "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
               "POD_NAMESPACE": KEDA_NAMESPACE, "POD_NAME": "keda-operator-live"}
        op = self.spawn("keda-operator", [
            self.bins["keda-operator"], "--kubeconfig", self.kubeconfig, "--leader-elect",
            f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc}", "--cert-dir", certs.dir,
            "--enable-webhook-patching=false", "--enable-apiservice-patching=false", "--zap-log-level=info"],
            **env)
        wait("KEDA operator ready", 90, lambda: _get("127.0.0.1", health, "/readyz") == 200, op)
        self.start_keda_adapter(certs.dir)

    def start_keda_adapter(self, cert_dir: Path | None = None) -> None:
        cert_dir = cert_dir or self.pki.root / "keda"
        port = self.ports["keda-adapter"] = self.ports.get("keda-adapter") or free_port()
        kc = str(self.kubeconfig)
        own_metrics = self.ports["keda-adapter-metrics"] = self.ports.get("keda-adapter-metrics") or free_port()
        adapter = self.spawn("keda-adapter", [
            # --port is the adapter's own Prometheus listener (0.0.0.0, default 8080: the pods' port)
            self.bins["keda-adapter"], "--secure-port", port, "--port", own_metrics,
            "--tls-cert-file", cert_dir / "tls.crt", "--tls-private-key-file", cert_dir / "tls.key",
            "--cert-dir", cert_dir, "--lister-kubeconfig", kc, "--kubeconfig", kc,
            "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--metrics-service-address", f"127.0.0.1:{self.ports['keda-grpc']}"],
            WATCH_NAMESPACE="", KEDA_CLUSTER_OBJECT_NAMESPACE=KEDA_NAMESPACE, POD_NAMESPACE=KEDA_NAMESPACE)
        # The aggregation layer reaches the adapter through a Service; an ExternalName one points it at loopback.
        ca = base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode()
        self.apply_objects([
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "keda-metrics-apiserver", "namespace": KEDA_NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"port": port}]}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
             "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                      "versionPriority": 100, "caBundle": ca,
                      "service": {"name": "keda-metrics-apiserver", "namespace": KEDA_NAMESPACE, "port": port}}},
        ])
        reg = client.ApiregistrationV1Api(self.api())

        def available() -> bool:
            svc = reg.read_api_service("v1beta1.external.metrics.k8s.io")
            return any(c.type == "Available" and c.status == "True" for c in svc.status.conditions or [])
        wait("KEDA metrics API Available through the aggregation layer", 90, available, adapter)

    def _start_ours(self) -> None:
        port, metrics = self.ports["ours"], self.ports["ours-metrics"] = free_port(), free_port()
        self.ensure_namespace(OUR_NAMESPACE)
        policy = (MANIFESTS / "policy.yaml").read_text()
        self.apply_objects([{"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "llmaz-serverless-policy", "namespace": OUR_NAMESPACE},
                             "data": {"policy.yaml": policy}}])
        configs = []
        for cfg in shipped_webhook_configurations():
            cfg = copy.deepcopy(cfg)
            path = "/mutate" if cfg["kind"] == "MutatingWebhookConfiguration" else "/validate"
            for hook in cfg["webhooks"]:
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}   # caBundle injected by serve
            cfg["metadata"] = {"name": cfg["metadata"]["name"]}
            configs.append(cfg)
        self.apply_objects(configs)
        self.start_ours()

    def start_ours(self) -> _Proc:
        port, metrics = self.ports["ours"], self.ports["ours-metrics"]
        proc = self.spawn("llmaz-serverless", [
            sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", port,
            "--metrics-port", metrics, "--cert-mode", "self-managed", "--cert-dir", self.workdir / "our-certs",
            "--cert-extra-san", "127.0.0.1", "--policy-configmap", f"{OUR_NAMESPACE}/llmaz-serverless-policy",
            "--leader-election", "--kubeconfig", self.kubeconfig, "--resync", "60"],
            POD_NAMESPACE=OUR_NAMESPACE, POD_NAME="llmaz-serverless-live-0", PYTHONPATH=str(REPO_ROOT))
        wait("llmaz-serverless ready", 60, lambda: _get("127.0.0.1", metrics, "/readyz") == 200, proc)
        return proc

    def metrics_text(self, name: str = "ours-metrics") -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=5)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items() if k != "total")
        return f"live stack up in {self.timings.get('total', 0):.1f}s ({parts}); logs in {self.logs_dir}"
