"""Bounded input and the tenant boundary: one test per refusal and per limit, through ``settings.analyze``
(the rules the webhook, the reconciler and ``check`` share), plus the loader and the quarantine book."""

from __future__ import annotations

import json

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from webhook import constants as C
from webhook.keda import desired_objects
from webhook.models import ModelCatalog
from webhook.policy import Policy, PolicyError, parse_policy
from webhook.settings import analyze
from webhook.controller.quarantine import DENIED, FAILED, Quarantine
from webhook.tenancy.boundary import never_reason, split_address, Tenancy
from webhook.tenancy.safeyaml import Bounds, InputRefused, load

from .helpers import playground

P = Policy.default()
MODELS = ModelCatalog()


def problems(annotations: dict[str, str], policy: Policy = P, namespace: str = "ai", name: str = "chat") -> str:
    an = analyze(playground(name=name, namespace=namespace, annotations=annotations), policy, MODELS)
    return "; ".join(str(p) for p in an.problems)


def triggers(text: str, policy: Policy = P, namespace: str = "ai") -> str:
    return problems({C.ANN_TRIGGERS: text}, policy, namespace)


def ok(text: str, policy: Policy = P, namespace: str = "ai") -> dict:
    obj = playground(namespace=namespace, annotations={C.ANN_TRIGGERS: text})
    obj["metadata"]["uid"] = "u1"
    return desired_objects(obj, policy, MODELS).scaled_object


# ------------------------------------------------------------------------------------------- the loader

B = Bounds(16384, 8, 2000)


def test_loader_reads_what_safe_load_reads():
    for text in ("[http, {type: redis, address: 'r.ai:6379', listName: q}]", '{"a": [1, 2.5, true, null]}',
                 "a: 1\nb: [x, y]\n", "http", "'0 8 * * *'", "{x: 2024-01-01}", "<<: {a: 1}\nb: 2"):
        assert load(text, B) == yaml.safe_load(text), text


@pytest.mark.parametrize("text,needle", [
    ("a: &x [1]\nb: *x", "anchor"),
    ("[*x]", "alias"),
    ("[" * 5000, "nested more than 8 levels"),
    ("[" + ",".join(["1"] * 2500) + "]", "more than 2000 YAML nodes"),
    ("x" * 16385, "above the limit of 16384 bytes"),
])
def test_loader_refusals_name_the_limit(text, needle):
    with pytest.raises((InputRefused, yaml.YAMLError)) as exc:
        load(text, B)
    assert needle in str(exc.value)


def test_loader_refuses_python_tags_and_second_documents():
    with pytest.raises(yaml.YAMLError):
        load("!!python/object/apply:os.system [echo]", B)
    with pytest.raises(yaml.YAMLError):
        load("a: 1\n---\nb: 2", B)


# ------------------------------------------------------------------------------------------- limits

def test_alias_bomb_in_tolerance_is_denied_naming_the_annotation():
    bomb = 'scaleUp: {tolerance: &a ["x","x"]}\nz: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    msg = problems({C.ANN_BEHAVIOR: bomb})
    assert C.ANN_BEHAVIOR in msg and "anchor" in msg


def test_alias_bomb_in_raw_use_cached_metrics_is_denied():
    bomb = ("[{type: raw, trigger: {type: cpu, metadata: {value: '50'}, useCachedMetrics: &a [x, x]}}, "
            "{type: raw, trigger: {type: cpu, metadata: {value: '5'}, useCachedMetrics: [*a, *a]}}]")
    assert "anchor" in triggers(bomb)


def test_deep_nesting_is_a_clear_denial_not_a_recursion_error():
    msg = triggers("[" * 5000)
    assert "nested more than 8 levels" in msg and "limits.nestingDepth" in msg


def test_annotation_byte_cap_is_checked_before_parsing():
    msg = triggers("[" + ", ".join(["{type: cron, start: '0 8 * * *', end: '0 9 * * *'}"] * 4000) + "]")
    assert "above the limit of 16384 bytes" in msg and "limits.annotationBytes" in msg


