"""API discovery: which optional APIs (KEDA, the KEDA HTTP add-on) the cluster serves, now and later.

Why discovery documents and not a watch on CustomResourceDefinitions: every authenticated client may read
discovery (the ``system:discovery`` role), while watching CRDs would need cluster-wide read access to
``apiextensions.k8s.io``; and discovery answers the question that matters, "does the API server serve this
resource", which a CRD that is still being established does not.

The poll is cheap (one small GET per API and interval) and runs on every replica, so the webhook's
admission decisions (``Brain.installed``) follow the cluster too. A probe that fails for any other reason
than "not found" (API server restarting, 5xx, timeout) keeps the last known answer: a flapping API server
must not flip workloads in and out of degraded mode.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable, Iterable

from ..kube import ApiError, Kube, NotFound
from ..prerequisites import ASSUMED, PREREQUISITES, Installed, Prerequisite
from .informer import sleep_or_stop
from .metrics import reconciler_metrics

log = logging.getLogger("llmaz_serverless.discovery")

OnChange = Callable[[str, bool], None]


def served(discovery_doc: object, resource: str) -> bool:
    """True when an ``APIResourceList`` document lists ``resource``. Pure."""
    if not isinstance(discovery_doc, dict):
        return False
    resources = discovery_doc.get("resources")
    return isinstance(resources, list) and any(isinstance(r, dict) and r.get("name") == resource
                                               for r in resources)


class APIDiscovery:
    """Polls ``/apis/<group>/<version>`` for each prerequisite and reports appearances and disappearances.

    ``installed`` starts unknown (counts as installed); ``first_round`` is set once every API was asked at
    least once (answered or not), so the reconciler does not act on a guess.
    """

    def __init__(self, kube: Kube, *, interval: float = 15.0, on_change: OnChange | None = None,
                 prerequisites: Iterable[Prerequisite] = PREREQUISITES.values(), timeout: float = 5.0) -> None:
        self.kube = kube
        self.interval = interval
        self.timeout = timeout
        self.prerequisites = tuple(prerequisites)
        self.on_change = on_change
        self.installed: Installed = ASSUMED
        self.first_round = asyncio.Event()
        self.metrics = reconciler_metrics()
        self.rounds = 0

    async def probe(self, p: Prerequisite) -> bool | None:
        """True/False when the API server answered; None when it could not be asked."""
        try:
            doc = await asyncio.wait_for(self.kube.request("GET", f"/apis/{p.group_version}"), self.timeout)
        except NotFound:
            return False
        except (ApiError, asyncio.TimeoutError, OSError) as exc:
            log.info("discovery of %s failed (%s); keeping the last answer", p.group_version, exc)
            return None
        return served(doc, p.resource)

    def _record(self, p: Prerequisite, present: bool) -> None:
        previous = self.installed.known(p.name)
        self.metrics.prerequisite_ok.labels(p.name).set(1 if present else 0)
        if previous is present:
            return
        self.installed = self.installed.with_(p.name, present)
        if present:
            log.info("%s is installed (%s %s served)", p.what, p.group_version, p.resource)
        else:
            log.error("%s is not installed (%s %s not served): workloads that need it are kept above zero "
                      "replicas until it is; %s", p.what, p.group_version, p.resource, p.install)
        if self.on_change is not None:
            self.on_change(p.name, present)

    async def poll_once(self) -> Installed:
        for p in self.prerequisites:
            present = await self.probe(p)
            if present is not None:
                self._record(p, present)
        self.rounds += 1
        self.first_round.set()
        return self.installed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - discovery must never die; the next round tries again
                log.exception("API discovery round failed")
                self.first_round.set()
            await sleep_or_stop(stop, self.interval * random.uniform(0.9, 1.1))
