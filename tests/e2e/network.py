"""Cluster networking for the live stack: Service routing, Service names, and Services for components that run
out of cluster.

* **kube-proxy** (the real one, iptables mode) routes ClusterIPs to ready endpoints, exactly as on a node. It
  runs in the test's network namespace, where the Service CIDR is local, so connections from any process
  there (the HTTP add-on's interceptor, KEDA, the tests) are DNAT-ed to pod IPs.
* **Service names**: the interceptor forwards to ``http://<service>.<namespace>:<port>`` and KEDA dials the
  scaler and Prometheus by Service name. A real cluster answers those through CoreDNS; here ``ClusterDNS``
  keeps the namespace's private ``/etc/hosts`` in step with every Service (``<name>.<ns>``,
  ``<name>.<ns>.svc``, ``<name>.<ns>.svc.cluster.local``). Why not CoreDNS itself: it is not needed to test
  anything of ours, and building it from its module pulls every plugin's cloud SDK for one lookup per
  Service. Programs built with Go's own resolver re-read the hosts file when it changes (checked at most every
  5 s), so a Service must exist a few seconds before its first lookup: true of every Service used here.
* ``expose`` gives an out-of-cluster component the Service it has in a real install (a selector-less Service
  plus an EndpointSlice on a local address of the namespace), so our policy's default addresses
  (``keda-add-ons-http-external-scaler.keda:9090``, ``prometheus-operated.monitoring.svc:9090``) work as shipped.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from .stack import LiveStack

CLUSTER_DOMAIN = "cluster.local"


class ClusterDNS:
    """Keeps ``hosts_path`` = the original hosts file + one line per Service with a ClusterIP."""

    def __init__(self, api_factory, hosts_path: Path) -> None:
        self._factory = api_factory
        self.path = Path(hosts_path)
        self.base = self.path.read_text()
        self.services: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-dns", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _write(self) -> None:
        lines = [self.base.rstrip("\n"), "# Services (live stack cluster-DNS stand-in)"]
        for (ns, name), ip in sorted(self.services.items()):
            lines.append(f"{ip} {name}.{ns} {name}.{ns}.svc {name}.{ns}.svc.{CLUSTER_DOMAIN}")
        data = ("\n".join(lines) + "\n").encode()
        # The file is bind-mounted: it cannot be replaced by a rename, so it is rewritten in one write.
        fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _apply(self, typ: str, svc: dict[str, Any]) -> bool:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        ip = spec.get("clusterIP")
        if typ == "DELETED" or not ip or ip == "None":
            return self.services.pop(key, None) is not None
        if self.services.get(key) == ip:
            return False
        self.services[key] = ip
        return True

    def wait_for(self, namespace: str, name: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ip = self.services.get((namespace, name))
            if ip:
                return ip
            time.sleep(0.05)
        raise AssertionError(f"Service {namespace}/{name} not in the hosts file within {timeout}s")

    def _run(self) -> None:
        api = client.CoreV1Api(self._factory())
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    lst = api.list_service_for_all_namespaces()
                    rv = lst.metadata.resource_version
                    self.services.clear()
                    for s in lst.items:
                        self._apply("ADDED", api.api_client.sanitize_for_serialization(s))
                    self._write()
                for ev in watch.Watch().stream(api.list_service_for_all_namespaces, resource_version=rv,
                                               timeout_seconds=30, _request_timeout=40):
                    obj = api.api_client.sanitize_for_serialization(ev["object"])
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if self._apply(ev["type"], obj):
                        self._write()
                    if self._stop.is_set():
                        break
            except ApiException as e:
                if e.status == 410:
                    rv = ""
                    continue
                self.errors.append(f"{e.status} {e.reason}")
                time.sleep(0.5)
            except Exception as e:  # noqa: BLE001 - the API server may be restarted by a fault test
                self.errors.append(repr(e))
                time.sleep(0.5)


def expose(stack: "LiveStack", namespace: str, name: str, ip: str, port: int, target_port: int,
           port_name: str = "main") -> None:
    """A Service ``namespace/name:port`` whose one ready endpoint is ``ip:target_port`` (a component that runs
    out of cluster, listening on a local address of the namespace)."""
    stack.ensure_namespace(namespace)
    stack.apply_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [{"name": port_name, "port": port, "targetPort": target_port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-live", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": name,
                                 "endpointslice.kubernetes.io/managed-by": "live-stack.llmaz-serverless.io"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True}}],
         "ports": [{"name": port_name, "port": target_port, "protocol": "TCP"}]},
    ])


def start_kube_proxy(stack: "LiveStack") -> None:
    from .stack import wait, _get

    health, metrics = stack.free_port("kube-proxy-health"), stack.free_port("kube-proxy-metrics")
    proc = stack.spawn("kube-proxy", [
        stack.bins["kube-proxy"], "--kubeconfig", stack.kubeconfig, "--hostname-override", "gpu-node-0",
        # No --cluster-cidr: with it kube-proxy masquerades off-cluster traffic to ClusterIPs (on a node, to the
        # node's address). Here every packet travels over the namespace's loopback, where that SNAT drops the
        # connection; without it the DNAT to the endpoint is all that happens, which is the part under test.
        "--proxy-mode", "iptables",
        "--healthz-bind-address", f"127.0.0.1:{health}", "--metrics-bind-address", f"127.0.0.1:{metrics}",
        # leave the namespace's conntrack sysctls alone (some are not writable in a network namespace)
        "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
        "--conntrack-tcp-timeout-close-wait", "0", "--iptables-min-sync-period", "0s"])

    def synced() -> bool:
        if _get("127.0.0.1", health, "/healthz") != 200:
            return False
        r = subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True, text=True)
        return r.returncode == 0
    wait("kube-proxy programming Service routes", 60, synced, proc)
