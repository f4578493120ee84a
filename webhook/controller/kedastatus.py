"""What KEDA says about our ScaledObjects, turned into something a user sees on the workload.

A ScaledObject that KEDA never acts on looks exactly like a working one from ``kubectl get playground``: the
workload just never wakes up. KEDA's operator writes ``status.conditions`` (``Ready``, ``Active``,
``Fallback``, ``Paused``) on every reconcile; its absence after a while means no operator is running (or it
cannot reach the API server), and ``Ready=False`` carries KEDA's own reason (a scaler that cannot connect,
a target without ``/scale``, ...). ``judge`` is pure; the reconciler turns its verdicts into Events.

A ScaledObject is created with no conditions; KEDA then sets ``Ready`` (Unknown, without a reason, at first:
``GetInitializedConditions`` in kedacore/keda ``apis/keda/v1alpha1/condition_types.go``). So "not reconciled"
is: no ``Ready`` condition, or a reason-less ``Ready=Unknown``, ``bound`` seconds after creation. KEDA's
executor (``pkg/scaling/executor/scale_scaledobjects.go``) writes ``Ready=False`` ``TriggerError`` when no
trigger is active and one fails, and ``Ready=Unknown`` ``PartialTriggerError`` when some are active and others
fail.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from ..kube import conditions, parse_time

REASON_NOT_RECONCILED = "KEDANotReconciling"
REASON_NOT_READY = "KEDANotReady"
REASON_FALLBACK = "KEDAFallback"
REASON_READY = "KEDAReady"

DEFAULT_BOUND = 60.0


@dataclass(frozen=True)
class Verdict:
    """``reason`` "" means healthy; ``recheck_in`` > 0 means look again then (nothing to say yet)."""

    reason: str = ""
    message: str = ""
    warning: bool = False
    recheck_in: float = 0.0


def _text(cond: dict[str, Any]) -> str:
    reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
    return ": ".join(x for x in (reason, message) if x) or "no reason given"


def judge(so: dict[str, Any] | None, now: _dt.datetime, bound: float = DEFAULT_BOUND) -> Verdict:
    """The verdict on one ScaledObject as KEDA last described it. Pure."""
    if not so:
        return Verdict()
    name = (so.get("metadata") or {}).get("name", "")
    conds = conditions(so)
    ready = conds.get("Ready")
    if ready is not None and ready.get("status") == "Unknown" and ready.get("reason"):
        # KEDA's own "Unknown" (e.g. PartialTriggerError: some triggers active, others failing), not the
        # reason-less Unknown a ScaledObject is initialised with.
        return Verdict(REASON_NOT_READY, f"KEDA reports ScaledObject {name} partly working ({_text(ready)}); fix "
                                         "the failing trigger", warning=True)
    if ready is None or ready.get("status") not in ("True", "False"):
        created = parse_time((so.get("metadata") or {}).get("creationTimestamp"))
        age = (now - created).total_seconds() if created else bound
        if age < bound:
            return Verdict(recheck_in=max(0.5, bound - age))
        return Verdict(REASON_NOT_RECONCILED,
                       f"KEDA has not reconciled ScaledObject {name} within {bound:.0f}s of its creation, so "
                       "nothing will scale this workload: check that the KEDA operator is running "
                       "(`kubectl get pods -n keda`) and read its log", warning=True)
    if ready.get("status") == "False":
        return Verdict(REASON_NOT_READY, f"KEDA reports ScaledObject {name} not ready ({_text(ready)}); fix what "
                                         "KEDA names, the workload is not autoscaled meanwhile", warning=True)
    fallback = conds.get("Fallback")
    if fallback is not None and fallback.get("status") == "True":
        return Verdict(REASON_FALLBACK, f"KEDA uses the fallback replica count for ScaledObject {name}: a trigger "
                                        f"keeps failing ({_text(fallback)})", warning=True)
    active = conds.get("Active")
    state = "active" if active is not None and active.get("status") == "True" else "idle"
    return Verdict(REASON_READY, f"KEDA reports ScaledObject {name} ready ({state})")
