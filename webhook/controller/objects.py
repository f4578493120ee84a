"""Pure helpers over the objects the reconciler reads and writes: ownership, field ownership, HPAs, slimming.

No I/O here: every function takes plain dicts and returns plain values, so each rule is unit-tested alone.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import jsonpatch

from .. import constants as C
from .. import mutation

Key = tuple[str, str, str]          # (kind, namespace, name) of a workload

def _labels(obj: dict[str, Any] | None) -> dict[str, str]:
    meta = (obj or {}).get("metadata") or {}
    labels = meta.get("labels")
    return labels if isinstance(labels, dict) else {}


def workload_key_of_owned(obj: dict[str, Any]) -> Key | None:
    """The workload a KEDA object of ours belongs to (from its labels), or None if it is not ours."""
    labels = _labels(obj)
    if labels.get(C.LABEL_MANAGED_BY) != C.MANAGED_BY:
        return None
    kind, name = labels.get(C.LABEL_WORKLOAD_KIND), labels.get(C.LABEL_WORKLOAD_NAME)
    if kind not in C.WORKLOAD_KINDS or not name:
        return None
    return (kind, (obj.get("metadata") or {}).get("namespace") or "", name)


def is_ours_for(obj: dict[str, Any] | None, kind: str, name: str) -> bool:
    labels = _labels(obj)
    return (labels.get(C.LABEL_MANAGED_BY) == C.MANAGED_BY and labels.get(C.LABEL_WORKLOAD_KIND) == kind
            and labels.get(C.LABEL_WORKLOAD_NAME) == name)


def hpa_target_key(hpa: dict[str, Any]) -> Key | None:
    """The llmaz workload an HPA scales, or None."""
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    api = str(ref.get("apiVersion") or "")
    if ref.get("kind") not in C.WORKLOAD_KINDS or not api.startswith(C.LLMAZ_GROUP + "/") or not ref.get("name"):
        return None
    return (ref["kind"], (hpa.get("metadata") or {}).get("namespace") or "", ref["name"])


def namespace_enabled(ns: dict[str, Any] | None) -> bool:
    return _labels(ns).get(C.NAMESPACE_LABEL) == "true"


def namespace_terminating(ns: dict[str, Any] | None) -> bool:
    if ns is None:
        return False
    return bool((ns.get("metadata") or {}).get("deletionTimestamp")) or (
        (ns.get("status") or {}).get("phase") == "Terminating")


def contains(desired: Any, live: Any) -> bool:
    """Every field of ``desired`` is in ``live`` with the same value (lists: same length, item by item)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(v is None or (k in live and contains(v, live[k])) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(
            contains(d, x) for d, x in zip(desired, live))
    if isinstance(desired, bool) or isinstance(live, bool):
        return isinstance(desired, bool) and isinstance(live, bool) and desired == live
    return desired == live


_IGNORED_PATHS = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


def object_paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Field paths set by ``obj`` as server-side apply tracks them (maps recurse, lists are leaves)."""
    out: set[tuple[str, ...]] = set()
    for k, v in obj.items():
        if v is None:
            continue
        p = prefix + (k,)
        if isinstance(v, dict) and v:
            out |= object_paths(v, p)
        else:
            out.add(p)
    return out - _IGNORED_PATHS if not prefix else out


def fields_v1_paths(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The same paths from a managedFields ``fieldsV1`` tree (list items collapse onto their list)."""
    out: set[tuple[str, ...]] = set()
    for k, v in fields.items():
        if k == ".":
            continue
        if not k.startswith("f:"):
            out.add(prefix)          # k:/v:/i: entries: prefix is a (keyed) list, a leaf for us
            continue
        p = prefix + (k[2:],)
        if isinstance(v, dict) and any(kk != "." for kk in v):
            out |= fields_v1_paths(v, p)
        else:
            out.add(p)
    return out


def owned_paths(live: dict[str, Any], manager: str = C.FIELD_MANAGER) -> set[tuple[str, ...]] | None:
    """Paths our field manager owns through Apply, or None when it owns nothing."""
    found = None
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            found = (found or set()) | fields_v1_paths(entry.get("fieldsV1") or {})
    return found


def live_matches(desired: dict[str, Any], live: dict[str, Any] | None, manager: str = C.FIELD_MANAGER) -> bool:
    """Is the live object what an apply of ``desired`` would produce (for the fields we own)?"""
    if live is None:
        return False
    dm, lm = desired.get("metadata") or {}, live.get("metadata") or {}
    if not contains(dm.get("labels") or {}, lm.get("labels") or {}):
        return False
    if not contains(dm.get("annotations") or {}, lm.get("annotations") or {}):
        return False
    if dm.get("ownerReferences") and not contains(dm["ownerReferences"], lm.get("ownerReferences") or []):
        return False
    if not contains(desired.get("spec") or {}, live.get("spec") or {}):
        return False
    owned = owned_paths(live, manager)
    return owned is not None and owned == object_paths(desired)


def restore_replicas(scaled_object: dict[str, Any] | None) -> int:
    """Replicas to give a workload found at 0 when its ScaledObject goes away: never stranded at zero."""
    spec = (scaled_object or {}).get("spec") or {}
    prev_min = spec.get("minReplicaCount")
    prev_min = prev_min if isinstance(prev_min, int) and not isinstance(prev_min, bool) else 0
    return max(1, prev_min)


def _owned_by_uid(obj: dict[str, Any], uid: str | None) -> bool:
    return bool(uid) and any(isinstance(r, dict) and r.get("uid") == uid
                             for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def classify_hpas(workload: dict[str, Any], hpas: Iterable[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Split the HPAs targeting ``workload`` into (llmaz's, foreign). KEDA's own HPA is neither.

    llmaz's HPA is owned by the Playground (and named after it); an HPA named after a Playground that
    still has ``spec.elasticConfig`` is treated as llmaz's as well.
    """
    meta = workload.get("metadata") or {}
    name, uid = meta.get("name"), meta.get("uid")
    keda_name = C.KEDA_HPA_PREFIX + C.scaled_object_name(name or "")
    has_elastic = workload.get("kind") == C.KIND_PLAYGROUND and (workload.get("spec") or {}).get(
        "elasticConfig") is not None
    llmaz, foreign = [], []
    for h in hpas:
        hmeta = h.get("metadata") or {}
        owners = hmeta.get("ownerReferences") or []
        if hmeta.get("name") == keda_name or any(isinstance(o, dict) and o.get("kind") == "ScaledObject"
                                                 for o in owners):
            continue
        if _owned_by_uid(h, uid) or (has_elastic and hmeta.get("name") == name):
            llmaz.append(h)
        else:
            foreign.append(h)
    return llmaz, foreign


def convert_elastic_config(workload: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """``workload`` with ``spec.elasticConfig`` turned into our annotations (by the mutating webhook's own
    rule), the JSON patch that gets there, and the conversion notes."""
    converted = copy.deepcopy(workload)
    notes: list[str] = []
    mutation.convert_elastic_config(converted, notes)

    def part(o: dict[str, Any]) -> dict[str, Any]:
        meta = o.get("metadata") or {}
        out: dict[str, Any] = {"metadata": {}, "spec": {}}
        if "annotations" in meta:
            out["metadata"]["annotations"] = meta["annotations"]
        if "elasticConfig" in (o.get("spec") or {}):
            out["spec"]["elasticConfig"] = o["spec"]["elasticConfig"]
        return out

    ops = list(jsonpatch.make_patch(part(workload), part(converted)))
    rv = (workload.get("metadata") or {}).get("resourceVersion")
    if rv:
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
    return converted, ops, notes


def describe(so: dict[str, Any] | None) -> str:
    spec = (so or {}).get("spec") or {}
    trig = ", ".join(str(t.get("name") or t.get("type")) for t in spec.get("triggers") or [])
    return f"replicas {spec.get('minReplicaCount')}..{spec.get('maxReplicaCount')}, triggers: {trig}"


# ------------------------------------------------------------------------ cache transforms (memory)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _slim_meta(meta: dict[str, Any], keep_managed: bool) -> dict[str, Any]:
    """Metadata without managedFields (but ours, when asked) and without kubectl's last-applied copy of the whole
    object: nothing here reads them, and together they are often more than half an object's size."""
    out = {k: v for k, v in meta.items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED in annotations:
        out["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    if keep_managed:
        mf = [e for e in meta.get("managedFields") or [] if e.get("manager") == C.FIELD_MANAGER]
        if mf:
            out["managedFields"] = mf
    return out


def slim_owned(obj: dict[str, Any]) -> dict[str, Any]:
    """KEDA objects: metadata (with only our managedFields), spec, and the status conditions KEDA writes."""
    out = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
           "metadata": _slim_meta(obj.get("metadata") or {}, True), "spec": obj.get("spec") or {}}
    status = obj.get("status")
    if isinstance(status, dict):
        kept: dict[str, Any] = {}
        if isinstance(status.get("conditions"), list):
            kept["conditions"] = status["conditions"]
        if isinstance(status.get("lastActiveTime"), str):    # the learner's signal (controller.learning)
            kept["lastActiveTime"] = status["lastActiveTime"]
        if kept:
            out["status"] = kept
    return out


def slim_workload(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = _slim_meta(obj.get("metadata") or {}, False)
    return out


STUB = "llmaz-serverless.stub"     # marks a cached workload reduced by ``stub_workload``


def stub_workload(obj: dict[str, Any]) -> dict[str, Any]:
    """A workload in a namespace that is not opted in, as the cache keeps it: only what deciding "not managed"
    and undoing our own work need (identity, owner references, replicas, this project's annotations). Most
    namespaces of a large cluster are not opted in; their Playgrounds and Services cost a few hundred bytes each
    instead of their whole spec. ``is_stub`` tells the reconciler to read the object whole before managing it
    (its namespace was opted in since)."""
    meta = obj.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "generation", "labels",
                                 "ownerReferences", "deletionTimestamp") if k in meta}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(C.PREFIX)}
    if annotations:
        keep["annotations"] = annotations
    spec = obj.get("spec")
    out: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": keep,
                           "spec": {"replicas": spec["replicas"]} if isinstance(spec, dict) and "replicas" in spec
                           else {}, STUB: True}
    return out


def is_stub(obj: dict[str, Any] | None) -> bool:
    return bool(obj and obj.get(STUB))


def slim_model(obj: dict[str, Any]) -> dict[str, Any]:
    """OpenModels: what ``models.ModelCatalog`` keeps (name, spec.inferenceConfig) plus the informer's keys."""
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "uid", "resourceVersion") if k in meta},
            "spec": {"inferenceConfig": (obj.get("spec") or {}).get("inferenceConfig") or {}}}


def slim_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "uid", "labels", "deletionTimestamp", "resourceVersion")
                         if k in meta},
            "status": {"phase": (obj.get("status") or {}).get("phase")}}


def slim_hpa(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "ownerReferences", "resourceVersion")
                         if k in meta},
            "spec": {"scaleTargetRef": (obj.get("spec") or {}).get("scaleTargetRef") or {}}}
