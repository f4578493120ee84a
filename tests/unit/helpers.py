"""Builders of llmaz objects for the unit tests."""

from __future__ import annotations

import copy
from typing import Any

from webhook import constants as C
from webhook.models import ModelCatalog

GPU_MODEL = {"apiVersion": "llmaz.io/v1alpha1", "kind": "OpenModel", "metadata": {"name": "qwen-7b"},
             "spec": {"inferenceConfig": {"flavors": [{"name": "a10", "limits": {"nvidia.com/gpu": 1}},
                                                      {"name": "cpu", "limits": {"cpu": 8}}]}}}
CPU_MODEL = {"apiVersion": "llmaz.io/v1alpha1", "kind": "OpenModel", "metadata": {"name": "tiny"},
             "spec": {"source": {"modelHub": {"modelID": "x"}}}}
MIG_MODEL = {"apiVersion": "llmaz.io/v1alpha1", "kind": "OpenModel", "metadata": {"name": "mig"},
             "spec": {"inferenceConfig": {"flavors": [{"name": "mig", "limits": {"nvidia.com/mig-1g.10gb": 1}}]}}}


def catalog() -> ModelCatalog:
    return ModelCatalog([GPU_MODEL, CPU_MODEL, MIG_MODEL])


def playground(name: str = "chat", namespace: str = "ai", model: str = "qwen-7b", replicas: int | None = 1,
               annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"modelClaim": {"modelName": model}, **spec},
    }
    if replicas is not None:
        obj["spec"]["replicas"] = replicas
    if annotations is not None:
        obj["metadata"]["annotations"] = dict(annotations)
    return obj


def service(name: str = "svc", namespace: str = "ai", gpu: bool = True, owner: bool = False,
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "model-runner", "image": "vllm/vllm-openai"}
    if gpu:
        container["resources"] = {"limits": {"amd.com/gpu": "2"}}
    obj: dict[str, Any] = {
        "apiVersion": C.LLMAZ_API_VERSION, "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1, "modelClaims": {"models": [{"name": "tiny"}]},
                 "workloadTemplate": {"leaderTemplate": {"spec": {"containers": [container]}},
                                      "workerTemplate": {"spec": {"containers": [copy.deepcopy(container)]}}}},
    }
    if owner:
        obj["metadata"]["ownerReferences"] = [{"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                                               "name": name, "uid": "u-1", "controller": True}]
    if annotations is not None:
        obj["metadata"]["annotations"] = dict(annotations)
    return obj


def azure_invocations(path: Any, per_minute: dict[str, list[int]]) -> Any:
    """An Azure Functions 2019 invocation file at ``path``: one row per function, its count in each minute."""
    minutes = len(next(iter(per_minute.values())))
    rows = [f"{name},o,a," + ",".join(str(n) for n in counts) for name, counts in per_minute.items()]
    path.write_text("HashFunction,HashOwner,HashApp," + ",".join(str(m) for m in range(1, minutes + 1)) + "\n"
                    + "\n".join(rows) + "\n")
    return path
