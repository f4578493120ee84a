"""Deterministic, realistic AdmissionReview bodies for the benchmarks.

Two workloads:

- ``create``: a Playground CREATE as ``kubectl apply`` sends it for a small GPU chat model (about 1.5 KB).
- ``update``: a Playground UPDATE with large ``object`` and ``oldObject`` (about 250 KB each): long annotations
  (``kubectl.kubernetes.io/last-applied-configuration`` and a few tooling annotations), many labels, a long
  env list and ~40 ``managedFields`` entries with deep ``fieldsV1`` trees, as objects edited by several
  controllers and GitOps tools look. The object was mutated before (it carries our annotations) and the user
  changed ``max-replicas``, so the answer is a real, small patch.

Everything comes from ``random.Random(seed)``: the same seed gives byte-identical bodies.
"""

from __future__ import annotations

import copy
import json
import random
import string
import uuid
from typing import Any

GROUP, VERSION = "inference.llmaz.io", "v1alpha1"
ANN = "serverless.llmaz.io/"


def _word(rng: random.Random, lo: int = 4, hi: int = 12) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def _text(rng: random.Random, size: int) -> str:
    """Prose-like ASCII of about ``size`` characters (no escapes needed in JSON)."""
    words: list[str] = []
    n = 0
    while n < size:
        w = _word(rng, 2, 10)
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:size]


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def review(obj: dict[str, Any], *, operation: str, uid: str, old: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    req: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": GROUP, "version": VERSION, "kind": obj.get("kind", "Playground")},
        "resource": {"group": GROUP, "version": VERSION, "resource": "playgrounds"},
        "requestKind": {"group": GROUP, "version": VERSION, "kind": obj.get("kind", "Playground")},
        "requestResource": {"group": GROUP, "version": VERSION, "resource": "playgrounds"},
        "name": meta.get("name", ""), "namespace": meta.get("namespace", ""), "operation": operation,
        "userInfo": {"username": "system:serviceaccount:argocd:argocd-application-controller",
                     "uid": "7d5c3c52-3b0e-4a8e-9f1e-2b8c1a1b2c3d",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:argocd", "system:authenticated"]},
        "object": obj, "oldObject": old, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" if operation == "CREATE"
                    else "UpdateOptions", "fieldManager": "kubectl-client-side-apply"},
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def small_playground(rng: random.Random, i: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Playground",
        "metadata": {
            "name": f"qwen-chat-{i}", "namespace": "ai",
            "labels": {"app.kubernetes.io/name": "qwen-chat", "app.kubernetes.io/part-of": "assistant",
                       "team": "ml-platform"},
            "annotations": {ANN + "triggers": "http, queue-depth", ANN + "max-replicas": "4"},
        },
        "spec": {
            "replicas": 1,
            "modelClaim": {"modelName": "qwen2-5-7b-instruct"},
            "backendRuntimeConfig": {
                "backendName": "vllm",
                "args": ["--max-model-len", "8192", "--gpu-memory-utilization", "0.9"],
                "envs": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}],
                "resources": {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                              "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}},
            },
        },
    }


def _fields_tree(rng: random.Random, depth: int, width: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(width):
        key = "f:" + _word(rng, 4, 14)
        if depth > 0 and rng.random() < 0.55:
            out[key] = _fields_tree(rng, depth - 1, max(2, width - 2))
        else:
            out[key] = {}
    if rng.random() < 0.3:
        out["k:{\"name\":\"" + _word(rng) + "\"}"] = {".": {}, "f:name": {}, "f:value": {}}
    return out


def large_playground(rng: random.Random, target_bytes: int = 250_000) -> dict[str, Any]:
    """A mutated Playground of about ``target_bytes`` of JSON (annotations ~45%, managedFields ~45%)."""
    obj = small_playground(rng, 0)
    obj["metadata"]["name"] = "qwen-chat-large"
    meta = obj["metadata"]
    meta.update({"uid": _uid(rng), "resourceVersion": str(rng.randint(10**6, 10**7)), "generation": 17,
                 "creationTimestamp": "2025-01-15T10:12:44Z"})
    for n in range(40):
        meta["labels"][f"example.com/{_word(rng)}-{n}"] = _word(rng, 3, 30)
    env = [{"name": f"APP_{_word(rng).upper()}_{n}", "value": _text(rng, rng.randint(10, 120))}
           for n in range(150)]
    obj["spec"]["backendRuntimeConfig"]["envs"] = env
    ann = meta["annotations"]
    ann[ANN + "managed"] = "true"
    ann[ANN + "resolved"] = ('{"cooldownPeriod":600,"gpu":true,"initialCooldownPeriod":0,"maxReplicas":4,'
                             '"minReplicas":0,"pollingInterval":15,"startAtZero":true,'
                             '"triggers":["http","queue-depth(waiting)"]}')
    obj["spec"]["replicas"] = 2
    budget = target_bytes // 2
    ann["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(
        {"apiVersion": obj["apiVersion"], "kind": "Playground", "metadata": {"name": meta["name"]},
         "spec": obj["spec"]}, separators=(",", ":"))
    used = len(json.dumps(ann))
    n = 0
    while used < budget:
        chunk = min(16_000, budget - used)
        ann[f"tooling.example.com/notes-{n}"] = _text(rng, chunk)
        used += chunk + 40
        n += 1
    managers = ["kubectl-client-side-apply", "argocd-controller", "llmaz-serverless", "keda-operator",
                "kube-controller-manager", "helm", "kustomize-controller", "manager"]
    mf: list[dict[str, Any]] = []
    size = 0
    while size < target_bytes // 2:
        entry = {"manager": rng.choice(managers) + f"-{len(mf)}", "operation": rng.choice(["Update", "Apply"]),
                 "apiVersion": f"{GROUP}/{VERSION}", "time": "2025-02-01T08:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": _fields_tree(rng, 2, 8),
                                             "f:labels": _fields_tree(rng, 1, 8)},
                              "f:spec": _fields_tree(rng, 4, 9)}}
        mf.append(entry)
        size += len(json.dumps(entry))
    meta["managedFields"] = mf
    return obj


def create_body(seed: int = 1, i: int = 0) -> bytes:
    rng = random.Random(seed)
    obj = small_playground(rng, i)
    return json.dumps(review(obj, operation="CREATE", uid=_uid(rng)), separators=(",", ":")).encode()


def update_body(seed: int = 2, target_bytes: int = 250_000) -> bytes:
    """UPDATE: the stored (old) object and the re-applied one differ in max-replicas and one note."""
    rng = random.Random(seed)
    old = large_playground(rng, target_bytes)
    new = copy.deepcopy(old)
    new["metadata"]["annotations"][ANN + "max-replicas"] = "6"
    new["metadata"]["annotations"]["tooling.example.com/notes-0"] = _text(rng, 15_000)
    new["spec"]["replicas"] = 1   # the manifest says 1; the live (KEDA-scaled) value is 2
    return json.dumps(review(new, operation="UPDATE", uid=_uid(rng), old=old), separators=(",", ":")).encode()


WORKLOADS = {"create": create_body, "update": update_body}


def body(workload: str) -> bytes:
    return WORKLOADS[workload]()


if __name__ == "__main__":  # sizes, for the docs
    for name in WORKLOADS:
        b = body(name)
        print(f"{name}: {len(b)} bytes")
