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

What it writes (``controller.writes``): a managed workload gets our ScaledObject (and, with an ``http``
trigger, InterceptorRoute), owned by it and applied only when it differs; a workload no longer managed
loses ours, never left stranded at zero; an object of our name that is not ours is never taken over;
llmaz's own HPA (``spec.elasticConfig``) is handed over to KEDA.

Invalid settings on an existing workload (``Denied``, e.g. someone edited a bad annotation while the
webhook was down or set to Ignore, or rules tightened by an upgrade refuse what was once admitted): a
Warning Event ``Rejected`` with the message, the workload is quarantined (``controller.quarantine``), and
the existing KEDA objects are left **untouched**. A running workload keeps autoscaling with its last good
settings instead of being broken by a typo; the Event, the quarantine metric and ``check`` tell the user
and the admin. A build that *raises* (input nobody foresaw) is quarantined the same way with the Event
``Quarantined``, never retried in a loop and never allowed to stop the workers.

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
  autoscaling horizontalpodautoscalers: list watch delete
  events (core): create (and events.k8s.io not needed)
  coordination.k8s.io leases (own namespace): get create update
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable

from .. import constants as C
from ..errors import Denied
from ..keda import desired_objects
from ..kube import (CONFIGMAPS, HPAS, INTERCEPTORROUTES, NAMESPACES, OPENMODELS, PLAYGROUNDS, SCALEDOBJECTS,
                    SERVICES, WORKLOAD_RESOURCES, ApiError, Kube, NotFound)
from ..leader import DEFAULT_LEASE_NAME, default_identity
from ..leader_thread import ThreadedElector
from ..policy_source import PolicySource
from ..settings import opted_out, owned_by_playground
from ..prerequisites import HTTP_ADDON, KEDA
from .discovery import APIDiscovery
from .requestcounts import RequestCounts, Route
from .events import EVENT_POLICY_INVALID, EVENT_QUARANTINED, EVENT_REJECTED, EventRecorder
from .kedastatus import DEFAULT_BOUND
from . import learning
from .learned import LearnedKeepAlive
from .informer import Informer, obj_key, sleep_or_stop, wait_any
from .metrics import reconciler_metrics
from .quarantine import DENIED, FAILED, Quarantine
from .objects import (Key, classify_hpas, convert_elastic_config, hpa_target_key, is_ours_for, is_stub,
                      namespace_enabled, namespace_terminating, slim_hpa, slim_model, slim_namespace, slim_owned,
                      slim_workload, stub_workload, workload_key_of_owned)
from .workqueue import WorkQueue
from .writes import Writes

log = logging.getLogger("llmaz_serverless.reconciler")

MANAGED_SELECTOR = f"{C.LABEL_MANAGED_BY}={C.MANAGED_BY}"