def test_total_annotation_bytes_capped():
    policy = parse_policy("limits: {annotationBytes: 4096, totalAnnotationBytes: 6000}")
    msg = problems({C.ANN_TRIGGERS: "http" + " " * 4000, C.ANN_BEHAVIOR: "{}" + " " * 4000}, policy)
    assert "limits.totalAnnotationBytes" in msg


def test_trigger_count_capped():
    many = "[" + ", ".join(["{type: cron, start: '0 8 * * *', end: '0 9 * * *'}"] * 17) + "]"
    assert "has more than 16 triggers, the limit (policy limits.triggers)" in triggers(many)
    wider = parse_policy("limits: {triggers: 20}")
    assert "limits.triggers" not in triggers(many, wider)


def test_comma_list_counts_too():
    assert "has 17 triggers, above the limit of 16 (policy limits.triggers)" in triggers(", ".join(["cron"] * 17))


def test_string_passed_to_keda_capped():
    query = "sum(x)" + " " * 5000
    msg = triggers(json.dumps([{"type": "queue-depth", "query": query}]))
    assert "limits.stringBytes" in msg


def test_built_object_size_capped():
    policy = parse_policy("limits: {builtObjectBytes: 4096}")
    queries = [{"type": "queue-depth", "name": f"q{i}", "query": "sum(x)" + " " * 900} for i in range(6)]
    assert "limits.builtObjectBytes" in triggers(json.dumps(queries), policy)


def test_limits_are_validated_in_the_policy():
    with pytest.raises(PolicyError, match="limits.triggers"):
        parse_policy("limits: {triggers: 0}")
    with pytest.raises(PolicyError, match="unknown field"):
        parse_policy("limits: {trigers: 3}")


def test_policy_document_refuses_aliases():
    with pytest.raises(PolicyError, match="anchor"):
        parse_policy("defaults: &d {minReplicas: 1}\ngpu: *d")


# ------------------------------------------------------------------------------------------- strict types

@pytest.mark.parametrize("behavior,needle", [
    ('{"scaleUp": {"tolerance": [1]}}', "number from 0 to 1"),
    ('{"scaleUp": {"tolerance": "lots"}}', "number from 0 to 1"),
    ('{"scaleUp": {"tolerance": 2}}', "from 0 to 1"),
    ('{"scaleUp": {"tolerance": true}}', "number from 0 to 1"),
    ('{"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60, "x": 1}]}}', "unknown field"),
    ('{"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}' + ', {"type": "Pods", "value": 1, "periodSeconds": 60}' * 10 + "]}}", "at most 10"),
])
def test_behavior_fields_strictly_typed(behavior, needle):
    assert needle in problems({C.ANN_BEHAVIOR: behavior})


def test_behavior_tolerance_accepted_as_number_or_quantity():
    for tol in ("0.05", '"50m"', '"0.1"', "0"):
        assert problems({C.ANN_BEHAVIOR: '{"scaleUp": {"tolerance": %s}}' % tol}) == ""


RAW = parse_policy("tenancy: {triggerTypes: [http, queue-depth, redis, cron, raw]}")


@pytest.mark.parametrize("trigger,needle", [
    ({"type": "cpu", "metadata": {"value": "50"}, "useCachedMetrics": "yes"}, "useCachedMetrics must be true or false"),
    ({"type": "cpu", "metadata": {"value": "50"}, "useCachedMetrics": [1, 2]}, "useCachedMetrics must be true or false"),
    ({"type": "cpu", "metadata": {"value": {"a": 1}}}, "must be a string"),
    ({"type": "cpu", "metadata": {"value": "5", "bad key!": "x"}}, "must be a parameter name"),
    ({"type": "cpu", "name": ["x"], "metadata": {"value": "5"}}, "trigger.name must be a string"),
])
def test_raw_trigger_fields_strictly_typed(trigger, needle):
    assert needle in triggers(json.dumps([{"type": "raw", "trigger": trigger}]), RAW)


# ------------------------------------------------------------------------------------------- tenancy

def test_raw_triggers_off_by_default():
    msg = triggers("[{type: raw, trigger: {type: cpu, metadata: {value: '50'}}}]")
    assert "raw triggers are not allowed in namespace ai" in msg and "tenancy.triggerTypes" in msg


