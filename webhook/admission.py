"""From an AdmissionRequest to an AdmissionResult: the rules wired to the protocol.

``Brain`` holds the current policy and model catalog. Both are replaced by assignment (a new policy object,
never an in-place edit), so a request in flight always sees one consistent policy.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jsonpatch

from . import constants as C
from . import drain as drain_rules
from .errors import Denied
from .models import ModelCatalog
from .mutation import mutate
from .policy import Policy
from .prerequisites import ASSUMED, Installed
from .review import AdmissionRequest, AdmissionResult
from .validation import validate

log = logging.getLogger("llmaz_serverless.admission")


def _diff_builder_works() -> bool:
    """jsonpatch.JsonPatch.from_diff is ``DiffBuilder(src, dst, dumps)._compare_values("", None, src, dst)`` then
    ``execute()``, plus a validation of the result. ``make_patch`` calls the first part directly when this
    internal shape gives what ``jsonpatch.make_patch`` gives (checked once, at import), else the public call."""
    a = {"k": 1, "d": {"l": [1], "x": "y"}, "r": True}
    b = {"k": 2, "d": {"l": [1, 2]}, "n": {"a/b": None}}
    try:
        builder = jsonpatch.DiffBuilder(a, b, json.dumps)
        builder._compare_values("", None, a, b)
        return list(builder.execute()) == list(jsonpatch.make_patch(a, b))
    except Exception:  # noqa: BLE001 - any change of the internals: use the public API
        return False


_DIFF_BUILDER = _diff_builder_works()

HANDLED_OPERATIONS = ("CREATE", "UPDATE")


def _drop_shared(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``a`` and ``b`` without the keys whose values are the very same object in both (recursively, through
    dicts that are distinct objects). A shared value cannot differ, so the JSON Patch between the results is the
    one between ``a`` and ``b``: keys keep their names and lists are kept whole, so every path is unchanged."""
    a2: dict[str, Any] = {}
    b2: dict[str, Any] = {}
    for key, va in a.items():
        if key in b:
            vb = b[key]
            if va is vb:
                continue
            if isinstance(va, dict) and isinstance(vb, dict):
                va, vb = _drop_shared(va, vb)
            b2[key] = vb
        a2[key] = va
    for key, vb in b.items():
        if key not in a:
            b2[key] = vb
    return a2, b2


def make_patch(raw: dict[str, Any], mutated: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch from the raw request object to the mutated copy (escapes '/' in keys as '~1').

    ``mutation.mutate`` shares every sub-tree it does not write with ``raw``; those are left out before diffing,
    so the cost follows what the rules touched, not the size of the object (managedFields, large annotations)."""
    if raw is mutated:
        return []
    src, dst = _drop_shared(raw, mutated)
    if _DIFF_BUILDER:
        # What jsonpatch.make_patch does, minus re-validating the operations it has just generated (that
        # validation parsed every path again and cost more than the diff of a few annotations). This leans on
        # jsonpatch internals, so any surprise there falls back to the public function.
        try:
            builder = jsonpatch.DiffBuilder(src, dst, json.dumps)
            builder._compare_values("", None, src, dst)
            return list(builder.execute())
        except (AttributeError, TypeError):
            pass
    return list(jsonpatch.make_patch(src, dst))


class Brain:
    def __init__(self, policy: Policy | None = None, models: ModelCatalog | None = None) -> None:
        self.policy = policy or Policy.default()
        self.models = models if models is not None else ModelCatalog()
        # Which optional APIs the cluster serves; kept current by the reconciler's API discovery on every
        # replica. Unknown (no cluster, or not asked yet) counts as installed.
        self.installed: Installed = ASSUMED

    def _in_scope(self, req: AdmissionRequest) -> bool:
        return (req.group == C.LLMAZ_GROUP and req.kind in C.WORKLOAD_KINDS
                and req.operation in HANDLED_OPERATIONS and not req.sub_resource
                and isinstance(req.object, dict))

    def mutate(self, req: AdmissionRequest) -> AdmissionResult:
        if req.group == "" and req.kind == "Pod":
            return self.mutate_pod(req)
        if not self._in_scope(req):
            return AdmissionResult(reason="skipped")
        policy, models = self.policy, self.models
        raw = req.object
        assert raw is not None
        try:
            m = mutate(raw, req.old_object, req.operation, policy, models, self.installed)
        except Denied as d:
            return AdmissionResult(allowed=False, message=d.message, code=d.code, reason="denied")
        patch = make_patch(raw, m.obj) if m.changed else []
        return AdmissionResult(patch=patch, warnings=m.warnings, reason="patched" if patch else "allowed")

    def mutate_pod(self, req: AdmissionRequest) -> AdmissionResult:
        """The drain of a model pod of a managed workload (grace period, preStop); every other pod untouched.
        A pod is never denied here: the worst case of a miss is the Kubernetes default grace period."""
        if req.operation != "CREATE" or req.sub_resource or not isinstance(req.object, dict) or \
                not isinstance(req.object.get("spec"), dict):
            return AdmissionResult(reason="skipped")
        pod, notes = drain_rules.mutate_pod(req.object)
        if pod is req.object:
            return AdmissionResult(reason="skipped")
        patch = make_patch(req.object, pod)
        return AdmissionResult(patch=patch, warnings=notes, reason="patched" if patch else "allowed")

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
