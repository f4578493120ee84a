"""A readiness timeout shorter than the model's load makes every cold start a 504: say so."""

from __future__ import annotations

import pytest

from tests.unit.helpers import playground
from webhook import constants as C
from webhook.models import ModelCatalog
from webhook.mutation import mutate
from webhook.policy import Policy, parse_policy
from webhook.readiness import (POD_START_S, bytes_per_parameter, expected_load, parameters_of,
                               readiness_problem)


def model(name, model_id, gpus=1):
    return {"apiVersion": C.MODEL_API_VERSION, "kind": "OpenModel", "metadata": {"name": name},
            "spec": {"source": {"modelHub": {"modelID": model_id}},
                     "inferenceConfig": {"flavors": [{"name": "f", "limits": {"nvidia.com/gpu": gpus}}]}}}


@pytest.mark.parametrize("model_id,params,bpp", [
    ("Qwen/Qwen2.5-72B-Instruct", 72e9, 2), ("Qwen/Qwen2-0.5B-Instruct", 0.5e9, 2),
    ("mistralai/Mixtral-8x7B-v0.1", 56e9, 2), ("TheBloke/Llama-2-13B-AWQ", 13e9, 0.5),
    ("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", 70e9, 1), ("ollama://deepseek-r1:1.5b", 1.5e9, 2),
    ("HuggingFaceTB/SmolLM2-360M", 360e6, 2), ("facebook/opt-125m", 125e6, 2), ("llama3.2", None, 2),
])
def test_model_size_from_its_id(model_id, params, bpp):
    assert parameters_of(model_id) == params
    assert bytes_per_parameter(model_id) == bpp


def test_expected_load_is_weights_plus_pod_start():
    models = ModelCatalog([model("big", "Qwen/Qwen2.5-72B-Instruct")])
    est = expected_load(playground(model="big"), models, gpu=True)
    assert est is not None and est.seconds == pytest.approx(POD_START_S + 144)
    assert "Qwen/Qwen2.5-72B-Instruct" in est.basis
    unknown = expected_load(playground(model="nope"), ModelCatalog(), gpu=True)
    assert unknown is not None and unknown.seconds == 120
    assert expected_load(playground(model="nope"), ModelCatalog(), gpu=False) is None


def test_readiness_problem_is_pure_and_bounded():
    assert readiness_problem(0, 500, "x") is None          # 0: no deadline
    assert readiness_problem(600, 500, "x") is None
    text = readiness_problem(60, 174, "a basis")
    assert text is not None and "readinessTimeout 1m" in text and "504" in text and "a basis" in text


def test_admission_warns_for_a_big_model_with_the_default_policy_shortened():
    models = ModelCatalog([model("big", "Qwen/Qwen2.5-72B-Instruct")])
    policy = parse_policy("http: {readinessTimeout: 2m}")
    m = mutate(playground(model="big"), None, "CREATE", policy, models)
    assert any("readinessTimeout 2m" in w and "~174s" in w for w in m.warnings), m.warnings
    # the built-in 10 minutes is enough for it, and a warm replica holds no requests
    assert not [w for w in mutate(playground(model="big"), None, "CREATE", Policy.default(), models).warnings
                if "readinessTimeout" in w]
    m = mutate(playground(model="big", annotations={C.ANN_MIN_REPLICAS: "1"}), None, "CREATE", policy, models)
    assert not [w for w in m.warnings if "readinessTimeout" in w]


def test_trigger_parameter_overrides_policy():
    models = ModelCatalog([model("small", "Qwen/Qwen2-0.5B-Instruct")])
    ann = {C.ANN_TRIGGERS: "[{type: http, readinessTimeout: 20s}]"}
    m = mutate(playground(model="small", annotations=ann), None, "CREATE", Policy.default(), models)
    assert any("readinessTimeout 20s" in w for w in m.warnings)
    ann = {C.ANN_TRIGGERS: "[{type: http, readinessTimeout: 45s}]"}
    m = mutate(playground(model="small", annotations=ann), None, "CREATE", Policy.default(), models)
    assert not [w for w in m.warnings if "readinessTimeout" in w]   # 1 GB at 1 GB/s + 30 s fits in 45 s
