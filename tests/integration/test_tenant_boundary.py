"""Bounded input and the tenant boundary through the shipped webhook on a real kube-apiserver.

Every refusal class goes through the shipped webhook configurations and ``llmaz-serverless serve`` (real TLS,
real CRD schemas), so the client sees our message. The reconciler's side is in ``test_quarantine.py``.
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_webhook_admission import (OPT_IN, create, gpu_playground, registered_webhook,
                                                      wait_until_webhook_active)
from webhook import constants as C

RAW_NS = "tenancy-raw-it"       # the one namespace the test policy lends raw triggers to
POLICY = f"tenancy: {{namespaces: {{{RAW_NS}: {{triggerTypes: [raw]}}}}}}\n"


def ladder(levels: int = 7) -> str:
    parts = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


CRON = "{type: cron, start: '0 8 * * *', end: '0 9 * * *'}"


@pytest.fixture(scope="module")
def webhook(control_plane, kube, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("webhook-tenancy")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    with registered_webhook(kube, workdir, policy_file=policy) as proc:
        yield proc


@pytest.fixture
def opted_in(webhook, namespace, kube):
    ns = namespace(labels=OPT_IN, prefix="tenant")
    wait_until_webhook_active(kube, ns)
    return ns


@pytest.fixture
def raw_ns(webhook, kube):
    core = client.CoreV1Api(kube)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=RAW_NS, labels=OPT_IN)))
    except ApiException as e:
        if e.status != 409:
            raise
    wait_until_webhook_active(kube, RAW_NS)
    return RAW_NS


def denied(kube, ns, annotations, name="hostile") -> str:
    t0 = time.perf_counter()
    with pytest.raises(ApiException) as exc:
        create(kube, ns, gpu_playground(name=name, annotations=annotations), dry_run="All")
    assert time.perf_counter() - t0 < 5
    assert exc.value.status in (400, 422), exc.value.body
    return json.loads(exc.value.body)["message"]


# ============================================================================================ admission

@pytest.mark.parametrize("annotations,needles", [
    ({C.ANN_BEHAVIOR: "{scaleUp: {tolerance: " + ladder() + "}}"}, [C.ANN_BEHAVIOR, "anchor"]),
    ({C.ANN_TRIGGERS: "[" * 5000}, ["nested more than 8 levels", "limits.nestingDepth"]),
    ({C.ANN_TRIGGERS: "[" + ", ".join([CRON] * 1000) + "]"}, ["above the limit of 16384 bytes",
                                                             "limits.annotationBytes"]),
    ({C.ANN_TRIGGERS: "[" + ", ".join([CRON] * 17) + "]"}, ["more than 16 triggers", "limits.triggers"]),
    ({C.ANN_BEHAVIOR: '{"scaleUp": {"tolerance": [1, 2]}}'}, ["tolerance", "number from 0 to 1"]),
    ({C.ANN_TRIGGERS: "[{type: raw, trigger: {type: cpu, metadata: {value: '50'}}}]"},
     ["raw triggers are not allowed"]),
    ({C.ANN_TRIGGERS: "[{type: redis, address: 'r.x:6379', listName: q, "
                      "authRef: {name: shared, kind: ClusterTriggerAuthentication}}]"}, ["not lent"]),
    ({C.ANN_TRIGGERS: "[{type: queue-depth, serverAddress: 'http://169.254.169.254/latest'}]"}, ["link-local"]),
    ({C.ANN_TRIGGERS: "[{type: queue-depth, serverAddress: 'https://kubernetes.default.svc/api'}]"},
     ["API server"]),
    ({C.ANN_TRIGGERS: "[{type: redis, address: 'redis.attacker.example:6379', listName: q}]"},
     ["not an address this namespace may use"]),
    ({C.ANN_TRIGGERS: "[{type: sqs, queueURL: 'https://sqs.eu-west-1.amazonaws.com/1/q'}]"},
     ["own cloud identity"]),
    ({C.ANN_TRIGGERS: "[{type: http, hosts: ['*']}]"}, ["every host name"]),
    ({C.ANN_TRIGGERS: "[{type: http, hosts: ['chat.someone-else']}]"}, ["may claim"]),
])
def test_refusals_reach_the_client(kube, opted_in, annotations, needles):
    message = denied(kube, opted_in, annotations)
    for needle in needles:
        assert needle in message, message


def test_oversized_annotation_refused_quickly(kube, opted_in):
    """About 200 KB of triggers (the API server itself allows 256 KiB of annotations): refused on size."""
    t0 = time.perf_counter()
    message = denied(kube, opted_in, {C.ANN_TRIGGERS: ("[" + ", ".join([CRON] * 4000) + "]")[:200000]})
    assert "limits.annotationBytes" in message
    assert time.perf_counter() - t0 < 2


def test_raw_is_lent_per_namespace_and_checked_there(kube, raw_ns):
    cpu = "{type: raw, trigger: {type: cpu, metricType: Utilization, metadata: {value: '50'}}}"
    out = create(kube, raw_ns, gpu_playground(name="cpu", annotations={C.ANN_TRIGGERS: f"[http, {cpu}]"}),
                 dry_run="All")
    assert out["metadata"]["annotations"][C.ANN_MANAGED] == "true"
    message = denied(kube, raw_ns, {C.ANN_TRIGGERS: "[{type: raw, trigger: {type: redis, metadata: "
                                                    "{address: 'r.tenancy-raw-it:6379', listName: q, "
                                                    "redisPassword: hunter2}}}]"})
    assert "redisPassword" in message and "must not be written inline" in message
    message = denied(kube, raw_ns, {C.ANN_TRIGGERS: "[{type: raw, trigger: {type: aws-sqs-queue, metadata: "
                                                    "{queueURL: 'https://sqs.eu-west-1.amazonaws.com/1/q', "
                                                    "awsRegion: eu-west-1, identityOwner: operator}, "
                                                    "authenticationRef: {name: aws}}}]"})
    assert "identityOwner: operator" in message


def test_in_namespace_addresses_admitted(kube, opted_in):
    ann = {C.ANN_TRIGGERS: f"[http, {{type: redis, address: 'redis.{opted_in}.svc:6379', listName: q}}]"}
    out = create(kube, opted_in, gpu_playground(name="ok", annotations=ann), dry_run="All")
    assert out["metadata"]["annotations"][C.ANN_MANAGED] == "true"
