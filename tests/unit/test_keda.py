"""Desired KEDA objects, field by field."""

from __future__ import annotations

import pytest

from tests.unit.helpers import catalog, playground, service
from webhook import constants as C
from webhook.errors import Denied
from webhook.keda import desired_objects
from webhook.mutation import mutate
from webhook.policy import Policy

P = Policy.default()


def stored(obj, uid="uid-1"):
    m = mutate(obj, None, "CREATE", P, catalog()).obj
    m["metadata"]["uid"] = uid
    return m


def test_scaled_object_for_gpu_playground_with_http_and_queue_depth():
    obj = stored(playground(annotations={C.ANN_TRIGGERS: "http, queue-depth", C.ANN_MAX_REPLICAS: "3"}))
    d = desired_objects(obj, P, catalog())
    so, ir = d.scaled_object, d.interceptor_route
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    assert so["metadata"]["name"] == "chat" and so["metadata"]["namespace"] == "ai"
    assert so["metadata"]["labels"] == {C.LABEL_MANAGED_BY: "llmaz-serverless", C.LABEL_WORKLOAD_KIND: "Playground",
                                        C.LABEL_WORKLOAD_NAME: "chat"}
    assert so["metadata"]["ownerReferences"] == [{"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
                                                  "name": "chat", "uid": "uid-1", "controller": True,
                                                  "blockOwnerDeletion": True}]
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                                      "name": "chat"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 3)
    assert spec["cooldownPeriod"] == P.gpu.cooldownPeriod
    assert spec["initialCooldownPeriod"] == P.gpu.initialCooldownPeriod
    assert spec["pollingInterval"] == P.gpu.pollingInterval
    # the hold (webhook/drain.py) comes last in every ScaledObject that may go to zero
    assert [t["name"] for t in spec["triggers"]] == ["http", "queue-depth", "llmaz-hold"]
    assert spec["triggers"][0]["metadata"]["interceptorRoute"] == ir["metadata"]["name"] == "chat"
    assert "advanced" not in spec
    assert ir["apiVersion"] == "http.keda.sh/v1beta1" and ir["kind"] == "InterceptorRoute"
    assert ir["spec"]["target"] == {"service": "chat-lb", "port": 8080}
    assert ir["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert d.objects() == [ir, so]


def test_no_interceptor_route_without_http_and_behavior_carried():
    obj = stored(playground(annotations={
        C.ANN_TRIGGERS: "[{type: kafka, bootstrapServers: 'k.ai:9092', consumerGroup: g, topic: t}]",
        C.ANN_BEHAVIOR: '{"scaleDown": {"stabilizationWindowSeconds": 300}}'}))
    d = desired_objects(obj, P, catalog())
    assert d.interceptor_route is None
    assert d.scaled_object["spec"]["triggers"][0]["type"] == "kafka"
    assert d.scaled_object["spec"]["advanced"] == {
        "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}


def test_standalone_service_is_target():
    d = desired_objects(stored(service()), P, catalog())
    assert d.scaled_object["spec"]["scaleTargetRef"]["kind"] == "Service"
    assert d.interceptor_route["spec"]["target"]["service"] == "svc-lb"


def test_unmanaged_gets_nothing_and_no_owner_before_storage():
    assert desired_objects(service(owner=True), P, catalog()).objects() == []
    assert desired_objects(playground(annotations={C.ANN_ENABLED: "false"}), P, catalog()).objects() == []
    d = desired_objects(playground(), P, catalog())
    assert "ownerReferences" not in d.scaled_object["metadata"]


def test_invalid_settings_raise():
    with pytest.raises(Denied):
        desired_objects(playground(annotations={C.ANN_MAX_REPLICAS: "x"}), P, catalog())


def test_cron_and_queue_triggers_in_one_scaled_object():
    obj = stored(playground(annotations={C.ANN_TRIGGERS: (
        "[http, {type: cron, start: '0 8 * * 1-5', end: '0 18 * * 1-5', desiredReplicas: 2},"
        " {type: nats-jetstream, natsServerMonitoringEndpoint: 'nats.ai:8222', stream: s, consumer: c}]")}))
    so = desired_objects(obj, P, catalog()).scaled_object
    assert [t["type"] for t in so["spec"]["triggers"]] == ["external-push", "cron", "nats-jetstream",
                                                                "prometheus"]
