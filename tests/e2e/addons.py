"""The live stack's optional add-ons, installed where a real cluster has them:

* the KEDA HTTP add-on's interceptor and external scaler (namespace ``keda``), behind the Services of a real
  install (``keda-add-ons-http-interceptor-proxy:8080``, ``-admin``, ``keda-add-ons-http-external-scaler:9090``);
* Prometheus (namespace ``monitoring``, Service ``prometheus-operated:9090``), discovering pods through the
  Kubernetes API (``role: pod``) and scraping every container port named ``http`` (the llmaz model-runner's),
  with the ``namespace`` and ``pod`` labels the ``queue-depth`` preset's queries select on.

Each listens on its own address in 10.243.0.0/16 (local in the test's network namespace); several bind
0.0.0.0, so every port is distinct from the pods' 8080.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

import yaml

from .network import expose

if TYPE_CHECKING:
    from .stack import LiveStack

KEDA_NS = "keda"
INTERCEPTOR_IP, SCALER_IP, PROMETHEUS_IP = "10.243.1.1", "10.243.1.2", "10.243.1.3"
PROXY_PORT, ADMIN_PORT, SCALER_PORT, PROMETHEUS_PORT = 18080, 19090, 19091, 9090
INTERCEPTOR_METRICS_PORT = 12223     # the interceptor's Prometheus exporter (its default 2223, moved off it)


def start_http_addon(stack: "LiveStack") -> None:
    from .stack import wait, _get

    env = {"KEDA_HTTP_WATCH_NAMESPACE": "", "OTEL_PROM_EXPORTER_ENABLED": "false"}
    expose(stack, KEDA_NS, "keda-add-ons-http-interceptor-admin", INTERCEPTOR_IP, 9090, ADMIN_PORT, "admin")
    expose(stack, KEDA_NS, "keda-add-ons-http-interceptor-proxy", INTERCEPTOR_IP, 8080, PROXY_PORT, "proxy")
    expose(stack, KEDA_NS, "keda-add-ons-http-external-scaler", SCALER_IP, 9090, SCALER_PORT, "grpc")
    # The interceptor reaches a workload through its Service, and kube-proxy balances per connection. With the
    # add-on's default pool (200 idle connections per host) every request keeps riding the connections opened
    # to the first replica, so replicas added by scale-out get no traffic (measured: all requests on replica
    # 0). docs/deploy.md recommends 1 for LLM serving, where a connection costs nothing next to a request.
    # The interceptor exports its request counts per route (scraped below, as a cluster with the add-on and
    # Prometheus would); the scaler's exporter stays off (both would take the same default port).
    interceptor = stack.spawn("keda-http-interceptor", [stack.bins["keda-http-interceptor"]],
                              KEDA_HTTP_PROXY_PORT=str(PROXY_PORT), KEDA_HTTP_ADMIN_PORT=str(ADMIN_PORT),
                              KEDA_HTTP_MAX_IDLE_CONNS_PER_HOST=os.environ.get(
                                  "LLMAZ_SERVERLESS_E2E_INTERCEPTOR_IDLE_CONNS", "1"),
                              **{**env, "OTEL_PROM_EXPORTER_ENABLED": "true",
                                 "OTEL_PROM_EXPORTER_PORT": str(INTERCEPTOR_METRICS_PORT)})
    wait("HTTP add-on interceptor answering", 60,
         lambda: _get(INTERCEPTOR_IP, ADMIN_PORT, "/readyz") == 200 or _get(INTERCEPTOR_IP, ADMIN_PORT,
                                                                             "/queue") == 200, interceptor)
    scaler = stack.spawn("keda-http-scaler", [stack.bins["keda-http-scaler"]],
                         KEDA_HTTP_SCALER_PORT=str(SCALER_PORT), KEDA_HTTP_SCALER_TARGET_ADMIN_NAMESPACE=KEDA_NS,
                         KEDA_HTTP_SCALER_TARGET_ADMIN_SERVICE="keda-add-ons-http-interceptor-admin",
                         KEDA_HTTP_SCALER_TARGET_ADMIN_DEPLOYMENT="keda-add-ons-http-interceptor",
                         KEDA_HTTP_SCALER_TARGET_ADMIN_PORT=str(ADMIN_PORT), **env)
    import socket

    def grpc_listening() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((SCALER_IP, SCALER_PORT)) == 0
    wait("HTTP add-on scaler listening", 60, grpc_listening, scaler)


def start_prometheus(stack: "LiveStack") -> None:
    from .stack import wait

    config = stack.workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{
            "job_name": "model-servers",
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(stack.kubeconfig)}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "action": "keep", "regex": "http"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }, {
            "job_name": "http-add-on-interceptor",
            "static_configs": [{"targets": [f"127.0.0.1:{INTERCEPTOR_METRICS_PORT}"]}],
        }],
    }, sort_keys=False))
    expose(stack, "monitoring", "prometheus-operated", PROMETHEUS_IP, 9090, PROMETHEUS_PORT, "web")
    proc = stack.spawn("prometheus", [stack.bins["prometheus"], f"--config.file={config}",
                                      f"--storage.tsdb.path={stack.workdir / 'prometheus'}",
                                      f"--web.listen-address={PROMETHEUS_IP}:{PROMETHEUS_PORT}",
                                      "--storage.tsdb.retention.time=2h", "--log.level=warn"])
    wait("Prometheus ready", 60, lambda: prometheus_ready(), proc)


def prometheus_ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{PROMETHEUS_IP}:{PROMETHEUS_PORT}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def prometheus_query(expr: str) -> list[dict]:
    url = f"http://{PROMETHEUS_IP}:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]["result"]
