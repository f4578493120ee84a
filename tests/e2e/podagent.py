"""The container runtime and readiness prober of the live stack's fake nodes.

kwok plays the kubelet for node and pod *status*, but it runs nothing and probes nothing. The pod agent fills
that gap the way a kubelet would, so that a pod turns Ready only when its server really answers:

* when a pod on one of the stack's kwok nodes has been given its IP (kwok's ``pod-start`` stage, see
  ``manifests/kwok-stages.yaml``, sets it Running but not Ready), the agent starts the model-server
  stand-in (``tests.e2e.standin``) bound to that IP and the container's ``http`` port, configured from the
  container's environment (``STANDIN_*`` variables, which come from our BackendRuntime);
* it runs the container's ``readinessProbe`` (``httpGet`` path and port, ``initialDelaySeconds``,
  ``periodSeconds``) against the stand-in and, on the first success, writes the ``Ready`` and
  ``ContainersReady`` conditions and ready container statuses, as the kubelet's status manager does;
* when the pod is deleted it terminates the container as the kubelet does: the container's ``preStop`` sleep,
  then SIGTERM, then SIGKILL once the pod's grace period (``deletionGracePeriodSeconds``) has run out; then it
  removes the pod object (the kubelet's final delete). Until then the pod stays, terminating, and the
  EndpointSlice controller lists it as not ready, so kube-proxy and the interceptor send it nothing new.

Every step is time-stamped (``PodRecord``) so the tests can report where the time of a cold start goes.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PodRecord:
    namespace: str
    name: str
    uid: str
    ip: str = ""
    seen: float = 0.0            # the agent first saw the pod with an IP (monotonic)
    started: float = 0.0         # stand-in process started
    answered: float = 0.0        # first successful readiness probe
    ready_written: float = 0.0   # Ready condition written
    stopped: float = 0.0
    terminating: float = 0.0     # deletion seen (monotonic)
    sigterm: float = 0.0         # SIGTERM sent, after the preStop
    exited: float = 0.0          # the stand-in's process ended
    killed: bool = False         # SIGKILL was needed (grace period exhausted)
    probes: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)


def _now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _probe_once(host: str, port: int, path: str, timeout: float) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
        return 200 <= status < 400       # the kubelet's success range for httpGet probes
    except OSError:
        return False
    finally:
        conn.close()


class PodAgent:
    def __init__(self, api_client_factory: Callable[[], client.ApiClient], nodes: set[str], logs_dir: Path,
                 *, python: str = sys.executable) -> None:
        self._factory = api_client_factory
        self.nodes = set(nodes)
        self.logs_dir = logs_dir
        self.python = python
        self.records: dict[str, PodRecord] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        t = threading.Thread(target=self._watch_loop, name="podagent-watch", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            records = list(self.records.values())
        for rec in records:
            self._stop_standin(rec)

    def kill_standins(self) -> None:
        """Stop every stand-in (as if every model container crashed); used at teardown."""
        self.stop()

    # ------------------------------------------------------------------ watching pods

    def _watch_loop(self) -> None:
        api = client.CoreV1Api(self._factory())
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    lst = api.list_pod_for_all_namespaces()
                    rv = lst.metadata.resource_version
                    for pod in lst.items:
                        self._handle(api, "ADDED", api.api_client.sanitize_for_serialization(pod))
                w = watch.Watch()
                for ev in w.stream(api.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=30,
                                   _request_timeout=40):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = api.api_client.sanitize_for_serialization(ev["object"])
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    self._handle(api, ev["type"], obj)
            except ApiException as e:
                if e.status == 410:
                    rv = ""
                    continue
                self.errors.append(f"watch: {e.status} {e.reason}")
                time.sleep(0.5)
            except Exception as e:  # noqa: BLE001 - the API server may restart under a fault test
                self.errors.append(f"watch: {e!r}")
                time.sleep(0.5)

    def _handle(self, api: client.CoreV1Api, typ: str, pod: dict[str, Any]) -> None:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        uid = meta.get("uid", "")
        if spec.get("nodeName") not in self.nodes:
            return
        with self._lock:
            rec = self.records.get(uid)
        if typ == "DELETED":
            if rec is not None:
                self._stop_standin(rec)
            return
        if meta.get("deletionTimestamp"):
            if rec is None:
                # never started here: nothing to terminate
                self._final_delete(meta.get("namespace", ""), meta.get("name", ""), uid)
            elif not rec.terminating:
                rec.terminating = time.monotonic()
                t = threading.Thread(target=self._terminate, args=(rec, pod), name=f"podagent-term-{rec.name}",
                                     daemon=True)
                t.start()
                self._threads.append(t)
            return
        ip = status.get("podIP")
        if not ip or rec is not None:
            return
        rec = PodRecord(meta.get("namespace", ""), meta.get("name", ""), uid, ip=ip, seen=time.monotonic())
        with self._lock:
            self.records[uid] = rec
        t = threading.Thread(target=self._run_pod, args=(rec, pod), name=f"podagent-{rec.name}", daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------------ one pod

    def _run_pod(self, rec: PodRecord, pod: dict[str, Any]) -> None:
        containers = (pod.get("spec") or {}).get("containers") or []
        ctr = next((c for c in containers if c.get("name") == "model-runner"), containers[0] if containers else {})
        env = {e.get("name"): e.get("value", "") for e in ctr.get("env") or [] if isinstance(e, dict)}
        ports = ctr.get("ports") or []
        port = next((p.get("containerPort") for p in ports if p.get("name") == "http"),
                    ports[0].get("containerPort") if ports else 8080)
        model = ((pod.get("metadata") or {}).get("labels") or {}).get("llmaz.io/model-name") or rec.name
        # A Playground cannot override its BackendRuntime's variables (llmaz v0.1.1 refuses duplicate names), but
        # its args are appended: "--standin-<option>=<value>" in the container's args wins over STANDIN_<OPTION>.
        for a in ctr.get("args") or []:
            if isinstance(a, str) and a.startswith("--standin-") and "=" in a:
                key, _, value = a[len("--standin-"):].partition("=")
                env["STANDIN_" + key.upper().replace("-", "_")] = value
        args = [self.python, "-m", "tests.e2e.standin", "--host", rec.ip, "--port", str(port), "--model", model,
                "--pod", rec.name, "--load-delay", env.get("STANDIN_LOAD_DELAY", "0"),
                "--service-time", env.get("STANDIN_SERVICE_TIME", "0.05"), "--slots", env.get("STANDIN_SLOTS", "4")]
        if env.get("STANDIN_REDIS") and env.get("STANDIN_QUEUE"):
            args += ["--redis", env["STANDIN_REDIS"], "--queue", env["STANDIN_QUEUE"]]
        # vLLM's drain flag, as written into the container's args (by llmaz from the Playground's args)
        for a in ctr.get("args") or []:
            if isinstance(a, str) and a.startswith("--shutdown-timeout="):
                args += ["--shutdown-timeout", a.split("=", 1)[1]]
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.logs_dir / f"standin-{rec.namespace}-{rec.name}.log", "ab")
        try:
            rec.proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        finally:
            log.close()
        rec.started = time.monotonic()

        probe = ctr.get("readinessProbe") or {}
        get = probe.get("httpGet") or {"path": "/health", "port": port}
        pport = get.get("port", port)
        if isinstance(pport, str):   # a named port
            pport = next((p.get("containerPort") for p in ports if p.get("name") == pport), port)
        period = float(probe.get("periodSeconds") or 10)
        timeout = float(probe.get("timeoutSeconds") or 1)
        if self._stop.wait(float(probe.get("initialDelaySeconds") or 0)):
            return
        while not self._stop.is_set() and not rec.stopped and not rec.terminating:
            rec.probes += 1
            if _probe_once(rec.ip, int(pport), get.get("path", "/"), timeout):
                rec.answered = time.monotonic()
                break
            if rec.proc.poll() is not None:
                self.errors.append(f"{rec.namespace}/{rec.name}: stand-in exited with {rec.proc.returncode}")
                return
            self._stop.wait(period)
        else:
            return
        self._write_ready(rec, containers)

    def _write_ready(self, rec: PodRecord, containers: list[dict[str, Any]]) -> None:
        api = client.CoreV1Api(self._factory())
        now = _now_rfc3339()
        body = {"status": {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                           {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{"name": c.get("name"), "image": c.get("image", ""), "imageID": "",
                                   "ready": True, "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now}}} for c in containers],
        }}
        for attempt in range(20):
            try:
                api.patch_namespaced_pod_status(rec.name, rec.namespace, body)
                rec.ready_written = time.monotonic()
                return
            except ApiException as e:
                if e.status == 404:
                    return
                time.sleep(0.2 * (attempt + 1))
        self.errors.append(f"{rec.namespace}/{rec.name}: could not write Ready")

    def _terminate(self, rec: PodRecord, pod: dict[str, Any]) -> None:
        """The kubelet's part of a pod deletion: preStop, SIGTERM, SIGKILL at the end of the grace period."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        grace = float(grace if isinstance(grace, int) else spec.get("terminationGracePeriodSeconds") or 30)
        deadline = rec.terminating + grace
        containers = spec.get("containers") or []
        ctr = next((c for c in containers if c.get("name") == "model-runner"), containers[0] if containers else {})
        sleep = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        if isinstance(sleep, int) and sleep > 0:
            self._stop.wait(min(sleep, max(0.0, deadline - time.monotonic())))
        proc = rec.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                rec.sigterm = time.monotonic()
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rec.killed = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            except ProcessLookupError:
                pass
        rec.exited = rec.stopped = time.monotonic()
        self._final_delete(rec.namespace, rec.name, rec.uid)

    def _final_delete(self, namespace: str, name: str, uid: str) -> None:
        api = client.CoreV1Api(self._factory())
        for attempt in range(20):
            try:
                api.delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                          body=client.V1DeleteOptions(grace_period_seconds=0,
                                                                      preconditions=client.V1Preconditions(uid=uid)))
                return
            except ApiException as e:
                if e.status in (404, 409):
                    return
                time.sleep(0.2 * (attempt + 1))
            except Exception:  # noqa: BLE001 - the API server may be restarting under a fault test
                time.sleep(0.2 * (attempt + 1))
        self.errors.append(f"{namespace}/{name}: could not remove the terminated pod")

    def _stop_standin(self, rec: PodRecord) -> None:
        if rec.stopped:
            return
        rec.stopped = time.monotonic()
        proc = rec.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ queries for tests

    def running(self) -> list[PodRecord]:
        with self._lock:
            return [r for r in self.records.values() if r.proc is not None and r.proc.poll() is None]

    def record_for(self, namespace: str, name: str) -> PodRecord | None:
        with self._lock:
            found = [r for r in self.records.values() if r.namespace == namespace and r.name == name]
        return found[-1] if found else None
