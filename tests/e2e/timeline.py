"""Observing the live stack: when did each step of a cold start or a scale-down become visible?

``Timeline`` polls the API server every ``interval`` seconds in a thread (a Playground, its llmaz Service,
its LeaderWorkerSet and its pods) and records the first time each named condition held. Polling at 50 ms on
loopback costs little and gives every step the same resolution; the resolution is part of every report.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

LLMAZ = ("inference.llmaz.io", "v1alpha1")
LWS = ("leaderworkerset.x-k8s.io", "v1")


@dataclass
class Snapshot:
    playground: dict[str, Any] | None
    service: dict[str, Any] | None
    lws: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _replicas(obj: dict[str, Any] | None) -> int | None:
        return None if obj is None else (obj.get("spec") or {}).get("replicas")

    @property
    def playground_replicas(self) -> int | None:
        return self._replicas(self.playground)

    @property
    def service_replicas(self) -> int | None:
        # llmaz v0.1.1's Service keeps the replicas in its LeaderWorkerSet template; later versions in spec.
        own = self._replicas(self.service)
        if own is not None or self.service is None:
            return own
        return ((self.service.get("spec") or {}).get("workloadTemplate") or {}).get("replicas")

    @property
    def lws_replicas(self) -> int | None:
        return self._replicas(self.lws)

    def pods_where(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [p for p in self.pods if pred(p)]

    @property
    def scheduled(self) -> list[dict[str, Any]]:
        return self.pods_where(lambda p: bool((p.get("spec") or {}).get("nodeName")))

    @property
    def ready(self) -> list[dict[str, Any]]:
        return self.pods_where(lambda p: any(c.get("type") == "Ready" and c.get("status") == "True"
                                             for c in (p.get("status") or {}).get("conditions") or []))


class Timeline:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, interval: float = 0.05,
                 extra: dict[str, Callable[[], Any]] | None = None) -> None:
        """``extra``: more observations outside the API server (e.g. a queue's length), sampled alongside."""
        self.extra = dict(extra or {})
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace, self.name, self.interval = namespace, name, interval
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}
        self._watch: dict[str, Callable[[Snapshot], bool]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timeline-{name}", daemon=True)
        self.last: Snapshot | None = None
        self.samples = 0
        self.history: list[tuple[float, int | None]] = []   # (monotonic, Playground spec.replicas) on change

    def __enter__(self) -> "Timeline":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _get(self, group_version: tuple[str, str], plural: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(*group_version, self.namespace, plural, self.name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def snapshot(self) -> Snapshot:
        pods = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        items = json.loads(pods.data).get("items", [])
        return Snapshot(self._get(LLMAZ, "playgrounds"), self._get(LLMAZ, "services"), self._get(LWS, "leaderworkersets"),
                        [p for p in items if p["metadata"]["name"].startswith(self.name + "-")],
                        {k: fn() for k, fn in self.extra.items()})

    def expect(self, mark: str, pred: Callable[[Snapshot], bool]) -> None:
        """Record ``mark`` the first time ``pred`` holds from now on."""
        with self._lock:
            self.marks.pop(mark, None)
            self._watch[mark] = pred

    def mark(self, mark: str) -> float:
        now = time.monotonic()
        with self._lock:
            self.marks[mark] = now
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                snap = self.snapshot()
            except Exception:  # noqa: BLE001 - a fault test may restart the API server
                time.sleep(self.interval)
                continue
            now = time.monotonic()
            with self._lock:
                self.last = snap
                self.samples += 1
                if not self.history or self.history[-1][1] != snap.playground_replicas:
                    self.history.append((now, snap.playground_replicas))
                for mark, pred in list(self._watch.items()):
                    if pred(snap):
                        self.marks[mark] = now
                        del self._watch[mark]
            time.sleep(self.interval)

    def wait(self, mark: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if mark in self.marks:
                    return self.marks[mark]
            time.sleep(self.interval / 2)
        raise AssertionError(f"{mark!r} not observed within {timeout:.0f}s; last state: {self.describe_last()}")

    def replica_path(self) -> list[int | None]:
        """The successive values of the Playground's replicas seen so far (e.g. [0, 1, 3, 1, 0])."""
        with self._lock:
            return [r for _, r in self.history]

    def between(self, a: str, b: str) -> float:
        return self.marks[b] - self.marks[a]

    def describe_last(self) -> str:
        s = self.last
        if s is None:
            return "(nothing observed)"
        pods = [(p["metadata"]["name"], (p.get("spec") or {}).get("nodeName"), (p.get("status") or {}).get("phase"))
                for p in s.pods]
        return (f"playground replicas={s.playground_replicas} service={s.service_replicas} lws={s.lws_replicas} "
                f"pods={pods}")
