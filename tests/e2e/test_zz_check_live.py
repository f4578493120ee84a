"""``llmaz-serverless check`` against the live stack: the real KEDA operator (leader election on, so its Lease
is renewed), KEDA's metrics API served through the aggregation layer, the HTTP add-on's scaler behind its
Service, and the workloads the other live tests left behind (named ``zz`` so it runs after them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .stack import MANIFESTS, REPO_ROOT, LiveStack
from .test_zero_to_one import KEDA, condition, get_or_none, opted_in_namespace, wait_for

pytestmark = pytest.mark.e2e


def run_check(stack: LiveStack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webhook", "check", "--kubeconfig", str(stack.kubeconfig), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_check_passes_on_the_live_stack(stack: LiveStack):
    from kubernetes import client

    ns = opted_in_namespace(stack, "checked")
    stack.kubectl("apply", "-n", ns, "-f", str(MANIFESTS / "playground-redis.yaml"))
    custom = client.CustomObjectsApi(stack.api())
    wait_for(lambda: (condition(get_or_none(custom, KEDA, ns, "scaledobjects", "summarizer"), "Ready") or {})
             .get("status") == "True", 60, "KEDA to report the ScaledObject Ready")
    r = run_check(stack)
    print("\n" + r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(run_check(stack, "-o", "json").stdout)
    text = json.dumps(doc)
    assert "FAIL" not in r.stdout
    assert "external.metrics.k8s.io" in text and f"{ns}/summarizer" in text


def test_check_fails_when_the_keda_operator_is_gone(stack: LiveStack):
    """With the operator stopped and its Lease expired, check says so and exits 1."""
    from kubernetes import client

    op = stack.procs["keda-operator"]
    op.stop(grace=0)
    try:
        coord = client.CoordinationV1Api(stack.api())
        for lease in coord.list_namespaced_lease("keda").items:
            if lease.metadata.name == "operator.keda.sh":
                coord.delete_namespaced_lease(lease.metadata.name, "keda")
        r = run_check(stack)
        print("\n" + r.stdout)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "KEDA operator" in r.stdout or "keda-operator" in r.stdout
    finally:
        op.start()
