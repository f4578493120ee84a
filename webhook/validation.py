"""The validation rules: what the validating webhook denies, after every mutating webhook has run.

The mutating webhook already denies invalid settings. Validation exists because mutating webhooks are not the
last word: another mutating webhook may run after ours, and with ``failurePolicy: Ignore`` ours may have been
skipped. So the stored object is checked once more, with the same brain (``settings.analyze``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from .errors import Problem
from .models import ModelCatalog
from .policy import Policy
from .settings import analyze


@dataclass
class Verdict:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.problems


def validate(obj: dict[str, Any], old: dict[str, Any] | None, operation: str, policy: Policy,
             models: ModelCatalog) -> Verdict:
    an = analyze(obj, policy, models)
    verdict = Verdict(problems=list(an.problems))
    if not an.managed:
        return verdict
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if obj.get("kind") == C.KIND_PLAYGROUND and spec.get("elasticConfig") is not None:
        verdict.problems.append(Problem(
            "spec.elasticConfig", "makes llmaz create its own HPA, which conflicts with the KEDA autoscaler",
            f"remove spec.elasticConfig (set {C.ANN_MIN_REPLICAS}/{C.ANN_MAX_REPLICAS} instead) or opt this "
            f"object out with {C.ANN_ENABLED}: \"false\""))
    if an.settings is not None:
        replicas = spec.get("replicas")
        s = an.settings
        if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas > s.max_replicas \
                and operation == "CREATE":
            verdict.warnings.append(f"spec.replicas {replicas} is above max-replicas {s.max_replicas}; KEDA "
                                    f"will scale it down")
    return verdict
