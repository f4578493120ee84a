"""Policy model: defaults, layering, strictness, and clear errors for bad policy documents."""

from __future__ import annotations

import pytest

from webhook.policy import Policy, PolicyError, load_policy_file, parse_policy, policy_from_configmap


def test_empty_documents_mean_builtin_policy():
    for text in (None, "", "  \n", "# only a comment\n"):
        assert parse_policy(text) == Policy.default()


def test_partial_policy_keeps_other_defaults():
    p = parse_policy("gpu: {cooldownPeriod: 1200}\nmaxReplicasCap: 8")
    assert p.gpu.cooldownPeriod == 1200 and p.maxReplicasCap == 8
    assert p.http.readinessTimeout == Policy.default().http.readinessTimeout


@pytest.mark.parametrize("text,needle", [
    ("defaults: [1, 2]", "defaults"),
    ("maxReplicaCap: 3", "maxReplicaCap: unknown field"),
    ("gpu: {minReplicas: -1}", "gpu.minReplicas"),
    ("maxReplicasCap: 2", "above maxReplicasCap"),
    ("defaults: {minReplicas: 9, maxReplicas: 4, cooldownPeriod: 1, pollingInterval: 1, initialCooldownPeriod: 0,"
     " startAtZero: false, triggers: [http]}", "above defaults.maxReplicas"),
    ("defaults: {triggers: null}", "defaults must set triggers"),
    ("profiles: {'bad name!': {minReplicas: 1}}", "profile name"),
    ("profiles: {x: {triggers: [teleport]}}", "profiles.x.triggers[0].type"),
    ("[unclosed", "not valid YAML"),
    ("- a list", "must be a YAML mapping"),
])
def test_bad_policy_is_explained(text, needle):
    with pytest.raises(PolicyError) as exc:
        parse_policy(text)
    assert needle in str(exc.value)


def test_configmap_and_file_forms(tmp_path):
    cm = {"kind": "ConfigMap", "data": {"policy.yaml": "maxReplicasCap: 9"}}
    assert policy_from_configmap(cm).maxReplicasCap == 9
    assert policy_from_configmap({"kind": "ConfigMap"}) == Policy.default()
    f = tmp_path / "cm.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p}\ndata:\n  policy.yaml: |\n    maxReplicasCap: 7\n")
    assert load_policy_file(str(f)).maxReplicasCap == 7
    f.write_text("maxReplicasCap: 5\n")
    assert load_policy_file(str(f)).maxReplicasCap == 5


def test_shipped_example_policy_parses():
    p = load_policy_file("examples/policy.yaml")
    assert {"interactive", "always-warm", "batch"} <= set(p.profiles)


def test_partial_nested_overrides_merge_with_builtin_defaults():
    p = parse_policy("gpu: {cooldownPeriod: 900}\nprofiles: {nightly: {minReplicas: 0}}\n"
                     "defaults: {triggers: [queue-depth]}")
    d = Policy.default()
    assert p.gpu.cooldownPeriod == 900
    assert p.gpu.minReplicas == d.gpu.minReplicas == 0 and p.gpu.startAtZero is True
    assert set(p.profiles) == set(d.profiles) | {"nightly"}
    assert p.defaults.triggers == ["queue-depth"] and p.defaults.maxReplicas == d.defaults.maxReplicas
