"""Caps on what one workload's annotations may cost: bytes, trigger count, nesting, built-object size.

The caps live in the policy (``limits``) with defaults far above any real configuration and far below what
hurts: a real ``triggers`` annotation is a few hundred bytes with one to four triggers, three levels deep.
Each refusal names the cap, its value, and where it was hit. ``annotation_problems`` runs before any
annotation is parsed, so an oversized value costs one length check and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Problem
from .safeyaml import Bounds, InputRefused, load, utf8_size

PREFIX = "serverless.llmaz.io/"


class Limits(BaseModel):
    """Policy ``limits``: every bound on tenant input. The defaults suit every documented configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    annotationBytes: int = Field(default=16384, ge=256, le=262144,
                                 description="bytes of one serverless.llmaz.io/* annotation value")
    totalAnnotationBytes: int = Field(default=32768, ge=256, le=1048576,
                                      description="bytes of all serverless.llmaz.io/* annotations together")
    triggers: int = Field(default=16, ge=1, le=256, description="triggers per workload")
    nestingDepth: int = Field(default=8, ge=3, le=64, description="nesting levels of an annotation's YAML")
    yamlNodes: int = Field(default=2000, ge=16, le=100000, description="YAML nodes in one annotation")
    stringBytes: int = Field(default=4096, ge=64, le=65536,
                             description="bytes of one value passed through to KEDA (metadata, query)")
    builtObjectBytes: int = Field(default=65536, ge=4096, le=1048576,
                                  description="bytes (JSON) of the ScaledObject plus InterceptorRoute built")

    def bounds(self, items: bool = False) -> Bounds:
        """Loader bounds; ``items`` also caps the top-level list at the trigger limit."""
        return Bounds(self.annotationBytes, self.nestingDepth, self.yamlNodes,
                      max_items=self.triggers if items else None)


# The policy document is written by a cluster admin and stored in a ConfigMap (at most 1 MiB); the loader
# still refuses aliases and bounds it, so a mistaken policy cannot hang the process that reads it.
POLICY_BOUNDS = Bounds(1048576, 32, 200000, "the 1 MiB ConfigMap size", "the policy document limit",
                       "the policy document limit")


def annotation_problems(ann: dict[str, Any], limits: Limits) -> list[Problem]:
    """Byte caps on our annotations, checked before any of them is parsed."""
    problems: list[Problem] = []
    total, largest, largest_size = 0, "", -1
    for key, value in ann.items():
        if not str(key).startswith(PREFIX) or not isinstance(value, str):
            continue
        size = utf8_size(value, limits.totalAnnotationBytes)
        total += size
        if size > largest_size:
            largest, largest_size = str(key), size
        if size > limits.annotationBytes:
            problems.append(Problem(str(key), f"is {size} bytes, above the limit of {limits.annotationBytes} "
                                    "bytes (policy limits.annotationBytes)",
                                    "shorten it, or ask the cluster admin to raise limits.annotationBytes"))
    if not problems and total > limits.totalAnnotationBytes:
        problems.append(Problem(largest, f"with the other serverless.llmaz.io/* annotations makes {total} bytes, "
                                f"above the limit of {limits.totalAnnotationBytes} bytes (policy "
                                "limits.totalAnnotationBytes)", "shorten them"))
    return problems


def load_annotation(text: str, where: str, limits: Limits, trigger_list: bool = False) -> tuple[Any, list[Problem]]:
    """Parse one annotation value within the caps; a refusal or a syntax error is a Problem at ``where``.
    ``trigger_list``: the value is a list of triggers, capped at ``limits.triggers`` while it is parsed."""
    import yaml

    try:
        return load(text, limits.bounds(items=trigger_list)), []
    except InputRefused as exc:
        return None, [Problem(where, exc.what, exc.fix)]
    except UnicodeEncodeError as exc:      # a lone surrogate (JSON may escape one): no UTF-8 text, no YAML
        return None, [Problem(where, f"is not valid UTF-8 text (character {exc.start + 1} cannot be encoded)",
                              "write the value as plain UTF-8 text")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        return None, [Problem(where, f"is not valid YAML/JSON{at}: {problem}")]


def trigger_count_problem(count: int, where: str, limits: Limits) -> Problem | None:
    if count > limits.triggers:
        return Problem(where, f"has {count} triggers, above the limit of {limits.triggers} (policy "
                       "limits.triggers)", "a workload needs a handful of triggers at most; combine or drop some")
    return None


def built_problems(objects: list[dict[str, Any]], where: str, limits: Limits) -> list[Problem]:
    """The objects built for KEDA: every string within ``stringBytes``, the whole within ``builtObjectBytes``."""
    problems: list[Problem] = []
    todo: list[tuple[Any, str]] = [(o, "") for o in objects]
    while todo and len(problems) < 5:
        value, path = todo.pop()
        if isinstance(value, dict):
            todo.extend((v, f"{path}.{k}" if path else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str) and utf8_size(value, limits.stringBytes) > limits.stringBytes:
            problems.append(Problem(f"{where} ({path})", f"a value of {utf8_size(value, limits.stringBytes)} "
                                    f"bytes is above the limit of {limits.stringBytes} bytes (policy "
                                    "limits.stringBytes)", "shorten it"))
    if problems:
        return problems
    size = len(json.dumps(objects, separators=(",", ":"), default=str))
    if size > limits.builtObjectBytes:
        problems.append(Problem(where, f"would build KEDA objects of {size} bytes, above the limit of "
                                f"{limits.builtObjectBytes} bytes (policy limits.builtObjectBytes)",
                                "use fewer or smaller triggers"))
    return problems
