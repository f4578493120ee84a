"""The cluster policy as read from its ConfigMap, with "last good policy wins" semantics.

``PolicySource.update(configmap_or_None)`` is fed by a watch on the one policy ConfigMap. It never raises:

- a valid ConfigMap            -> that policy becomes current (``error`` is None);
- an invalid ConfigMap         -> the **last good** policy stays current and ``error`` says what is wrong
                                  (a typo in a policy must never turn into a cluster-wide change of behaviour);
- no ConfigMap (deleted/absent) -> the built-in default policy (deleting the ConfigMap is a deliberate act).

It is pure apart from remembering the last good policy, so it is unit-tested without an API server. The
controller turns its answers into ``brain.policy`` swaps, metrics and Events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .policy import Policy, PolicyError, policy_from_configmap


@dataclass(frozen=True)
class PolicyUpdate:
    policy: Policy                 # the policy in force after this update
    error: str | None              # why the ConfigMap was rejected (None when it was used or absent)
    changed: bool                  # the policy in force is different from before


class PolicySource:
    def __init__(self, default: Policy | None = None) -> None:
        self.default = default or Policy.default()
        self.policy: Policy = self.default
        self.error: str | None = None
        self.source_version: str | None = None     # resourceVersion of the ConfigMap last looked at
        self.good_version: str | None = None       # resourceVersion of the ConfigMap the policy came from

    @property
    def valid(self) -> bool:
        return self.error is None

    def update(self, configmap: dict[str, Any] | None) -> tuple[Policy, str | None]:
        """Feed the current ConfigMap (or None when it does not exist); returns (policy in force, error)."""
        u = self.apply(configmap)
        return u.policy, u.error

    def apply(self, configmap: dict[str, Any] | None) -> PolicyUpdate:
        before = self.policy
        if configmap is None:
            self.policy, self.error = self.default, None
            self.source_version = self.good_version = None
            return PolicyUpdate(self.policy, None, self.policy != before)
        rv = (configmap.get("metadata") or {}).get("resourceVersion")
        self.source_version = rv
        try:
            policy = policy_from_configmap(configmap)
        except PolicyError as exc:
            self.error = str(exc)
            return PolicyUpdate(self.policy, self.error, False)
        except Exception as exc:  # noqa: BLE001 - a policy bug must not take the controller down
            self.error = f"policy could not be read: {exc}"
            return PolicyUpdate(self.policy, self.error, False)
        self.policy, self.error, self.good_version = policy, None, rv
        return PolicyUpdate(policy, None, policy != before)
