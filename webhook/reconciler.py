"""The reconciler: keeps the KEDA objects of every managed Playground / Service in shape.

The webhook cannot create the KEDA objects itself (on CREATE the workload has no UID yet, so no owner
reference is possible, and an admission webhook must not have side effects). This level-triggered
controller does: it compares what *should* exist (``keda.desired_objects``) with what *does* exist, and
closes the gap. It is driven by informers (list + watch with local caches), a de-duplicating work queue
and a few asyncio workers; a periodic resync re-checks every workload.

What "managed" means (all must hold):

1. the namespace carries ``serverless.llmaz.io/enabled=true`` (``NAMESPACE_LABEL``);
2. the workload is not opted out (``serverless.llmaz.io/enabled: "false"``);
3. it is not a Service owned by a Playground (the Playground is the scale target);
4. ``desired_objects`` builds a ScaledObject for it.

Managed: the ScaledObject (and, with an ``http`` trigger, the InterceptorRoute) is server-side applied
(field manager ``llmaz-serverless``, forced) with a controller ownerReference to the workload, so the
garbage collector removes them with the workload. An InterceptorRoute of ours is deleted when ``http`` is
no longer a trigger. The apply is skipped when the live object already matches: every field we set is
present with our value, and the set of fields our field manager owns equals the set we would apply (so a
field we stopped setting, or a field someone else took over, is noticed). In steady state the reconciler
makes no writes at all.

Not managed any more (opted out, namespace label removed, ...): our KEDA objects of that workload (only
objects labelled ``app.kubernetes.io/managed-by=llmaz-serverless`` *and* naming this workload) are
deleted. **Never stranded at zero**: KEDA may have scaled the workload to 0; without a ScaledObject
nothing would ever wake it again. So before deleting our ScaledObject, a workload whose ``spec.replicas``
is 0 is set to ``max(1, minReplicaCount of that ScaledObject)``. (Only when *we* remove a ScaledObject:
a workload that someone scaled to 0 while we never managed it is left alone. A Service owned by a
Playground is never patched: the Playground drives its replicas.)

Invalid settings on an existing workload (``Denied``, e.g. someone edited a bad annotation while the
webhook was down or set to Ignore): a Warning Event ``Rejected`` with the message, and the existing KEDA
objects are left **untouched**. A running workload keeps autoscaling with its last good settings instead
of being broken by a typo; the Event (and the validating webhook, when it runs) tell the user.

A ScaledObject / InterceptorRoute of the same name that is *not* ours (no managed-by label) is never
taken over: Event ``Rejected``, nothing applied.

llmaz's own HPA: with ``spec.elasticConfig`` llmaz creates an HPA named after the Playground, owned by it,
targeting the Playground. Two HPAs on one target fight (and KEDA's webhook refuses the ScaledObject). If
such an HPA exists (the Playground was created before this webhook, or while it was down), the
reconciler converts ``elasticConfig`` into our annotations exactly as the mutating webhook does
(``maxReplicas`` -> max-replicas, ...), removes ``elasticConfig`` with a JSON patch (so llmaz stops managing
its HPA; llmaz only creates/patches it while ``elasticConfig`` is set and never deletes it), deletes that
HPA and then attaches KEDA, with an Event ``HPAReplaced``. An HPA owned by the Playground without
``elasticConfig`` is such a leftover and is deleted the same way. The alternative, KEDA's
``scaledobject.keda.sh/transfer-hpa-ownership``, was rejected: llmaz would keep re-applying its HPA from
``elasticConfig`` (server-side apply, field manager ``llmaz``) and fight KEDA over it. The conversion is
only done when the converted workload is valid (else ``Rejected``, nothing touched). An HPA on the target
that belongs to neither llmaz nor KEDA is not deleted: Event ``Rejected`` and no ScaledObject.

Leadership: informers (and so the webhook's OpenModel catalog and policy) run on every replica; the
workers that write run only on the replica holding the Lease (``leader.LeaderElector``).

RBAC this needs (the chart must grant it):
  inference.llmaz.io playgrounds, services: get list watch patch; playgrounds/finalizers,
      services/finalizers: update (ownerReferences with blockOwnerDeletion under the
      OwnerReferencesPermissionEnforcement admission plugin)
  llmaz.io openmodels: get list watch
  namespaces: get list watch
  configmaps (the policy ConfigMap, own namespace; resourceNames ok): get list watch
  keda.sh scaledobjects, http.keda.sh interceptorroutes: get list watch create patch delete
  autoscaling horizontalpodautoscalers: get list watch delete
  events (core): create (and events.k8s.io not needed)
  coordination.k8s.io leases (own namespace): get create update
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import logging
import random
import time
from collections import deque
from typing import Any, Awaitable, Callable, Hashable, Iterable

import jsonpatch

from . import constants as C
from .errors import Denied
from .keda import Desired, desired_objects
from .kube import (CONFIGMAPS, HPAS, INTERCEPTORROUTES, NAMESPACES, OPENMODELS, PLAYGROUNDS, SCALEDOBJECTS,
                   SERVICES, WORKLOAD_RESOURCES, ApiError, Conflict, Kube, NotFound, Resource)
from .leader import DEFAULT_LEASE_NAME, LeaderElector, default_identity
from . import mutation
from .policy_source import PolicySource
from .settings import opted_out, owned_by_playground

log = logging.getLogger("llmaz_serverless.reconciler")

Key = tuple[str, str, str]          # (kind, namespace, name) of a workload
ObjKey = tuple[str, str]            # (namespace, name) of a cached object ("" namespace: cluster-scoped)

MANAGED_SELECTOR = f"{C.LABEL_MANAGED_BY}={C.MANAGED_BY}"
EVENT_ATTACHED = "Attached"
EVENT_UPDATED = "Updated"
EVENT_REMOVED = "Removed"
EVENT_REJECTED = "Rejected"
EVENT_POLICY_INVALID = "PolicyInvalid"
EVENT_HPA_REPLACED = "HPAReplaced"


# ============================================================================================ metrics


class ReconcilerMetrics:
    """Adapter over ``webhook.metrics.METRICS`` (when present) so this module also works without it."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        try:
            from .metrics import METRICS as shared  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - metrics module absent or broken: keep private collectors
            shared = None
        self.registry = getattr(shared, "registry", None) or CollectorRegistry()
        r = self.registry

        def find(attr: str, make: Callable[[], Any]) -> Any:
            existing = getattr(shared, attr, None)
            return existing if existing is not None else make()

        self.policy_valid = find("policy_valid", lambda: Gauge(
            "llmaz_serverless_policy_valid", "1 when the policy ConfigMap is valid, 0 when rejected.", registry=r))
        self.policy_errors = find("policy_errors", lambda: Counter(
            "llmaz_serverless_policy_errors", "Policy documents rejected as invalid.", registry=r))
        self.reconciles = find("reconciles", lambda: Counter(
            "llmaz_serverless_reconciles", "Reconciles of workloads, by result.", ["result"], registry=r))
        self.reconcile_duration = find("reconcile_duration", lambda: Histogram(
            "llmaz_serverless_reconcile_duration_seconds", "Time to reconcile one workload.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=r))
        self.queue_depth = find("queue_depth", lambda: Gauge(
            "llmaz_serverless_reconcile_queue_depth", "Workloads waiting to be reconciled.", registry=r))
        self.managed_workloads = find("managed_workloads", lambda: Gauge(
            "llmaz_serverless_managed_workloads", "Workloads with KEDA objects managed by llmaz-serverless.",
            registry=r))


_METRICS: ReconcilerMetrics | None = None


def reconciler_metrics() -> ReconcilerMetrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = ReconcilerMetrics()
    return _METRICS


# ============================================================================================ work queue


class WorkQueue:
    """De-duplicating work queue with per-key exponential backoff (the client-go workqueue, in asyncio).

    - a key waiting in the queue is there once, however often it is added;
    - a key being processed is never handed to a second worker; re-added meanwhile, it is queued again
      when ``done`` is called (so no change is lost);
    - ``add_rate_limited`` re-adds a key after ``base * 2**failures`` seconds (capped), ``forget`` resets.

    ``clock`` is injectable so the timing can be tested without sleeping (``get_nowait``).
    """

    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.clock = clock
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._failures: dict[Hashable, int] = {}
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._on_depth = on_depth

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def pending_delayed(self) -> int:
        return len(self._due)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    def add(self, key: Hashable) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._wakeup.set()
        self._depth_changed()

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = self.clock() + delay
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._delayed, (due, self._seq, key))
        self._wakeup.set()

    def backoff(self, key: Hashable) -> float:
        """The delay the next ``add_rate_limited(key)`` will use."""
        n = self._failures.get(key, 0)
        return min(self.max_delay, self.base_delay * (2 ** min(n, 32)))

    def add_rate_limited(self, key: Hashable) -> float:
        delay = self.backoff(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wakeup.set()
            self._depth_changed()

    def clear(self) -> None:
        """Drop everything waiting (leadership lost); keys in processing finish normally."""
        self._queue.clear()
        self._dirty.clear()
        self._delayed.clear()
        self._due.clear()
        self._failures.clear()
        self._depth_changed()

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self.add(key)

    def next_due(self) -> float | None:
        while self._delayed and self._due.get(self._delayed[0][2]) != self._delayed[0][0]:
            heapq.heappop(self._delayed)  # superseded entry
        return self._delayed[0][0] if self._delayed else None

    def get_nowait(self) -> Hashable | None:
        self._promote(self.clock())
        if not self._queue:
            return None
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        self._depth_changed()
        return key

    async def get(self) -> Hashable:
        while True:
            key = self.get_nowait()
            if key is not None:
                return key
            self._wakeup.clear()
            due = self.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass


# ============================================================================================ informer

Handler = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], None]


