"""The deployment artefacts against a real kube-apiserver (v1.34, RBAC enforced).

1. ``helm template`` of the chart (default values, ``certManager.enabled=true``,
   ``webhook.failurePolicy=Fail``): every object is accepted by a server-side-apply dry run in the
   release namespace (schema, defaulting, admission, Pod Security "restricted" warnings). Only the
   cert-manager kinds, which have no CRD in the test cluster, are skipped, and the test asserts
   exactly which ones were.
2. The committed ``deploy/manifests/llmaz-serverless.yaml`` is applied for real, so the chart's
   RBAC exists. Impersonating the webhook's ServiceAccount, the self-managed ``CertManager`` creates the
   CA Secret, injects the bundle into both webhook configurations, rotates the CA, and is ready; the
   same operations are refused (403) for a ServiceAccount without the bindings, and for the webhook's
   ServiceAccount on objects outside the names it was granted.
3. The reconciler runs impersonating the controller's ServiceAccount with leader election: a Playground
   in an opted-in namespace gets its ScaledObject and InterceptorRoute, an Event and a Lease, and not a
   single request of the controller was refused (a 401/403 fails the test).

What each component's ServiceAccount may and may not do, call by call: test_deploy_rbac.py.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as _dt
import http.client
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from certs import authority
from certs.manager import CA_BUNDLE_KEY, CA_CERT_KEY, CA_KEY_KEY, CertManager, KubernetesAPI, ManagerConfig
from certs.reload import ReloadingSSLContext
from webhook import constants as C
from webhook.admission import Brain
from webhook.kube import (EVENTS, HPAS, INTERCEPTORROUTES, LEASES, PLAYGROUNDS, SCALEDOBJECTS, ApiError, Kube,
                          KubeConfig, NotFound)
from webhook.controller.reconciler import Controller, run_controller
from tests.integration.test_reconciler import wait_for as poll

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "llmaz-serverless"
MANIFEST = ROOT / "deploy" / "manifests" / "llmaz-serverless.yaml"
CACHE = Path(os.environ.get("LLMAZ_SERVERLESS_CACHE", Path.home() / ".cache" / "llmaz-serverless"))

RELEASE = "llmaz-serverless"
NS = "llmaz-serverless-system"
SA_NAME = "llmaz-serverless"                      # the webhook pods (serve --role admission)
SA_USER = f"system:serviceaccount:{NS}:{SA_NAME}"
CONTROLLER_SA_NAME = "llmaz-serverless-controller"  # the reconciler pods (serve --role controller)
CONTROLLER_SA_USER = f"system:serviceaccount:{NS}:{CONTROLLER_SA_NAME}"
SA_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated")
WEBHOOK_CONFIG = "llmaz-serverless"
CA_SECRET = "llmaz-serverless-ca"
POLICY_CONFIGMAP = "llmaz-serverless-policy"
LEASE = "llmaz-serverless-leader"
SERVICE = "llmaz-serverless-webhook"
FIELD_MANAGER = "test"
APPLY = "application/apply-patch+yaml"

# Kinds whose API group is not served by the test cluster (no cert-manager CRDs): skipped by name.
CERT_MANAGER_GROUP = "cert-manager.io"

VALUE_SETS = {
    "defaults": [],
    "cert-manager": ["--set", "certManager.enabled=true"],
    "failurePolicy-Fail": ["--set", "webhook.failurePolicy=Fail"],
}
# What must be skipped per value set (kind, name), and nothing else.
EXPECTED_SKIPPED = {
    "defaults": [],
    "cert-manager": sorted([
        ("Certificate", "llmaz-serverless-root-ca"),
        ("Certificate", "llmaz-serverless-webhook"),
        ("Issuer", "llmaz-serverless-ca"),
        ("Issuer", "llmaz-serverless-selfsigned"),
    ]),
    "failurePolicy-Fail": [],
}


# ============================================================================================ helpers


class Api:
    """Raw JSON requests to the API server as the admin, optionally impersonating; returns
    ``(status, body, warnings)`` so the ``Warning`` headers (Pod Security, deprecations) are visible."""

    def __init__(self, control_plane) -> None:
        self.cp = control_plane
        self._ctx = control_plane.ssl_context()

    def __call__(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                 impersonate: str | None = None, groups: Sequence[str] = (),
                 timeout: float = 30.0) -> tuple[int, Any, list[str]]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.cp.apiserver_port, context=self._ctx, timeout=timeout)
        try:
            conn.putrequest(method, path)
            conn.putheader("Accept", "application/json")
            if impersonate:
                conn.putheader("Impersonate-User", impersonate)
                for g in groups:  # repeated header: one group per line
                    conn.putheader("Impersonate-Group", g)
            data = b""
            if body is not None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                conn.putheader("Content-Type", content_type)
            conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            resp = conn.getresponse()
            raw = resp.read()
            warnings = [v for k, v in resp.getheaders() if k.lower() == "warning"]
            try:
                decoded = json.loads(raw) if raw else None
            except ValueError:
                decoded = raw.decode("utf-8", "replace")
            return resp.status, decoded, warnings
        finally:
            conn.close()


class RestMapper:
    """apiVersion + kind -> (plural, namespaced), from the API server's discovery documents."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._cache: dict[str, dict[str, tuple[str, bool]] | None] = {}

    def group_version(self, api_version: str) -> dict[str, tuple[str, bool]] | None:
        """None when the group/version is not served at all."""
        if api_version not in self._cache:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            status, body, _ = self.api("GET", path)
            if status == 404:
                self._cache[api_version] = None
            else:
                assert status == 200, f"discovery {path}: HTTP {status} {body}"
                self._cache[api_version] = {
                    r["kind"]: (r["name"], bool(r["namespaced"]))
                    for r in body["resources"] if "/" not in r["name"]
                }
        return self._cache[api_version]

    def path(self, obj: dict[str, Any], namespace: str) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        resources = self.group_version(api_version)
        assert resources is not None, f"{api_version} is not served by the API server"
        assert kind in resources, f"{kind} is not a kind of {api_version}"
        plural, namespaced = resources[kind]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced:
            base += f"/namespaces/{namespace}"
        return f"{base}/{plural}/{obj['metadata']['name']}"

    def namespaced(self, obj: dict[str, Any]) -> bool:
        resources = self.group_version(obj["apiVersion"])
        assert resources is not None and obj["kind"] in resources
        return resources[obj["kind"]][1]


