"""The test control plane is real: upstream CRDs are served, CEL rules enforced, the garbage
collector runs and data survives an apiserver restart."""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

LLMAZ = ("inference.llmaz.io", "v1alpha1")
KEDA = ("keda.sh", "v1alpha1")
HTTP = ("http.keda.sh", "v1beta1")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _playground(name: str) -> dict:
    return {
        "apiVersion": "inference.llmaz.io/v1alpha1",
        "kind": "Playground",
        "metadata": {"name": name},
        "spec": {"modelClaim": {"modelName": "m"}},
    }


def _scaled_object(name: str, target: str, min_replicas: int = 0, max_replicas: int = 2) -> dict:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground", "name": target},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "triggers": [{
                "type": "cron",
                "metadata": {"timezone": "Etc/UTC", "start": "0 8 * * *", "end": "0 18 * * *",
                             "desiredReplicas": "1"},
            }],
        },
    }


def test_crds_are_established(control_plane):
    ext = client.ApiextensionsV1Api(control_plane.api_client())
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert {
        "playgrounds.inference.llmaz.io",
        "services.inference.llmaz.io",
        "backendruntimes.inference.llmaz.io",
        "openmodels.llmaz.io",
        "leaderworkersets.leaderworkerset.x-k8s.io",
        "scaledobjects.keda.sh",
        "triggerauthentications.keda.sh",
        "clustertriggerauthentications.keda.sh",
        "interceptorroutes.http.keda.sh",
    } <= names


def test_playground_roundtrip_and_scale_subresource(kube, namespace):
    ns = namespace()
    co = client.CustomObjectsApi(kube)
    name = _name("pg")
    co.create_namespaced_custom_object(*LLMAZ, ns, "playgrounds", _playground(name))

    got = co.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", name)
    assert got["spec"]["modelClaim"]["modelName"] == "m"
    assert got["spec"]["replicas"] == 1  # CRD default

    scale = co.get_namespaced_custom_object_scale(*LLMAZ, ns, "playgrounds", name)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 1

    co.patch_namespaced_custom_object_scale(*LLMAZ, ns, "playgrounds", name, {"spec": {"replicas": 0}})
    # A Scale of 0 replicas omits spec.replicas (omitempty): read it with a default.
    assert co.get_namespaced_custom_object_scale(*LLMAZ, ns, "playgrounds", name)["spec"].get("replicas", 0) == 0
    assert co.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", name)["spec"]["replicas"] == 0


def test_scaled_object_targeting_playground_accepted_dry_run(kube, namespace):
    ns = namespace()
    co = client.CustomObjectsApi(kube)
    so = _scaled_object(_name("so"), "pg")
    out = co.create_namespaced_custom_object(*KEDA, ns, "scaledobjects", so, dry_run="All")
    assert out["spec"]["scaleTargetRef"]["kind"] == "Playground"
    # dryRun: nothing persisted
    with pytest.raises(ApiException) as e:
        co.get_namespaced_custom_object(*KEDA, ns, "scaledobjects", so["metadata"]["name"])
    assert e.value.status == 404


def test_scaled_object_cel_rule_rejects_min_above_max(kube, namespace):
    ns = namespace()
    co = client.CustomObjectsApi(kube)
    bad = _scaled_object(_name("so"), "pg", min_replicas=5, max_replicas=2)
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*KEDA, ns, "scaledobjects", bad, dry_run="All")
    assert e.value.status == 422
    assert "minReplicaCount must be less than or equal to maxReplicaCount" in e.value.body


def test_interceptor_route_accepted(kube, namespace):
    ns = namespace()
    co = client.CustomObjectsApi(kube)
    ir = {
        "apiVersion": "http.keda.sh/v1beta1",
        "kind": "InterceptorRoute",
        "metadata": {"name": _name("ir")},
        "spec": {
            "target": {"service": "x-lb", "port": 8080},
            "scalingMetric": {"concurrency": {"targetValue": 10}},
        },
    }
    out = co.create_namespaced_custom_object(*HTTP, ns, "interceptorroutes", ir, dry_run="All")
    assert out["spec"]["target"] == {"service": "x-lb", "port": 8080}

    # The CRD's own CEL rule (port xor portName) is enforced as well.
    ir["spec"]["target"] = {"service": "x-lb"}
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(*HTTP, ns, "interceptorroutes", ir, dry_run="All")
    assert e.value.status == 422
    assert "exactly one of 'port' or 'portName' must be set" in e.value.body


def test_garbage_collector_deletes_dependents_of_playground(kube, namespace):
    ns = namespace()
    co = client.CustomObjectsApi(kube)
    core = client.CoreV1Api(kube)
    pg = co.create_namespaced_custom_object(*LLMAZ, ns, "playgrounds", _playground(_name("pg")))
    owner = client.V1OwnerReference(
        api_version="inference.llmaz.io/v1alpha1", kind="Playground",
        name=pg["metadata"]["name"], uid=pg["metadata"]["uid"],
    )
    cm_name = _name("cm")
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=cm_name, owner_references=[owner]), data={"k": "v"}))

    co.delete_namespaced_custom_object(*LLMAZ, ns, "playgrounds", pg["metadata"]["name"],
                                       propagation_policy="Background")
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_config_map(cm_name, ns)
        except ApiException as e:
            assert e.status == 404
            break
        assert time.monotonic() < deadline, "garbage collector did not delete the owned ConfigMap in 30s"
        time.sleep(0.2)


def test_service_account_token_and_rbac_enforced(control_plane, kube, namespace):
    """The controller manager runs the serviceaccount controllers, and RBAC (not AlwaysAllow) is the
    authorizer: an impersonated ServiceAccount without bindings is forbidden."""
    ns = namespace()
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="sa")))
    token = core.create_namespaced_service_account_token(
        "sa", ns, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])))
    assert token.status.token

    sa_client = control_plane.api_client(impersonate=f"system:serviceaccount:{ns}:sa")
    try:
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(sa_client).list_namespaced_config_map(ns)
        assert e.value.status == 403
        rbac = client.RbacAuthorizationV1Api(kube)
        rbac.create_namespaced_role(ns, client.V1Role(
            metadata=client.V1ObjectMeta(name="cm-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])]))
        rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="cm-reader"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="sa", namespace=ns)]))
        deadline = time.monotonic() + 10
        while True:
            try:
                client.CoreV1Api(sa_client).list_namespaced_config_map(ns)
                break
            except ApiException as e:
                assert e.status == 403 and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        sa_client.close()


def test_apiserver_restart_keeps_data(control_plane, kube, namespace):
    ns = namespace()
    co = client.CustomObjectsApi(kube)
    core = client.CoreV1Api(kube)
    pg = _name("pg")
    co.create_namespaced_custom_object(*LLMAZ, ns, "playgrounds", _playground(pg))
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="keep"), data={"k": "v"}))

    control_plane.restart_apiserver()

    assert core.read_namespaced_config_map("keep", ns).data == {"k": "v"}
    assert co.get_namespaced_custom_object(*LLMAZ, ns, "playgrounds", pg)["spec"]["modelClaim"]["modelName"] == "m"
    # The restarted apiserver still serves the CRDs and their subresources.
    assert co.get_namespaced_custom_object_scale(*LLMAZ, ns, "playgrounds", pg)["spec"]["replicas"] == 1
