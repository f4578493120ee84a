"""The webhook through a real kube-apiserver: shipped webhook configurations, real TLS, real CRD schemas."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.webhook_harness import RELEASE_NAMESPACE, WebhookProcess, loopback_configurations
from webhook import constants as C

GROUP, VERSION = "inference.llmaz.io", "v1alpha1"
OPT_IN = {C.NAMESPACE_LABEL: "true"}


def gpu_playground(name="chat", annotations=None, **spec):
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Playground",
           "metadata": {"name": name, "annotations": dict(annotations or {})},
           "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen-7b"},
                    "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}, **spec}}
    if not obj["metadata"]["annotations"]:
        del obj["metadata"]["annotations"]
    return obj


def standalone_service(name="svc"):
    # llmaz v0.1.x shape: workloadTemplate is a LeaderWorkerSet spec.
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Service", "metadata": {"name": name},
            "spec": {"modelClaims": {"models": [{"name": "qwen-7b"}]},
                     "workloadTemplate": {"leaderWorkerTemplate": {"size": 1, "workerTemplate": {"spec": {
                         "containers": [{"name": "model-runner", "image": "vllm/vllm-openai",
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}}}


def apply_configurations(kube, configs):
    adm = client.AdmissionregistrationV1Api(kube)
    for cfg in configs:
        name = cfg["metadata"]["name"]
        if cfg["kind"] == "MutatingWebhookConfiguration":
            create, read, replace = (adm.create_mutating_webhook_configuration,
                                     adm.read_mutating_webhook_configuration,
                                     adm.replace_mutating_webhook_configuration)
        else:
            create, read, replace = (adm.create_validating_webhook_configuration,
                                     adm.read_validating_webhook_configuration,
                                     adm.replace_validating_webhook_configuration)
        try:
            live = read(name)
            cfg = dict(cfg)
            cfg["metadata"] = dict(cfg["metadata"], resourceVersion=live.metadata.resource_version)
            replace(name, cfg)
        except ApiException as e:
            if e.status != 404:
                raise
            create(cfg)


def delete_configurations(kube):
    adm = client.AdmissionregistrationV1Api(kube)
    for fn in (adm.delete_mutating_webhook_configuration, adm.delete_validating_webhook_configuration):
        try:
            fn("llmaz-serverless")
        except ApiException as e:
            if e.status != 404:
                raise


def wait_until_webhook_active(kube, ns):
    """The API server picks up new webhook configurations asynchronously; probe with a dry run."""
    api = client.CustomObjectsApi(kube)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = gpu_playground(name="probe")
        out = api.create_namespaced_custom_object(GROUP, VERSION, ns, "playgrounds", probe, dry_run="All")
        if (out["metadata"].get("annotations") or {}).get(C.ANN_MANAGED) == "true":
            return
        time.sleep(0.2)
    raise AssertionError("webhook configuration did not become active within 20s")


@contextlib.contextmanager
def registered_webhook(kube, workdir, **kwargs):
    """The shipped webhook as a process, registered with the API server through the shipped configurations
    (pointed at loopback); unregistered and stopped on the way out."""
    proc = WebhookProcess(workdir, **kwargs)
    proc.start()
    apply_configurations(kube, loopback_configurations(proc.port, proc.ca_pem))
    try:
        yield proc
    finally:
        delete_configurations(kube)
        proc.stop()


@pytest.fixture(scope="module")
def webhook(control_plane, kube, tmp_path_factory):
    with registered_webhook(kube, tmp_path_factory.mktemp("webhook")) as proc:
        yield proc


@pytest.fixture
def opted_in(webhook, namespace, kube):
    ns = namespace(labels=OPT_IN, prefix="optin")
    wait_until_webhook_active(kube, ns)
    return ns


def create(kube, ns, obj, plural="playgrounds", **kw):
    return client.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, ns, plural, obj, **kw)


def get(kube, ns, name, plural="playgrounds"):
    return client.CustomObjectsApi(kube).get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)


def test_playground_in_opted_in_namespace_is_mutated(kube, opted_in):
    create(kube, opted_in, gpu_playground())
    stored = get(kube, opted_in, "chat")
    ann = stored["metadata"]["annotations"]
    assert ann[C.ANN_MANAGED] == "true"
    assert json.loads(ann[C.ANN_RESOLVED])["gpu"] is True
    assert stored["spec"]["replicas"] == 0


def test_namespace_without_label_is_untouched(kube, webhook, namespace):
    ns = namespace(prefix="plain")
    create(kube, ns, gpu_playground())
    stored = get(kube, ns, "chat")
    assert C.ANN_MANAGED not in (stored["metadata"].get("annotations") or {})
    assert stored["spec"]["replicas"] == 1


def test_standalone_service_is_mutated(kube, opted_in):
    create(kube, opted_in, standalone_service(), plural="services")
    stored = get(kube, opted_in, "svc", plural="services")
    assert stored["metadata"]["annotations"][C.ANN_MANAGED] == "true"
    assert json.loads(stored["metadata"]["annotations"][C.ANN_RESOLVED])["gpu"] is True


def test_denial_reaches_the_client_with_our_message(kube, opted_in):
    bad = gpu_playground(annotations={C.ANN_MIN_REPLICAS: "lots",
                                      C.ANN_TRIGGERS: "[{type: redis, address: 'r:6379', listName: q, password: x}]"})
    with pytest.raises(ApiException) as exc:
        create(kube, opted_in, bad)
    body = json.loads(exc.value.body)
    assert exc.value.status in (400, 422)
    assert C.ANN_MIN_REPLICAS in body["message"] and "not a whole number" in body["message"]
    assert "must not be written inline" in body["message"]
    with pytest.raises(ApiException):
        get(kube, opted_in, "chat")


def test_warnings_reach_the_client(kube, opted_in):
    api = client.CustomObjectsApi(kube)
    obj = gpu_playground(elasticConfig={"minReplicas": 1, "maxReplicas": 3})
    _, status, headers = api.create_namespaced_custom_object_with_http_info(GROUP, VERSION, opted_in,
                                                                            "playgrounds", obj)
    assert status == 201
    warning = headers.get("Warning", "")
    assert "elasticConfig was removed" in warning
    stored = get(kube, opted_in, "chat")
    assert "elasticConfig" not in stored["spec"]
    assert stored["metadata"]["annotations"][C.ANN_MAX_REPLICAS] == "3"


def test_misspelt_annotations_warn_through_the_api_server(kube, opted_in):
    # What kubectl prints as "Warning: ...": the API server relays the webhook's warnings in Warning headers.
    api = client.CustomObjectsApi(kube)
    obj = gpu_playground(name="typo", annotations={"serverless.llmaz.io/min-replica": "1",
                                                   "serverless.llmaz.com/cooldown-period": "30m"})
    _, status, headers = api.create_namespaced_custom_object_with_http_info(GROUP, VERSION, opted_in,
                                                                            "playgrounds", obj)
    assert status == 201
    warning = headers.get("Warning", "")
    assert "serverless.llmaz.io/min-replica is not an annotation of llmaz-serverless" in warning, warning
    assert f"did you mean {C.ANN_MIN_REPLICAS}?" in warning, warning
    assert "serverless.llmaz.com/cooldown-period is ignored" in warning, warning
    assert f"did you mean {C.ANN_COOLDOWN}?" in warning, warning


def test_short_readiness_timeout_warns_through_the_api_server(kube, opted_in):
    api = client.CustomObjectsApi(kube)
    obj = gpu_playground(name="hasty", annotations={C.ANN_TRIGGERS: "[{type: http, readinessTimeout: 30s}]"})
    _, status, headers = api.create_namespaced_custom_object_with_http_info(GROUP, VERSION, opted_in,
                                                                            "playgrounds", obj)
    assert status == 201
    assert "readinessTimeout 30s is shorter than the expected load" in headers.get("Warning", "")


def test_server_side_dry_run(kube, opted_in):
    out = create(kube, opted_in, gpu_playground(name="dry"), dry_run="All")
    assert out["metadata"]["annotations"][C.ANN_MANAGED] == "true" and out["spec"]["replicas"] == 0
    with pytest.raises(ApiException) as exc:
        get(kube, opted_in, "dry")
    assert exc.value.status == 404


def test_reapplied_manifest_keeps_live_replicas(kube, opted_in):
    api = client.CustomObjectsApi(kube)
    create(kube, opted_in, gpu_playground())
    # KEDA scales through /scale; the webhook does not intercept the subresource.
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, opted_in, "playgrounds", "chat",
                                             {"spec": {"replicas": 3}})
    assert get(kube, opted_in, "chat")["spec"]["replicas"] == 3
    # The user re-applies the original manifest (kubectl apply sends a PATCH: an UPDATE to admission).
    api.patch_namespaced_custom_object(GROUP, VERSION, opted_in, "playgrounds", "chat",
                                       {"spec": {"replicas": 1},
                                        "metadata": {"annotations": {C.ANN_MAX_REPLICAS: "5"}}})
    stored = get(kube, opted_in, "chat")
    assert stored["spec"]["replicas"] == 3
    assert json.loads(stored["metadata"]["annotations"][C.ANN_RESOLVED])["maxReplicas"] == 5


def test_update_with_bad_annotation_is_denied(kube, opted_in):
    api = client.CustomObjectsApi(kube)
    create(kube, opted_in, gpu_playground())
    with pytest.raises(ApiException) as exc:
        api.patch_namespaced_custom_object(GROUP, VERSION, opted_in, "playgrounds", "chat",
                                           {"metadata": {"annotations": {C.ANN_PROFILE: "nope"}}})
    assert "unknown profile" in json.loads(exc.value.body)["message"]


def test_failure_policy_when_webhook_is_down(kube, webhook, namespace):
    """Shipped policy Ignore: writes succeed unmutated. With Fail: blocked, except in excluded namespaces."""
    ns = namespace(labels=OPT_IN, prefix="down")
    wait_until_webhook_active(kube, ns)
    core = client.CoreV1Api(kube)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=RELEASE_NAMESPACE,
                                                                              labels=OPT_IN)))
    except ApiException as e:
        if e.status != 409:
            raise
    core.patch_namespace("kube-system", {"metadata": {"labels": OPT_IN}})
    webhook.stop()
    try:
        create(kube, ns, gpu_playground(name="while-down"))   # failurePolicy Ignore (shipped default)
        stored = get(kube, ns, "while-down")
        assert C.ANN_MANAGED not in (stored["metadata"].get("annotations") or {})

        apply_configurations(kube, loopback_configurations(webhook.port, webhook.ca_pem, failure_policy="Fail"))
        deadline = time.monotonic() + 20
        while True:
            try:
                create(kube, ns, gpu_playground(name="blocked"), dry_run="All")
            except ApiException as e:
                assert "failed calling webhook" in e.body
                break
            assert time.monotonic() < deadline, "failurePolicy Fail never took effect"
            time.sleep(0.2)
        for excluded in ("kube-system", RELEASE_NAMESPACE):
            out = create(kube, excluded, gpu_playground(name="never-blocked"), dry_run="All")
            assert out["metadata"]["name"] == "never-blocked"
    finally:
        core.patch_namespace("kube-system", {"metadata": {"labels": {C.NAMESPACE_LABEL: None}}})
        apply_configurations(kube, loopback_configurations(webhook.port, webhook.ca_pem))
        webhook.start()


def _lws_pod(name, env):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"leaderworkerset.sigs.k8s.io/name": "chat"}},
            "spec": {"containers": [{"name": "model-runner", "image": "vllm/vllm-openai", "env": env}]}}


def test_playground_drain_and_the_pod_drain_through_the_api_server(kube, opted_in):
    """The Playground carries the vLLM flag and the markers as stored by the real CRD schema; a pod made from
    them (as LeaderWorkerSet does) gets the grace period and a preStop sleep that kube-apiserver 1.34 accepts;
    a pod without the markers is left alone."""
    create(kube, opted_in, gpu_playground(annotations={C.ANN_DRAIN_TIMEOUT: "90"}))
    brc = get(kube, opted_in, "chat")["spec"]["backendRuntimeConfig"]
    assert brc["args"] == ["--shutdown-timeout=90"]
    core = client.CoreV1Api(kube)
    pod = core.create_namespaced_pod(opted_in, _lws_pod("chat-0", brc["envs"]))
    assert pod.spec.termination_grace_period_seconds == 5 + 90 + 5
    assert pod.spec.containers[0].lifecycle.pre_stop.sleep.seconds == 5
    other = core.create_namespaced_pod(opted_in, _lws_pod("other-0", [{"name": "A", "value": "1"}]))
    assert other.spec.termination_grace_period_seconds == 30 and other.spec.containers[0].lifecycle is None