def helm_binary() -> str:
    path = os.environ.get("HELM") or str(CACHE / "bin" / "helm")
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm not found at {path}: run `bash tests/integration/tools/provide.sh helm` "
                    "(or point $HELM at a helm 3 binary)", pytrace=False)
    return path


def helm_template(*args: str) -> list[dict[str, Any]]:
    res = subprocess.run([helm_binary(), "template", RELEASE, str(CHART), "--namespace", NS, "--include-crds",
                          *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def manifest_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def server_side_apply(api: Api, mapper: RestMapper, obj: dict[str, Any], *, dry_run: bool,
                      namespace: str = NS) -> tuple[int, Any, list[str]]:
    obj = json.loads(json.dumps(obj))
    if mapper.namespaced(obj):
        have = obj["metadata"].get("namespace")
        assert have in (None, namespace), f"{obj['kind']}/{obj['metadata']['name']} targets namespace {have}"
        obj["metadata"]["namespace"] = namespace
    query = f"fieldManager={FIELD_MANAGER}" + ("&dryRun=All" if dry_run else "")
    # JSON is YAML: the body is sent as application/apply-patch+yaml.
    return api("PATCH", f"{mapper.path(obj, namespace)}?{query}", obj, content_type=APPLY)


def ensure_release_namespace(api: Api, mapper: RestMapper) -> None:
    """The Namespace exactly as the committed manifest declares it (Pod Security "restricted")."""
    ns_doc = next(d for d in manifest_docs() if d["kind"] == "Namespace")
    assert ns_doc["metadata"]["name"] == NS
    status, body, _ = server_side_apply(api, mapper, ns_doc, dry_run=False)
    assert status in (200, 201), body
    # A namespace deleted by an earlier test would still be terminating; nothing can be created then.
    assert (body.get("status") or {}).get("phase") != "Terminating", f"namespace {NS} is terminating"


def _obj_id(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.fixture(scope="module")
def api(control_plane) -> Api:
    return Api(control_plane)


@pytest.fixture(scope="module")
def mapper(api) -> RestMapper:
    return RestMapper(api)


@pytest.fixture(scope="module", autouse=True)
def no_leftover_webhook_configurations(api):
    """Start from a cluster without our webhook configurations (another module may have left its
    loopback variant, whose ``clientConfig.url`` would clash with the chart's ``service``)."""
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        status, body, _ = api("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/{WEBHOOK_CONFIG}")
        assert status in (200, 404), body


# ============================================================================ 1. chart dry-run apply


def test_pod_security_warnings_are_reported(api, mapper):
    """Self-check: a pod template that violates "restricted" yields a Warning on a dry run in the
    release namespace, so the absence of warnings below means something."""
    ensure_release_namespace(api, mapper)
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "psa-probe"},
           "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
               "metadata": {"labels": {"a": "b"}},
               "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}}}
    status, body, warnings = server_side_apply(api, mapper, bad, dry_run=True)
    assert status in (200, 201), body
    assert any("restricted" in w for w in warnings), warnings


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_chart_objects_pass_server_side_apply_dry_run(api, mapper, values):
    ensure_release_namespace(api, mapper)
    docs = helm_template(*VALUE_SETS[values])
    applied, skipped = [], []
    for doc in docs:
        if doc["apiVersion"].split("/")[0] == CERT_MANAGER_GROUP:
            # Only this group may be skipped, and only because the test cluster does not serve it.
            assert mapper.group_version(doc["apiVersion"]) is None
            skipped.append(_obj_id(doc))
            continue
        status, body, warnings = server_side_apply(api, mapper, doc, dry_run=True)
        assert status in (200, 201), f"{_obj_id(doc)}: HTTP {status}: {body}"
        assert not warnings, f"{_obj_id(doc)}: warnings {warnings}"
        assert _obj_id(body) == _obj_id(doc)
        applied.append(body)
    assert sorted(skipped) == EXPECTED_SKIPPED[values]
    kinds = collections.Counter(o["kind"] for o in applied)
    assert kinds == collections.Counter({
        "ServiceAccount": 2, "ConfigMap": 1, "ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 2,
        "RoleBinding": 2, "Service": 1, "Deployment": 2, "PodDisruptionBudget": 1, "NetworkPolicy": 2,
        "MutatingWebhookConfiguration": 1, "ValidatingWebhookConfiguration": 1,
    }), kinds
    # Namespaced objects landed in the release namespace, and the values reached the server's view.
    for o in applied:
        if mapper.namespaced(o):
            assert o["metadata"]["namespace"] == NS
    hooks = [h for o in applied if o["kind"].endswith("WebhookConfiguration") for h in o["webhooks"]]
    assert len(hooks) == 3
    want = "Fail" if values == "failurePolicy-Fail" else "Ignore"
    # the pod hook of the drain never holds up a pod, whatever the chart's failurePolicy
    assert {h["failurePolicy"] for h in hooks if h["name"] != "mutate-pods.serverless.llmaz.io"} == {want}
    assert [h["failurePolicy"] for h in hooks if h["name"] == "mutate-pods.serverless.llmaz.io"] == ["Ignore"]
    for o in applied:
        if o["kind"].endswith("WebhookConfiguration"):
            ann = o["metadata"].get("annotations") or {}
            assert ("cert-manager.io/inject-ca-from" in ann) == (values == "cert-manager")


# ==================================================================== 2. committed manifest, for real


def _delete(api: Api, mapper: RestMapper, obj: dict[str, Any]) -> None:
    status, body, _ = api("DELETE", mapper.path(obj, NS), {"propagationPolicy": "Background"})
    assert status in (200, 202, 404), f"deleting {_obj_id(obj)}: HTTP {status}: {body}"


@pytest.fixture(scope="module")
def installed(api, mapper, control_plane):
    """The committed manifest applied for real (server-side apply). At teardown every object but the
    Namespace is deleted again (other modules use the namespace; deleting it is asynchronous)."""
    docs = manifest_docs()
    assert docs[0]["kind"] == "Namespace"
    ensure_release_namespace(api, mapper)
    created: list[dict[str, Any]] = []
    extra = [  # created by the tests below
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CA_SECRET}},
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE}},
    ]
    try:
        for doc in docs[1:]:
            status, body, warnings = server_side_apply(api, mapper, doc, dry_run=False)
            assert status in (200, 201), f"{_obj_id(doc)}: HTTP {status}: {body}"
            assert not warnings, f"{_obj_id(doc)}: {warnings}"
            created.append(doc)
        yield docs
    finally:
        for doc in reversed(created + extra):
            _delete(api, mapper, doc)


