"""Trigger presets: parsing, defaults, validation messages, and the exact KEDA trigger each one builds."""

from __future__ import annotations

import pytest

from webhook.policy import Policy, parse_policy
from webhook.triggers import (
    TriggerContext, assign_names, cron_problem, duration_seconds, parse_trigger, parse_triggers_annotation,
    timezone_problem,
)

P = Policy.default()
CTX = TriggerContext(kind="Playground", name="chat", namespace="ai", policy=P)


def build(spec, ctx=CTX, name="t"):
    preset, problems = parse_trigger(spec, "t")
    assert not problems, problems
    return preset.keda_trigger(ctx, name)


def problems_of(spec):
    preset, problems = parse_trigger(spec, "t")
    assert preset is None
    return " | ".join(str(p) for p in problems)


def test_http_builds_external_push_and_route():
    preset, _ = parse_trigger({"type": "http"}, "t")
    assert preset.keda_trigger(CTX, "http") == {
        "type": "external-push", "name": "http",
        "metadata": {"scalerAddress": P.http.scalerAddress, "interceptorRoute": "chat"}}
    route = preset.interceptor_route_spec(CTX)
    assert route["target"] == {"service": "chat-lb", "port": 8080}
    assert route["scalingMetric"] == {"concurrency": {"targetValue": P.http.concurrency}}
    assert route["timeouts"] == {"readiness": "10m", "request": "0s", "responseHeader": "10m"}
    assert route["rules"][0] == {"hosts": ["chat.ai", "chat.ai.svc"]}
    assert route["rules"][1] == {"hosts": ["*"], "headers": [{"name": "x-ai-eg-model", "value": "ai/chat"}]}


def test_http_request_rate_hosts_paths_headers():
    preset, _ = parse_trigger({"type": "http", "requestRate": 20, "window": "2m", "hosts": ["chat.example.com"],
                               "paths": ["/v1"], "headers": {"x-tenant": "a"}, "readinessTimeout": "5m"}, "t")
    route = preset.interceptor_route_spec(CTX)
    assert route["scalingMetric"] == {"requestRate": {"targetValue": 20, "window": "2m", "granularity": "1s"}}
    assert route["rules"] == [{"hosts": ["chat.example.com"], "paths": [{"value": "/v1"}],
                               "headers": [{"name": "x-tenant", "value": "a"}]}]
    assert route["timeouts"]["readiness"] == "5m"


def test_gateway_rule_can_be_disabled_by_policy():
    ctx = TriggerContext(kind="Playground", name="chat", namespace="ai",
                         policy=parse_policy("http: {gatewayHeader: ''}"))
    preset, _ = parse_trigger("http", "t")
    assert len(preset.interceptor_route_spec(ctx)["rules"]) == 1


@pytest.mark.parametrize("spec,needle", [
    ({"type": "http", "concurrency": 4, "requestRate": 4}, "either concurrency or requestRate"),
    ({"type": "http", "window": "1m"}, "only apply with requestRate"),
    ({"type": "http", "readinessTimeout": "ten minutes"}, "not a duration"),
    ({"type": "http", "paths": ["v1"]}, "must start with '/'"),
    ({"type": "http", "concurrency": 0}, "greater than or equal to 1"),
    ({"type": "http", "port": 70000}, "less than or equal to 65535"),
    ({"type": "http", "concurency": 4}, "did you mean concurrency"),
])
def test_http_validation(spec, needle):
    assert needle in problems_of(spec)


def test_queue_depth_vllm_waiting_scoped_to_pods():
    t = build({"type": "queue-depth"})
    assert t["type"] == "prometheus" and t["metricType"] == "AverageValue"
    md = t["metadata"]
    assert md["query"] == 'sum(vllm:num_requests_waiting{namespace="ai",pod=~"chat-[0-9]+(-[0-9]+)?"})'
    assert md["threshold"] == "5" and md["activationThreshold"] == "0" and md["ignoreNullValues"] == "true"
    assert md["serverAddress"] == P.prometheus.serverAddress


@pytest.mark.parametrize("metric,series,agg,mtype,threshold", [
    ("running", "vllm:num_requests_running", "sum", "AverageValue", "16"),
    ("kv-cache", "vllm:kv_cache_usage_perc", "avg", "Value", "0.8"),
])
def test_queue_depth_other_metrics(metric, series, agg, mtype, threshold):
    t = build({"type": "queue-depth", "metric": metric})
    assert t["metadata"]["query"].startswith(f"{agg}({series}{{")
    assert t["metricType"] == mtype and t["metadata"]["threshold"] == threshold


