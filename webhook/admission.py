"""From an AdmissionRequest to an AdmissionResult: the rules wired to the protocol.

``Brain`` holds the current policy and model catalog. Both are replaced by assignment (a new policy object,
never an in-place edit), so a request in flight always sees one consistent policy.
"""

from __future__ import annotations

import logging
from typing import Any

import jsonpatch

from . import constants as C
from .errors import Denied
from .models import ModelCatalog
from .mutation import mutate
from .policy import Policy
from .review import AdmissionRequest, AdmissionResult
from .validation import validate

log = logging.getLogger("llmaz_serverless.admission")

HANDLED_OPERATIONS = ("CREATE", "UPDATE")


def make_patch(raw: dict[str, Any], mutated: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch from the raw request object to the mutated copy (escapes '/' in keys as '~1')."""
    return list(jsonpatch.make_patch(raw, mutated))


class Brain:
    def __init__(self, policy: Policy | None = None, models: ModelCatalog | None = None) -> None:
        self.policy = policy or Policy.default()
        self.models = models if models is not None else ModelCatalog()

    def _in_scope(self, req: AdmissionRequest) -> bool:
        return (req.group == C.LLMAZ_GROUP and req.kind in C.WORKLOAD_KINDS
                and req.operation in HANDLED_OPERATIONS and not req.sub_resource
                and isinstance(req.object, dict))

    def mutate(self, req: AdmissionRequest) -> AdmissionResult:
        if not self._in_scope(req):
            return AdmissionResult(reason="skipped")
        policy, models = self.policy, self.models
        raw = req.object
        assert raw is not None
        try:
            m = mutate(raw, req.old_object, req.operation, policy, models)
        except Denied as d:
            return AdmissionResult(allowed=False, message=d.message, code=d.code, reason="denied")
        patch = make_patch(raw, m.obj) if m.changed else []
        return AdmissionResult(patch=patch, warnings=m.warnings, reason="patched" if patch else "allowed")

    def validate(self, req: AdmissionRequest) -> AdmissionResult:
        if not self._in_scope(req):
            return AdmissionResult(reason="skipped")
        assert req.object is not None
        verdict = validate(req.object, req.old_object, req.operation, self.policy, self.models)
        if not verdict.allowed:
            d = Denied(verdict.problems)
            return AdmissionResult(allowed=False, message=d.message, code=d.code, reason="denied",
                                   warnings=verdict.warnings)
        return AdmissionResult(warnings=verdict.warnings, reason="allowed")