def test_manifest_pods_are_admitted_under_restricted_pod_security(installed, api):
    """Each Deployment's ReplicaSet creates its pods (no kubelet runs them): the pod spec passes the
    "restricted" Pod Security enforcement of the release namespace and the ServiceAccount admission, and
    the pods run as their component's own ServiceAccount."""
    deployments = [d for d in installed if d["kind"] == "Deployment"]
    want_sa = {RELEASE: SA_NAME, "llmaz-serverless-controller": CONTROLLER_SA_NAME}
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(want_sa)
    for deploy in deployments:
        want = deploy["spec"]["replicas"]
        selector = ",".join(f"{k}={v}" for k, v in deploy["spec"]["selector"]["matchLabels"].items())
        deadline = time.monotonic() + 30
        while True:
            status, body, _ = api("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")
            assert status == 200, body
            pods = body["items"]
            if len(pods) >= want:
                break
            if time.monotonic() > deadline:
                _, rs, _ = api("GET", f"/apis/apps/v1/namespaces/{NS}/replicasets?labelSelector={selector}")
                _, events, _ = api("GET", f"/api/v1/namespaces/{NS}/events")
                msgs = [f"{e['reason']}: {e['message']}" for e in events["items"]]
                pytest.fail(f"{deploy['metadata']['name']}: {len(pods)}/{want} pods created; replicasets: "
                            f"{[r.get('status') for r in rs['items']]}; events: {msgs}")
            time.sleep(0.2)
        for pod in pods:
            assert pod["spec"]["serviceAccountName"] == want_sa[deploy["metadata"]["name"]]