def test_queue_depth_llamacpp_backend_from_workload():
    ctx = TriggerContext(kind="Playground", name="tiny", namespace="ai", policy=P, backend="llamacpp")
    t = build({"type": "queue-depth", "metric": "running", "threshold": 2}, ctx=ctx)
    assert "llamacpp:requests_processing" in t["metadata"]["query"] and t["metadata"]["threshold"] == "2"
    assert "no KV-cache metric" in problems_of({"type": "queue-depth", "metric": "kv-cache", "backend": "llamacpp"})


def test_queue_depth_custom_query_and_auth():
    t = build({"type": "queue-depth", "query": "sum(x)", "authRef": "prom", "serverAddress": "https://p:9090"})
    assert t["metadata"]["query"] == "sum(x)" and t["metadata"]["serverAddress"] == "https://p:9090"
    assert t["authenticationRef"] == {"name": "prom", "kind": "TriggerAuthentication"}
    assert "http:// or https://" in problems_of({"type": "queue-depth", "serverAddress": "p:9090"})


def test_redis_list():
    t = build({"type": "redis", "address": "redis:6379", "listName": "jobs", "listLength": 10,
               "authRef": {"name": "ra", "kind": "ClusterTriggerAuthentication"}, "enableTLS": True})
    assert t == {"type": "redis", "name": "t", "metadata": {
        "address": "redis:6379", "enableTLS": "true", "listName": "jobs", "listLength": "10",
        "activationListLength": "0"}, "authenticationRef": {"name": "ra", "kind": "ClusterTriggerAuthentication"}}
    assert "set address" in problems_of({"type": "redis", "listName": "jobs"})
    assert "either address or host" in problems_of({"type": "redis", "listName": "j", "address": "a:1", "host": "b"})


def test_redis_streams_modes():
    t = build({"type": "redis-streams", "address": "r:6379", "stream": "s", "consumerGroup": "g"})
    assert t["metadata"] == {"address": "r:6379", "stream": "s", "consumerGroup": "g", "pendingEntriesCount": "5"}
    t = build({"type": "redis-streams", "address": "r:6379", "stream": "s"})
    assert t["metadata"]["streamLength"] == "5"
    assert "consumerGroup is required" in problems_of(
        {"type": "redis-streams", "address": "r:1", "stream": "s", "lagCount": 3})
    assert "only one of" in problems_of(
        {"type": "redis-streams", "address": "r:1", "stream": "s", "consumerGroup": "g", "lagCount": 3,
         "streamLength": 2})


def test_rabbitmq():
    t = build({"type": "rabbitmq", "queueName": "q", "authRef": "rabbit", "vhostName": "/llm"})
    assert t["metadata"] == {"queueName": "q", "mode": "QueueLength", "value": "5", "activationValue": "0",
                             "protocol": "auto", "vhostName": "/llm"}
    assert t["authenticationRef"]["name"] == "rabbit"
    assert "broker URL is required" in problems_of({"type": "rabbitmq", "queueName": "q"})
    assert "management API" in problems_of({"type": "rabbitmq", "queueName": "q", "authRef": "a",
                                            "mode": "MessageRate", "protocol": "amqp"})


def test_kafka():
    t = build({"type": "kafka", "bootstrapServers": "k:9092", "consumerGroup": "g", "topic": "prompts"})
    assert t["metadata"] == {"bootstrapServers": "k:9092", "consumerGroup": "g", "lagThreshold": "10",
                             "activationLagThreshold": "0", "topic": "prompts"}
    assert "consumerGroup" in problems_of({"type": "kafka", "bootstrapServers": "k:9092"})


def test_nats_jetstream():
    t = build({"type": "nats-jetstream", "natsServerMonitoringEndpoint": "nats:8222", "stream": "s",
               "consumer": "c"})
    assert t["metadata"] == {"natsServerMonitoringEndpoint": "nats:8222", "account": "$G", "stream": "s",
                             "consumer": "c", "lagThreshold": "10", "activationLagThreshold": "0",
                             "useHttps": "false"}
    assert "without a scheme" in problems_of({"type": "nats-jetstream", "natsServerMonitoringEndpoint":
                                              "http://nats:8222", "stream": "s", "consumer": "c"})