def test_raw_allowed_for_one_namespace_only():
    policy = parse_policy("tenancy: {namespaces: {batch: {triggerTypes: [raw]}}}")
    cpu = "[http, {type: raw, trigger: {type: cpu, metricType: Utilization, metadata: {value: '50'}}}]"
    assert "raw triggers" in triggers(cpu, policy, "ai")
    assert triggers(cpu, policy, "batch") == ""


def test_cluster_trigger_authentication_not_lent_by_default():
    t = "[{type: redis, address: 'r.ai:6379', listName: q, authRef: {name: shared, kind: ClusterTriggerAuthentication}}]"
    assert "ClusterTriggerAuthentication 'shared'" in triggers(t) and "not lent to namespace ai" in triggers(t)
    lent = parse_policy("tenancy: {namespaces: {ai: {clusterTriggerAuthentications: [shared]}}}")
    assert triggers(t, lent) == ""
    assert "not lent to namespace other" in triggers(t.replace("r.ai", "r.other"), lent, "other")


def test_raw_cluster_trigger_authentication_checked_too():
    t = ("[{type: raw, trigger: {type: cpu, metadata: {value: '5'}, "
         "authenticationRef: {name: shared, kind: ClusterTriggerAuthentication}}}]")
    assert "not lent" in triggers(t, RAW)


@pytest.mark.parametrize("address,needle", [
    ("redis:6379", "not an address this namespace may use"),                 # resolves in KEDA's namespace
    ("redis.other:6379", "not an address this namespace may use"),
    ("redis.example.com:6379", "not an address this namespace may use"),
    ("127.0.0.1:6379", "loopback"),
    ("localhost:6379", "loopback"),
    ("169.254.169.254:80", "link-local"),
    ("[::ffff:169.254.169.254]:80", "link-local"),
    ("[fe80::1]:80", "link-local"),
    ("0.0.0.0:6379", "unspecified"),
    ("2852039166:80", "numeric address"),
    ("0xa9fea9fe:80", "numeric address"),
    ("0251.0376.0251.0376:80", "numeric address"),
    ("169.254.43518:80", "numeric address"),
    ("face.bad:80", "not an address this namespace may use"),     # hex letters are still a name
    ("kubernetes.default.svc:443", "API server"),
    ("kubernetes.default.svc.cluster.local:443", "API server"),
    ("kubernetes.default:443", "API server"),
    ("metadata.google.internal:80", "metadata"),
])
def test_redis_addresses_confined(address, needle):
    assert needle in triggers(json.dumps([{"type": "redis", "address": address, "listName": "q"}]))


def test_in_namespace_redis_allowed():
    for address in ("redis.ai:6379", "redis.ai.svc:6379", "redis.ai.svc.cluster.local:6379"):
        assert triggers(json.dumps([{"type": "redis", "address": address, "listName": "q"}])) == "", address


def test_never_addresses_refused_even_when_a_pattern_allows_them():
    wide = parse_policy("tenancy: {addresses: {redis: ['*.*.*', '127.0.0.1', '169.254.169.254:80', "
                        "'kubernetes.default.svc:443', '*.default.svc:*', '10.96.0.1:443']}, "
                        "apiServerAddresses: ['10.96.0.1']}")
    for address in ("127.0.0.1:6379", "169.254.169.254:80", "kubernetes.default.svc:443", "10.96.0.1:443"):
        msg = triggers(json.dumps([{"type": "redis", "address": address, "listName": "q"}]), wide)
        assert "never connects there" in msg, address


def test_admin_widens_addresses_per_namespace():
    policy = parse_policy("tenancy: {namespaces: {ai: {addresses: {redis: ['cache.example.com:6379']}}}}")
    t = json.dumps([{"type": "redis", "address": "cache.example.com:6379", "listName": "q"}])
    assert triggers(t, policy) == ""
    assert "not an address" in triggers(t, policy, "other")
    assert "not an address" in triggers(t.replace("6379", "6380"), policy)


