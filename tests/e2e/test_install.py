"""llmaz-serverless installed the way users install it: the image from deploy/image/build.sh loaded into a real
node's containerd, the chart installed with ``helm install`` as docs/deploy.md says, our pods running in the
cluster with in-cluster credentials, called by the API server through the chart's Service.

The live stack normally runs llmaz-serverless as a host process; this module takes its place for its own
duration (the webhook configurations and the policy ConfigMap become the chart's) and puts it back afterwards.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.controlplane import cache_dir
from webhook import constants as C

from .node import IMAGE_REPOSITORY, NODE_LABEL, NODE_NAME, NODE_TAINT, RealNode
from .stack import MANIFESTS, OUR_NAMESPACE, REPO_ROOT, LiveStack
from .test_zero_to_one import LLMAZ, opted_in_namespace, wait_for

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "deploy" / "helm" / "llmaz-serverless"
RELEASE = "llmaz-serverless"
SELECTOR = "app.kubernetes.io/name=llmaz-serverless"
CONTROLLER_SELECTOR = SELECTOR + ",app.kubernetes.io/component=controller"
DEPLOYMENTS = ("llmaz-serverless", "llmaz-serverless-controller")   # admission, reconciler
WEBHOOK_CONFIG = "llmaz-serverless"
LEASE = "llmaz-serverless-leader"
LEASE_BOUND = 15 + 2 + 8   # lease duration + retry period (webhook/leader.py defaults) + margin for a busy machine


def chart_app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def install_values(tag: str, **extra) -> dict:
    """What a user sets to run the chart on this node from the locally built image."""
    key, value = NODE_LABEL
    values = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": tag, "pullPolicy": "Never"},
        "nodeSelector": {key: value},
        "tolerations": [{"key": NODE_TAINT.split("=")[0], "operator": "Equal", "value": value,
                         "effect": "NoSchedule"}],
        "policy": (MANIFESTS / "policy.yaml").read_text(),
        # Two controller replicas, so a killed leader has a standby to hand over to (the default is one: a
        # killed controller is then replaced by its Deployment).
        "controller": {"replicaCount": 2},
    }
    values.update(extra)
    return values


class Install:
    def __init__(self, stack: LiveStack, node: RealNode, workdir: Path) -> None:
        self.stack, self.node, self.workdir = stack, node, workdir
        self.helm_bin = cache_dir() / "bin" / "helm"

    def helm(self, *args: str, values: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(self.helm_bin), *args, "--kubeconfig", str(self.stack.kubeconfig)]
        if values is not None:
            path = self.workdir / f"values-{uuid.uuid4().hex[:6]}.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["-f", str(path)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def install(self, values: dict) -> None:
        # docs/deploy.md, "Install llmaz-serverless", plus the values file of this node.
        self.helm("install", RELEASE, str(CHART), "--namespace", OUR_NAMESPACE, "--create-namespace",
                  values=values)

    def rollout(self, timeout: int = 240) -> None:
        for deployment in DEPLOYMENTS:
            self.stack.kubectl("-n", OUR_NAMESPACE, "rollout", "status", f"deployment/{deployment}",
                               f"--timeout={timeout}s", timeout=timeout + 10)

    def pods(self, selector: str = SELECTOR) -> list:
        core = client.CoreV1Api(self.stack.api())
        return [p for p in core.list_namespaced_pod(OUR_NAMESPACE, label_selector=selector).items
                if p.metadata.deletion_timestamp is None]

    def lease_holder(self) -> str | None:
        """The pod holding the Lease (its identity is ``<pod name>_<random suffix>``)."""
        coord = client.CoordinationV1Api(self.stack.api())
        try:
            lease = coord.read_namespaced_lease(LEASE, OUR_NAMESPACE)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        holder = lease.spec.holder_identity
        return holder.rsplit("_", 1)[0] if holder else None


def _take_over_from_host_process(stack: LiveStack) -> None:
    """The host-process llmaz-serverless of the stack and what the chart will own instead."""
    proc = stack.procs.pop("llmaz-serverless", None)
    if proc is not None:
        proc.stop(grace=5)
    adm = client.AdmissionregistrationV1Api(stack.api())
    core = client.CoreV1Api(stack.api())
    coord = client.CoordinationV1Api(stack.api())
    for delete in (lambda: adm.delete_mutating_webhook_configuration(WEBHOOK_CONFIG),
                   lambda: adm.delete_validating_webhook_configuration(WEBHOOK_CONFIG),
                   lambda: core.delete_namespaced_config_map("llmaz-serverless-policy", OUR_NAMESPACE),
                   lambda: core.delete_namespaced_secret("llmaz-serverless-ca", OUR_NAMESPACE),
                   lambda: coord.delete_namespaced_lease(LEASE, OUR_NAMESPACE)):
        try:
            delete()
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture(scope="module")
def installed(stack: LiveStack):
    tag = chart_app_version()
    workdir = stack.workdir / "install"
    workdir.mkdir(parents=True, exist_ok=True)
    _take_over_from_host_process(stack)
    node = RealNode(stack, tag)
    try:
        node.start()
        inst = Install(stack, node, workdir)
        yield inst
    finally:
        try:
            subprocess.run([str(cache_dir() / "bin" / "helm"), "uninstall", RELEASE, "--namespace", OUR_NAMESPACE,
                            "--kubeconfig", str(stack.kubeconfig), "--wait", "--timeout", "60s"],
                           capture_output=True, text=True, timeout=90)
        finally:
            node.stop()
            _take_over_from_host_process(stack)
            stack._start_ours()


def _webhook_ca_bundles(stack: LiveStack) -> list[str]:
    adm = client.AdmissionregistrationV1Api(stack.api())
    out = []
    for cfg in (adm.read_mutating_webhook_configuration(WEBHOOK_CONFIG),
                adm.read_validating_webhook_configuration(WEBHOOK_CONFIG)):
        out += [base64.b64decode(h.client_config.ca_bundle).decode() if h.client_config.ca_bundle else ""
                for h in cfg.webhooks]
    return out


def _ca_secret(stack: LiveStack) -> dict[str, str]:
    sec = client.CoreV1Api(stack.api()).read_namespaced_secret("llmaz-serverless-ca", OUR_NAMESPACE)
    return {k: base64.b64decode(v).decode() for k, v in (sec.data or {}).items()}


def _playground(name: str, queue: str) -> dict:
    doc = yaml.safe_load((MANIFESTS / "playground-redis.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["metadata"]["annotations"][C.ANN_TRIGGERS] = (
        f"- {{type: redis, address: 'redis.queues:6379', listName: {queue}, listLength: 1}}")
    return doc


def _create_playground(stack: LiveStack, ns: str, name: str, queue: str) -> dict:
    custom = client.CustomObjectsApi(stack.api())
    body = _playground(name, queue)
    body["apiVersion"], body["kind"] = "inference.llmaz.io/v1alpha1", "Playground"
    return custom.create_namespaced_custom_object(*LLMAZ, ns, "playgrounds", body)


def _mutated(obj: dict) -> bool:
    """Stored through our webhook: at zero and carrying the resolved settings it writes."""
    return obj["spec"].get("replicas") == 0 and C.ANN_RESOLVED in (obj["metadata"].get("annotations") or {})


def test_helm_install_check_and_scale_from_zero(installed: Install):
    stack = installed.stack
    installed.install(install_values(chart_app_version()))
    installed.rollout()
    pods = installed.pods()   # two webhook replicas and two controller replicas (install_values)
    assert len(pods) == 4 and {p.spec.node_name for p in pods} == {NODE_NAME}, [
        (p.metadata.name, p.spec.node_name) for p in pods]
    pids = installed.node.task_pids()
    for p in pods:
        ctr = p.spec.containers[0]
        assert ctr.security_context.read_only_root_filesystem is True
        # Least privilege per component: the webhook and the controller each run as their own ServiceAccount.
        own = "llmaz-serverless-controller" if "-controller-" in p.metadata.name else "llmaz-serverless"
        assert p.spec.service_account_name == own, (p.metadata.name, p.spec.service_account_name)
        (cid,) = installed.node.pod_containers(OUR_NAMESPACE, p.metadata.name)
        status = Path(f"/proc/{pids[cid]}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        assert uid == "65532", f"{p.metadata.name} runs as uid {uid}"
        print(f"\n{p.metadata.name}: uid {uid}, RSS {int(rss) // 1024} MiB after start")

    # The self-managed CA, written from inside a pod, is what the API server trusts for both webhooks.
    ca = wait_for(lambda: _ca_secret(stack).get("ca.crt"), 60, "the CA Secret")
    wait_for(lambda: all(ca.strip() in b for b in _webhook_ca_bundles(stack)), 60, "caBundle from the CA Secret")

    # A namespace opted in, as a user does before checking (check fails while none is).
    ns = opted_in_namespace(stack, "installed")
    r = subprocess.run([sys.executable, "-m", "webhook", "check", "--kubeconfig", str(stack.kubeconfig)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    print("\n" + r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "webhook Service llmaz-serverless-system/llmaz-serverless-webhook: 2 ready endpoint(s)" in r.stdout

    # A GPU Playground applied with kubectl: stored at 0 by the in-cluster webhook, woken by KEDA.
    queue = f"install-{uuid.uuid4().hex[:6]}"
    path = installed.workdir / "playground.yaml"
    path.write_text(yaml.safe_dump(_playground("summarizer", queue)))
    applied = stack.kubectl("apply", "-n", ns, "-f", str(path))
    assert "created" in applied.stdout
    custom = client.CustomObjectsApi(stack.api())
    pg = custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "summarizer")
    assert _mutated(pg), pg["metadata"].get("annotations")
    assert json.loads(pg["metadata"]["annotations"][C.ANN_RESOLVED])["gpu"] is True
    wait_for(lambda: _so_ready(stack, ns, "summarizer"), 90, "the ScaledObject Ready (written by the leader pod)")
    assert stack.redis("LPUSH", queue, "job-1") == 1
    wait_for(lambda: custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "summarizer")
             ["spec"].get("replicas") == 1, 60, "KEDA to scale the Playground from zero")
    stack.redis("DEL", queue)
    stack.kubectl("delete", "namespace", ns, "--wait=false")


def _so_ready(stack: LiveStack, ns: str, name: str) -> bool:
    custom = client.CustomObjectsApi(stack.api())
    try:
        so = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", name)
    except ApiException:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (so.get("status") or {}).get("conditions") or [])


class ApplyStream:
    """Creates Playgrounds in an opted-in namespace at a steady pace and records how each was stored."""

    def __init__(self, stack: LiveStack, prefix: str, period: float = 0.25) -> None:
        self.stack = stack
        self.ns = opted_in_namespace(stack, prefix)
        self.period = period
        self.results: list[tuple[str, bool, str]] = []   # (name, mutated, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            name = f"pg-{self._n}"
            self._n += 1
            try:
                obj = _create_playground(self.stack, self.ns, name, f"stream-{self.ns}")
                self.results.append((name, _mutated(obj), ""))
            except Exception as e:  # noqa: BLE001 - a refused apply is counted, not raised
                self.results.append((name, False, repr(e)[:200]))
            self._stop.wait(self.period)

    def __enter__(self) -> "ApplyStream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # Dozens of ScaledObjects polling Redis would only load the stack for the tests that follow.
        self.stack.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)

    def unmutated(self) -> list[tuple[str, bool, str]]:
        return [r for r in self.results if not r[1]]


def test_leader_killed_other_replica_takes_over_and_admission_keeps_answering(installed: Install):
    stack = installed.stack
    installed.rollout()
    leader = wait_for(installed.lease_holder, 60, "a leader")
    others = [p.metadata.name for p in installed.pods(CONTROLLER_SELECTOR) if p.metadata.name != leader]
    assert len(others) == 1, (leader, others)
    with ApplyStream(stack, "failover") as stream:
        time.sleep(2)
        t_kill = time.monotonic()
        installed.node.kill_pod_containers(OUR_NAMESPACE, leader)
        stack.kubectl("-n", OUR_NAMESPACE, "delete", "pod", leader, "--grace-period=0", "--force", "--wait=false")
        new_leader = wait_for(lambda: (lambda h: h if h and h != leader else None)(installed.lease_holder()),
                              LEASE_BOUND, f"another replica to take the Lease over (bound {LEASE_BOUND}s)",
                              interval=0.2)
        took_over = time.monotonic() - t_kill
        time.sleep(2)
    print(f"\nLease taken over by {new_leader} {took_over:.1f}s after the leader was killed; "
          f"{len(stream.results)} applies during the failover")
    assert new_leader == others[0]
    assert len(stream.results) >= 10
    assert stream.unmutated() == [], stream.unmutated()
    installed.rollout()


def test_helm_upgrade_under_a_stream_of_applies(installed: Install):
    stack = installed.stack
    installed.rollout()
    new_tag = f"{chart_app_version()}-upgrade"
    installed.node.tag_image(f"{IMAGE_REPOSITORY}:{chart_app_version()}", f"{IMAGE_REPOSITORY}:{new_tag}")
    ca_before = _ca_secret(stack)["ca.crt"]
    bundles_before = _webhook_ca_bundles(stack)
    old_pods = {p.metadata.name for p in installed.pods()}
    with ApplyStream(stack, "upgrade") as stream:
        time.sleep(2)
        installed.helm("upgrade", RELEASE, str(CHART), "--namespace", OUR_NAMESPACE,
                       values=install_values(new_tag, podLabels={"upgraded": "yes"}))
        installed.rollout()
        time.sleep(2)
    pods = installed.pods()
    assert {p.spec.containers[0].image for p in pods} == {f"{IMAGE_REPOSITORY}:{new_tag}"}
    assert not old_pods & {p.metadata.name for p in pods}, "every pod was replaced"
    print(f"\n{len(stream.results)} applies during the upgrade, {len(stream.unmutated())} unmutated")
    assert len(stream.results) >= 10
    assert stream.unmutated() == [], stream.unmutated()
    assert _ca_secret(stack)["ca.crt"] == ca_before, "the CA is carried over"
    assert _webhook_ca_bundles(stack) == bundles_before, "the caBundle is carried over"


def test_helm_uninstall_leaves_nothing_stranded(installed: Install):
    stack = installed.stack
    installed.rollout()
    custom = client.CustomObjectsApi(stack.api())
    ns = opted_in_namespace(stack, "uninstall")
    queue = f"uninstall-{uuid.uuid4().hex[:6]}"
    _create_playground(stack, ns, "summarizer", queue)
    wait_for(lambda: _so_ready(stack, ns, "summarizer"), 90, "the ScaledObject Ready")

    installed.helm("uninstall", RELEASE, "--namespace", OUR_NAMESPACE, "--wait", "--timeout", "120s")
    adm = client.AdmissionregistrationV1Api(stack.api())
    names = [c.metadata.name for c in adm.list_mutating_webhook_configuration().items] + \
            [c.metadata.name for c in adm.list_validating_webhook_configuration().items]
    assert WEBHOOK_CONFIG not in names
    # The Deployment is gone; its pods go with it through the garbage collector, after helm returns.
    wait_for(lambda: installed.pods() == [], 60, "the release's pods to be deleted", interval=0.5)
    # Made at run time, not by the release: kept (docs/deploy.md, "Uninstall cleanly").
    assert _ca_secret(stack).get("ca.crt")
    # The workload keeps scaling: its ScaledObject (owned by the Playground, not by the release) stays, and
    # KEDA still wakes it from zero.
    assert _so_ready(stack, ns, "summarizer")
    assert stack.redis("LPUSH", queue, "job-1") == 1
    wait_for(lambda: custom.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", "summarizer")
             ["spec"].get("replicas") == 1, 60, "KEDA to scale the Playground from zero after uninstall")
    stack.redis("DEL", queue)
    # Nothing managed is left at zero without a ScaledObject that can wake it (namespaces being deleted aside).
    core = client.CoreV1Api(stack.api())
    live = {n.metadata.name for n in core.list_namespace().items if n.metadata.deletion_timestamp is None}
    checked = 0
    for item in custom.list_cluster_custom_object(*LLMAZ, "playgrounds")["items"]:
        meta = item["metadata"]
        if (meta["namespace"] in live and meta.get("deletionTimestamp") is None and item["spec"].get("replicas") == 0
                and C.ANN_RESOLVED in (meta.get("annotations") or {})):
            checked += 1
            assert _so_ready(stack, meta["namespace"], meta["name"]), f"{meta['namespace']}/{meta['name']} stranded"
    print(f"\n{checked} managed Playground(s) at zero after uninstall, each with a Ready ScaledObject")
    stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