def test_impersonation_yields_the_service_account_identity(installed, api):
    """Impersonating the ServiceAccount user (and its groups) is exactly the identity of the pod."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    for groups in ((), SA_GROUPS):
        status, body, _ = api("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review,
                              impersonate=SA_USER, groups=groups)
        assert status == 201, body
        info = body["status"]["userInfo"]
        assert info["username"] == SA_USER
        assert sorted(info["groups"]) == sorted(SA_GROUPS)


def sa_api_client(control_plane, user: str = SA_USER):
    """An official-client ApiClient impersonating ``user``. Only one Impersonate-Group header fits
    the official client, so none is sent: for a ServiceAccount user the API server adds exactly the
    ServiceAccount groups and system:authenticated (see the SelfSubjectReview test)."""
    return control_plane.api_client(impersonate=user)


def _webhook_bundles(kube) -> dict[str, list[str]]:
    adm = client.AdmissionregistrationV1Api(kube)
    out = {}
    for kind, read in (("mutating", adm.read_mutating_webhook_configuration),
                       ("validating", adm.read_validating_webhook_configuration)):
        raw = json.loads(read(WEBHOOK_CONFIG, _preload_content=False).data)
        out[kind] = [(w.get("clientConfig") or {}).get("caBundle") or "" for w in raw["webhooks"]]
        out[kind + "_rv"] = raw["metadata"]["resourceVersion"]
    return out


def _read_secret(kube) -> tuple[str, dict[str, bytes], dict[str, str]]:
    raw = json.loads(client.CoreV1Api(kube).read_namespaced_secret(CA_SECRET, NS, _preload_content=False).data)
    data = {k: base64.b64decode(v) for k, v in raw["data"].items()}
    return raw["metadata"]["resourceVersion"], data, raw["metadata"].get("labels") or {}


def _delete_ca_secret(kube) -> None:
    try:
        client.CoreV1Api(kube).delete_namespaced_secret(CA_SECRET, NS)
    except ApiException as e:
        if e.status != 404:
            raise


async def test_cert_manager_with_the_chart_rbac(installed, control_plane, kube, tmp_path):
    _delete_ca_secret(kube)
    before = _webhook_bundles(kube)
    assert set(before["mutating"]) == {""} and set(before["validating"]) == {""}, "manifest must not carry a caBundle"

    cert_dir = tmp_path / "certs"
    reloader = ReloadingSSLContext(cert_dir / "tls.crt", cert_dir / "tls.key")
    sa = sa_api_client(control_plane)
    try:
        mgr = CertManager(ManagerConfig(namespace=NS, cert_dir=str(cert_dir)), KubernetesAPI(sa),
                          reloader=reloader)
        assert not mgr.ready
        delay = await mgr.reconcile_once()
        assert mgr.ready, mgr.last_error
        assert delay > 0

        # The Secret: created by the ServiceAccount, labelled, a usable CA and a bundle.
        rv, data, labels = _read_secret(kube)
        assert set(data) == {CA_CERT_KEY, CA_KEY_KEY, CA_BUNDLE_KEY}
        assert labels.get("app.kubernetes.io/managed-by") == "llmaz-serverless"
        assert authority.is_ca(data[CA_CERT_KEY]) and authority.key_matches(data[CA_CERT_KEY], data[CA_KEY_KEY])
        # Injected into every webhook of both configurations.
        want = base64.b64encode(data[CA_BUNDLE_KEY]).decode()
        after = _webhook_bundles(kube)
        assert set(after["mutating"]) == {want} and set(after["validating"]) == {want}   # every hook
        # The serving cert on disk is loaded and verifies for the Service's DNS name against the bundle.
        leaf = (cert_dir / "tls.crt").read_bytes()
        assert reloader.loaded and reloader.fingerprint == authority.fingerprint(leaf)
        authority.verify_server_cert(leaf, data[CA_BUNDLE_KEY], f"{SERVICE}.{NS}.svc")

        # Steady state: a second round writes nothing.
        await mgr.reconcile_once()
        assert _read_secret(kube)[0] == rv
        again = _webhook_bundles(kube)
        assert (again["mutating_rv"], again["validating_rv"]) == (after["mutating_rv"], after["validating_rv"])

        # CA rotation (clock 250 days ahead: less than a third of the CA's life left) is also within
        # the granted verbs: update of the named Secret, patch of the named configurations.
        later = authority.utcnow() + _dt.timedelta(days=250)
        rotating = CertManager(ManagerConfig(namespace=NS, cert_dir=str(cert_dir)), KubernetesAPI(sa),
                               reloader=reloader, clock=lambda: later)
        await rotating.reconcile_once()
        assert rotating.ready, rotating.last_error
        rv2, data2, _ = _read_secret(kube)
        assert rv2 != rv and data2[CA_CERT_KEY] != data[CA_CERT_KEY]
        bundle = authority.load_certs(data2[CA_BUNDLE_KEY])
        assert len(bundle) == 2, "old CA must stay trusted during the rotation"
        rotated = _webhook_bundles(kube)
        want2 = base64.b64encode(data2[CA_BUNDLE_KEY]).decode()
        assert set(rotated["mutating"]) == {want2} and set(rotated["validating"]) == {want2}
    finally:
        sa.close()


def _forbidden(exc_info) -> bool:
    return getattr(exc_info.value, "status", None) == 403


async def test_cert_manager_without_the_bindings_is_refused(installed, control_plane, kube, tmp_path):
    """The same operations fail (403) for a ServiceAccount that lacks the chart's bindings, and for the
    chart's ServiceAccount outside the objects it was granted (resourceNames, namespace)."""
    core = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    adm = client.AdmissionregistrationV1Api(kube)
    intruder = f"intruder-{uuid.uuid4().hex[:6]}"
    partial = f"cluster-only-{uuid.uuid4().hex[:6]}"
    for name in (intruder, partial):
        core.create_namespaced_service_account(NS, {"metadata": {"name": name}})
    # `partial` gets the chart's ClusterRole but not its namespaced Role (no Secret permissions).
    rbac.create_cluster_role_binding({
        "metadata": {"name": partial},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE},
        "subjects": [{"kind": "ServiceAccount", "name": partial, "namespace": NS}]})
    other_hook = f"other-{uuid.uuid4().hex[:6]}"
    adm.create_mutating_webhook_configuration({"metadata": {"name": other_hook}, "webhooks": []})
    core.create_namespaced_secret(NS, {"metadata": {"name": "not-ours"}, "stringData": {"k": "v"}})
    clients = []
    try:
        _delete_ca_secret(kube)
        # 1. No bindings at all: the very first call (read the CA Secret) is refused.
        c = sa_api_client(control_plane, f"system:serviceaccount:{NS}:{intruder}")
        clients.append(c)
        mgr = CertManager(ManagerConfig(namespace=NS, cert_dir=str(tmp_path / "a")), KubernetesAPI(c))
        with pytest.raises(ApiException) as exc:
            await mgr.reconcile_once()
        assert _forbidden(exc), exc.value
        assert not mgr.ready
        # ... and so is the injection, even with a CA at hand.
        with pytest.raises(ApiException) as exc:
            KubernetesAPI(c).patch_ca_bundles("mutating", WEBHOOK_CONFIG, "", {"mutate.serverless.llmaz.io": "eA=="})
        assert _forbidden(exc)

        # 2. ClusterRole without the Role: the Secret is out of reach, nothing gets created.
        c = sa_api_client(control_plane, f"system:serviceaccount:{NS}:{partial}")
        clients.append(c)
        mgr = CertManager(ManagerConfig(namespace=NS, cert_dir=str(tmp_path / "b")), KubernetesAPI(c))
        with pytest.raises(ApiException) as exc:
            await mgr.reconcile_once()
        assert _forbidden(exc), exc.value
        with pytest.raises(ApiException) as exc:
            core.read_namespaced_secret(CA_SECRET, NS)
        assert exc.value.status == 404, "a refused ServiceAccount must not have created the Secret"

        # 3. The chart's ServiceAccount itself, outside its grants.
        c = sa_api_client(control_plane)
        clients.append(c)
        sa_core, sa_adm = client.CoreV1Api(c), client.AdmissionregistrationV1Api(c)
        with pytest.raises(ApiException) as exc:
            sa_core.read_namespaced_secret("not-ours", NS)              # resourceNames: only the CA Secret
        assert _forbidden(exc)
        with pytest.raises(ApiException) as exc:
            sa_core.read_namespaced_secret(CA_SECRET, "default")        # the Role is namespaced
        assert _forbidden(exc)
        with pytest.raises(ApiException) as exc:
            sa_adm.patch_mutating_webhook_configuration(other_hook, {"metadata": {"labels": {"x": "y"}}})
        assert _forbidden(exc)
        with pytest.raises(ApiException) as exc:
            sa_core.list_namespaced_secret(NS)                           # no list/watch of Secrets
        assert _forbidden(exc)
    finally:
        for c in clients:
            c.close()
        rbac.delete_cluster_role_binding(partial)
        adm.delete_mutating_webhook_configuration(other_hook)
        core.delete_namespaced_secret("not-ours", NS)
        for name in (intruder, partial):
            core.delete_namespaced_service_account(name, NS)


