"""A misspelt annotation is never silently ignored."""

from __future__ import annotations

import pytest

from tests.unit.helpers import catalog, playground
from webhook import constants as C
from webhook.errors import Denied
from webhook.mutation import mutate
from webhook.policy import Policy, PolicyError, parse_policy
from webhook.preview import preview_object
from webhook.spelling import edit_distance, inert_annotations_hint, known_annotations, misspelt_annotations


def warnings_of(annotations, policy=None):
    return mutate(playground(annotations=annotations), None, "CREATE", policy or Policy.default(),
                  catalog()).warnings


@pytest.mark.parametrize("key,suggestion", [
    ("serverless.llmaz.io/min-replica", C.ANN_MIN_REPLICAS),
    ("serverless.llmaz.io/cooldown", C.ANN_COOLDOWN),
    ("serverless.llmaz.io/trigers", C.ANN_TRIGGERS),
    ("serverless.llmaz.com/min-replicas", C.ANN_MIN_REPLICAS),
    ("serverlesss.llmaz.io/max-replicas", C.ANN_MAX_REPLICAS),
    ("Serverless.llmaz.io/profile", C.ANN_PROFILE),
])
def test_unknown_or_near_miss_key_warns_with_did_you_mean(key, suggestion):
    found = [w for w in warnings_of({key: "1"}) if w.startswith(key)]
    assert len(found) == 1 and found[0].endswith(f"did you mean {suggestion}?"), found


def test_known_and_foreign_keys_are_quiet():
    quiet = {C.ANN_MIN_REPLICAS: "0", "inference.llmaz.io/x": "1", "example.com/a": "b", "app": "x",
             "kubectl.kubernetes.io/last-applied-configuration": "{}", C.ANN_MANAGED: "true"}
    assert not misspelt_annotations(quiet)
    assert not [w for w in warnings_of(quiet) if "ignored" in w]


def test_known_set_follows_constants(monkeypatch):
    new = C.PREFIX + "keep-alive-for-test"
    assert misspelt_annotations({new: "1"})
    monkeypatch.setattr(C, "USER_ANNOTATIONS", (*C.USER_ANNOTATIONS, new))
    assert new in known_annotations() and not misspelt_annotations({new: "1"})


def test_policy_switch_denies():
    policy = parse_policy("annotations: {unknown: deny}")
    with pytest.raises(Denied) as exc:
        mutate(playground(annotations={"serverless.llmaz.com/min-replicas": "1"}), None, "CREATE", policy,
               catalog())
    assert "serverless.llmaz.com/min-replicas" in exc.value.message
    assert f"did you mean {C.ANN_MIN_REPLICAS}?" in exc.value.message
    with pytest.raises(PolicyError, match="annotations.unknown"):
        parse_policy("annotations: {unknown: explode}")


def test_label_instead_of_annotation_warns():
    obj = playground()
    obj["metadata"]["labels"] = {C.ANN_MIN_REPLICAS: "1"}
    m = mutate(obj, None, "CREATE", Policy.default(), catalog())
    assert any("label " + C.ANN_MIN_REPLICAS in w and "annotations" in w for w in m.warnings)


def test_edit_distance():
    assert edit_distance("serverless.llmaz.com", C.DOMAIN, 3) == 2
    assert edit_distance("inference.llmaz.io", C.DOMAIN, 3) == 4   # stopped early: above the limit
    assert edit_distance("abc", "abc", 0) == 0


def test_preview_hints_on_kinds_our_annotations_do_nothing_on():
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "web", "annotations": {C.ANN_MIN_REPLICAS: "0"}}, "spec": {}}
    report = preview_object(deploy, Policy.default(), catalog(), namespace="ai")
    assert "skipped" in report and any("do nothing here" in n and "Deployment" in n for n in report["notes"])
    owned = playground()
    owned.update(kind="Service")
    owned["metadata"]["ownerReferences"] = [{"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                                             "name": "chat", "uid": "u", "controller": True}]
    owned["metadata"]["annotations"] = {C.ANN_MAX_REPLICAS: "3"}
    report = preview_object(owned, Policy.default(), catalog(), namespace="ai")
    assert any("owned by a Playground" in n for n in report["notes"]), report
    plain = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert inert_annotations_hint(plain, "x") is None


def test_preview_shows_the_warning():
    report = preview_object(playground(annotations={"serverless.llmaz.io/min-replica": "1"}), Policy.default(),
                            catalog(), namespace="ai")
    assert report["allowed"] and any("did you mean" in w for w in report["warnings"])
