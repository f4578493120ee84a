"""Misspelt annotations: a key the rules never read is a setting the user believes in and nobody applies.

``serverless.llmaz.io/min-replica: "1"`` would otherwise be admitted without a word and the model would sit at
zero. Three findings, all pure functions of the object:

- an unknown key under ``serverless.llmaz.io/``, with the closest known key as a suggestion;
- a key whose prefix is a near miss of ours (``serverless.llmaz.com/``, ``serverlesss.llmaz.io/``: at most
  ``PREFIX_DISTANCE`` edits), with the key it was probably meant to be;
- our keys on an object they do nothing on (a Deployment, a Service created by a Playground), or among the
  labels instead of the annotations.

The known keys are ``constants.USER_ANNOTATIONS`` and ``constants.WRITTEN_ANNOTATIONS``, read at call time, so
an annotation added there is known here without a second list. The cluster policy decides (``annotations.
unknown``) whether the first two findings warn or deny; ``settings.analyze`` applies that.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any, Mapping

from . import constants as C
from .errors import Problem

# Edits between a prefix and ours that still count as a typo of it. 3 covers ".com" for ".io" and a doubled or
# dropped letter or two; the nearest real domain of the ecosystem (inference.llmaz.io) is 9 edits away.
PREFIX_DISTANCE = 3


@dataclass(frozen=True)
class Finding:
    key: str
    what: str
    suggestion: str | None = None

    def warning(self) -> str:
        text = f"{self.key} {self.what}"
        return text + (f"; did you mean {self.suggestion}?" if self.suggestion else "")

    def problem(self) -> Problem:
        fix = f"did you mean {self.suggestion}? " if self.suggestion else ""
        fix += "the cluster policy denies unknown annotations (annotations.unknown: deny); see docs/api.md"
        return Problem(self.key, self.what, fix)


def known_annotations() -> tuple[str, ...]:
    return tuple(dict.fromkeys((*C.USER_ANNOTATIONS, *C.WRITTEN_ANNOTATIONS)))


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` as soon as it is known to exceed ``limit``
    (keys are bounded by the API server at 316 characters, and most are far from ours: stop early)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > limit:
            return limit + 1
        prev = cur
    return prev[-1]


def _closest(name: str) -> str | None:
    names = {k[len(C.PREFIX):]: k for k in known_annotations()}
    match = difflib.get_close_matches(name.lower(), list(names), n=1, cutoff=0.6)
    if match:
        return names[match[0]]
    # "cooldown" for "cooldown-period": a known key that starts with what was written.
    starts = [k for n, k in names.items() if name and n.startswith(name.lower())]
    return starts[0] if len(starts) == 1 else None


@functools.lru_cache(maxsize=4096)
def _near_prefix(prefix: str) -> bool:
    # Cached: a cluster's annotations use a handful of prefixes (kubectl.kubernetes.io, ...), and this runs on
    # every admission; the bound keeps tenants' invented prefixes from growing it.
    return prefix != C.DOMAIN and edit_distance(prefix.lower(), C.DOMAIN, PREFIX_DISTANCE) <= PREFIX_DISTANCE


def misspelt_annotations(annotations: Mapping[Any, Any]) -> list[Finding]:
    """Unknown keys under our prefix and keys under a near miss of it, in the order written."""
    known = set(known_annotations())
    out: list[Finding] = []
    for key in annotations:
        if not isinstance(key, str) or "/" not in key:
            continue
        prefix, _, name = key.partition("/")
        if prefix == C.DOMAIN:
            if key not in known:
                out.append(Finding(key, "is not an annotation of llmaz-serverless and is ignored", _closest(name)))
        elif _near_prefix(prefix):
            meant = C.PREFIX + name
            suggestion = meant if meant in known else _closest(name)
            out.append(Finding(key, f"is ignored: its prefix is {prefix}/, not {C.PREFIX}", suggestion))
    return out


def misplaced_labels(obj: Mapping[str, Any]) -> list[str]:
    """Our annotation keys written as labels on a workload: labels are never read for settings."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    known = set(C.USER_ANNOTATIONS)
    return [f"label {k} does nothing: llmaz-serverless reads its settings from annotations; move it to "
            f"metadata.annotations" for k in labels if k in known and k != C.ANN_ENABLED]


def ours_or_near(annotations: Mapping[Any, Any]) -> list[str]:
    """Keys under our prefix or a near miss of it."""
    out = []
    for key in annotations:
        if isinstance(key, str) and "/" in key:
            prefix = key.partition("/")[0]
            if prefix == C.DOMAIN or _near_prefix(prefix):
                out.append(key)
    return out


def inert_annotations_hint(obj: Mapping[str, Any], why: str) -> str | None:
    """A hint for an object our rules leave alone but that carries our annotations (``why``: the reason it is
    left alone, e.g. "a Deployment is not handled"). None when it carries none."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    ann = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    keys = ours_or_near(ann)
    if not keys:
        return None
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return (f"{shown} do nothing here ({why}): llmaz-serverless scales only {C.LLMAZ_API_VERSION} Playgrounds "
            f"and standalone Services; annotate the Playground or Service that runs the model")
