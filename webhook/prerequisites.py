"""What a workload needs installed in the cluster, and what we do when it is not there.

Scale to zero is only safe while something can wake the workload up again. KEDA's operator does the 0 -> 1
step, and for HTTP traffic the KEDA HTTP add-on holds the first request and tells KEDA about it. Either may be
missing: KEDA not installed yet, the HTTP add-on (beta) never installed, a CRD removed. The rule, applied by
the webhook at admission and by the reconciler on every reconcile (both call ``degrade``):

- **KEDA missing** (``keda.sh/v1alpha1`` ScaledObject not served): no ScaledObject can exist, so the workload
  does not start at zero and is never left there: at least ``max(1, minReplicas)`` replicas.
- **HTTP add-on missing** (``http.keda.sh/v1beta1`` InterceptorRoute not served) for a workload with the
  ``http`` trigger: requests cannot wake it, so the ``http`` trigger is left out of the ScaledObject and the
  ScaledObject's ``minReplicaCount`` is at least 1; the other triggers still scale it from 1 to N. With
  ``http`` as its only trigger there is no ScaledObject and the workload keeps its replicas (at least 1).

Either way the user is told what to install (a warning at admission, a Warning Event on the workload, an
error log line and ``llmaz_serverless_prerequisite_ok``), and the full settings come back by themselves once
the API appears: nothing to restart, nothing to re-apply.

"Unknown" (``None``: the cluster has not been asked yet, or cannot be, as in ``preview``) counts as
installed, so an offline preview shows what a healthy cluster does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import constants as C
from .settings import Settings
from .triggers import HTTPTrigger

KEDA = "keda"
HTTP_ADDON = "http-add-on"


@dataclass(frozen=True)
class Prerequisite:
    """An API that some workloads need, how to recognise it, and how to fix its absence."""

    name: str
    group_version: str
    resource: str
    what: str
    install: str


PREREQUISITES: dict[str, Prerequisite] = {
    KEDA: Prerequisite(
        KEDA, C.KEDA_API_VERSION, "scaledobjects", "KEDA",
        "install KEDA (https://keda.sh/docs/latest/deploy/, e.g. `helm install keda kedacore/keda -n keda "
        "--create-namespace`)"),
    HTTP_ADDON: Prerequisite(
        HTTP_ADDON, C.HTTP_API_VERSION, "interceptorroutes", "the KEDA HTTP add-on",
        "install the KEDA HTTP add-on (`helm install http-add-on kedacore/keda-add-ons-http -n keda`), or set "
        f"{C.ANN_TRIGGERS} to a trigger that does not need it"),
}


@dataclass(frozen=True)
class Installed:
    """Which optional APIs the cluster serves. ``None`` means not known yet, and counts as installed."""

    keda: bool | None = None
    http_addon: bool | None = None

    def known(self, name: str) -> bool | None:
        return getattr(self, _FIELDS[name])

    def has(self, name: str) -> bool:
        return self.known(name) is not False

    def with_(self, name: str, present: bool | None) -> "Installed":
        return dataclasses.replace(self, **{_FIELDS[name]: present})


_FIELDS = {KEDA: "keda", HTTP_ADDON: "http_addon"}   # prerequisite name -> Installed field


ASSUMED = Installed()


@dataclass(frozen=True)
class Degraded:
    """The settings to apply given what is installed, and why they differ from the requested ones."""

    settings: Settings
    scaled_object: bool                  # False: no ScaledObject can or should be built
    missing: tuple[str, ...] = ()        # names of PREREQUISITES that are absent and needed
    reasons: tuple[str, ...] = ()        # one sentence per absence: what, consequence, fix

    @property
    def floor(self) -> int:
        """Replicas the workload must not go below while degraded."""
        return max(1, self.settings.min_replicas)


def _missing_message(p: Prerequisite, consequence: str) -> str:
    return f"{p.what} is not installed ({p.group_version} {p.resource} is not served): {consequence}; {p.install}"


def degrade(settings: Settings, installed: Installed = ASSUMED) -> Degraded:
    """Apply the never-stranded rule (module docstring) to resolved settings. Pure."""
    if not installed.has(KEDA):
        kept = dataclasses.replace(settings, start_at_zero=False, min_replicas=max(1, settings.min_replicas))
        return Degraded(kept, False, (KEDA,), (_missing_message(
            PREREQUISITES[KEDA], f"nothing can scale this workload, so it keeps at least {max(1, kept.min_replicas)} "
            "replica(s) and is not scaled to zero"),))
    has_http = any(isinstance(t, HTTPTrigger) for t in settings.triggers)
    if has_http and not installed.has(HTTP_ADDON):
        rest = tuple(t for t in settings.triggers if not isinstance(t, HTTPTrigger))
        kept = dataclasses.replace(settings, triggers=rest, start_at_zero=False,
                                   min_replicas=max(1, settings.min_replicas))
        consequence = ("requests cannot wake this workload from zero, so it keeps at least "
                       f"{kept.min_replicas} replica(s)")
        consequence += (" and scales on its other triggers only" if rest
                        else " and is not autoscaled (http is its only trigger)")
        return Degraded(kept, bool(rest), (HTTP_ADDON,), (_missing_message(PREREQUISITES[HTTP_ADDON], consequence),))
    return Degraded(settings, True)
