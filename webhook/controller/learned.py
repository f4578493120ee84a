"""The reconciler's side of ``keep-alive: learned``: reading, writing, Events and metrics around the pure
learning in ``controller.learning``.

Per workload the learner is fed KEDA's ``lastActiveTime`` from the live ScaledObject, and its decision goes
into the ScaledObject about to be applied (cooldown, dated pre-warm cron triggers, the state annotation). The
workload's ``serverless.llmaz.io/learned`` annotation and a ``Learned`` Event show a decision when it changes.
Learning never stops autoscaling: any failure other than the API server's falls back to the policy settings,
with a ``LearnedStateInvalid`` Event.

A mixin of ``reconciler.Controller``, kept apart so the reconcile loop reads without the learning detail; it
uses the Controller's ``kube``, ``recorder``, ``metrics``, ``queue``, ``write_count`` and
``workload_informer``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .. import constants as C
from ..keda import Desired
from ..kube import WORKLOAD_RESOURCES, ApiError, Kube
from . import learning, requestcounts
from .events import EVENT_LEARNED, EVENT_LEARNED_STATE_INVALID, EventRecorder
from .informer import Informer
from .objects import Key
from .workqueue import WorkQueue

log = logging.getLogger("llmaz_serverless.reconciler")


class LearnedKeepAlive:
    """Learned keep-alive for ``reconciler.Controller`` (state per workload in ``self.learning``)."""

    kube: Kube
    recorder: EventRecorder
    queue: WorkQueue
    metrics: Any
    write_count: int
    learning: dict[Key, learning.Live]
    brain: Any
    request_counts: requestcounts.RequestCounts
    route_keys: dict[requestcounts.Route, Key]
    workload_informer: Callable[[str], Informer]

    async def _keep_alive(self, key: Key, obj: dict[str, Any], desired: Desired,
                          live_so: dict[str, Any] | None) -> dict[str, Any]:
        """Learn for a workload with ``keep-alive: learned`` that KEDA may scale to zero; for any other, drop
        what was learned and the annotation that showed it. Returns the workload (with what it shows)."""
        kind = key[0]
        settings = desired.analysis.settings
        if (settings is not None and settings.keep_alive == "learned" and not desired.missing
                and (desired.scaled_object or {}).get("spec", {}).get("minReplicaCount") == 0):
            try:
                return await self._learn(key, obj, desired, live_so)
            except ApiError:
                raise
            except Exception as exc:  # noqa: BLE001 - learning must never stop autoscaling
                self._forget_learning(key)
                log.exception("reconcile %s: learning failed; the policy settings apply", "/".join(key))
                await self.recorder.emit(key + ("learned",), obj, EVENT_LEARNED_STATE_INVALID,
                                         f"keep-alive: learned failed ({type(exc).__name__}); this {kind} uses "
                                         "its policy settings", "Warning")
                return obj
        self._forget_learning(key)
        if C.ANN_LEARNED in ((obj.get("metadata") or {}).get("annotations") or {}):
            obj = await self._show_learned(key, obj, None)     # no longer learned: nothing to show
        return obj

    def _forget_learning(self, key: Key) -> None:
        if self.learning.pop(key, None) is not None:
            for gauge in (self.metrics.learned_keep_alive, self.metrics.learned_from_requests):
                try:
                    gauge.remove(key[1], key[0], key[2])
                except KeyError:
                    pass
        for route in [r for r, k in self.route_keys.items() if k == key]:
            del self.route_keys[route]

    def _on_route_counts(self, route: requestcounts.Route) -> None:
        """The poller saw new counts on a route: reconcile its workload (while leading)."""
        key = self.route_keys.get(route)
        if key is not None and key in self.learning:
            self.queue.add(key)

    async def _learn(self, key: Key, obj: dict[str, Any], desired: Desired,
                     live_so: dict[str, Any] | None) -> dict[str, Any]:
        """Feed KEDA's lastActiveTime to this workload's learner and put its decision into the ScaledObject
        about to be applied (``controller.learning``). Returns the workload (with the shown decision)."""
        kind, ns, name = key
        assert desired.scaled_object is not None and desired.analysis.settings is not None
        s = desired.analysis.settings
        spec = desired.scaled_object["spec"]
        polling, cooldown = float(spec["pollingInterval"]), float(spec["cooldownPeriod"])
        live = self.learning.get(key)
        if live is None:
            live, error = learning.new_live(live_so, s.cold_start_objective, polling, cooldown, time.time(),
                                            startup_s=s.startup_s)
            self.learning[key] = live
            if error:
                self.metrics.learned_state_errors.inc()
                await self.recorder.emit(key + ("learned",), obj, EVENT_LEARNED_STATE_INVALID,
                                         f"the learned state on ScaledObject {spec['scaleTargetRef']['name']} "
                                         f"cannot be read ({error}); this {kind} uses its policy settings and "
                                         "learns afresh", "Warning")
        live.learner.objective, live.learner.polling_s, live.learner.fallback_s = (
            s.cold_start_objective, polling, cooldown)
        live.learner.startup_s = s.startup_s
        await self._observe(key, obj, desired, live, learning.last_active(live_so), polling)
        p = learning.plan(desired.scaled_object, live, time.time(), polling)
        desired.scaled_object = p.scaled_object
        live.windows = p.windows
        if p.recheck_in is not None:
            self.queue.add_after(key, max(1.0, p.recheck_in))
        d = p.decision
        if d.keep_alive_s is None:
            try:
                self.metrics.learned_keep_alive.remove(ns, kind, name)
            except KeyError:
                pass
        else:
            self.metrics.learned_keep_alive.labels(ns, kind, name).set(d.keep_alive_s)
        shown = learning.decision_key(d)
        current = ((obj.get("metadata") or {}).get("annotations") or {}).get(C.ANN_LEARNED)
        # What it was learned from ends the line (``check`` shows it); it changes only when the source does,
        # which is an Event too.
        source = "; learned from " + ("request counts" if live.signal == "requests" else "KEDA's status")
        if shown == live.shown and current is not None and current.endswith(source):
            return obj
        if shown != live.shown:
            live.shown = shown
            self.metrics.learned_decisions.labels(d.mode).inc()
            await self.recorder.emit(key + ("learned",), obj, EVENT_LEARNED,
                                     f"keep-alive: learned: {learning.visible(d, p.warm)}")
        line = d.summary() + source
        if current != line:       # written when the decision changes, not when an estimate drifts
            obj = await self._show_learned(key, obj, line)
        return obj

    async def _observe(self, key: Key, obj: dict[str, Any], desired: Desired, live: learning.Live,
                       active: float | None, polling: float) -> None:
        """Feed the workload's activity to its learner: the request counts of its InterceptorRoute when the
        policy says so and they can be read now (``controller.requestcounts``), KEDA's lastActiveTime otherwise.
        A change of source is an Event and ``llmaz_serverless_learned_from_requests``."""
        lf = self.brain.policy.learnFrom
        route_obj = desired.interceptor_route
        samples, why = None, "the policy's learnFrom.source is keda-status"
        if lf.source == "requests":
            if route_obj is None:
                why = "it has no http trigger, so no request counts"
            else:
                route = (key[1], route_obj["metadata"]["name"])
                self.route_keys[route] = key
                samples = self.request_counts.since(route, live.seen[0] if live.seen else None)
                if samples is not None and live.seen is None:
                    # A fresh reference is the latest sample: what came before it was learned from KEDA's
                    # status (or before this process), and is not replayed.
                    samples = samples[-1:]
                if samples is None:
                    why = ("Prometheus does not answer: " + self.request_counts.error
                           if self.request_counts.up is False and self.request_counts.error else
                           "no requests of its route counted in Prometheus yet")
        if samples is not None:
            learning.observe(live, active, polling, teach=False)
            learning.observe_counts(live, samples, polling, lf.step)
            signal = "requests"
        else:
            if live.signal == "requests":        # counts read again later start from a fresh reference
                live.seen = live.done = None
            learning.observe(live, active, polling)
            signal = "keda-status"
        self.metrics.learned_from_requests.labels(key[1], key[0], key[2]).set(1 if signal == "requests" else 0)
        if signal != live.signal:
            live.signal = signal
            msg = ("keep-alive: learned reads this workload's request counts from Prometheus" if signal == "requests"
                   else f"keep-alive: learned reads KEDA's status ({why})")
            await self.recorder.emit(key + ("learned-signal",), obj, EVENT_LEARNED, msg)

    async def _show_learned(self, key: Key, obj: dict[str, Any], line: str | None) -> dict[str, Any]:
        """Write (or with None remove) the workload's ``serverless.llmaz.io/learned``. Best effort: a refused
        write (the workload's admission webhook unreachable, ...) never holds up its KEDA objects."""
        kind, ns, name = key
        try:
            updated = await self.kube.patch(WORKLOAD_RESOURCES[kind], name,
                                            {"metadata": {"annotations": {C.ANN_LEARNED: line}}}, ns)
        except ApiError as exc:
            log.warning("reconcile %s: could not write %s: %s", "/".join(key), C.ANN_LEARNED, exc)
            return obj
        self.write_count += 1
        self.workload_informer(kind).put_local(updated)
        return self.workload_informer(kind).get(ns, name) or obj
