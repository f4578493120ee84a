"""Mutation rules: one test (or parametrized case) per rule, plus idempotency and raw-diff patches."""

from __future__ import annotations

import copy
import json

import jsonpatch
import pytest

from tests.unit.helpers import catalog, playground, service
from webhook import constants as C
from webhook.admission import make_patch
from webhook.errors import Denied
from webhook.models import ModelCatalog
from webhook.mutation import mutate
from webhook.policy import Policy, parse_policy

P = Policy.default()
# Raw triggers are off by default (tenancy.triggerTypes); the tests of raw-trigger rules use a policy that
# allows them.
RAW_OK = parse_policy("tenancy: {triggerTypes: [http, queue-depth, redis, cron, raw]}")


def run(obj, op="CREATE", old=None, policy=P, models=None):
    return mutate(obj, old, op, policy, models if models is not None else catalog())


def ann(m):
    return m.obj["metadata"].get("annotations", {})


def resolved(m):
    return json.loads(ann(m)[C.ANN_RESOLVED])


def test_gpu_playground_starts_at_zero_with_gpu_defaults():
    m = run(playground())
    assert m.obj["spec"]["replicas"] == 0
    r = resolved(m)
    assert r["gpu"] is True and r["minReplicas"] == 0 and r["startAtZero"] is True
    assert r["cooldownPeriod"] == P.gpu.cooldownPeriod and r["initialCooldownPeriod"] == P.gpu.initialCooldownPeriod
    assert ann(m)[C.ANN_MANAGED] == "true"


@pytest.mark.parametrize("model,gpu", [("qwen-7b", True), ("mig", True), ("tiny", False)])
def test_accelerator_detection_from_openmodel(model, gpu):
    assert resolved(run(playground(model=model)))["gpu"] is gpu


def test_claimed_flavor_decides():
    obj = playground()
    obj["spec"]["modelClaim"]["inferenceFlavors"] = ["cpu"]
    assert resolved(run(obj))["gpu"] is False


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "habana.ai/gaudi",
                                      "nvidia.com/mig-3g.20gb", "google.com/tpu"])
def test_accelerator_detection_from_backend_resources(resource):
    obj = playground(model="tiny", backendRuntimeConfig={"resources": {"requests": {resource: "1"}}})
    assert resolved(run(obj))["gpu"] is True


def test_zero_quantity_is_not_an_accelerator():
    obj = playground(model="tiny", backendRuntimeConfig={"resources": {"limits": {"nvidia.com/gpu": "0"}}})
    assert resolved(run(obj))["gpu"] is False


def test_unknown_model_assumed_gpu_with_warning_and_policy_switch():
    m = run(playground(model="not-cached"))
    assert resolved(m)["gpu"] is True
    assert any("not-cached" in w and "GPU" in w for w in m.warnings)
    cpu_policy = parse_policy("unknownModelIsGPU: false")
    assert resolved(run(playground(model="not-cached"), policy=cpu_policy))["gpu"] is False


def test_service_workload_template_gpu_detected():
    m = run(service(gpu=True))
    assert resolved(m)["gpu"] is True and m.obj["spec"]["replicas"] == 0


def test_cpu_workload_keeps_min_one():
    m = run(playground(model="tiny", replicas=1))
    assert m.obj["spec"]["replicas"] == 1 and resolved(m)["minReplicas"] == 1


def test_cpu_replicas_clamped_into_range():
    m = run(playground(model="tiny", replicas=40, annotations={C.ANN_MAX_REPLICAS: "3"}))
    assert m.obj["spec"]["replicas"] == 3


def test_update_keeps_live_replicas():
    created = run(playground()).obj
    live = copy.deepcopy(created)
    live["spec"]["replicas"] = 3          # KEDA scaled it up
    reapplied = playground(replicas=1)    # the user re-applies the original manifest
    m = run(reapplied, op="UPDATE", old=live)
    assert m.obj["spec"]["replicas"] == 3


def test_update_of_object_that_predates_opt_in_keeps_replicas():
    old = playground(replicas=2)
    m = run(playground(replicas=2), op="UPDATE", old=old)
    assert m.obj["spec"]["replicas"] == 2 and ann(m)[C.ANN_MANAGED] == "true"


