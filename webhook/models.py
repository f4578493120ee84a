"""A read-only view of OpenModels for the admission hot path.

The webhook must not call the API server while answering an AdmissionReview (it would add latency and, worse,
a dependency loop when the API server is under pressure). OpenModels are cluster-scoped and few; a watch keeps
this catalog current and the rules read it. ``preview`` fills it from files.
"""

from __future__ import annotations

from typing import Any, Iterable


class ModelCatalog:
    def __init__(self, models: Iterable[dict[str, Any]] = ()) -> None:
        self._models: dict[str, dict[str, Any]] = {}
        self.synced = False
        for m in models:
            self.put(m)

    def put(self, model: dict[str, Any]) -> None:
        name = (model.get("metadata") or {}).get("name")
        if name:
            # Keep only what the rules read; the rest of an OpenModel is irrelevant here.
            spec = model.get("spec") or {}
            kept: dict[str, Any] = {"inferenceConfig": spec.get("inferenceConfig") or {}}
            source = spec.get("source") if isinstance(spec, dict) else None
            if isinstance(source, dict):   # the model id tells its size (webhook.readiness)
                hub = source.get("modelHub")
                kept_source: dict[str, Any] = {}
                if isinstance(hub, dict) and isinstance(hub.get("modelID"), str):
                    kept_source["modelHub"] = {"modelID": hub["modelID"]}
                if isinstance(source.get("uri"), str):
                    kept_source["uri"] = source["uri"]
                if kept_source:
                    kept["source"] = kept_source
            self._models[name] = {"metadata": {"name": name}, "spec": kept}

    def remove(self, name: str) -> None:
        self._models.pop(name, None)

    def get(self, name: str) -> dict[str, Any] | None:
        return self._models.get(name)

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models