class Controller(Writes, LearnedKeepAlive):
    """Informers + work queue + reconcile. ``run_controller`` wires it with leader election. What it writes
    once it has decided is in ``Writes`` (controller.writes), learned keep-alive in ``LearnedKeepAlive``
    (controller.learned)."""

    def __init__(self, kube: Kube, brain: Any, *, namespace: str, policy_configmap: str | None,
                 identity: str | None = None, resync: float = 300.0, workers: int = 4,
                 events: bool = True, base_delay: float = 0.5, max_delay: float = 60.0,
                 watch_timeout: int = 300, discovery_interval: float = 15.0,
                 keda_ready_bound: float = DEFAULT_BOUND) -> None:
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
        self.elector: ThreadedElector | None = None    # set by run_controller with leader election
        self.keda_ready_bound = keda_ready_bound
        self.degraded: set[Key] = set()                # managed workloads held above zero (prerequisites)
        self.quarantine = Quarantine(self.metrics.quarantined_workloads, self.metrics.quarantines)
        self._keda_warned: set[Key] = set()            # workloads with a KEDA status warning outstanding
        self.discovery = APIDiscovery(kube, interval=discovery_interval, on_change=self._on_api_change)
        self._optional_tasks: dict[str, asyncio.Task] = {}
        self._stop: asyncio.Event | None = None
        self._admission_only = False
        self.learning: dict[Key, learning.Live] = {}   # keep-alive: learned, rebuilt from the ScaledObject
        # Request counts for keep-alive: learned (policy learnFrom), read by the leader only (run_workers).
        self.request_counts = RequestCounts(lambda: self.brain.policy, self._on_route_counts)
        self.route_keys: dict[Route, Key] = {}

        wt = watch_timeout
        # Workloads in namespaces that are not opted in are cached as stubs (``objects.stub_workload``).
        self.playgrounds = Informer(kube, PLAYGROUNDS, transform=self._cache_form, watch_timeout=wt)
        self.services = Informer(kube, SERVICES, transform=self._cache_form, watch_timeout=wt)
        self.namespaces = Informer(kube, NAMESPACES, transform=slim_namespace, watch_timeout=wt)
        self.openmodels = Informer(kube, OPENMODELS, transform=slim_model, watch_timeout=wt)
        self.scaledobjects = Informer(kube, SCALEDOBJECTS, label_selector=MANAGED_SELECTOR, transform=slim_owned,
                                      watch_timeout=wt)
        self.routes = Informer(kube, INTERCEPTORROUTES, label_selector=MANAGED_SELECTOR, transform=slim_owned,
                               watch_timeout=wt)
        self.hpas = Informer(kube, HPAS, transform=slim_hpa, watch_timeout=wt)
        self.informers = [self.playgrounds, self.services, self.namespaces, self.openmodels, self.scaledobjects,
                          self.routes, self.hpas]
        # Informers of optional APIs run only while discovery finds their API served: a missing HTTP add-on
        # (or KEDA) never holds up the rest, and an API installed later is picked up without a restart.
        self.optional: dict[str, Informer] = {KEDA: self.scaledobjects, HTTP_ADDON: self.routes}
        self.policy_informer: Informer | None = None
        if policy_configmap:
            self.policy_informer = Informer(kube, CONFIGMAPS, namespace=namespace,
                                            field_selector=f"metadata.name={policy_configmap}", watch_timeout=wt)
            self.informers.append(self.policy_informer)
            self.policy_informer.add_handler(self._on_policy)

        self.playgrounds.add_handler(self._on_workload)
        self.services.add_handler(self._on_workload)
        self.namespaces.add_handler(self._on_namespace)
        self.namespaces.on_synced.append(self._restub)
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
        ns, name = obj_key(obj)
        if typ == "DELETED":
            key = (kind, ns, name)
            self.managed.discard(key)
            self.metrics.managed_workloads.set(len(self.managed))
            self.degraded.discard(key)
            self.metrics.degraded_workloads.set(len(self.degraded))
            self._keda_warned.discard(key)
            self.quarantine.release(key)
            self._forget_learning(key)
            for sub in (key, key + ("prerequisite",), key + ("keda",), key + ("learned",)):
                self.recorder.forget(sub)
        self.enqueue((kind, ns, name))

    def _cache_form(self, obj: dict[str, Any]) -> dict[str, Any]:
        """How a workload is cached: whole (without managedFields, status, last-applied) when its namespace is
        opted in or not known yet (the namespace cache not synced: never decide on a guess), else a stub."""
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        if self.namespaces.synced.is_set() and not namespace_enabled(self.namespaces.get(None, ns)):
            return stub_workload(obj)
        return slim_workload(obj)

    def _restub(self, namespace: str | None = None) -> None:
        """Reduce the cached workloads of namespaces that are not opted in (all, or one) to stubs."""
        for inf in (self.playgrounds, self.services):
            for key, obj in list(inf.cache.items()):
                if (namespace is None or key[0] == namespace) and not is_stub(obj):
                    inf.cache[key] = self._cache_form(obj)

    def _on_namespace(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        if typ == "MODIFIED" and namespace_enabled(new) == namespace_enabled(old) and \
                namespace_terminating(new) == namespace_terminating(old):
            return
        ns = obj_key(new or old or {})[1]
        if not namespace_enabled(new):
            self._restub(ns)
        for kind, inf in ((C.KIND_PLAYGROUND, self.playgrounds), (C.KIND_SERVICE, self.services)):
            for (wns, name) in list(inf.cache):
                if wns == ns:
                    self.enqueue((kind, wns, name))

    def _on_openmodel(self, typ: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        models = self.brain.models
        if typ == "DELETED":
            models.remove(obj_key(old or {})[1])
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
            name = obj_key(obj)[1]
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

    @property
    def core_informers(self) -> list[Informer]:
        optional = list(self.optional.values())
        return [inf for inf in self.informers if inf not in optional]

    def _start_optional(self, name: str) -> None:
        if name in self._optional_tasks or self._stop is None or self._stop.is_set() or self._admission_only:
            return
        inf = self.optional[name]
        self._optional_tasks[name] = asyncio.create_task(inf.run(self._stop), name=f"informer-{inf.name}")

    def _stop_optional(self, name: str) -> None:
        task = self._optional_tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self.optional[name].reset()

    def _on_api_change(self, name: str, present: bool) -> None:
        """Discovery saw an optional API appear or go: follow it, and look at every workload again."""
        self.brain.installed = self.discovery.installed
        if present:
            self._start_optional(name)
        else:
            self._stop_optional(name)
        self.enqueue_all()

    @property
    def admission_informers(self) -> list[Informer]:
        """What admission reads: the OpenModel catalog and the policy (no workloads, KEDA objects or HPAs)."""
        return [inf for inf in (self.openmodels, self.policy_informer) if inf is not None]

    async def run_informers(self, stop: asyncio.Event, *, admission_only: bool = False) -> None:
        """Run the caches until ``stop``. ``admission_only``: only those admission reads (``--role admission``)."""
        self._stop = stop
        informers = self.admission_informers if admission_only else self.core_informers
        tasks = [asyncio.create_task(inf.run(stop), name=f"informer-{inf.name}") for inf in informers]
        tasks.append(asyncio.create_task(self.discovery.run(stop), name="api-discovery"))
        self._admission_only = admission_only   # discovery still feeds brain.installed; no KEDA-object caches

        async def mark_synced() -> None:
            await asyncio.gather(*(inf.synced.wait() for inf in informers),
                                 self.discovery.first_round.wait())
            for name in self.optional:
                if self.discovery.installed.known(name) is None:   # could not be asked: assume installed
                    self._start_optional(name)
            self.synced.set()
            log.info("caches synced: %s; installed: %s", ", ".join(
                f"{inf.name}={len(inf.cache)}" for inf in informers), self.discovery.installed)

        tasks.append(asyncio.create_task(mark_synced()))
        try:
            await stop.wait()
        finally:
            tasks.extend(self._optional_tasks.values())
            self._optional_tasks.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in list(self._bg):
                t.cancel()

    async def run_workers(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set (leadership lost or shutdown). Waits for the caches first."""
        await wait_any(self.synced, stop)
        if stop.is_set():
            return
        self.leading = True
        self.enqueue_all()
        self._policy_event()
        tasks = [asyncio.create_task(self._worker(i), name=f"reconcile-worker-{i}") for i in range(self.n_workers)]
        tasks.append(asyncio.create_task(self._resync_loop(stop), name="resync"))
        tasks.append(asyncio.create_task(self._request_counts_loop(stop), name="request-counts"))
        try:
            await stop.wait()
        finally:
            self.leading = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.queue.clear()

    async def _request_counts_loop(self, stop: asyncio.Event) -> None:
        """The request-count poller, while leading; its health as ``llmaz_serverless_request_counts_up``."""
        rc = self.request_counts
        rc.on_read = lambda up: self.metrics.request_counts_up.set(1 if up else 0)
        await rc.run(stop)

    async def _resync_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_or_stop(stop, self.resync * random.uniform(0.9, 1.1))
            if not stop.is_set():
                self.enqueue_all()

    async def _worker(self, i: int) -> None:
        while True:
            key = await self.queue.get()
            if self.elector is not None and not self.elector.is_leader:
                # Stepped down while this loop was busy (the election runs on its own thread): no new work.
                self.queue.done(key)
                continue
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

    @staticmethod
    def _track(keys: set[Key], gauge: Any, key: Key, member: bool) -> None:
        """Add or remove ``key`` from a set of workloads whose size a gauge shows."""
        if member:
            keys.add(key)
        else:
            keys.discard(key)
        gauge.set(len(keys))

    def _set_managed(self, key: Key, managed: bool) -> None:
        self._track(self.managed, self.metrics.managed_workloads, key, managed)

    def _set_degraded(self, key: Key, degraded: bool) -> None:
        self._track(self.degraded, self.metrics.degraded_workloads, key, degraded)

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
            self.quarantine.release(key)
            self.recorder.forget(key)
            return "gone"            # ownerReferences + garbage collector remove our objects
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return "deleting"
        ns_obj = self.namespaces.get(None, ns)
        if ns_obj is None or namespace_terminating(ns_obj):
            return "skipped"
        installed = self.discovery.installed
        for api, inf in self.optional.items():
            if api in self._optional_tasks and not inf.synced.is_set():
                self.queue.add_after(key, 0.5)   # its cache is filling: decide on what exists, not a guess
                return "waiting"
        so_name, ir_name = C.scaled_object_name(name), C.interceptor_route_name(name)
        live_so = self._owned(self.scaledobjects, kind, ns, so_name, name) if installed.has(KEDA) else None
        live_ir = self._owned(self.routes, kind, ns, ir_name, name) if installed.has(HTTP_ADDON) else None

        reason = self.unmanaged_reason(obj, ns_obj)
        if reason:
            self.quarantine.release(key)
            return await self._unmanage(key, obj, live_so, live_ir, reason)
        if is_stub(obj):
            # Cached while its namespace was not opted in: read it whole once (the cache keeps it whole now).
            try:
                fresh = await self.kube.get(WORKLOAD_RESOURCES[kind], name, ns)
            except NotFound:
                return "gone"
            self.workload_informer(kind).put_local(fresh)
            obj = self.workload_informer(kind).get(ns, name) or self._cache_form(fresh)
            if is_stub(obj):
                return "skipped"    # the namespace changed again meanwhile; its own event requeues this

        policy, models = self.brain.policy, self.brain.models
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if self.quarantine.still_failing(key, version, policy):
            return "quarantined"     # unchanged since its build raised: not built again
        llmaz_hpas, foreign_hpas = classify_hpas(obj, self.hpas_for(key))
        candidate, patch_ops, notes = obj, [], []
        has_elastic = kind == C.KIND_PLAYGROUND and (obj.get("spec") or {}).get("elasticConfig") is not None
        if llmaz_hpas and has_elastic:
            candidate, patch_ops, notes = convert_elastic_config(obj)
        try:
            desired = desired_objects(candidate, policy, models, installed)
        except Denied as d:
            kept = (" (refused by the current rules: the existing KEDA objects keep their last good settings, "
                    "unchanged)" if live_so else "")
            self.quarantine.hold(key, DENIED, version, policy, d.message)
            await self.recorder.emit(key, obj, EVENT_REJECTED, d.message + kept, "Warning")
            return "rejected"
        except Exception as exc:  # noqa: BLE001 - input nobody foresaw: quarantine it, serve the others
            what = f"{type(exc).__name__}: {str(exc)[:200]}"
            if self.quarantine.hold(key, FAILED, version, policy, what):
                log.error("reconcile %s: KEDA objects could not be built (%s); quarantined until the object "
                          "or the policy changes", "/".join(key), what)
            await self.recorder.emit(key, obj, EVENT_QUARANTINED,
                                     f"llmaz-serverless could not build the KEDA objects of this {kind} ({what}); "
                                     "it is left as it is"
                                     + (" and its existing KEDA objects keep their last good settings" if live_so
                                        else "") + " until it is edited. Check its serverless.llmaz.io "
                                     "annotations", "Warning")
            return "quarantined"
        self.quarantine.release(key)
        self._set_degraded(key, bool(desired.missing))
        if desired.missing:
            await self._hold_above_zero(key, obj, desired)
            if desired.scaled_object is None:
                return await self._detach(key, live_so, live_ir)
        elif desired.scaled_object is None:
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
            desired = desired_objects(obj, policy, models, installed)
            if desired.scaled_object is None:
                return "requeued"
        obj = await self._keep_alive(key, obj, desired, live_so)
        result = await self._manage(key, obj, desired, live_so, live_ir)
        await self._report_keda_status(key, obj)
        return "degraded-" + result if desired.missing else result


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
        # The Lease is renewed on a thread of its own, watching this loop (see webhook/leader_thread.py).
        elector = ThreadedElector(kube, namespace, name=lease_name, identity=identity,
                                  lease_duration=lease_duration, renew_period=renew_period, on_stopped=lost.set)
        ctl.elector = elector
        election = asyncio.create_task(elector.run(stop), name="leader-election")
        try:
            while not stop.is_set():
                await wait_any(elector.leading, stop)
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
        await wait_any(*events)
        self.event.set()