def test_opt_out_leaves_object_alone_and_removes_our_annotations():
    obj = playground(annotations={C.ANN_ENABLED: "false", C.ANN_MANAGED: "true", C.ANN_RESOLVED: "{}"})
    m = run(obj, op="UPDATE", old=obj)
    assert C.ANN_MANAGED not in ann(m) and C.ANN_RESOLVED not in ann(m)
    assert m.obj["spec"]["replicas"] == 1
    plain = playground(annotations={C.ANN_ENABLED: "false"})
    assert run(plain).changed is False


def test_service_owned_by_playground_is_left_alone():
    m = run(service(owner=True))
    assert m.changed is False and not m.analysis.managed


def test_other_kinds_are_left_alone():
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    assert run(obj).changed is False


def test_elastic_config_converted_removed_and_warned():
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 120}}
    obj = playground(elasticConfig={"minReplicas": 2, "maxReplicas": 6,
                                    "scaleTrigger": {"hpa": {"behavior": behavior, "metrics": [{"type": "Resource"}]}}})
    m = run(obj)
    assert "elasticConfig" not in m.obj["spec"]
    a = ann(m)
    assert a[C.ANN_MAX_REPLICAS] == "6" and a[C.ANN_MIN_REPLICAS] == "2"
    assert json.loads(a[C.ANN_BEHAVIOR]) == behavior
    r = resolved(m)
    assert r["minReplicas"] == 2 and r["maxReplicas"] == 6
    assert m.obj["spec"]["replicas"] == 2
    text = " ".join(m.warnings)
    assert "elasticConfig was removed" in text and "HPA metrics" in text


def test_elastic_config_min_one_is_llmaz_default_not_a_request():
    m = run(playground(elasticConfig={"minReplicas": 1, "maxReplicas": 3}))
    assert C.ANN_MIN_REPLICAS not in ann(m) and resolved(m)["minReplicas"] == 0


def test_elastic_config_annotation_wins():
    m = run(playground(annotations={C.ANN_MAX_REPLICAS: "2"}, elasticConfig={"maxReplicas": 9}))
    assert ann(m)[C.ANN_MAX_REPLICAS] == "2"
    assert any("annotation" in w and "wins" in w for w in m.warnings)


def test_elastic_config_kept_when_opted_out():
    obj = playground(annotations={C.ANN_ENABLED: "false"}, elasticConfig={"maxReplicas": 3})
    assert "elasticConfig" in run(obj).obj["spec"]


def test_profile_applies_and_annotation_overrides_it():
    m = run(playground(model="tiny", annotations={C.ANN_PROFILE: "batch", C.ANN_COOLDOWN: "5m"}))
    r = resolved(m)
    assert r["profile"] == "batch" and r["minReplicas"] == 0 and r["cooldownPeriod"] == 300
    assert m.obj["spec"]["replicas"] == 0


def test_annotation_overrides_all_fields():
    m = run(playground(annotations={C.ANN_MIN_REPLICAS: "1", C.ANN_MAX_REPLICAS: "7", C.ANN_POLLING: "10",
                                    C.ANN_INITIAL_COOLDOWN: "2m", C.ANN_COOLDOWN: "1h",
                                    C.ANN_START_AT_ZERO: "false"}))
    r = resolved(m)
    assert (r["minReplicas"], r["maxReplicas"], r["pollingInterval"], r["initialCooldownPeriod"],
            r["cooldownPeriod"], r["startAtZero"]) == (1, 7, 10, 120, 3600, False)
    assert m.obj["spec"]["replicas"] == 1