def test_queue_depth_server_address_confined_and_policy_credentials_stay_home():
    msg = triggers("[{type: queue-depth, serverAddress: 'http://169.254.169.254/latest'}]")
    assert "link-local" in msg
    msg = triggers("[{type: queue-depth, serverAddress: 'https://kubernetes.default.svc/api'}]")
    assert "API server" in msg
    assert "not an address" in triggers("[{type: queue-depth, serverAddress: 'http://evil.example:9090'}]")
    policy = parse_policy("prometheus: {authRef: prom-creds}\n"
                          "tenancy: {addresses: {prometheus: ['prom.ai.svc:9090']}}")
    own = ok("[http, {type: queue-depth}]", policy)["spec"]["triggers"][1]
    assert own["authenticationRef"] == {"name": "prom-creds", "kind": "TriggerAuthentication"}
    chosen = ok("[http, {type: queue-depth, serverAddress: 'http://prom.ai.svc:9090'}]", policy)
    assert "authenticationRef" not in chosen["spec"]["triggers"][1]


def test_address_from_env_refused_by_default():
    t = "[{type: redis, addressFromEnv: REDIS_ADDR, listName: q}]"
    assert "read from the workload's environment" in triggers(t)
    assert triggers(t, parse_policy("tenancy: {addressesFromEnv: true}")) == ""


def test_operator_identity_refused():
    assert "KEDA operator's own cloud identity" in triggers(
        "[{type: sqs, queueURL: 'https://sqs.eu-west-1.amazonaws.com/1/q'}]")
    assert triggers("[{type: sqs, queueURL: 'https://sqs.eu-west-1.amazonaws.com/1/q', authRef: aws}]") == ""
    raw = parse_policy("tenancy: {triggerTypes: [raw], addresses: {aws-sqs-queue: ['sqs.*.amazonaws.com']}}")
    t = ("[{type: raw, trigger: {type: aws-sqs-queue, metadata: {queueURL: 'https://sqs.eu-west-1.amazonaws.com/1/q',"
         " awsRegion: eu-west-1, identityOwner: operator}, authenticationRef: {name: aws}}}]")
    assert "identityOwner: operator" in triggers(t, raw)
    no_auth = ("[{type: raw, trigger: {type: aws-sqs-queue, metadata: {queueURL: "
               "'https://sqs.eu-west-1.amazonaws.com/1/q', awsRegion: eu-west-1}}}]")
    assert "without authenticationRef" in triggers(no_auth, raw)
    lent = parse_policy("tenancy: {triggerTypes: [raw], addresses: {aws-sqs-queue: ['sqs.*.amazonaws.com']}, "
                        "namespaces: {ai: {operatorIdentity: true}}}")
    assert triggers(t, lent) == ""


def test_inline_credentials_refused_in_raw_triggers():
    for key in ("redisPassword", "saslPassword", "awsSessionToken", "sharedAccessKey", "password"):
        t = json.dumps([{"type": "raw", "trigger": {"type": "redis", "metadata": {
            "address": "r.ai:6379", "listName": "q", key: "hunter2"}}}])
        assert "must not be written inline" in triggers(t, RAW), key


def test_raw_addresses_confined():
    t = json.dumps([{"type": "raw", "trigger": {"type": "metrics-api", "metadata": {
        "url": "http://169.254.169.254/latest/meta-data", "valueLocation": "x", "targetValue": "1"}}}])
    assert "link-local" in triggers(t, RAW)
    t = json.dumps([{"type": "raw", "trigger": {"type": "metrics-api", "metadata": {
        "url": "http://api.example.com/m", "valueLocation": "x", "targetValue": "1"}}}])
    assert "not an address this namespace may use for metrics-api" in triggers(t, RAW)


@pytest.mark.parametrize("hosts,needle", [
    (["*"], "every host name"),
    ([], "is empty"),
    (["chat.other"], "not a host name namespace ai may claim"),
    (["other.ai"], "not a host name"),
    (["chat.example.com"], "not a host name"),
])
def test_http_hosts_confined(hosts, needle):
    assert needle in triggers(json.dumps([{"type": "http", "hosts": hosts}]))


