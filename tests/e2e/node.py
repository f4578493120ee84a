"""A real node next to the kwok GPU nodes: kubelet + containerd + runc + the CNI bridge, inside the live stack's
network namespace.

kwok fakes the GPU nodes (the model pods need GPUs this machine has not); llmaz-serverless itself needs nothing
of the kind, so its pods run for real here, from the image deploy/image/build.sh makes, exactly as a user's
cluster runs them: in-cluster credentials, a read-only root filesystem, probes, Service routing.

* **containerd** (Debian's, run with its own configuration: root on disk under the run's work directory, state
  and socket under the namespace's private /tmp) pulls nothing: the images are imported from OCI archives,
  including the sandbox (pause) image provide.sh builds. ``restrict_oom_score_adj`` is needed where the
  sandbox may not lower its OOM score (an unprivileged container host).
* **CNI**: the bridge plugin with host-local addresses from ``NODE_POD_CIDR`` (outside the kwok pod CIDR that
  netns.sh makes local). Pods reach the API server through the ``kubernetes`` Service (kube-proxy DNATs it to
  ``APISERVER_NODE_ADDRESS``, a local address of the namespace); the API server reaches the webhook through
  the chart's Service, DNAT-ed by the same kube-proxy to the pod's bridge address.
* **kubelet** (built by provide.sh from the same Kubernetes module as the control plane) registers the node
  with a taint and a label, so that only pods that ask for it (the chart's ``nodeSelector``/``tolerations``)
  land here and the model pods keep going to the kwok nodes. cgroupfs driver, no per-QoS cgroups: the
  configuration that runs on a cgroup v1 host without systemd.

Everything the node starts is stopped by ``stop()``: containers first (through containerd), then kubelet and
containerd, then any shim left over (by process id, matched on this node's containerd socket).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from kubernetes import client

from tests.integration.controlplane import ControlPlaneUnavailable, cache_dir

if TYPE_CHECKING:
    from .stack import LiveStack

NODE_NAME = "cpu-node-0"
NODE_LABEL = ("llmaz-serverless.io/node", "real")
NODE_TAINT = "llmaz-serverless.io/node=real:NoSchedule"
NODE_ADDRESS = "10.243.0.2"            # the node's InternalIP: an address on the namespace's loopback
NODE_POD_CIDR = "10.245.0.0/24"        # pods of this node (bridge cni0); not local, routed over the bridge
APISERVER_NODE_ADDRESS = "10.243.0.3"  # the kubernetes Service's endpoint as pods reach it
PAUSE_IMAGE = "localhost/llmaz-serverless-pause:1"
IMAGE_REPOSITORY = "localhost/llmaz-serverless"
CONTAINERD_NAMESPACE = "k8s.io"


def image_archive(tag: str) -> Path:
    return cache_dir() / "image" / f"llmaz-serverless-{tag}.oci.tar"


def node_prerequisites(tag: str) -> dict[str, Path]:
    """Paths of what the node needs, or ControlPlaneUnavailable naming how to provide what is missing."""
    bins = {"kubelet": cache_dir() / "bin" / "kubelet", "containerd": Path("/usr/bin/containerd"),
            "ctr": Path("/usr/bin/ctr"), "runc": Path("/usr/sbin/runc"), "bridge": Path("/usr/lib/cni/bridge"),
            "pause": cache_dir() / "image" / "pause.oci.tar"}
    missing = [n for n, p in bins.items() if not p.exists()]
    if missing:
        raise ControlPlaneUnavailable(f"real node: missing {', '.join(missing)}; provide them with:\n"
                                      "    bash tests/integration/tools/provide.sh node")
    archive = image_archive(tag)
    if not archive.exists():
        raise ControlPlaneUnavailable(f"real node: no image archive {archive}; build it with:\n"
                                      f"    bash deploy/image/build.sh {tag}")
    bins["image"] = archive
    return bins


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class RealNode:
    def __init__(self, stack: "LiveStack", tag: str) -> None:
        self.stack = stack
        self.tag = tag
        self.paths = node_prerequisites(tag)
        self.dir = stack.workdir / "node"
        # Unix socket paths are limited to 108 bytes: runtime state lives under the namespace's private /tmp.
        # The process id keeps the socket path (which names this node's shims) apart from any other run's.
        self.run_dir = Path(f"/tmp/llmaz-node-{os.getpid()}")
        self.socket = self.run_dir / "containerd.sock"
        self.started = False

    # ------------------------------------------------------------------ containerd

    def ctr(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.paths["ctr"]), "--address", str(self.socket), "--namespace",
                            CONTAINERD_NAMESPACE, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", "--all-platforms", str(archive))

    def tag_image(self, source: str, target: str) -> None:
        self.ctr("images", "tag", "--force", source, target)

    def pod_containers(self, namespace: str, pod: str) -> list[str]:
        """containerd ids of a pod's application containers (not its sandbox)."""
        out = []
        for cid in self.ctr("containers", "ls", "-q").stdout.split():
            info = self.ctr("containers", "info", cid, check=False)
            if info.returncode != 0:
                continue
            labels = json.loads(info.stdout).get("Labels") or {}
            if (labels.get("io.kubernetes.pod.namespace") == namespace and labels.get("io.kubernetes.pod.name") == pod
                    and labels.get("io.cri-containerd.kind") == "container"):
                out.append(cid)
        return out

    def task_pids(self) -> dict[str, int]:
        """Running containers' main process ids (``ctr tasks ls``: TASK PID STATUS)."""
        pids = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "RUNNING":
                pids[parts[0]] = int(parts[1])
        return pids

    def kill_pod_containers(self, namespace: str, pod: str) -> int:
        """SIGKILL the application containers of a pod through containerd (a crash, not a graceful stop)."""
        killed = 0
        for cid in self.pod_containers(namespace, pod):
            if self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False).returncode == 0:
                killed += 1
        if not killed:
            raise AssertionError(f"no running container of pod {namespace}/{pod} on {NODE_NAME}")
        return killed

    def images(self) -> list[str]:
        return [line for line in self.ctr("images", "ls", "-q").stdout.split() if not line.startswith("sha256:")]

    def _start_containerd(self) -> None:
        from .stack import wait

        cni = self.dir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-llmaz-node.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "llmaz-node",
            "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                         "hairpinMode": True,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": NODE_POD_CIDR}]],
                                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.run_dir / "ipam")}}],
        }))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "containerd.toml"
        config.write_text(f"""version = 2
root = "{self.dir / 'containerd'}"
state = "{self.run_dir / 'state'}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.paths['bridge'].parent}"
    conf_dir = "{cni}"
""")
        proc = self.stack.spawn("containerd", [self.paths["containerd"], "--config", config])
        wait("containerd serving", 30, lambda: self.socket.exists()
             and self.ctr("version", check=False, timeout=10).returncode == 0, proc)
        self.import_image(self.paths["pause"])
        self.import_image(self.paths["image"])

    # ------------------------------------------------------------------ kubelet

    def _start_kubelet(self) -> None:
        from .stack import _get, wait

        _ip("addr", "add", f"{NODE_ADDRESS}/32", "dev", "lo")
        health = self.stack.free_port("kubelet-health")
        config = self.dir / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": NODE_ADDRESS, "port": self.stack.free_port("kubelet"), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": health,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.stack.cp.ca_cert)}},
            "authorization": {"mode": "AlwaysAllow"},
            # What runs on a cgroup v1 host without systemd (checked on the CI machine).
            "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "localStorageCapacityIsolation": False, "failSwapOn": False,
            # The imported images are the only copies (nothing can be pulled): never collect them, and do not
            # evict pods because a shared build machine's disk is busy.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "nodeStatusUpdateFrequency": "5s", "maxPods": 20,
            "serializeImagePulls": False, "registerNode": True,
        }))
        label = "=".join(NODE_LABEL)
        proc = self.stack.spawn("kubelet", [
            self.paths["kubelet"], "--config", config, "--kubeconfig", self.stack.kubeconfig,
            "--hostname-override", NODE_NAME, "--node-ip", NODE_ADDRESS,
            "--root-dir", self.dir / "kubelet", "--cert-dir", self.dir / "kubelet-pki",
            "--node-labels", f"{label},kubernetes.io/os=linux", "--register-with-taints", NODE_TAINT, "--v", "1"])
        wait("kubelet healthy", 90, lambda: _get("127.0.0.1", health, "/healthz") == 200, proc)
        core = client.CoreV1Api(self.stack.api())

        def ready() -> bool:
            node = core.read_node(NODE_NAME)
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        wait(f"node {NODE_NAME} Ready", 90, ready, proc, interval=0.5)

    def _route_kubernetes_service(self) -> None:
        """The API server runs out of cluster on loopback; pods reach it as on any cluster, through the
        ``kubernetes`` Service (its EndpointSlice is written here: the control plane runs without the
        endpoint reconciler)."""
        _ip("addr", "add", f"{APISERVER_NODE_ADDRESS}/32", "dev", "lo")
        port = self.stack.cp.apiserver_port
        self.stack.apply_objects([{
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes-live", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "live-stack.llmaz-serverless.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [APISERVER_NODE_ADDRESS], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "RealNode":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = True
        try:
            self._route_kubernetes_service()
            self._start_containerd()
            self._start_kubelet()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        kubelet = self.stack.procs.pop("kubelet", None)
        if kubelet is not None:
            kubelet.stop(grace=5)
        if self.socket.exists():
            r = self.ctr("tasks", "ls", "-q", check=False, timeout=20)
            for task in r.stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split():
                time.sleep(0.2)
            for task in self.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split():
                self.ctr("tasks", "delete", "--force", task, check=False, timeout=10)
        containerd = self.stack.procs.pop("containerd", None)
        if containerd is not None:
            containerd.stop(grace=5)
        self._kill_leftover_shims()
        try:
            client.CoreV1Api(self.stack.api()).delete_node(NODE_NAME)
        except Exception:  # noqa: BLE001 - the control plane may already be gone
            pass

    def _kill_leftover_shims(self) -> None:
        """containerd's shims outlive containerd by design; those of this node are found by its socket path."""
        needle = str(self.socket).encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and needle in cmdline:
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except OSError:
                    pass
