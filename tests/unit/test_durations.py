"""One parser, one set of accepted forms: annotations, trigger parameters and the policy agree."""

from __future__ import annotations

import pytest

from tests.unit.helpers import catalog, playground
from webhook import constants as C
from webhook.durations import DurationError, go_duration, human, parse_duration, whole_seconds
from webhook.errors import Denied
from webhook.mutation import mutate
from webhook.policy import Policy, PolicyError, parse_policy
from webhook.triggers import parse_triggers_annotation

FORMS = [("300", 300), (300, 300), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("0", 0),
         ("0s", 0), ("2h0m30s", 7230)]


@pytest.mark.parametrize("text,seconds", FORMS)
def test_accepted_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,needle", [
    ("-5m", "negative"), ("-1", "negative"), ("soon", "not a duration"), ("30d", "not a duration"),
    ("5 m", "not a duration"), ("", "not a duration"), ("1" * 80, "not plausible"), (True, "not a duration"),
    (float("nan"), "not a finite"), ("99999999h", "more than 10 years"),
])
def test_refused_with_reason(text, needle):
    with pytest.raises(DurationError, match=needle):
        parse_duration(text)


def test_whole_seconds_and_go_form():
    assert whole_seconds("1h30m") == 5400
    with pytest.raises(DurationError, match="whole seconds"):
        whole_seconds("1500ms")
    assert go_duration("300") == "300s" and go_duration(90) == "90s" and go_duration("1h30m") == "1h30m"
    assert human(604800) == "168h" and human(90) == "90s" and human(600) == "10m"


def _resolved_cooldown(annotations):
    m = mutate(playground(annotations=annotations), None, "CREATE", Policy.default(), catalog())
    return m.obj["metadata"]["annotations"][C.ANN_RESOLVED]


@pytest.mark.parametrize("text,seconds", [(t, s) for t, s in FORMS if isinstance(t, str) and s > 0])
def test_same_forms_in_annotation_trigger_and_policy(text, seconds):
    # annotation
    assert f'"cooldownPeriod":{seconds}' in _resolved_cooldown({C.ANN_COOLDOWN: text})
    # trigger parameter (sent to the add-on in Go's form)
    presets, problems = parse_triggers_annotation(f"[{{type: http, readinessTimeout: '{text}'}}]", "t")
    assert not problems and parse_duration(presets[0].readinessTimeout) == seconds
    # policy
    policy = parse_policy(f"defaults: {{cooldownPeriod: '{text}'}}\nhttp: {{readinessTimeout: '{text}'}}")
    assert policy.defaults.cooldownPeriod == seconds and parse_duration(policy.http.readinessTimeout) == seconds


def test_same_refusals_everywhere():
    with pytest.raises(Denied, match="not a duration"):
        mutate(playground(annotations={C.ANN_COOLDOWN: "soon"}), None, "CREATE", Policy.default(), catalog())
    _, problems = parse_triggers_annotation("[{type: http, readinessTimeout: soon}]", "t")
    assert problems and "not a duration" in str(problems[0])
    with pytest.raises(PolicyError, match=r"defaults.cooldownPeriod: 'soon' is not a duration"):
        parse_policy("defaults: {cooldownPeriod: soon}")
    with pytest.raises(PolicyError, match="http.readinessTimeout"):
        parse_policy("http: {readinessTimeout: soon}")


def test_range_hints_state_the_real_cap():
    with pytest.raises(Denied) as exc:
        mutate(playground(annotations={C.ANN_MAX_REPLICAS: "many"}), None, "CREATE", Policy.default(), catalog())
    assert "from 1 to 64" in exc.value.message and "100000" not in exc.value.message
    policy = parse_policy("maxReplicasCap: 8")
    with pytest.raises(Denied) as exc:
        mutate(playground(annotations={C.ANN_MIN_REPLICAS: "-1"}), None, "CREATE", policy, catalog())
    assert "'-1' is negative" in exc.value.message and "from 0 to 8" in exc.value.message
    with pytest.raises(Denied) as exc:
        mutate(playground(annotations={C.ANN_MAX_REPLICAS: "9"}), None, "CREATE", policy, catalog())
    assert "above 8" in exc.value.message and "cap of 8" in exc.value.message
    with pytest.raises(Denied) as exc:
        mutate(playground(annotations={C.ANN_INITIAL_COOLDOWN: "48h"}), None, "CREATE", policy, catalog())
    assert "0 to 86400 seconds (0s to 24h)" in exc.value.message
