"""AdmissionReview (admission.k8s.io/v1) boundary types.

The server decodes the raw body once into an ``AdmissionRequest``, the rules work on plain dicts, and an
``AdmissionResult`` is encoded back. Parsing is strict about what we need (uid, object) and lenient about
everything else: unknown fields are ignored, never rejected, so newer API servers keep working.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


@dataclass(slots=True)
class AdmissionRequest:
    uid: str
    kind: str                      # e.g. "Playground"
    group: str
    version: str
    operation: str                 # CREATE | UPDATE | DELETE | CONNECT
    namespace: str
    name: str
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    dry_run: bool
    sub_resource: str = ""
    api_version: str = API_VERSION

    @classmethod
    def from_review(cls, review: Any) -> "AdmissionRequest":
        """Build from a decoded AdmissionReview; raises BadRequest with a precise reason."""
        if not isinstance(review, dict):
            raise BadRequest("body must be a JSON object (an AdmissionReview)")
        if review.get("kind") != KIND:
            raise BadRequest(f"kind must be {KIND!r}, got {review.get('kind')!r}")
        api_version = review.get("apiVersion")
        if api_version not in (API_VERSION, "admission.k8s.io/v1beta1"):
            raise BadRequest(f"apiVersion must be {API_VERSION!r}, got {api_version!r}")
        req = review.get("request")
        if not isinstance(req, dict):
            raise BadRequest("AdmissionReview.request is missing or not an object")
        uid = req.get("uid")
        if not isinstance(uid, str) or not uid:
            raise BadRequest("AdmissionReview.request.uid is missing or not a string")
        kind = req.get("kind") if isinstance(req.get("kind"), dict) else {}
        obj = req.get("object")
        old = req.get("oldObject")
        if obj is not None and not isinstance(obj, dict):
            raise BadRequest("AdmissionReview.request.object must be an object")
        if old is not None and not isinstance(old, dict):
            raise BadRequest("AdmissionReview.request.oldObject must be an object")
        operation = req.get("operation")
        return cls(
            uid=uid,
            kind=str(kind.get("kind", "")),
            group=str(kind.get("group", "")),
            version=str(kind.get("version", "")),
            operation=str(operation or ""),
            namespace=str(req.get("namespace") or ""),
            name=str(req.get("name") or ""),
            object=obj,
            old_object=old,
            dry_run=bool(req.get("dryRun", False)),
            sub_resource=str(req.get("subResource") or ""),
            api_version=api_version,
        )


def uid_of(review: Any) -> str:
    """Best effort uid extraction, used to echo the uid even when the review is otherwise broken."""
    try:
        uid = review["request"]["uid"]
        return uid if isinstance(uid, str) else ""
    except (KeyError, TypeError, IndexError):
        return ""


@dataclass(slots=True)
class AdmissionResult:
    allowed: bool = True
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    code: int = 200
    reason: str = ""   # short machine word for metrics: allowed | patched | denied | error | skipped

    def to_review(self, uid: str, api_version: str = API_VERSION) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if self.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(self.patch, separators=(",", ":")).encode()
            ).decode()
        if self.warnings:
            # The API server caps each warning at 256 characters and drops the rest.
            response["warnings"] = [w if len(w) <= 256 else w[:253] + "..." for w in self.warnings]
        if not self.allowed:
            response["status"] = {"code": self.code, "message": self.message, "reason": "Invalid"
                                  if self.code == 422 else "InternalError", "status": "Failure"}
        return {"apiVersion": api_version, "kind": KIND, "response": response}
