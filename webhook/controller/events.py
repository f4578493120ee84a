"""EventRecorder: Kubernetes Events about workloads, identical consecutive ones suppressed."""

from __future__ import annotations

import logging
from typing import Any, Hashable

from ..kube import ApiError, Kube

log = logging.getLogger("llmaz_serverless.events")

# The reasons of the Events the reconciler emits (``kubectl get events --field-selector reason=...``).
EVENT_ATTACHED = "Attached"
EVENT_UPDATED = "Updated"
EVENT_REMOVED = "Removed"
EVENT_REJECTED = "Rejected"
EVENT_POLICY_INVALID = "PolicyInvalid"
EVENT_HPA_REPLACED = "HPAReplaced"
EVENT_PREREQUISITE_MISSING = "PrerequisiteMissing"
EVENT_SCALED_FROM_ZERO = "ScaledUpFromZero"
EVENT_QUARANTINED = "Quarantined"
EVENT_LEARNED = "Learned"
EVENT_LEARNED_STATE_INVALID = "LearnedStateInvalid"


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