def test_patch_is_diff_of_raw_object_and_keeps_unknown_fields():
    obj = playground(annotations={"a/b": "c"})
    obj["spec"]["someFutureField"] = {"x": 1}
    obj["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    m = run(obj)
    patch = make_patch(obj, m.obj)
    assert all(op["op"] != "remove" for op in patch)
    assert any(op["path"] == "/metadata/annotations/serverless.llmaz.io~1managed" for op in patch)
    assert jsonpatch.apply_patch(obj, patch) == m.obj


def test_patch_adds_annotations_map_when_absent():
    obj = playground()
    assert "annotations" not in obj["metadata"]
    m = run(obj)
    patched = jsonpatch.apply_patch(obj, make_patch(obj, m.obj))
    assert patched["metadata"]["annotations"][C.ANN_MANAGED] == "true"


@pytest.mark.parametrize("obj", [
    playground(), playground(model="tiny"), service(), service(gpu=False),
    playground(elasticConfig={"minReplicas": 2, "maxReplicas": 4}),
    playground(annotations={C.ANN_TRIGGERS: "http, queue-depth", C.ANN_PROFILE: "interactive"}),
])
@pytest.mark.parametrize("op", ["CREATE", "UPDATE"])
def test_mutation_is_idempotent(obj, op):
    first = run(obj, op=op, old=obj if op == "UPDATE" else None).obj
    second = run(first, op=op, old=first if op == "UPDATE" else None)
    assert second.changed is False
    assert make_patch(first, second.obj) == []


def test_no_models_cache_still_works():
    m = mutate(playground(), None, "CREATE", P, ModelCatalog())
    assert m.obj["spec"]["replicas"] == 0


# ------------------------------------------------------------------------------------------- denials

def denial(obj, **kw) -> str:
    with pytest.raises(Denied) as exc:
        run(obj, **kw)
    return exc.value.message


@pytest.mark.parametrize("annotations,where,needle", [
    ({C.ANN_MIN_REPLICAS: "abc"}, C.ANN_MIN_REPLICAS, "not a whole number"),
    ({C.ANN_MIN_REPLICAS: "-1"}, C.ANN_MIN_REPLICAS, "'-1' is negative"),
    ({C.ANN_MAX_REPLICAS: "0"}, C.ANN_MAX_REPLICAS, "out of range"),
    ({C.ANN_MAX_REPLICAS: "1.5"}, C.ANN_MAX_REPLICAS, "not a whole number"),
    ({C.ANN_MAX_REPLICAS: "1000"}, C.ANN_MAX_REPLICAS, "cap of 64"),
    ({C.ANN_MIN_REPLICAS: "3", C.ANN_MAX_REPLICAS: "2"}, C.ANN_MIN_REPLICAS, "above max-replicas"),
    ({C.ANN_MIN_REPLICAS: "9"}, C.ANN_MIN_REPLICAS, "above max-replicas (4, from the policy)"),
    ({C.ANN_COOLDOWN: "soon"}, C.ANN_COOLDOWN, "not a duration"),
    ({C.ANN_COOLDOWN: "30d"}, C.ANN_COOLDOWN, "not a duration"),
    ({C.ANN_POLLING: "0"}, C.ANN_POLLING, "out of range"),
    ({C.ANN_INITIAL_COOLDOWN: "48h"}, C.ANN_INITIAL_COOLDOWN, "out of range"),
    ({C.ANN_START_AT_ZERO: "maybe"}, C.ANN_START_AT_ZERO, "not a boolean"),
    ({C.ANN_ENABLED: "perhaps"}, C.ANN_ENABLED, "not a boolean"),
    ({C.ANN_PROFILE: "turbo"}, C.ANN_PROFILE, "unknown profile 'turbo'"),
    ({C.ANN_BEHAVIOR: "{scaleDown: {stabilizationWindowSeconds: -1}}"}, C.ANN_BEHAVIOR, "0 to 3600"),
    ({C.ANN_BEHAVIOR: "{scaleSideways: {}}"}, C.ANN_BEHAVIOR, "unknown field"),
    ({C.ANN_BEHAVIOR: "{{{"}, C.ANN_BEHAVIOR, "not valid YAML"),
    ({C.ANN_TRIGGERS: "[{type: http"}, C.ANN_TRIGGERS, "not valid YAML/JSON at line"),
    ({C.ANN_TRIGGERS: "http,,cron"}, C.ANN_TRIGGERS, "empty entry"),
    ({C.ANN_TRIGGERS: ""}, C.ANN_TRIGGERS, "is empty"),
    ({C.ANN_TRIGGERS: "websocket"}, C.ANN_TRIGGERS + "[0].type", "unknown trigger type 'websocket'"),
    ({C.ANN_TRIGGERS: "[{type: redis, address: r:6379}]"}, C.ANN_TRIGGERS + "[0].listName", "missing"),
    ({C.ANN_TRIGGERS: "[{type: cron, start: '0 8 * * *', end: '0 18 * *'}]"}, C.ANN_TRIGGERS + "[0].end",
     "has 4 fields"),
    ({C.ANN_TRIGGERS: "[{type: cron, start: '0 8 * * *', end: '0 18 * * *', timezone: Mars/Olympus}]"},
     C.ANN_TRIGGERS + "[0].timezone", "not an IANA time zone"),
    ({C.ANN_TRIGGERS: "[{type: rabbitmq, queueName: q, host: 'amqp://u:p@rabbit:5672/'}]"},
     C.ANN_TRIGGERS + "[0].host", "carries credentials"),
    ({C.ANN_TRIGGERS: "[{type: kafka, bootstrapServers: k:9092, consumerGroup: g, password: x}]"},
     C.ANN_TRIGGERS + "[0].password", "must not be written inline"),
    ({C.ANN_TRIGGERS: "[{type: raw, trigger: {type: cpu, metricType: Utilization, metadata: {value: '60'}}}]"},
     C.ANN_TRIGGERS, "cpu/memory triggers cannot scale a workload up from zero"),
    ({C.ANN_TRIGGERS: "[http, http]"}, C.ANN_TRIGGERS, "at most one http trigger"),
])
def test_denials_name_the_annotation(annotations, where, needle):
    message = denial(playground(annotations=annotations), policy=RAW_OK)
    assert where in message, message
    assert needle in message, message


def test_long_name_denied_with_limit():
    message = denial(playground(name="x" * 55))
    assert "metadata.name" in message and "at most 54" in message
    run(playground(name="x" * 54))   # the longest name that works


def test_generate_name_length_checked():
    obj = playground(name="")
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "g" * 50
    assert "generateName" in denial(obj)


def test_all_problems_reported_at_once():
    message = denial(playground(annotations={C.ANN_MIN_REPLICAS: "x", C.ANN_POLLING: "y", C.ANN_TRIGGERS: "nope"}))
    assert "[1]" in message and "[3]" in message


def test_cpu_trigger_with_min_one_is_allowed_and_mixed_warns():
    cpu = "{type: raw, trigger: {type: cpu, metricType: Utilization, metadata: {value: '60'}}}"
    run(playground(annotations={C.ANN_TRIGGERS: f"[{cpu}]", C.ANN_MIN_REPLICAS: "1"}), policy=RAW_OK)
    m = run(playground(annotations={C.ANN_TRIGGERS: f"[http, {cpu}]"}), policy=RAW_OK)
    assert any("cpu/memory" in w for w in m.warnings)


def test_risky_but_allowed_warnings():
    m = run(playground(annotations={C.ANN_TRIGGERS: "[{type: http, readinessTimeout: 30s}]"}))
    assert any("504" in w for w in m.warnings)
    m = run(playground(annotations={C.ANN_TRIGGERS: "queue-depth"}))
    assert any("cannot wake" in w for w in m.warnings)
    m = run(playground(annotations={C.ANN_MIN_REPLICAS: "2"}))
    assert any("GPU replica" in w for w in m.warnings)


def test_older_llmaz_shapes_service_template_and_scale_trigger():
    obj = service(gpu=False)
    obj["spec"]["workloadTemplate"] = {"leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": [
        {"name": "model-runner", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}
    assert resolved(run(obj))["gpu"] is True
    behavior = {"scaleUp": {"stabilizationWindowSeconds": 0}}
    pg = playground(elasticConfig={"maxReplicas": 3},
                    backendRuntimeConfig={"scaleTrigger": {"hpa": {"behavior": behavior}}})
    assert json.loads(ann(run(pg))[C.ANN_BEHAVIOR]) == behavior


@pytest.mark.parametrize("patch,where", [
    ({"spec": []}, "spec: must be a mapping"),
    ({"metadata": {"name": 7}}, "metadata.name: must be a string"),
    ({"metadata": {"name": "x", "annotations": {C.ANN_MAX_REPLICAS: 4}}}, "annotation values must be strings"),
    ({"metadata": {"name": "x", "annotations": ["a"]}}, "metadata.annotations: must be a mapping"),
])
def test_malformed_shapes_are_denied_not_crashing(patch, where):
    obj = playground()
    obj.update(patch)
    assert where in denial(obj)


def test_null_metadata_and_spec_are_treated_as_absent():
    obj = {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "metadata": None, "spec": None}
    m = run(obj)
    assert m.obj["metadata"]["annotations"][C.ANN_MANAGED] == "true"
    assert jsonpatch.apply_patch(obj, make_patch(obj, m.obj)) == m.obj


def test_denial_caused_by_converted_elastic_config_says_so():
    message = denial(playground(annotations={C.ANN_MIN_REPLICAS: "5"}, elasticConfig={"maxReplicas": 3}))
    assert "spec.elasticConfig: was converted into serverless.llmaz.io/max-replicas" in message