def _obj_key(obj: dict[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _rv_int(obj: dict[str, Any] | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Informer:
    """List + watch one resource into a local cache and call handlers on changes.

    Handlers get ``(type, new, old)`` with type ADDED / MODIFIED / DELETED (``new`` is None for DELETED).
    A relist (start, or after 410 Gone) is diffed against the cache, so handlers see exactly the changes
    that happened while the watch was down, including deletions. ``synced`` is set after the first list.
    Transport errors back off (0.2 s doubling to ``max_backoff``) and resume watching from the last seen
    resourceVersion.
    """

    def __init__(self, kube: Kube, res: Resource, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 watch_timeout: int = 300, max_backoff: float = 5.0, name: str | None = None) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.transform = transform
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.name = name or res.plural
        self.cache: dict[ObjKey, dict[str, Any]] = {}
        self.handlers: list[Handler] = []
        self.on_synced: list[Callable[[], None]] = []
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self.errors = 0

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.cache.get((namespace or "", name))

    def values(self) -> Iterable[dict[str, Any]]:
        return list(self.cache.values())

    def _t(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.transform(obj) if self.transform else obj

    def put_local(self, obj: dict[str, Any]) -> None:
        """Write-through after our own write (the watch event follows); never goes backwards."""
        obj = self._t(obj)
        key = _obj_key(obj)
        old = self.cache.get(key)
        new_rv, old_rv = _rv_int(obj), _rv_int(old)
        if old is None or new_rv is None or old_rv is None or new_rv >= old_rv:
            self.cache[key] = obj

    def remove_local(self, namespace: str | None, name: str) -> None:
        self.cache.pop((namespace or "", name), None)

    def _emit(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        for h in self.handlers:
            try:
                h(typ, new, old)
            except Exception:  # noqa: BLE001
                log.exception("%s handler failed on %s", self.name, typ)

    def _replace(self, items: list[dict[str, Any]]) -> None:
        fresh = {}
        for raw in items:
            obj = self._t(raw)
            fresh[_obj_key(obj)] = obj
        old_cache = self.cache
        self.cache = fresh
        for key, obj in fresh.items():
            old = old_cache.get(key)
            if old is None:
                self._emit("ADDED", obj, None)
            elif (old.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                    "resourceVersion"):
                self._emit("MODIFIED", obj, old)
        for key, old in old_cache.items():
            if key not in fresh:
                self._emit("DELETED", None, old)

    def _apply_event(self, event: dict[str, Any]) -> None:
        typ = event.get("type")
        raw = event.get("object") or {}
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if typ == "BOOKMARK":
            return
        obj = self._t(raw)
        key = _obj_key(obj)
        old = self.cache.get(key)
        if typ in ("ADDED", "MODIFIED"):
            self.cache[key] = obj
            self._emit("ADDED" if old is None else "MODIFIED", obj, old)
        elif typ == "DELETED":
            self.cache.pop(key, None)
            self._emit("DELETED", None, old or obj)

    async def run(self, stop: asyncio.Event) -> None:
        need_list = True
        backoff = 0.2
        while not stop.is_set():
            try:
                if need_list:
                    result = await self.kube.list(self.res, self.namespace, label_selector=self.label_selector,
                                                  field_selector=self.field_selector)
                    self._replace(result.items)
                    self.resource_version = result.resource_version
                    self.relists += 1
                    need_list = False
                    if not self.synced.is_set():
                        self.synced.set()
                        for cb in self.on_synced:
                            cb()
                timeout = int(self.watch_timeout * random.uniform(0.8, 1.2))
                async with contextlib.aclosing(self.kube.watch(
                        self.res, self.namespace, resource_version=self.resource_version,
                        label_selector=self.label_selector, field_selector=self.field_selector,
                        timeout_seconds=timeout)) as events:
                    async for event in events:
                        self._apply_event(event)
                        backoff = 0.2
                        if stop.is_set():
                            return
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                self.errors += 1
                if exc.status == 410:
                    log.debug("%s: resourceVersion too old, relisting", self.name)
                    need_list = True
                    continue
                transient = exc.status in (0, 429, 500, 502, 503, 504)
                log.log(logging.INFO if transient else logging.WARNING,
                        "%s: list/watch failed (%s); retrying in %.1fs", self.name, exc, backoff)
                if not transient:
                    need_list = True  # e.g. 403 while RBAC settles: start over cleanly
                await _sleep_or_stop(stop, backoff * random.uniform(0.8, 1.2))
                backoff = min(self.max_backoff, backoff * 2)
            except Exception:  # noqa: BLE001 - e.g. a malformed event: never let an informer die
                self.errors += 1
                log.exception("%s: watch loop error; relisting", self.name)
                need_list = True
                await _sleep_or_stop(stop, backoff)
                backoff = min(self.max_backoff, backoff * 2)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


# ============================================================================================ pure helpers


def _labels(obj: dict[str, Any] | None) -> dict[str, str]:
    meta = (obj or {}).get("metadata") or {}
    labels = meta.get("labels")
    return labels if isinstance(labels, dict) else {}


def workload_key_of_owned(obj: dict[str, Any]) -> Key | None:
    """The workload a KEDA object of ours belongs to (from its labels), or None if it is not ours."""
    labels = _labels(obj)
    if labels.get(C.LABEL_MANAGED_BY) != C.MANAGED_BY:
        return None
    kind, name = labels.get(C.LABEL_WORKLOAD_KIND), labels.get(C.LABEL_WORKLOAD_NAME)
    if kind not in C.WORKLOAD_KINDS or not name:
        return None
    return (kind, (obj.get("metadata") or {}).get("namespace") or "", name)


def is_ours_for(obj: dict[str, Any] | None, kind: str, name: str) -> bool:
    labels = _labels(obj)
    return (labels.get(C.LABEL_MANAGED_BY) == C.MANAGED_BY and labels.get(C.LABEL_WORKLOAD_KIND) == kind
            and labels.get(C.LABEL_WORKLOAD_NAME) == name)


def hpa_target_key(hpa: dict[str, Any]) -> Key | None:
    """The llmaz workload an HPA scales, or None."""
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    api = str(ref.get("apiVersion") or "")
    if ref.get("kind") not in C.WORKLOAD_KINDS or not api.startswith(C.LLMAZ_GROUP + "/") or not ref.get("name"):
        return None
    return (ref["kind"], (hpa.get("metadata") or {}).get("namespace") or "", ref["name"])


def namespace_enabled(ns: dict[str, Any] | None) -> bool:
    return _labels(ns).get(C.NAMESPACE_LABEL) == "true"


def namespace_terminating(ns: dict[str, Any] | None) -> bool:
    if ns is None:
        return False
    return bool((ns.get("metadata") or {}).get("deletionTimestamp")) or (
        (ns.get("status") or {}).get("phase") == "Terminating")


def contains(desired: Any, live: Any) -> bool:
    """Every field of ``desired`` is in ``live`` with the same value (lists: same length, item by item)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(v is None or (k in live and contains(v, live[k])) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(
            contains(d, x) for d, x in zip(desired, live))
    if isinstance(desired, bool) or isinstance(live, bool):
        return isinstance(desired, bool) and isinstance(live, bool) and desired == live
    return desired == live


_IGNORED_PATHS = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


def object_paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Field paths set by ``obj`` as server-side apply tracks them (maps recurse, lists are leaves)."""
    out: set[tuple[str, ...]] = set()
    for k, v in obj.items():
        if v is None:
            continue
        p = prefix + (k,)
        if isinstance(v, dict) and v:
            out |= object_paths(v, p)
        else:
            out.add(p)
    return out - _IGNORED_PATHS if not prefix else out


def fields_v1_paths(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The same paths from a managedFields ``fieldsV1`` tree (list items collapse onto their list)."""
    out: set[tuple[str, ...]] = set()
    for k, v in fields.items():
        if k == ".":
            continue
        if not k.startswith("f:"):
            out.add(prefix)          # k:/v:/i: entries: prefix is a (keyed) list, a leaf for us
            continue
        p = prefix + (k[2:],)
        if isinstance(v, dict) and any(kk != "." for kk in v):
            out |= fields_v1_paths(v, p)
        else:
            out.add(p)
    return out


def owned_paths(live: dict[str, Any], manager: str = C.FIELD_MANAGER) -> set[tuple[str, ...]] | None:
    """Paths our field manager owns through Apply, or None when it owns nothing."""
    found = None
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            found = (found or set()) | fields_v1_paths(entry.get("fieldsV1") or {})
    return found


def live_matches(desired: dict[str, Any], live: dict[str, Any] | None, manager: str = C.FIELD_MANAGER) -> bool:
    """Is the live object what an apply of ``desired`` would produce (for the fields we own)?"""
    if live is None:
        return False
    dm, lm = desired.get("metadata") or {}, live.get("metadata") or {}
    if not contains(dm.get("labels") or {}, lm.get("labels") or {}):
        return False
    if dm.get("ownerReferences") and not contains(dm["ownerReferences"], lm.get("ownerReferences") or []):
        return False
    if not contains(desired.get("spec") or {}, live.get("spec") or {}):
        return False
    owned = owned_paths(live, manager)
    return owned is not None and owned == object_paths(desired)


def restore_replicas(scaled_object: dict[str, Any] | None) -> int:
    """Replicas to give a workload found at 0 when its ScaledObject goes away: never stranded at zero."""
    spec = (scaled_object or {}).get("spec") or {}
    prev_min = spec.get("minReplicaCount")
    prev_min = prev_min if isinstance(prev_min, int) and not isinstance(prev_min, bool) else 0
    return max(1, prev_min)


def workload_replicas(obj: dict[str, Any]) -> int | None:
    value = (obj.get("spec") or {}).get("replicas")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _owned_by_uid(obj: dict[str, Any], uid: str | None) -> bool:
    return bool(uid) and any(isinstance(r, dict) and r.get("uid") == uid
                             for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def classify_hpas(workload: dict[str, Any], hpas: Iterable[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Split the HPAs targeting ``workload`` into (llmaz's, foreign). KEDA's own HPA is neither.

    llmaz's HPA is owned by the Playground (and named after it); an HPA named after a Playground that
    still has ``spec.elasticConfig`` is treated as llmaz's as well.
    """
    meta = workload.get("metadata") or {}
    name, uid = meta.get("name"), meta.get("uid")
    keda_name = C.KEDA_HPA_PREFIX + C.scaled_object_name(name or "")
    has_elastic = workload.get("kind") == C.KIND_PLAYGROUND and (workload.get("spec") or {}).get(
        "elasticConfig") is not None
    llmaz, foreign = [], []
    for h in hpas:
        hmeta = h.get("metadata") or {}
        owners = hmeta.get("ownerReferences") or []
        if hmeta.get("name") == keda_name or any(isinstance(o, dict) and o.get("kind") == "ScaledObject"
                                                 for o in owners):
            continue
        if _owned_by_uid(h, uid) or (has_elastic and hmeta.get("name") == name):
            llmaz.append(h)
        else:
            foreign.append(h)
    return llmaz, foreign


def convert_elastic_config(workload: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """``workload`` with ``spec.elasticConfig`` turned into our annotations (by the mutating webhook's own
    rule), the JSON patch that gets there, and the conversion notes."""
    converted = copy.deepcopy(workload)
    notes: list[str] = []
    mutation.convert_elastic_config(converted, notes)

    def part(o: dict[str, Any]) -> dict[str, Any]:
        meta = o.get("metadata") or {}
        out: dict[str, Any] = {"metadata": {}, "spec": {}}
        if "annotations" in meta:
            out["metadata"]["annotations"] = meta["annotations"]
        if "elasticConfig" in (o.get("spec") or {}):
            out["spec"]["elasticConfig"] = o["spec"]["elasticConfig"]
        return out

    ops = list(jsonpatch.make_patch(part(workload), part(converted)))
    rv = (workload.get("metadata") or {}).get("resourceVersion")
    if rv:
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
    return converted, ops, notes


def describe(so: dict[str, Any] | None) -> str:
    spec = (so or {}).get("spec") or {}
    trig = ", ".join(str(t.get("name") or t.get("type")) for t in spec.get("triggers") or [])
    return f"replicas {spec.get('minReplicaCount')}..{spec.get('maxReplicaCount')}, triggers: {trig}"


# ------------------------------------------------------------------------ cache transforms (memory)


def _slim_meta(meta: dict[str, Any], keep_managed: bool) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k != "managedFields"}
    if keep_managed:
        mf = [e for e in meta.get("managedFields") or [] if e.get("manager") == C.FIELD_MANAGER]
        if mf:
            out["managedFields"] = mf
    return out


def slim_owned(obj: dict[str, Any]) -> dict[str, Any]:
    """KEDA objects: metadata (with only our managedFields) and spec; status is not needed."""
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": _slim_meta(obj.get("metadata") or {}, True), "spec": obj.get("spec") or {}}


def slim_workload(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = _slim_meta(obj.get("metadata") or {}, False)
    return out


def slim_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "uid", "labels", "deletionTimestamp", "resourceVersion")
                         if k in meta},
            "status": {"phase": (obj.get("status") or {}).get("phase")}}


def slim_hpa(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "ownerReferences", "resourceVersion")
                         if k in meta},
            "spec": {"scaleTargetRef": (obj.get("spec") or {}).get("scaleTargetRef") or {}}}


# ============================================================================================ events


class EventRecorder:
    """Kubernetes Events about workloads, with identical consecutive events per object suppressed."""

    def __init__(self, kube: Kube | None, instance: str, enabled: bool = True) -> None:
        self.kube = kube
        self.instance = instance
        self.enabled = enabled and kube is not None
        self._last: dict[Hashable, tuple[str, str]] = {}
        self.sent = 0

    def should_emit(self, key: Hashable, reason: str, message: str) -> bool:
        """Pure part: False when this is the same (reason, message) as the last event for ``key``."""
        if self._last.get(key) == (reason, message):
            return False
        self._last[key] = (reason, message)
        return True

    def forget(self, key: Hashable) -> None:
        self._last.pop(key, None)

    async def emit(self, key: Hashable, involved: dict[str, Any], reason: str, message: str,
                   type: str = "Normal") -> None:
        if not self.should_emit(key, reason, message):
            return
        log.info("event %s %s/%s: %s", reason, (involved.get("metadata") or {}).get("namespace"),
                 (involved.get("metadata") or {}).get("name"), message)
        if not self.enabled:
            return
        assert self.kube is not None
        try:
            await self.kube.create_event(involved, reason, message, type=type, instance=self.instance)
            self.sent += 1
        except ApiError as exc:
            self._last.pop(key, None)   # try again next time
            log.warning("could not record event %s: %s", reason, exc)


# ============================================================================================ controller


class ForeignObject(Exception):
    """An object with our name exists and is not ours."""


class Controller:
    """Informers + work queue + reconcile. ``run_controller`` wires it with leader election."""

    def __init__(self, kube: Kube, brain: Any, *, namespace: str, policy_configmap: str | None,
                 identity: str | None = None, resync: float = 300.0, workers: int = 4,
                 events: bool = True, base_delay: float = 0.5, max_delay: float = 60.0,
                 watch_timeout: int = 300) -> None:
        self.kube = kube
        self.brain = brain
        self.namespace = namespace
        self.policy_configmap = policy_configmap
        self.identity = identity or default_identity()
        self.resync = resync
        self.n_workers = max(1, workers)
        self.metrics = reconciler_metrics()
        self.queue = WorkQueue(base_delay=base_delay, max_delay=max_delay,
                               on_depth=lambda n: self.metrics.queue_depth.set(n))
        self.recorder = EventRecorder(kube, self.identity, enabled=events)
        self.policy_source = PolicySource()
        self.managed: set[Key] = set()
        self.leading = False
        self.synced = asyncio.Event()
        self.reconcile_count = 0
        self.write_count = 0
        self._bg: set[asyncio.Task] = set()
        self._hpa_index: dict[Key, dict[str, dict[str, Any]]] = {}
        self.elector: LeaderElector | None = None      # set by run_controller with leader election

        wt = watch_timeout
        self.playgrounds = Informer(kube, PLAYGROUNDS, transform=slim_workload, watch_timeout=wt)
        self.services = Informer(kube, SERVICES, transform=slim_workload, watch_timeout=wt)
        self.namespaces = Informer(kube, NAMESPACES, transform=slim_namespace, watch_timeout=wt)
        self.openmodels = Informer(kube, OPENMODELS, watch_timeout=wt)
        self.scaledobjects = Informer(kube, SCALEDOBJECTS, label_selector=MANAGED_SELECTOR, transform=slim_owned,
                                      watch_timeout=wt)
        self.routes = Informer(kube, INTERCEPTORROUTES, label_selector=MANAGED_SELECTOR, transform=slim_owned,
                               watch_timeout=wt)
        self.hpas = Informer(kube, HPAS, transform=slim_hpa, watch_timeout=wt)
        self.informers = [self.playgrounds, self.services, self.namespaces, self.openmodels, self.scaledobjects,
                          self.routes, self.hpas]
        self.policy_informer: Informer | None = None
        if policy_configmap:
            self.policy_informer = Informer(kube, CONFIGMAPS, namespace=namespace,
                                            field_selector=f"metadata.name={policy_configmap}", watch_timeout=wt)
            self.informers.append(self.policy_informer)
            self.policy_informer.add_handler(self._on_policy)

        self.playgrounds.add_handler(self._on_workload)
        self.services.add_handler(self._on_workload)
        self.namespaces.add_handler(self._on_namespace)
        self.openmodels.add_handler(self._on_openmodel)
        self.openmodels.on_synced.append(self._models_synced)
        self.scaledobjects.add_handler(self._on_owned)
        self.routes.add_handler(self._on_owned)
        self.hpas.add_handler(self._on_hpa)

    # ------------------------------------------------------------------------------ keys & handlers

    def workload_informer(self, kind: str) -> Informer:
        return self.playgrounds if kind == C.KIND_PLAYGROUND else self.services

    def all_keys(self) -> list[Key]:
        keys: list[Key] = []
        for kind, inf in ((C.KIND_PLAYGROUND, self.playgrounds), (C.KIND_SERVICE, self.services)):
            keys.extend((kind, ns, name) for (ns, name) in list(inf.cache))
        return keys

    def enqueue(self, key: Key) -> None:
        if self.leading:
            self.queue.add(key)

    def enqueue_all(self) -> None:
        if self.leading:
            for key in self.all_keys():
                self.queue.add(key)

    def _on_workload(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        obj = new or old or {}
        kind = obj.get("kind") or ""
        ns, name = _obj_key(obj)
        if typ == "DELETED":
            self.managed.discard((kind, ns, name))
            self.metrics.managed_workloads.set(len(self.managed))
            self.recorder.forget((kind, ns, name))
        self.enqueue((kind, ns, name))

    def _on_namespace(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        if typ == "MODIFIED" and namespace_enabled(new) == namespace_enabled(old) and \
                namespace_terminating(new) == namespace_terminating(old):
            return
        ns = _obj_key(new or old or {})[1]
        for kind, inf in ((C.KIND_PLAYGROUND, self.playgrounds), (C.KIND_SERVICE, self.services)):
            for (wns, name) in list(inf.cache):
                if wns == ns:
                    self.enqueue((kind, wns, name))

    def _on_openmodel(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        models = self.brain.models
        if typ == "DELETED":
            models.remove(_obj_key(old or {})[1])
        else:
            assert new is not None
            models.put(new)
        if self.openmodels.synced.is_set():
            self.enqueue_all()

    def _models_synced(self) -> None:
        self.brain.models.synced = True

    def _on_owned(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        key = workload_key_of_owned(new or old or {})
        if key is not None:
            self.enqueue(key)

    def _on_hpa(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        for obj, present in ((old, False), (new, True)):
            if obj is None:
                continue
            key = hpa_target_key(obj)
            if key is None:
                continue
            name = _obj_key(obj)[1]
            bucket = self._hpa_index.setdefault(key, {})
            if present:
                bucket[name] = obj
            else:
                bucket.pop(name, None)
                if not bucket:
                    self._hpa_index.pop(key, None)
        for obj in (old, new):
            key = hpa_target_key(obj) if obj else None
            if key is not None:
                self.enqueue(key)

    def hpas_for(self, key: Key) -> list[dict[str, Any]]:
        return list(self._hpa_index.get(key, {}).values())

    def _on_policy(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        update = self.policy_source.apply(None if typ == "DELETED" else new)
        self.metrics.policy_valid.set(0 if update.error else 1)
        if update.error:
            self.metrics.policy_errors.inc()
            log.error("policy ConfigMap %s/%s rejected, keeping the last good policy: %s", self.namespace,
                      self.policy_configmap, update.error)
            if self.leading:
                self._policy_event()
        elif typ == "DELETED":
            log.warning("policy ConfigMap %s/%s deleted: using the built-in default policy", self.namespace,
                        self.policy_configmap)
        else:
            log.info("policy loaded from ConfigMap %s/%s", self.namespace, self.policy_configmap)
        if update.changed:
            self.brain.policy = update.policy
            self.enqueue_all()

    def _policy_event(self) -> None:
        if not self.policy_source.error or self.policy_informer is None:
            return
        cm = self.policy_informer.get(self.namespace, self.policy_configmap or "")
        if cm is None:
            return
        msg = f"policy rejected, the last good policy stays in force: {self.policy_source.error}"
        self._spawn(self.recorder.emit(("ConfigMap", self.namespace, self.policy_configmap), cm,
                                       EVENT_POLICY_INVALID, msg, "Warning"))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ------------------------------------------------------------------------------ running

    async def run_informers(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(inf.run(stop), name=f"informer-{inf.name}") for inf in self.informers]

        async def mark_synced() -> None:
            await asyncio.gather(*(inf.synced.wait() for inf in self.informers))
            self.synced.set()
            log.info("caches synced: %s", ", ".join(f"{inf.name}={len(inf.cache)}" for inf in self.informers))

        tasks.append(asyncio.create_task(mark_synced()))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in list(self._bg):
                t.cancel()

    async def run_workers(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set (leadership lost or shutdown). Waits for the caches first."""
        await _wait_any(self.synced, stop)
        if stop.is_set():
            return
        self.leading = True
        self.enqueue_all()
        self._policy_event()
        tasks = [asyncio.create_task(self._worker(i), name=f"reconcile-worker-{i}") for i in range(self.n_workers)]
        tasks.append(asyncio.create_task(self._resync_loop(stop), name="resync"))
        try:
            await stop.wait()
        finally:
            self.leading = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.queue.clear()

    async def _resync_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(stop, self.resync * random.uniform(0.9, 1.1))
            if not stop.is_set():
                self.enqueue_all()

    async def _worker(self, i: int) -> None:
        while True:
            key = await self.queue.get()
            t0 = time.perf_counter()
            try:
                result = await self.reconcile(key)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                self.queue.done(key)
                raise
            except ApiError as exc:
                delay = self.queue.add_rate_limited(key)
                result = "error"
                log.info("reconcile %s failed: %s; retry in %.1fs", "/".join(key), exc, delay)
            except Exception:  # noqa: BLE001
                delay = self.queue.add_rate_limited(key)
                result = "error"
                log.exception("reconcile %s crashed; retry in %.1fs", "/".join(key), delay)
            else:
                self.queue.forget(key)
            finally:
                self.reconcile_count += 1
            self.queue.done(key)
            self.metrics.reconciles.labels(result).inc()
            self.metrics.reconcile_duration.observe(time.perf_counter() - t0)

    # ------------------------------------------------------------------------------ reconcile

    def _set_managed(self, key: Key, managed: bool) -> None:
        if managed:
            self.managed.add(key)
        else:
            self.managed.discard(key)
        self.metrics.managed_workloads.set(len(self.managed))

    def _owned(self, inf: Informer, kind: str, ns: str, obj_name: str, name: str) -> dict[str, Any] | None:
        live = inf.get(ns, obj_name)
        return live if is_ours_for(live, kind, name) else None

    def unmanaged_reason(self, obj: dict[str, Any], ns_obj: dict[str, Any] | None) -> str:
        if not namespace_enabled(ns_obj):
            return f"namespace is not labelled {C.NAMESPACE_LABEL}=true"
        if opted_out(obj):
            return f"opted out with {C.ANN_ENABLED}=false"
        if obj.get("kind") == C.KIND_SERVICE and owned_by_playground(obj):
            return "Service owned by a Playground"
        return ""

    async def reconcile(self, key: Key) -> str:
        """Bring the KEDA objects of one workload in line. Returns a short result label."""
        kind, ns, name = key
        obj = self.workload_informer(kind).get(ns, name)
        if obj is None:
            self._set_managed(key, False)
            self.recorder.forget(key)
            return "gone"            # ownerReferences + garbage collector remove our objects
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return "deleting"
        ns_obj = self.namespaces.get(None, ns)
        if ns_obj is None or namespace_terminating(ns_obj):
            return "skipped"
        so_name, ir_name = C.scaled_object_name(name), C.interceptor_route_name(name)
        live_so = self._owned(self.scaledobjects, kind, ns, so_name, name)
        live_ir = self._owned(self.routes, kind, ns, ir_name, name)

        reason = self.unmanaged_reason(obj, ns_obj)
        if reason:
            return await self._unmanage(key, obj, live_so, live_ir, reason)

        policy, models = self.brain.policy, self.brain.models
        llmaz_hpas, foreign_hpas = classify_hpas(obj, self.hpas_for(key))
        candidate, patch_ops, notes = obj, [], []
        has_elastic = kind == C.KIND_PLAYGROUND and (obj.get("spec") or {}).get("elasticConfig") is not None
        if llmaz_hpas and has_elastic:
            candidate, patch_ops, notes = convert_elastic_config(obj)
        try:
            desired = desired_objects(candidate, policy, models)
        except Denied as d:
            await self.recorder.emit(key, obj, EVENT_REJECTED,
                                     d.message + (" (existing KEDA objects left unchanged)" if live_so else ""),
                                     "Warning")
            return "rejected"
        if desired.scaled_object is None:
            return await self._unmanage(key, obj, live_so, live_ir, desired.analysis.skip_reason or "not managed")
        if foreign_hpas:
            names = ", ".join(sorted((h.get("metadata") or {}).get("name", "") for h in foreign_hpas))
            await self.recorder.emit(key, obj, EVENT_REJECTED,
                                     f"HorizontalPodAutoscaler {names} already scales this {kind}; KEDA cannot "
                                     f"share a target with another HPA. Delete it, or opt out with "
                                     f"{C.ANN_ENABLED}: \"false\"", "Warning")
            return "conflict"
        if llmaz_hpas:
            obj = await self._replace_llmaz_hpa(key, obj, llmaz_hpas, patch_ops, notes)
            desired = desired_objects(obj, policy, models)
            if desired.scaled_object is None:
                return "requeued"
        return await self._manage(key, obj, desired, live_so, live_ir)

    async def _manage(self, key: Key, obj: dict[str, Any], desired: Desired, live_so: dict[str, Any] | None,
                      live_ir: dict[str, Any] | None) -> str:
        kind, ns, name = key
        assert desired.scaled_object is not None
        try:
            if desired.interceptor_route is not None:
                ir_change = await self._ensure(INTERCEPTORROUTES, self.routes, desired.interceptor_route, live_ir,
                                               kind, name)
            else:
                ir_change = None
                if live_ir is not None:
                    await self._delete(INTERCEPTORROUTES, self.routes, live_ir)
                    ir_change = "deleted"
            so_change = await self._ensure(SCALEDOBJECTS, self.scaledobjects, desired.scaled_object, live_so,
                                           kind, name)
        except ForeignObject as exc:
            await self.recorder.emit(key, obj, EVENT_REJECTED, str(exc), "Warning")
            return "conflict"
        except ApiError as exc:
            if exc.status in (400, 422):   # the API server (a CRD rule, KEDA's webhook) refused our object
                await self.recorder.emit(key, obj, EVENT_REJECTED,
                                         f"the API server rejected the KEDA objects: {exc.message or exc}",
                                         "Warning")
            raise                          # retried with backoff
        self._set_managed(key, True)
        if so_change is None and ir_change is None:
            return "unchanged"
        so = desired.scaled_object
        parts = [f"ScaledObject {so['metadata']['name']}"]
        if desired.interceptor_route is not None:
            parts.append(f"InterceptorRoute {desired.interceptor_route['metadata']['name']}")
        if so_change == "created":
            await self.recorder.emit(key, obj, EVENT_ATTACHED, f"{' and '.join(parts)} created ({describe(so)})")
        else:
            extra = "; InterceptorRoute removed (no http trigger)" if ir_change == "deleted" else ""
            await self.recorder.emit(key, obj, EVENT_UPDATED, f"{' and '.join(parts)} updated ({describe(so)}){extra}")
        return "applied"

    async def _ensure(self, res: Resource, inf: Informer, desired: dict[str, Any], live: dict[str, Any] | None,
                      kind: str, name: str) -> str | None:
        """Apply ``desired`` unless ``live`` already matches. Returns "created", "updated" or None."""
        if live is not None and live_matches(desired, live):
            return None
        meta = desired["metadata"]
        try:
            # Not in our cache: don't force, so a foreign object of the same name shows up as a conflict.
            result = await self.kube.apply(res, desired, force=live is not None)
        except Conflict:
            current = await self.kube.get(res, meta["name"], meta["namespace"])
            if not is_ours_for(current, kind, name):
                raise ForeignObject(f"{res.kind} {meta['namespace']}/{meta['name']} already exists and is not "
                                    f"managed by {C.MANAGED_BY}; delete it, or opt this {kind} out with "
                                    f"{C.ANN_ENABLED}: \"false\"") from None
            live = current
            result = await self.kube.apply(res, desired, force=True)
        self.write_count += 1
        inf.put_local(result)
        return "updated" if live is not None else "created"

    async def _delete(self, res: Resource, inf: Informer, live: dict[str, Any]) -> None:
        meta = live.get("metadata") or {}
        try:
            await self.kube.delete(res, meta["name"], meta.get("namespace"), uid=meta.get("uid"))
            self.write_count += 1
        except NotFound:
            pass
        except Conflict:
            pass  # precondition failed: a different object of that name now; the next event re-checks
        inf.remove_local(meta.get("namespace"), meta["name"])

    async def _unmanage(self, key: Key, obj: dict[str, Any], live_so: dict[str, Any] | None,
                        live_ir: dict[str, Any] | None, reason: str) -> str:
        kind, ns, name = key
        if live_so is None and live_ir is None:
            self._set_managed(key, False)
            return "unmanaged"
        restored = None
        if live_so is not None and workload_replicas(obj) == 0 and not (
                kind == C.KIND_SERVICE and owned_by_playground(obj)):
            restored = restore_replicas(live_so)
            res = WORKLOAD_RESOURCES[kind]
            updated = await self.kube.patch(res, name, {"spec": {"replicas": restored}}, ns)
            self.write_count += 1
            self.workload_informer(kind).put_local(updated)
        removed = []
        if live_ir is not None:
            await self._delete(INTERCEPTORROUTES, self.routes, live_ir)
            removed.append(f"InterceptorRoute {name}")
        if live_so is not None:
            await self._delete(SCALEDOBJECTS, self.scaledobjects, live_so)
            removed.append(f"ScaledObject {name}")
        self._set_managed(key, False)
        msg = f"{' and '.join(removed)} removed: {reason}"
        if restored is not None:
            msg += f"; replicas set from 0 to {restored} so the workload is not stranded at zero"
        await self.recorder.emit(key, obj, EVENT_REMOVED, msg)
        return "removed"

    async def _replace_llmaz_hpa(self, key: Key, obj: dict[str, Any], hpas: list[dict[str, Any]],
                                 patch_ops: list[dict[str, Any]], notes: list[str]) -> dict[str, Any]:
        kind, ns, name = key
        res = WORKLOAD_RESOURCES[kind]
        patched = len(patch_ops) > 1  # more than the resourceVersion test
        if patched:
            obj = await self.kube.patch(res, name, patch_ops, ns, patch_type="json")
            self.write_count += 1
            self.workload_informer(kind).put_local(obj)
            obj = self.workload_informer(kind).get(ns, name) or obj
        names = []
        for h in hpas:
            hmeta = h.get("metadata") or {}
            try:
                await self.kube.delete(HPAS, hmeta["name"], ns, uid=hmeta.get("uid"))
                self.write_count += 1
            except (NotFound, Conflict):
                pass
            self._on_hpa("DELETED", None, h)
            names.append(hmeta["name"])
        msg = (f"llmaz HorizontalPodAutoscaler {', '.join(names)} deleted"
               + (" and spec.elasticConfig removed" if patched else "")
               + f" so that KEDA is the only autoscaler of this {kind}")
        if notes:
            msg += "; " + "; ".join(notes)
        await self.recorder.emit(key, obj, EVENT_HPA_REPLACED, msg)
        return obj


# ============================================================================================ entry point


async def run_controller(kube: Kube, brain: Any, *, namespace: str, policy_configmap: str | None,
                         leader_election: bool, identity: str | None, stop: asyncio.Event,
                         resync: float = 300, workers: int = 4, lease_name: str = DEFAULT_LEASE_NAME,
                         lease_duration: float = 15.0, renew_period: float = 2.0,
                         controller: Controller | None = None) -> None:
    """Run the informers (always: they feed ``brain.models`` and ``brain.policy`` on every replica) and,
    on the leader only, the reconcile workers. Returns after ``stop`` is set and everything has stopped
    (the Lease is released on the way out).

    ``controller`` lets tests and benchmarks pass a pre-built ``Controller`` to inspect it.
    """
    if controller is not None:
        ctl = controller
        identity = identity or ctl.identity
    else:
        identity = identity or default_identity()
        ctl = Controller(kube, brain, namespace=namespace, policy_configmap=policy_configmap, identity=identity,
                         resync=resync, workers=workers)
    informers = asyncio.create_task(ctl.run_informers(stop), name="informers")
    try:
        if not leader_election:
            await ctl.run_workers(stop)
            return
        lost = asyncio.Event()
        elector = LeaderElector(kube, namespace, name=lease_name, identity=identity,
                                lease_duration=lease_duration, renew_period=renew_period, on_stopped=lost.set)
        ctl.elector = elector
        election = asyncio.create_task(elector.run(stop), name="leader-election")
        try:
            while not stop.is_set():
                await _wait_any(elector.leading, stop)
                if stop.is_set():
                    break
                lost.clear()
                if not elector.is_leader:   # lost again in between
                    continue
                await ctl.run_workers(_Either(lost, stop).event)
        finally:
            if not stop.is_set():          # cancelled: do not leave the election running
                election.cancel()
            await asyncio.gather(election, return_exceptions=True)   # releases the Lease on a graceful stop
    finally:
        if not stop.is_set():
            informers.cancel()
        await asyncio.gather(informers, return_exceptions=True)


class _Either:
    """An Event that becomes set when any of the given events is set."""

    def __init__(self, *events: asyncio.Event) -> None:
        self.event = asyncio.Event()
        self._task = asyncio.ensure_future(self._watch(events))

    async def _watch(self, events: tuple[asyncio.Event, ...]) -> None:
        await _wait_any(*events)
        self.event.set()
