"""Every KEDA object the builders produce is accepted by the real upstream CRD schemas (incl. CEL rules)."""

from __future__ import annotations

import pytest
from kubernetes import client

from webhook import constants as C
from webhook.keda import desired_objects
from webhook.models import ModelCatalog
from webhook.mutation import mutate
from webhook.policy import parse_policy

# The schemas are under test here, not the tenant boundary (tests/unit/test_tenancy.py): every trigger type and
# address of this table is lent.
P = parse_policy("""
tenancy:
  triggerTypes: [http, queue-depth, redis, redis-streams, rabbitmq, kafka, nats-jetstream, sqs, cron, raw]
  clusterTriggerAuthentications: [rmq]
  addresses: {redis: ['redis:6379', 'r:6379'], redis-streams: ['redis:6379'], kafka: ['k:9092'],
              nats-jetstream: ['nats:8222']}
  httpHosts: ['{name}.{namespace}', '{name}.{namespace}.svc', 'chat.{namespace}.example.com']
""")

TRIGGERS = {
    "http": "http",
    "http-rate": "[{type: http, requestRate: 50, window: 2m, hosts: [chat.{ns}.example.com], paths: [/v1], "
                 "headers: {x-tenant: a}, readinessTimeout: 15m, requestTimeout: 30m}]",
    "queue-depth": "queue-depth",
    "queue-running-auth": "[{type: queue-depth, metric: running, threshold: 8, authRef: prom}]",
    "kv-cache": "[{type: queue-depth, metric: kv-cache}]",
    "redis": "[{type: redis, address: 'redis:6379', listName: jobs, authRef: redis-auth, enableTLS: true}]",
    "redis-streams": "[{type: redis-streams, address: 'redis:6379', stream: s, consumerGroup: g}]",
    "rabbitmq": "[{type: rabbitmq, queueName: q, authRef: {name: rmq, kind: ClusterTriggerAuthentication}}]",
    "kafka": "[{type: kafka, bootstrapServers: 'k:9092', consumerGroup: g, topic: t}]",
    "nats": "[{type: nats-jetstream, natsServerMonitoringEndpoint: 'nats:8222', stream: s, consumer: c}]",
    "sqs": "[{type: sqs, queueURL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs', authRef: aws}]",
    "cron": "[{type: cron, start: '0 8 * * 1-5', end: '0 18 * * 1-5', timezone: Europe/Berlin, desiredReplicas: 2}]",
    "raw-postgres": "[{type: raw, trigger: {type: postgresql, metadata: {query: 'select 1', targetQueryValue: '1', "
                    "connectionFromEnv: PG}, authenticationRef: {name: pg}}}]",
    "raw-cpu-min1": "[{type: raw, trigger: {type: cpu, metricType: Utilization, metadata: {value: '70'}}}]",
    "everything": "[http, queue-depth, {type: redis, address: 'r:6379', listName: a}, "
                  "{type: cron, start: '0 8 * * *', end: '0 9 * * *'}]",
}

HTTP_KEYS = {"http", "http-rate", "everything"}


def _workload(kind: str, trigger_key: str) -> dict:
    ann = {C.ANN_TRIGGERS: TRIGGERS[trigger_key],
           C.ANN_BEHAVIOR: '{"scaleDown": {"stabilizationWindowSeconds": 300,'
                                                              ' "policies": [{"type": "Pods", "value": 1, '
                                                              '"periodSeconds": 60}]}}'}
    if trigger_key == "raw-cpu-min1":
        ann[C.ANN_MIN_REPLICAS] = "1"
    obj = {"apiVersion": C.LLMAZ_API_VERSION, "kind": kind,
           "metadata": {"name": f"w-{trigger_key}"[:54], "namespace": "x", "annotations": ann},
           "spec": {"modelClaim": {"modelName": "m"}} if kind == "Playground" else
           {"modelClaims": {"models": [{"name": "m"}]}}}
    return obj


@pytest.mark.parametrize("kind", ["Playground", "Service"])
@pytest.mark.parametrize("trigger_key", sorted(TRIGGERS))
def test_builders_output_is_accepted_by_upstream_crds(kube, namespace, kind, trigger_key):
    ns = namespace(prefix="schema")
    obj = _workload(kind, trigger_key)
    obj["metadata"]["namespace"] = ns
    ann = obj["metadata"]["annotations"]
    ann[C.ANN_TRIGGERS] = ann[C.ANN_TRIGGERS].replace("{ns}", ns)
    mutated = mutate(obj, None, "CREATE", P, ModelCatalog()).obj
    mutated["metadata"]["uid"] = "0b7c3c3e-0000-4000-8000-000000000001"
    desired = desired_objects(mutated, P, ModelCatalog())
    objects = desired.objects()
    assert desired.scaled_object is not None
    assert (desired.interceptor_route is not None) == (trigger_key in HTTP_KEYS)
    api = client.CustomObjectsApi(kube)
    for o in objects:
        group, version = o["apiVersion"].split("/")
        plural = {"ScaledObject": "scaledobjects", "InterceptorRoute": "interceptorroutes"}[o["kind"]]
        out = api.create_namespaced_custom_object(group, version, ns, plural, o, dry_run="All")
        # Nothing we set was pruned or rewritten by the structural schema.
        for key, value in o["spec"].items():
            assert out["spec"][key] == value, (key, out["spec"][key], value)


def test_cel_rule_rejects_min_above_max(kube, namespace):
    """The CRD itself guards min <= max; our validation denies it earlier with a better message."""
    ns = namespace(prefix="schema")
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x", "namespace": ns},
          "spec": {"scaleTargetRef": {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground", "name": "x"},
                   "minReplicaCount": 5, "maxReplicaCount": 2,
                   "triggers": [{"type": "cron", "metadata": {"timezone": "UTC", "start": "0 8 * * *",
                                                              "end": "0 9 * * *", "desiredReplicas": "1"}}]}}
    with pytest.raises(client.ApiException) as exc:
        client.CustomObjectsApi(kube).create_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects",
                                                                      so, dry_run="All")
    assert "minReplicaCount must be less than or equal to maxReplicaCount" in exc.value.body
