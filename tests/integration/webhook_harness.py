"""Run the real webhook server as a process and register it with the test API server.

The webhook configurations come from the shipped manifests (``deploy/manifests/llmaz-serverless.yaml``, the
rendered Helm chart); only ``clientConfig`` is replaced by a loopback URL and the test CA. So the rules,
selectors, failure policy and timeouts under test are the ones users install.
"""

from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from datetime import timedelta
from typing import Any

import yaml

from certs.authority import generate_ca, issue_serving_cert
from tests.integration.controlplane import free_port

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "manifests" / "llmaz-serverless.yaml"
RELEASE_NAMESPACE = "llmaz-serverless-system"


def shipped_webhook_configurations() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    found = [d for d in docs if d["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")]
    assert len(found) == 2, "the rendered manifests must hold one mutating and one validating configuration"
    return found


def loopback_configurations(port: int, ca_pem: bytes, failure_policy: str | None = None) -> list[dict[str, Any]]:
    out = []
    bundle = base64.b64encode(ca_pem).decode()
    for cfg in shipped_webhook_configurations():
        cfg = copy.deepcopy(cfg)
        path = "/mutate" if cfg["kind"] == "MutatingWebhookConfiguration" else "/validate"
        for hook in cfg["webhooks"]:
            shipped_path = hook["clientConfig"]["service"]["path"]
            assert shipped_path == path
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            if failure_policy:
                hook["failurePolicy"] = failure_policy
        cfg["metadata"] = {"name": cfg["metadata"]["name"], "labels": cfg["metadata"].get("labels", {})}
        out.append(cfg)
    return out


class WebhookProcess:
    """``llmaz-serverless serve`` on loopback with a test CA, admission only (no reconciler)."""

    def __init__(self, workdir: Path, policy_file: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.extra_args = tuple(extra_args)
        workdir.mkdir(parents=True, exist_ok=True)
        ca = generate_ca("llmaz-serverless test CA", timedelta(days=2))
        leaf = issue_serving_cert(ca, ["localhost"], ["127.0.0.1"], timedelta(days=1))
        self.ca_pem = ca.cert_pem
        (workdir / "tls.crt").write_bytes(leaf.cert_pem)
        (workdir / "tls.key").write_bytes(leaf.key_pem)
        (workdir / "ca.crt").write_bytes(ca.cert_pem)
        self.port = free_port()
        self.metrics_port = free_port()
        self.policy_file = policy_file
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "webhook.log"

    def start(self, timeout: float = 30) -> None:
        args = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--metrics-port", str(self.metrics_port), "--tls-cert-file", str(self.workdir / "tls.crt"),
                "--tls-key-file", str(self.workdir / "tls.key"), "--cert-mode", "files", "--no-reconcile",
                "--log-level", "info"]
        if self.policy_file:
            args += ["--policy-file", str(self.policy_file)]
        args += list(self.extra_args)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webhook exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            if readyz(self.metrics_port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"webhook not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc:
            stop_process_group(self.proc, grace=15)
        self.proc = None


def readyz(metrics_port: int) -> bool:
    """True when the ``serve`` whose probe port is ``metrics_port`` answers ``/readyz`` with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:   # not listening yet, or 503 (not ready)
        return False


def serve_ready(proc: subprocess.Popen, metrics_port: int, log_path: Path) -> bool:
    """A predicate for ``wait_for``: the ``serve`` process is ready; one that exited fails the test at once,
    with the tail of its log, instead of after the whole timeout."""
    assert proc.poll() is None, log_path.read_text()[-4000:]
    return readyz(metrics_port)


def stop_process_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group of a ``serve`` started with ``start_new_session``, SIGKILL after ``grace``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
