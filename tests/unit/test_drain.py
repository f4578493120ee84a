"""Drain and hold: settings, validation, the Playground and pod mutations, the hold trigger, preview."""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from webhook import constants as C
from webhook import drain as D
from webhook.admission import Brain
from webhook.errors import Denied
from webhook.keda import desired_objects
from webhook.mutation import mutate
from webhook.policy import PolicyError, parse_policy
from webhook.preview import preview_object
from webhook.review import AdmissionRequest
from webhook.settings import analyze

from .helpers import catalog, playground

P = parse_policy("")


def stored(obj):
    obj = copy.deepcopy(obj)
    obj["metadata"]["uid"] = "uid-1"
    return obj


def problems_of(annotations, policy=P):
    return analyze(playground(annotations=annotations), policy, catalog()).problems


def test_defaults_come_from_the_policy():
    s = analyze(playground(), P, catalog()).settings
    assert s.drain == D.Drain(timeout=120, pre_stop=5, hold=True, stuck_after=120, load_timeout=900,
                              exit_window=120)
    assert s.drain.grace_period == 5 + 120 + D.GRACE_MARGIN


def test_annotation_sets_the_drain_timeout():
    s = analyze(playground(annotations={C.ANN_DRAIN_TIMEOUT: "5m", C.ANN_MAX_REQUEST: "240"}), P,
                catalog()).settings
    assert (s.drain.timeout, s.drain.max_request) == (300, 240)


def test_drain_longer_than_the_policy_allows_is_refused_with_the_limit():
    [p] = problems_of({C.ANN_DRAIN_TIMEOUT: "2h"})
    assert p.where == C.ANN_DRAIN_TIMEOUT
    assert "7200 s is longer than this cluster allows (1800 s, policy drain.maxTimeout)" in p.what
    assert p.fix == "write at most 1800s"


def test_drain_shorter_than_the_longest_declared_request_is_refused():
    [p] = problems_of({C.ANN_DRAIN_TIMEOUT: "60", C.ANN_MAX_REQUEST: "10m"})
    assert p.where == C.ANN_DRAIN_TIMEOUT
    assert "shorter than the longest request this workload declares" in p.what and "600 s" in p.what
    assert p.fix == f"set {C.ANN_DRAIN_TIMEOUT} to at least 600s (at most 1800s)"
    # the policy's default drain (120 s) against a declared 10 min request: blame the declaration's side
    [p] = problems_of({C.ANN_MAX_REQUEST: "10m"})
    assert p.where == C.ANN_MAX_REQUEST and "from the policy drain.timeout" in p.what
    # a request longer than any drain the cluster allows cannot be fixed by raising the drain
    [p] = problems_of({C.ANN_MAX_REQUEST: "1h"})
    assert "cannot be drained here" in p.fix


@pytest.mark.parametrize("value", ["soon", "-5", "1.5m", "99999999"])
def test_bad_drain_values_are_named(value):
    [p] = problems_of({C.ANN_DRAIN_TIMEOUT: value})
    assert p.where == C.ANN_DRAIN_TIMEOUT


def test_policy_drain_section_is_checked():
    assert parse_policy("drain: {timeout: 30, preStopSeconds: 2}").drain.timeout == 30
    with pytest.raises(PolicyError, match="drain.timeout .* is above drain.maxTimeout"):
        parse_policy("drain: {timeout: 100, maxTimeout: 50}")
    with pytest.raises(PolicyError, match="drain.grace: unknown field"):
        parse_policy("drain: {grace: 3}")


def test_playground_gets_the_vllm_flag_and_the_pod_markers_idempotently():
    m = mutate(playground(annotations={C.ANN_DRAIN_TIMEOUT: "90"},
                          backendRuntimeConfig={"args": ["--max-model-len", "4096", "--shutdown-timeout", "5"],
                                                "envs": [{"name": "A", "value": "1"}]}),
               None, "CREATE", P, catalog())
    brc = m.obj["spec"]["backendRuntimeConfig"]
    assert brc["args"] == ["--max-model-len", "4096", "--shutdown-timeout=90"]
    assert brc["envs"] == [{"name": "A", "value": "1"}, {"name": D.ENV_DRAIN_TIMEOUT, "value": "90"},
                           {"name": D.ENV_PRESTOP, "value": "5"}]
    assert any("--shutdown-timeout=5 was replaced by 90" in w for w in m.warnings)
    again = mutate(m.obj, None, "CREATE", P, catalog())
    assert again.obj == m.obj and not any("replaced" in w for w in again.warnings)


def test_playground_without_backend_config_gets_one():
    m = mutate(playground(), None, "CREATE", P, catalog())
    assert m.obj["spec"]["backendRuntimeConfig"] == {
        "args": ["--shutdown-timeout=120"],
        "envs": [{"name": D.ENV_DRAIN_TIMEOUT, "value": "120"}, {"name": D.ENV_PRESTOP, "value": "5"}]}


def test_other_backends_get_no_flag_and_a_warning():
    m = mutate(playground(backendRuntimeConfig={"backendName": "llamacpp", "args": ["-c", "4096"]}),
               None, "CREATE", P, catalog())
    assert m.obj["spec"]["backendRuntimeConfig"]["args"] == ["-c", "4096"]
    assert any("knows no drain flag" in w for w in m.warnings)


def test_opted_out_playground_is_not_touched():
    raw = playground(annotations={C.ANN_ENABLED: "false"})
    assert "backendRuntimeConfig" not in mutate(raw, None, "CREATE", P, catalog()).obj["spec"]