def test_http_hosts_with_policy_pattern():
    policy = parse_policy("tenancy: {httpHosts: ['{name}.{namespace}', '*.{namespace}.ai.example.com']}")
    assert triggers(json.dumps([{"type": "http", "hosts": ["chat.ai", "x.ai.ai.example.com",
                                                           "*.ai.ai.example.com"]}]), policy) == ""
    assert "not a host name" in triggers(json.dumps([{"type": "http", "hosts": ["x.b.ai.ai.example.com"]}]), policy)
    assert "not a host name" in triggers(json.dumps([{"type": "http", "hosts": ["x.other.ai.example.com"]}]), policy)


def test_host_patterns_must_name_the_namespace():
    with pytest.raises(PolicyError, match="must contain"):
        parse_policy("tenancy: {httpHosts: ['*.ai.example.com']}")
    with pytest.raises(PolicyError, match="allows every address"):
        parse_policy("tenancy: {addresses: {redis: ['*']}}")


def test_two_namespaces_same_name_never_share_a_gateway_route():
    routes = []
    for ns in ("team-a", "team-b"):
        obj = playground(name="qwen", namespace=ns, annotations={C.ANN_TRIGGERS: "http"})
        obj["metadata"]["uid"] = "u-" + ns
        routes.append(desired_objects(obj, P, MODELS).interceptor_route["spec"]["rules"])
    assert routes[0] != routes[1]
    flat = [json.dumps(r, sort_keys=True) for rules in routes for r in rules]
    assert len(flat) == len(set(flat))
    assert {"name": "x-ai-eg-model", "value": "team-a/qwen"} in routes[0][1]["headers"]


def test_gateway_value_must_name_the_namespace():
    with pytest.raises(PolicyError, match="namespace"):
        parse_policy("http: {gatewayValue: '{name}'}")
    policy = parse_policy("http: {gatewayValue: '{name}.{namespace}'}")
    obj = playground(name="qwen", namespace="t", annotations={C.ANN_TRIGGERS: "http"})
    obj["metadata"]["uid"] = "u"
    rule = desired_objects(obj, policy, MODELS).interceptor_route["spec"]["rules"][1]
    assert rule["headers"] == [{"name": "x-ai-eg-model", "value": "qwen.t"}]


def test_policy_triggers_are_the_admins_and_not_checked():
    policy = parse_policy("defaults: {triggers: [{type: redis, address: 'shared-redis.queues:6379', listName: q}]}")
    assert problems({}, policy) == ""


def test_unknown_trigger_type_in_grant_refused():
    with pytest.raises(PolicyError, match="unknown trigger type"):
        parse_policy("tenancy: {triggerTypes: [websocket]}")


def test_split_address_forms():
    assert split_address("r.ai:6379") == ("r.ai", 6379)
    assert split_address("http://Prom.AI.svc.:9090/x") == ("prom.ai.svc", 9090)
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address("host") == ("host", None)
    assert never_reason("r.ai", Tenancy()) is None


# ------------------------------------------------------------------------------------------- quarantine

def test_quarantine_book():
    reg = CollectorRegistry()
    gauge, counter = Gauge("q", "q", registry=reg), Counter("qt", "q", ["reason"], registry=reg)
    q = Quarantine(gauge, counter)
    key = ("Playground", "ai", "a")
    assert q.hold(key, FAILED, "1", P, "RecursionError")
    assert not q.hold(key, FAILED, "1", P, "RecursionError")   # the same news only once
    assert q.still_failing(key, "1", P) is not None
    assert q.still_failing(key, "2", P) is None                  # edited: build again
    assert q.still_failing(key, "1", parse_policy("maxReplicasCap: 8")) is None
    assert reg.get_sample_value("q") == 1 and reg.get_sample_value("qt_total", {"reason": "error"}) == 1
    assert q.hold(key, DENIED, "2", P, "denied")
    assert q.still_failing(key, "2", P) is None                  # a denial is cheap: always judged again
    assert q.release(key) and not q.release(key) and len(q) == 0
    assert reg.get_sample_value("q") == 0


def test_a_lone_surrogate_is_refused_not_raised() -> None:
    from webhook.tenancy.safeyaml import Bounds, InputRefused, load

    with pytest.raises(InputRefused, match="not valid Unicode"):
        load("\ud800", Bounds(max_bytes=1024, max_depth=8, max_nodes=64))
