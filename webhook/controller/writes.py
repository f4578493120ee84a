"""What the reconciler writes for one workload once ``Controller.reconcile`` has decided.

Apply (``_manage``, ``_ensure``): the ScaledObject (and, with an ``http`` trigger, the InterceptorRoute) is
server-side applied (field manager ``llmaz-serverless``, forced) with a controller ownerReference to the
workload, so the garbage collector removes them with the workload. An InterceptorRoute of ours is deleted when
``http`` is no longer a trigger. The apply is skipped when the live object already matches: every field we set
is present with our value, and the set of fields our field manager owns equals the set we would apply (so a
field we stopped setting, or a field someone else took over, is noticed). In steady state the reconciler makes
no writes at all. A ScaledObject / InterceptorRoute of the same name that is *not* ours (no managed-by label)
is never taken over: Event ``Rejected``, nothing applied (``ForeignObject``).

Remove (``_unmanage``), when not managed any more (opted out, namespace label removed, ...): our KEDA objects
of that workload (only objects labelled ``app.kubernetes.io/managed-by=llmaz-serverless`` *and* naming this
workload) are deleted. **Never stranded at zero**: KEDA may have scaled the workload to 0; without a
ScaledObject nothing would ever wake it again. So before deleting our ScaledObject, a workload whose
``spec.replicas`` is 0 is set to ``max(1, minReplicaCount of that ScaledObject)``. (Only when *we* remove a
ScaledObject: a workload that someone scaled to 0 while we never managed it is left alone. A Service owned by
a Playground is never patched: the Playground drives its replicas.)

Degraded (``_hold_above_zero``, ``_lift_from_zero``, ``_detach``): a workload that needs an API the cluster
does not serve is scaled up from 0 through ``/scale``, with an Event saying what to install; what of ours can
no longer do its job is removed.

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

KEDA's own view (``_report_keda_status``): KEDA's conditions on our ScaledObject become Events on the workload.

A mixin of ``reconciler.Controller``, kept apart so the decision (``reconcile``) reads on its own; it uses the
Controller's client, caches, recorder and gauges (annotated on the class).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from .. import constants as C
from ..keda import Desired
from ..kube import (HPAS, INTERCEPTORROUTES, SCALEDOBJECTS, WORKLOAD_RESOURCES, ApiError, Conflict, Kube, NotFound,
                    Resource)
from ..mutation import spec_replicas
from ..settings import owned_by_playground
from .events import (EVENT_ATTACHED, EVENT_HPA_REPLACED, EVENT_PREREQUISITE_MISSING, EVENT_REJECTED, EVENT_REMOVED,
                     EVENT_SCALED_FROM_ZERO, EVENT_UPDATED, EventRecorder)
from .informer import Informer
from .kedastatus import REASON_READY, judge
from .objects import Key, describe, is_ours_for, live_matches, restore_replicas
from .workqueue import WorkQueue


class ForeignObject(Exception):
    """An object with our name exists and is not ours."""


class Writes:
    """Applying, removing and reporting for ``reconciler.Controller``."""

    kube: Kube
    recorder: EventRecorder
    queue: WorkQueue
    scaledobjects: Informer
    routes: Informer
    write_count: int
    keda_ready_bound: float
    _keda_warned: set[Key]
    workload_informer: Callable[[str], Informer]
    _owned: Callable[..., dict[str, Any] | None]
    _set_managed: Callable[[Key, bool], None]
    _set_degraded: Callable[[Key, bool], None]
    _on_hpa: Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]

    # ------------------------------------------------------------------------------ never stranded at zero

    async def _hold_above_zero(self, key: Key, obj: dict[str, Any], desired: Desired) -> None:
        """A managed workload needs an API the cluster does not serve (``webhook.prerequisites``): keep it
        above zero and say what to install. Whatever part of autoscaling still works is applied as usual."""
        assert desired.degraded is not None
        kind = key[0]
        await self.recorder.emit(key + ("prerequisite",), obj, EVENT_PREREQUISITE_MISSING,
                                 "; ".join(desired.degraded.reasons), "Warning")
        floor = desired.degraded.floor
        if await self._lift_from_zero(key, obj, floor):
            await self.recorder.emit(key, obj, EVENT_SCALED_FROM_ZERO,
                                     f"replicas set from 0 to {floor}: nothing installed could wake this {kind} "
                                     f"up again ({', '.join(desired.missing)} missing)", "Warning")

    async def _detach(self, key: Key, live_so: dict[str, Any] | None, live_ir: dict[str, Any] | None) -> str:
        """Nothing left for KEDA to do (an http-only workload without the add-on): remove what of ours can no
        longer do its job. With KEDA itself missing there is nothing to remove."""
        if live_ir is not None:
            await self._delete(INTERCEPTORROUTES, self.routes, live_ir)
        if live_so is not None:
            await self._delete(SCALEDOBJECTS, self.scaledobjects, live_so)
        self._set_managed(key, False)
        return "degraded"

    async def _lift_from_zero(self, key: Key, obj: dict[str, Any], floor: int) -> bool:
        """Scale the workload to ``floor`` through ``/scale`` (as KEDA does) if it is at 0. True if it was."""
        kind, ns, name = key
        cached = spec_replicas(obj)
        if cached is not None and cached > 0:
            return False
        res = WORKLOAD_RESOURCES[kind]
        scale = await self.kube.request("GET", self.kube.path(res, ns, name, "scale"))
        current = ((scale or {}).get("spec") or {}).get("replicas") or 0
        if current > 0:
            return False
        await self.kube.patch(res, name, {"spec": {"replicas": floor}}, ns, subresource="scale")
        self.write_count += 1
        return True

    # ------------------------------------------------------------------------------ KEDA's own view

    async def _report_keda_status(self, key: Key, obj: dict[str, Any]) -> None:
        """Turn KEDA's conditions on our ScaledObject into Events on the workload (``kedastatus.judge``)."""
        kind, ns, name = key
        so = self._owned(self.scaledobjects, kind, ns, C.scaled_object_name(name), name)
        verdict = judge(so, _dt.datetime.now(_dt.timezone.utc), self.keda_ready_bound)
        if verdict.recheck_in:
            self.queue.add_after(key, verdict.recheck_in)
        elif verdict.warning:
            self._keda_warned.add(key)
            await self.recorder.emit(key + ("keda",), obj, verdict.reason, verdict.message, "Warning")
        elif verdict.reason == REASON_READY and key in self._keda_warned:
            self._keda_warned.discard(key)
            await self.recorder.emit(key + ("keda",), obj, verdict.reason, verdict.message)

    # ------------------------------------------------------------------------------ apply and remove

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
        self._set_degraded(key, False)
        if live_so is None and live_ir is None:
            self._set_managed(key, False)
            return "unmanaged"
        restored = None
        if live_so is not None and spec_replicas(obj) == 0 and not (
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

    # ------------------------------------------------------------------------------ llmaz's HPA handed over to KEDA

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