def lws_pod(env, labels=None, **spec):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "chat-0", "namespace": "ai",
                         "labels": {D.LWS_NAME_LABEL: "chat"} if labels is None else labels},
            "spec": {"containers": [{"name": "model-runner", "image": "x", "env": env}], **spec}}


MARKED = [{"name": D.ENV_DRAIN_TIMEOUT, "value": "90"}, {"name": D.ENV_PRESTOP, "value": "5"}]


def test_marked_pod_gets_grace_period_and_prestop():
    pod = lws_pod(MARKED)
    out, notes = D.mutate_pod(pod)
    assert out["spec"]["terminationGracePeriodSeconds"] == 5 + 90 + D.GRACE_MARGIN
    assert out["spec"]["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert notes == [] and "terminationGracePeriodSeconds" not in pod["spec"], "the input is not modified"


def test_pods_that_are_not_ours_are_untouched():
    for pod in (lws_pod([{"name": "OTHER", "value": "1"}]), lws_pod(MARKED, labels={"app": "x"})):
        out, _ = D.mutate_pod(pod)
        assert out is pod


def test_user_prestop_and_longer_grace_are_kept():
    pod = lws_pod(MARKED, terminationGracePeriodSeconds=3600)
    pod["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["drain.sh"]}}}
    out, notes = D.mutate_pod(pod)
    assert out["spec"]["terminationGracePeriodSeconds"] == 3600
    assert out["spec"]["containers"][0]["lifecycle"] == {"preStop": {"exec": {"command": ["drain.sh"]}}}
    assert notes == ["container model-runner: its own preStop is kept"]


def test_brain_patches_a_pod_review_and_the_patch_applies():
    pod = lws_pod(MARKED)
    req = AdmissionRequest(uid="u", kind="Pod", group="", version="v1", operation="CREATE", namespace="ai",
                           name="chat-0", object=pod, old_object=None, dry_run=False)
    result = Brain(P, catalog()).mutate(req)
    assert result.reason == "patched"
    patched = jsonpatch.apply_patch(pod, result.patch)
    assert patched["spec"]["terminationGracePeriodSeconds"] == 100
    other = AdmissionRequest(uid="u", kind="Pod", group="", version="v1", operation="CREATE", namespace="ai",
                             name="x", object=lws_pod([]), old_object=None, dry_run=False)
    assert Brain(P, catalog()).mutate(other).reason == "skipped"


def triggers(obj, policy=P):
    so = desired_objects(stored(obj), policy, catalog()).scaled_object
    return {t["name"]: t for t in so["spec"]["triggers"]}


def test_hold_trigger_on_workloads_that_may_go_to_zero():
    hold = triggers(playground(annotations={C.ANN_TRIGGERS: "http"}))[D.HOLD_TRIGGER]
    assert hold["type"] == "prometheus" and hold["metricType"] == "AverageValue"
    md = hold["metadata"]
    assert md["activationThreshold"] == "0" and md["threshold"] == str(D.HOLD_TARGET)
    q = md["query"]
    sel = '{namespace="ai",pod=~"chat-[0-9]+(-[0-9]+)?"}'
    assert (f"(sum(vllm:num_requests_running{sel}) or on() vector(0)) + "
            f"(sum(vllm:num_requests_waiting{sel}) or on() vector(0))") in q
    assert f"sum(increase(vllm:generation_tokens_total{sel}[120s])) > 0" in q
    assert (f"count(up{sel} == 0 unless max_over_time(up{sel}[120s]) > 0 "
            f"unless (max_over_time(up{sel}[900s]) == 0 and up{sel} offset 900s))") in q
    assert q.count("or on() vector(0)") == 4


def test_no_hold_when_never_at_zero_or_disabled_or_unknown_backend():
    assert D.HOLD_TRIGGER not in triggers(playground(annotations={C.ANN_MIN_REPLICAS: "1"}))
    assert D.HOLD_TRIGGER not in triggers(playground(), parse_policy("drain: {holdWhileBusy: false}"))
    sglang = playground(backendRuntimeConfig={"backendName": "sglang"})
    assert D.HOLD_TRIGGER not in triggers(sglang)


def test_hold_trigger_name_is_reserved():
    probs = problems_of({C.ANN_TRIGGERS: "[{type: http, name: llmaz-hold}]"})
    assert any("reserved" in p.what for p in probs)


def test_preview_shows_the_drain():
    report = preview_object(playground(annotations={C.ANN_DRAIN_TIMEOUT: "90", C.ANN_MAX_REQUEST: "60"}), P,
                            catalog(), namespace="ai")
    [note] = [n for n in report["notes"] if n.startswith("drain:")]
    assert "5 s (preStop)" in note and "90 s to finish" in note and "--shutdown-timeout=90" in note
    assert "terminationGracePeriodSeconds 100" in note and "longest request declared: 60 s" in note
    assert "hold: not scaled to zero while requests run or wait" in note
    denied = preview_object(playground(annotations={C.ANN_DRAIN_TIMEOUT: "30", C.ANN_MAX_REQUEST: "60"}), P,
                            catalog(), namespace="ai")
    assert not denied["allowed"] and C.ANN_DRAIN_TIMEOUT in denied["message"]


def test_denied_at_admission_with_the_message():
    with pytest.raises(Denied, match="drain-timeout"):
        mutate(playground(annotations={C.ANN_DRAIN_TIMEOUT: "3h"}), None, "CREATE", P, catalog())