def test_sqs_region_from_url():
    t = build({"type": "sqs", "queueURL": "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
               "authRef": "aws"})
    assert t["type"] == "aws-sqs-queue" and t["metadata"]["awsRegion"] == "eu-west-1"
    assert t["metadata"]["queueLength"] == "5"
    assert "awsRegion is required" in problems_of({"type": "sqs", "queueURL": "https://queue.local/1/jobs"})
    assert "must not be written inline" in problems_of(
        {"type": "sqs", "queueURL": "https://sqs.eu-west-1.amazonaws.com/1/j", "awsSecretAccessKey": "s"})


def test_cron_defaults_to_policy_timezone():
    t = build({"type": "cron", "start": "0 8 * * MON-FRI", "end": "0 18 * * 1-5"})
    assert t["metadata"] == {"timezone": "UTC", "start": "0 8 * * MON-FRI", "end": "0 18 * * 1-5",
                             "desiredReplicas": "1"}


@pytest.mark.parametrize("expr,ok", [
    ("0 8 * * 1-5", True), ("*/15 * * * *", True), ("0 0 1 jan ?", True), ("5,10 0-23/2 * * sun", True),
    ("0 8 * *", False), ("61 * * * *", False), ("* 24 * * *", False), ("* * 0 * *", False),
    ("* * * 13 *", False), ("5-1 * * * *", False), ("*/0 * * * *", False), ("? * * * *", False),
    ("@daily", False), ("a b c d e", False),
])
def test_cron_expressions(expr, ok):
    assert (cron_problem(expr) is None) is ok


def test_timezones():
    assert timezone_problem("Europe/Berlin") is None and timezone_problem("UTC") is None
    assert timezone_problem("Mars/Olympus") and timezone_problem("../etc/passwd") and timezone_problem("")


def test_raw_trigger_checked_and_passed_through():
    t = build({"type": "raw", "trigger": {"type": "postgresql", "metadata": {"query": "select 1",
                                                                             "targetQueryValue": 5,
                                                                             "connectionFromEnv": "PG"},
                                          "authenticationRef": {"name": "pg"}}})
    assert t["metadata"] == {"query": "select 1", "targetQueryValue": "5", "connectionFromEnv": "PG"}
    assert t["authenticationRef"] == {"name": "pg", "kind": "TriggerAuthentication"}
    assert "not a KEDA scaler" in problems_of({"type": "raw", "trigger": {"type": "nosuch"}})
    assert "must not be written inline" in problems_of(
        {"type": "raw", "trigger": {"type": "postgresql", "metadata": {"password": "x"}}})
    assert "unknown field" in problems_of({"type": "raw", "trigger": {"type": "cpu", "foo": 1}})
    assert "must be a string" in problems_of({"type": "raw", "trigger": {"type": "kafka", "metadata": {"a": [1]}}})
    assert "hour value 99" in problems_of({"type": "raw", "trigger": {"type": "cron", "metadata": {
        "start": "0 99 * * *", "end": "0 1 * * *", "timezone": "UTC"}}})


def test_unknown_type_with_keda_scaler_hint():
    assert "type: raw" in problems_of({"type": "postgresql"})
    assert "one of: http" in problems_of({"type": "teleport"})
    assert "needs a type" in problems_of({"listName": "x"})
    assert "preset name or a mapping" in problems_of(42)


def test_annotation_forms():
    assert [p.type for p in parse_triggers_annotation("http, queue-depth", "a")[0]] == ["http", "queue-depth"]
    assert [p.type for p in parse_triggers_annotation('[{"type": "http"}]', "a")[0]] == ["http"]
    assert [p.type for p in parse_triggers_annotation("type: http\nconcurrency: 3", "a")[0]] == ["http"]
    _, problems = parse_triggers_annotation("{not: [valid", "a")
    assert problems and "at line " in str(problems[0])


def test_trigger_names_unique_and_stable():
    presets, _ = parse_triggers_annotation(
        "[{type: redis, address: a:1, listName: x}, {type: redis, address: a:1, listName: y}, "
        "{type: redis, name: redis-2, address: a:1, listName: z}]", "a")
    assert [n for n, _ in assign_names(presets)] == ["redis", "redis-3", "redis-2"]
    _, problems = parse_triggers_annotation("[{type: http, name: a}, {type: cron, name: a, start: '* * * * *', "
                                            "end: '* * * * *'}]", "a")
    assert "duplicate trigger names" in str(problems)


def test_durations():
    assert duration_seconds("1h30m") == 5400 and duration_seconds("0s") == 0 and duration_seconds("x") is None