# ======================================================================== 3. reconciler, chart RBAC

OPT_IN = {C.NAMESPACE_LABEL: "true"}


class RecordingKube(Kube):
    """The reconciler's client, impersonating a chart's ServiceAccount, that remembers every refused
    request. The controller retries a 403 (informers) or logs it (events), so only this record makes
    a missing permission fail the test."""

    def __init__(self, config: KubeConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.denied: list[str] = []

    def _record(self, method: str, path: str, params: Any, exc: ApiError) -> None:
        if exc.status in (401, 403):
            self.denied.append(f"{method} {path} {params or ''}: {exc.status} {exc.message}")

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            return await super().request(method, path, **kw)
        except ApiError as exc:
            self._record(method, path, kw.get("params"), exc)
            raise

    async def watch(self, res, namespace=None, **kw: Any):
        try:
            async for event in super().watch(res, namespace, **kw):
                yield event
        except ApiError as exc:
            self._record("WATCH", self.path(res, namespace), {k: v for k, v in kw.items() if v}, exc)
            raise


def gpu_playground(name: str, replicas: int = 0, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground", "metadata": {"name": name},
            "spec": {"replicas": replicas, "modelClaim": {"modelName": "m"},
                     "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}, **spec}}


async def wait_for(probe, what: str, timeout: float = 20.0, interval: float = 0.05,
                   running: "ChartController | None" = None) -> Any:
    """``test_reconciler.wait_for``, and with ``running``: fail at once when the controller was refused a
    request (a missing permission would otherwise only show up as a timeout)."""
    async def checked() -> Any:
        if running is not None:
            running.assert_nothing_denied()
        return await probe()

    return await poll(checked, timeout=timeout, interval=interval, what=what)


async def get_or_none(kube: Kube, res, name: str, ns: str | None) -> dict[str, Any] | None:
    try:
        return await kube.get(res, name, ns)
    except NotFound:
        return None


async def events_for(kube: Kube, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = (await kube.list(EVENTS, ns, field_selector=f"involvedObject.name={name}")).items
    return [e for e in items if e.get("reason") == reason]


class ChartController:
    """``run_controller`` as the chart deploys it: the controller's ServiceAccount, the release namespace
    (Lease, policy ConfigMap), leader election on."""

    def __init__(self, control_plane, identity: str) -> None:
        config = KubeConfig.from_kubeconfig(control_plane.kubeconfig)
        self.kube = RecordingKube(config, impersonate_user=CONTROLLER_SA_USER, impersonate_groups=SA_GROUPS)
        self.identity = identity
        self.stop = asyncio.Event()
        self.brain = Brain()
        self.ctl = Controller(self.kube, self.brain, namespace=NS, policy_configmap=POLICY_CONFIGMAP,
                              identity=identity, resync=300)
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "ChartController":
        self.task = asyncio.create_task(run_controller(
            self.kube, self.brain, namespace=NS, policy_configmap=POLICY_CONFIGMAP, leader_election=True,
            identity=self.identity, stop=self.stop, resync=300, controller=self.ctl))
        await asyncio.wait_for(self.ctl.synced.wait(), 30)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop.set()
        try:
            assert self.task is not None
            await asyncio.wait_for(self.task, 20)
        finally:
            await self.kube.close()

    async def wait(self, probe, what: str, timeout: float = 20.0) -> Any:
        return await wait_for(probe, what, timeout, running=self)

    def assert_nothing_denied(self) -> None:
        assert not self.kube.denied, (
            "the chart's RBAC refused requests of the reconciler:\n  " + "\n  ".join(self.kube.denied))


@pytest.fixture
async def admin(control_plane):
    k = Kube.from_kubeconfig(control_plane.kubeconfig)
    yield k
    await k.close()


async def test_reconciler_with_exactly_the_chart_rbac(installed, control_plane, admin, namespace):
    ns = namespace(labels=OPT_IN, prefix="opted-in")
    identity = f"llmaz-serverless-test-{uuid.uuid4().hex[:6]}"
    async with ChartController(control_plane, identity) as running:
        async def held():
            lease = await get_or_none(admin, LEASES, LEASE, NS)
            return lease if lease and lease["spec"].get("holderIdentity") == identity else None
        await running.wait(held, "the Lease held by this replica")

        t0 = time.perf_counter()
        pg = await admin.create(PLAYGROUNDS, gpu_playground("chat"), ns)
        created_in = time.perf_counter() - t0
        so = await running.wait(lambda: get_or_none(admin, SCALEDOBJECTS, C.scaled_object_name("chat"), ns),
                            "the ScaledObject")
        ir = await running.wait(lambda: get_or_none(admin, INTERCEPTORROUTES, C.interceptor_route_name("chat"), ns),
                            "the InterceptorRoute")
        for obj in (so, ir):
            owner = obj["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"], owner["uid"]) == ("Playground", "chat", pg["metadata"]["uid"])
            assert obj["metadata"]["labels"][C.LABEL_MANAGED_BY] == C.MANAGED_BY
        ev = await running.wait(lambda: events_for(admin, ns, "chat", "Attached"), "the Attached Event")
        assert ev[0]["involvedObject"]["uid"] == pg["metadata"]["uid"]
        # The shipped webhook configurations are installed but nothing serves them (failurePolicy
        # Ignore): the create must not stall on them.
        assert created_in < 3.0, f"Playground create took {created_in:.1f}s"

        # Opt-out while at zero: the workload is patched back to >= 1 replica ("never stranded at
        # zero") and our KEDA objects are deleted, all with the chart's permissions.
        await admin.patch(PLAYGROUNDS, "chat", {"metadata": {"annotations": {C.ANN_ENABLED: "false"}}}, ns)
        live = await running.wait(lambda: _replicas_at_least(admin, ns, "chat", 1), "replicas restored")
        assert live["spec"]["replicas"] >= 1
        await running.wait(lambda: _absent(admin, SCALEDOBJECTS, C.scaled_object_name("chat"), ns),
                       "the ScaledObject deleted")
        await running.wait(lambda: _absent(admin, INTERCEPTORROUTES, C.interceptor_route_name("chat"), ns),
                       "the InterceptorRoute deleted")
        await running.wait(lambda: events_for(admin, ns, "chat", "Removed"), "the Removed Event")
        running.assert_nothing_denied()
    # A graceful stop releases the Lease.
    lease = await admin.get(LEASES, LEASE, NS)
    assert not lease["spec"].get("holderIdentity")
    running.assert_nothing_denied()


async def _replicas_at_least(kube: Kube, ns: str, name: str, n: int):
    obj = await kube.get(PLAYGROUNDS, name, ns)
    return obj if (obj["spec"].get("replicas") or 0) >= n else None


async def _absent(kube: Kube, res, name: str, ns: str) -> bool:
    return await get_or_none(kube, res, name, ns) is None


async def test_reconciler_replaces_the_llmaz_hpa_with_the_chart_rbac(installed, control_plane, admin, namespace):
    """A Playground created before the webhook, with ``elasticConfig`` and the HPA llmaz made for it:
    the reconciler converts elasticConfig (JSON patch of the Playground) and deletes llmaz's HPA before
    attaching KEDA. Deleting that HPA needs ``delete`` on horizontalpodautoscalers."""
    ns = namespace(labels=OPT_IN, prefix="opted-in")
    pg = await admin.create(PLAYGROUNDS, gpu_playground("legacy", replicas=1,
                                                        elasticConfig={"minReplicas": 1, "maxReplicas": 3}), ns)
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "legacy", "ownerReferences": [{
               "apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground", "name": "legacy",
               "uid": pg["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
           "spec": {"scaleTargetRef": {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                                       "name": "legacy"},
                    "minReplicas": 1, "maxReplicas": 3,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                        "type": "Utilization", "averageUtilization": 80}}}]}}
    await admin.create(HPAS, hpa, ns)
    async with ChartController(control_plane, f"llmaz-serverless-test-{uuid.uuid4().hex[:6]}") as running:
        so = await running.wait(lambda: get_or_none(admin, SCALEDOBJECTS, C.scaled_object_name("legacy"), ns),
                            "the ScaledObject", timeout=15)
        assert so["spec"]["maxReplicaCount"] == 3
        await running.wait(lambda: _absent(admin, HPAS, "legacy", ns), "llmaz's HPA deleted", timeout=10)
        live = await admin.get(PLAYGROUNDS, "legacy", ns)
        assert "elasticConfig" not in live["spec"]
        await running.wait(lambda: events_for(admin, ns, "legacy", "HPAReplaced"), "the HPAReplaced Event")
        running.assert_nothing_denied()


async def test_reconciler_rbac_where_owner_references_are_enforced(tmp_path_factory, request):
    """Clusters with the OwnerReferencesPermissionEnforcement admission plugin (OpenShift enables it)
    only let a client set ``blockOwnerDeletion`` on an ownerReference when it may ``update`` the
    owner's ``finalizers`` subresource. The KEDA objects point at their Playground that way, so the
    chart must grant it. A second, short-lived control plane with that plugin checks it."""
    from .controlplane import ControlPlane, ControlPlaneError, crd_paths

    workdir = tmp_path_factory.mktemp("cp-ownerrefs")
    cp = ControlPlane(workdir, with_controller_manager=False, crds=crd_paths(("llmaz", "keda", "http-add-on")),
                      extra_apiserver_args=["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"])
    try:
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(f"second control plane: {e} (logs {cp.logs_dir})", pytrace=False)
    try:
        api2 = Api(cp)
        mapper2 = RestMapper(api2)
        ensure_release_namespace(api2, mapper2)
        for doc in manifest_docs()[1:]:
            status, body, _ = server_side_apply(api2, mapper2, doc, dry_run=False)
            assert status in (200, 201), f"{_obj_id(doc)}: HTTP {status}: {body}"
        ns = f"opted-in-{uuid.uuid4().hex[:6]}"
        status, body, _ = api2("POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": OPT_IN}})
        assert status == 201, body
        admin2 = Kube.from_kubeconfig(cp.kubeconfig)
        try:
            pg = await admin2.create(PLAYGROUNDS, gpu_playground("chat"), ns)
            async with ChartController(cp, f"llmaz-serverless-test-{uuid.uuid4().hex[:6]}") as running:
                so = await running.wait(
                    lambda: get_or_none(admin2, SCALEDOBJECTS, C.scaled_object_name("chat"), ns), "the ScaledObject")
                assert so["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
                assert so["metadata"]["ownerReferences"][0]["uid"] == pg["metadata"]["uid"]
                await running.wait(
                    lambda: get_or_none(admin2, INTERCEPTORROUTES, C.interceptor_route_name("chat"), ns),
                    "the InterceptorRoute")
                running.assert_nothing_denied()
        finally:
            await admin2.close()
    finally:
        cp.stop()
