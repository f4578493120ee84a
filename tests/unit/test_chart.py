"""The Helm chart: lint, rendering, webhook safety, RBAC least privilege, pod security, drift.

Needs the pinned helm from ``bash tests/integration/tools/provide.sh helm`` (or ``$HELM``); the
tests fail, not skip, without it. They carry the ``integration`` mark so they run with the group
that provides the tools.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "llmaz-serverless"
MANIFEST = REPO / "deploy" / "manifests" / "llmaz-serverless.yaml"
RENDER = REPO / "deploy" / "render.sh"
NS = "llmaz-serverless-system"
CACHE = Path(os.environ.get("LLMAZ_SERVERLESS_CACHE", Path.home() / ".cache" / "llmaz-serverless"))


@pytest.fixture(scope="module")
def helm() -> str:
    path = os.environ.get("HELM") or str(CACHE / "bin" / "helm")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"helm not found at {path}: run `bash tests/integration/tools/provide.sh helm` "
            "(or point $HELM at a helm 3 binary)",
            pytrace=False,
        )
    return path


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def _template(helm: str, *args: str, namespace: str = NS) -> list[dict]:
    res = _run([helm, "template", "llmaz-serverless", str(CHART), "--namespace", namespace, *args])
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default_docs(helm) -> list[dict]:
    return _template(helm)


@pytest.fixture(scope="module")
def cm_docs(helm) -> list[dict]:
    return _template(helm, "--set", "certManager.enabled=true")


def test_helm_lint(helm):
    for extra in ([], ["--set", "certManager.enabled=true"], ["--set", "webhook.failurePolicy=Fail"]):
        res = _run([helm, "lint", "--strict", str(CHART), *extra])
        assert res.returncode == 0, res.stdout + res.stderr


def test_fixed_names(default_docs):
    names = {(d["kind"], d["metadata"]["name"]) for d in default_docs}
    for kind, name in [
        ("ServiceAccount", "llmaz-serverless"),
        ("Deployment", "llmaz-serverless"),
        ("Service", "llmaz-serverless-webhook"),
        ("MutatingWebhookConfiguration", "llmaz-serverless"),
        ("ValidatingWebhookConfiguration", "llmaz-serverless"),
        ("ConfigMap", "llmaz-serverless-policy"),
        ("ClusterRole", "llmaz-serverless"),
        ("ClusterRoleBinding", "llmaz-serverless"),
        ("Role", "llmaz-serverless"),
        ("RoleBinding", "llmaz-serverless"),
        ("ServiceAccount", "llmaz-serverless-controller"),
        ("ClusterRole", "llmaz-serverless-controller"),
        ("ClusterRoleBinding", "llmaz-serverless-controller"),
        ("Role", "llmaz-serverless-controller"),
        ("RoleBinding", "llmaz-serverless-controller"),
        ("PodDisruptionBudget", "llmaz-serverless"),
        ("Deployment", "llmaz-serverless-controller"),
        ("NetworkPolicy", "llmaz-serverless"),
        ("NetworkPolicy", "llmaz-serverless-controller"),
    ]:
        assert (kind, name) in names
    for d in default_docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            assert d["metadata"]["namespace"] == NS, d["kind"]
    # no Secret rendered in self-managed mode: the CA Secret is created at run time
    assert not [d for d in default_docs if d["kind"] == "Secret"]
    cm = _one(default_docs, "ConfigMap", "llmaz-serverless-policy")
    assert cm["data"] == {"policy.yaml": ""}


def _webhooks(docs):
    mutating = _one(docs, "MutatingWebhookConfiguration", "llmaz-serverless")
    validating = _one(docs, "ValidatingWebhookConfiguration", "llmaz-serverless")
    return mutating, validating


def test_webhook_configurations_are_safe(default_docs):
    mutating, validating = _webhooks(default_docs)
    for config, path in ((mutating, "/mutate"), (validating, "/validate")):
        assert len(config["webhooks"]) == (2 if path == "/mutate" else 1)
        hook = config["webhooks"][0]
        assert hook["clientConfig"]["service"] == {
            "name": "llmaz-serverless-webhook",
            "namespace": NS,
            "path": path,
            "port": 443,
        }
        assert "caBundle" not in hook["clientConfig"]  # injected at run time
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 10
        assert hook["timeoutSeconds"] == 5
        assert hook["failurePolicy"] == "Ignore"
        assert hook["matchPolicy"] == "Equivalent"
        assert "objectSelector" not in hook
        assert hook["rules"] == [
            {
                "apiGroups": ["inference.llmaz.io"],
                "apiVersions": ["v1alpha1"],
                "resources": ["playgrounds", "services"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]
        exprs = hook["namespaceSelector"]["matchExpressions"]
        assert "matchLabels" not in hook["namespaceSelector"]
        assert {"key": "serverless.llmaz.io/enabled", "operator": "In", "values": ["true"]} in exprs
        excl = [e for e in exprs if e["key"] == "kubernetes.io/metadata.name"]
        assert len(excl) == 1 and excl[0]["operator"] == "NotIn"
        assert {"kube-system", NS} <= set(excl[0]["values"])
    assert mutating["webhooks"][0]["reinvocationPolicy"] == "IfNeeded"
    assert "reinvocationPolicy" not in validating["webhooks"][0]
    assert "annotations" not in mutating["metadata"]
    # The pod hook (drain): pods made by LeaderWorkerSet only, CREATE only, never blocking a pod.
    pods = mutating["webhooks"][1]
    assert pods["name"] == "mutate-pods.serverless.llmaz.io"
    assert pods["clientConfig"]["service"]["path"] == "/mutate" and "caBundle" not in pods["clientConfig"]
    assert pods["failurePolicy"] == "Ignore" and pods["sideEffects"] == "None"
    assert pods["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "Namespaced"}]
    assert pods["objectSelector"] == {"matchExpressions": [
        {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}
    assert pods["namespaceSelector"] == mutating["webhooks"][0]["namespaceSelector"]


def test_webhook_values_are_honoured_and_checked(helm):
    docs = _template(
        helm,
        "--set", "webhook.failurePolicy=Fail",
        "--set", "webhook.timeoutSeconds=3",
        "--set", "webhook.excludedNamespaces={monitoring}",
        namespace="other-ns",
    )
    mutating, _ = _webhooks(docs)
    assert mutating["webhooks"][1]["failurePolicy"] == "Ignore", "a pod is never held up by the drain hook"
    assert mutating["webhooks"][1]["timeoutSeconds"] == 3
    for config in _webhooks(docs):
        hook = config["webhooks"][0]
        assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 3
        assert hook["clientConfig"]["service"]["namespace"] == "other-ns"
        excl = next(e for e in hook["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn")
        assert excl["values"] == ["kube-system", "other-ns", "monitoring"]
    for bad in ("webhook.failurePolicy=Maybe", "webhook.timeoutSeconds=31", "webhook.timeoutSeconds=0"):
        res = _run([helm, "template", "x", str(CHART), "--set", bad])
        assert res.returncode != 0, bad


WILDCARD = "*"
ADM = "admissionregistration.k8s.io"
LLMAZ = "inference.llmaz.io"
OWNED = {"get", "list", "watch", "create", "patch", "delete"}     # server-side apply and delete, never update

# What each rule set of templates/rbac.yaml grants, (apiGroup, resource) -> verbs: cluster-wide, and in the
# release namespace.
CACHES = ({("llmaz.io", "openmodels"): {"get", "list", "watch"}},
          {("", "configmaps"): {"get", "list", "watch"}})
CERTIFICATES = ({(ADM, "mutatingwebhookconfigurations"): {"get", "patch"},
                 (ADM, "validatingwebhookconfigurations"): {"get", "patch"}},
                {("", "secrets"): {"get", "create", "update"}})
RECONCILER = ({
    (LLMAZ, "playgrounds"): {"get", "list", "watch", "patch"},
    (LLMAZ, "services"): {"get", "list", "watch", "patch"},
    (LLMAZ, "playgrounds/finalizers"): {"update"},
    (LLMAZ, "services/finalizers"): {"update"},
    (LLMAZ, "playgrounds/scale"): {"get", "patch"},
    (LLMAZ, "services/scale"): {"get", "patch"},
    ("keda.sh", "scaledobjects"): OWNED,
    ("http.keda.sh", "interceptorroutes"): OWNED,
    ("", "namespaces"): {"get", "list", "watch"},
    ("", "events"): {"create"},
    ("autoscaling", "horizontalpodautoscalers"): {"list", "watch", "delete"},
}, {("coordination.k8s.io", "leases"): {"get", "create", "update"}})

WEBHOOK_SA, CONTROLLER_SA = "llmaz-serverless", "llmaz-serverless-controller"

# Per value set: ServiceAccount (= its ClusterRole, Role and bindings) -> the rule sets it holds.
RBAC_CASES = {
    "separate": ([], {WEBHOOK_SA: (CACHES, CERTIFICATES), CONTROLLER_SA: (CACHES, RECONCILER)}),
    "all": (["--set", "controller.separate=false"], {WEBHOOK_SA: (CACHES, CERTIFICATES, RECONCILER)}),
    "cert-manager": (["--set", "certManager.enabled=true"],
                     {WEBHOOK_SA: (CACHES,), CONTROLLER_SA: (CACHES, RECONCILER)}),
    "all-cert-manager": (["--set", "controller.separate=false", "--set", "certManager.enabled=true"],
                         {WEBHOOK_SA: (CACHES, RECONCILER)}),
}

# verbs that resourceNames can restrict (create cannot; list/watch only with a name fieldSelector)
NAMEABLE = {"get", "update", "patch", "delete"}


def _flatten(rules):
    out: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            for value in r.get(field, []):
                assert WILDCARD not in value, f"wildcard in {field}: {r}"
        assert "nonResourceURLs" not in r
        if r.get("resourceNames"):
            assert set(r["verbs"]) <= NAMEABLE, f"resourceNames cannot restrict {r['verbs']}"
        for g in r["apiGroups"]:
            for res in r["resources"]:
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def _merged(sets, scope):
    out: dict[tuple[str, str], set[str]] = {}
    for rule_set in sets:
        for key, verbs in rule_set[scope].items():
            out.setdefault(key, set()).update(verbs)
    return out


def _named(rules, group, resource, verb):
    return [r.get("resourceNames") for r in rules
            if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]]


@pytest.mark.parametrize("case", list(RBAC_CASES), ids=list(RBAC_CASES))
def test_rbac_least_privilege_per_component(helm, case):
    args, expected = RBAC_CASES[case]
    docs = _template(helm, *args)
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == kind) == sorted(expected), kind
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["serviceAccountName"]
                   for d in docs if d["kind"] == "Deployment"}
    assert deployments == {name: name for name in expected}   # each Deployment runs as its own ServiceAccount
    for sa, sets in expected.items():
        cluster, role = _one(docs, "ClusterRole", sa), _one(docs, "Role", sa)
        assert _flatten(cluster["rules"]) == _merged(sets, 0), sa
        assert _flatten(role["rules"]) == _merged(sets, 1), sa
        assert role["metadata"]["namespace"] == NS
        # Named objects only, where names can restrict.
        if CERTIFICATES in sets:
            for res in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
                for verb in ("get", "patch"):
                    assert _named(cluster["rules"], ADM, res, verb) == [["llmaz-serverless"]]
            for verb in ("get", "update"):
                assert _named(role["rules"], "", "secrets", verb) == [["llmaz-serverless-ca"]]
        if RECONCILER in sets:
            for verb in ("get", "update"):
                assert _named(role["rules"], "coordination.k8s.io", "leases", verb) == [["llmaz-serverless-leader"]]
        assert _named(role["rules"], "", "configmaps", "get") == [["llmaz-serverless-policy"]]
        for kind, ref_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
            binding = _one(docs, kind, sa)
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": sa}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]


def _can(docs, sa, verb, group, resource, *, namespace=NS, name=None) -> bool:
    """Whether the rendered RBAC lets ServiceAccount ``sa`` of the release namespace do ``verb`` on ``resource``
    in ``namespace`` (None: cluster-scoped), on the object ``name`` if given: RBAC's own matching, so a test
    states what a component may do rather than which rule says so."""
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": NS}
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    for b in docs:
        if not (b["kind"] == "ClusterRoleBinding"
                or (b["kind"] == "RoleBinding" and namespace is not None and b["metadata"]["namespace"] == namespace)):
            continue
        if subject not in b["subjects"]:
            continue
        ref = b["roleRef"]
        role = roles[(ref["kind"], b["metadata"].get("namespace") if ref["kind"] == "Role" else None, ref["name"])]
        for r in role["rules"]:
            if (group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                    and (not r.get("resourceNames") or name in r["resourceNames"])):
                return True
    return False


# What only the reconciler does, in a tenant namespace ("ai") unless a namespace is given.
RECONCILER_CALLS = [
    *((v, "keda.sh", "scaledobjects", "ai", None) for v in ("create", "patch", "delete", "list", "watch")),
    *((v, "http.keda.sh", "interceptorroutes", "ai", None) for v in ("create", "patch", "delete", "list")),
    *((v, LLMAZ, res, "ai", None) for v in ("patch", "list", "watch") for res in ("playgrounds", "services")),
    ("patch", LLMAZ, "playgrounds/scale", "ai", None),
    ("update", LLMAZ, "services/finalizers", "ai", None),
    ("delete", "autoscaling", "horizontalpodautoscalers", "ai", None),
    ("list", "autoscaling", "horizontalpodautoscalers", "ai", None),
    ("create", "", "events", "ai", None),
    ("list", "", "namespaces", None, None),
    ("create", "coordination.k8s.io", "leases", NS, None),
    ("update", "coordination.k8s.io", "leases", NS, "llmaz-serverless-leader"),
]
# What only the webhook does (self-managed certificates).
CERTIFICATE_CALLS = [
    ("create", "", "secrets", NS, None),
    ("get", "", "secrets", NS, "llmaz-serverless-ca"),
    ("update", "", "secrets", NS, "llmaz-serverless-ca"),
    ("patch", ADM, "mutatingwebhookconfigurations", None, "llmaz-serverless"),
    ("patch", ADM, "validatingwebhookconfigurations", None, "llmaz-serverless"),
]
# What both do.
CACHE_CALLS = [
    ("list", "llmaz.io", "openmodels", None, None),
    ("watch", "llmaz.io", "openmodels", None, None),
    ("list", "", "configmaps", NS, None),
    ("watch", "", "configmaps", NS, None),
]


def test_admission_service_account_cannot_write_what_the_reconciler_writes(default_docs):
    """The webhook pods (called by the API server over the network) hold no write access to workloads, KEDA
    objects, HPAs, Events or the Lease, and do not even read the workloads; the reconciler holds those and
    cannot touch the CA Secret or the webhook configurations."""
    def can(sa, call):
        verb, group, resource, namespace, name = call
        return _can(default_docs, sa, verb, group, resource, namespace=namespace, name=name)

    for call in RECONCILER_CALLS:
        assert not can(WEBHOOK_SA, call), call
        assert can(CONTROLLER_SA, call), call
    for call in CERTIFICATE_CALLS:
        assert can(WEBHOOK_SA, call), call
        assert not can(CONTROLLER_SA, call), call
    for call in CACHE_CALLS:
        assert can(WEBHOOK_SA, call) and can(CONTROLLER_SA, call), call
    for sa in (WEBHOOK_SA, CONTROLLER_SA):
        assert not can(sa, ("get", "", "secrets", NS, "not-ours"))
        assert not can(sa, ("get", "", "secrets", "ai", "llmaz-serverless-ca"))       # the Role is namespaced
        assert not can(sa, ("list", "", "secrets", NS, None))
        assert not can(sa, ("create", "coordination.k8s.io", "leases", "ai", None))
        assert not can(sa, ("patch", ADM, "mutatingwebhookconfigurations", None, "someone-else"))
        assert not can(sa, ("list", ADM, "mutatingwebhookconfigurations", None, None))
        # Nothing is ever replaced whole, and Events are only created: no update, no Event patch.
        for group, resource in ((LLMAZ, "playgrounds"), (LLMAZ, "services"), ("keda.sh", "scaledobjects"),
                                ("http.keda.sh", "interceptorroutes")):
            assert not can(sa, ("update", group, resource, "ai", None)), (sa, resource)
        assert not can(sa, ("patch", "", "events", "ai", None))
        assert not can(sa, ("create", "events.k8s.io", "events", "ai", None))


def test_one_service_account_with_everything_when_not_separate(helm):
    docs = _template(helm, "--set", "controller.separate=false")
    for call in RECONCILER_CALLS + CERTIFICATE_CALLS + CACHE_CALLS:
        verb, group, resource, namespace, name = call
        assert _can(docs, WEBHOOK_SA, verb, group, resource, namespace=namespace, name=name), call
    # With cert-manager no pod manages certificates, so none may.
    for args in ([], ["--set", "controller.separate=false"]):
        docs = _template(helm, "--set", "certManager.enabled=true", *args)
        for call in CERTIFICATE_CALLS:
            verb, group, resource, namespace, name = call
            assert not any(_can(docs, sa, verb, group, resource, namespace=namespace, name=name)
                           for sa in (WEBHOOK_SA, CONTROLLER_SA)), call


def test_service_account_annotations_on_each_component(helm):
    for args in ([], ["--set", "controller.separate=false"]):
        docs = _template(helm, "--set", r"serviceAccount.annotations.iam\.example\.com/role=reader", *args)
        sas = [d for d in docs if d["kind"] == "ServiceAccount"]
        assert len(sas) == (1 if args else 2)
        for sa in sas:
            assert sa["metadata"]["annotations"] == {"iam.example.com/role": "reader"}
    assert all("annotations" not in d["metadata"] for d in _template(helm) if d["kind"] == "ServiceAccount")


def test_prometheus_auth_secret_is_mounted_only_where_the_reconciler_runs(helm):
    def mounts(docs):
        out = {}
        for d in docs:
            if d["kind"] == "Deployment":
                spec = d["spec"]["template"]["spec"]
                (c,) = spec["containers"]
                vols = {v["name"]: v for v in spec["volumes"]}
                out[d["metadata"]["name"]] = [(m["mountPath"], m.get("readOnly"), vols[m["name"]].get("secret"))
                                              for m in c["volumeMounts"] if m["name"] == "prometheus-auth"]
        return out
    want = [("/etc/llmaz-serverless/prometheus", True, {"secretName": "prom-reader", "defaultMode": 0o440})]
    got = mounts(_template(helm, "--set", "prometheusAuth.secretName=prom-reader"))
    assert got == {"llmaz-serverless": [], "llmaz-serverless-controller": want}     # admission reads no Prometheus
    got = mounts(_template(helm, "--set", "prometheusAuth.secretName=prom-reader",
                           "--set", "controller.separate=false"))
    assert got == {"llmaz-serverless": want}
    assert mounts(_template(helm)) == {"llmaz-serverless": [], "llmaz-serverless-controller": []}


def _container(docs):
    dep = _one(docs, "Deployment", "llmaz-serverless")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, container


def test_deployment_and_pod_security(default_docs):
    dep, c = _container(default_docs)
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert spec["serviceAccountName"] == "llmaz-serverless"
    assert c["image"] == "ghcr.io/llmaz-serverless/llmaz-serverless:0.1.0"
    assert c["args"] == [
        "serve",
        "--role=admission",
        "--port=9443",
        "--metrics-port=8080",
        "--cert-dir=/certs",
        "--cert-mode=self-managed",
        "--tls-min-version=1.3",
        "--max-connections=256",
        "--header-timeout=10",
        "--idle-timeout=60",
        "--admission-deadline=2",
        "--policy-configmap=$(POD_NAMESPACE)/llmaz-serverless-policy",
        "--webhook-config-name=llmaz-serverless",
        "--service-name=llmaz-serverless-webhook",
        "--shutdown-delay=5",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"webhook": 9443, "metrics": 8080}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "scheme" not in c["readinessProbe"]["httpGet"]  # plain HTTP

    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc or sc["privileged"] is False

    res = c["resources"]
    assert res["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert res["limits"]["memory"] == "512Mi"

    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/certs"] == "certs"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in vols["certs"]
    # every writable path is a volume (read-only root filesystem)
    assert all("emptyDir" in vols[name] or "secret" in vols[name] for name in mounts.values())

    # soft spreading only: a single-node cluster still schedules both replicas
    anti = spec["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert all(t["whenUnsatisfiable"] == "ScheduleAnyway" for t in spec["topologySpreadConstraints"])

    pdb = _one(default_docs, "PodDisruptionBudget", "llmaz-serverless")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]

    svc = _one(default_docs, "Service", "llmaz-serverless-webhook")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"webhook": (443, "webhook"), "metrics": (8080, "metrics")}
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()


def test_cert_manager_mode(cm_docs):
    _, c = _container(cm_docs)
    assert "--cert-mode=files" in c["args"]
    assert "--cert-mode=self-managed" not in c["args"]
    dep = _one(cm_docs, "Deployment", "llmaz-serverless")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["certs"]["secret"]["secretName"] == "llmaz-serverless-webhook-tls"
    cert = _one(cm_docs, "Certificate", "llmaz-serverless-webhook")
    assert cert["metadata"]["namespace"] == NS
    assert cert["spec"]["secretName"] == "llmaz-serverless-webhook-tls"
    assert cert["spec"]["dnsNames"] == [
        "llmaz-serverless-webhook",
        f"llmaz-serverless-webhook.{NS}",
        f"llmaz-serverless-webhook.{NS}.svc",
        f"llmaz-serverless-webhook.{NS}.svc.cluster.local",
    ]
    issuer = _one(cm_docs, "Issuer", cert["spec"]["issuerRef"]["name"])
    root = _one(cm_docs, "Certificate", "llmaz-serverless-root-ca")
    assert issuer["spec"]["ca"]["secretName"] == root["spec"]["secretName"]
    assert root["spec"]["isCA"] is True
    assert "selfSigned" in _one(cm_docs, "Issuer", root["spec"]["issuerRef"]["name"])["spec"]
    for config in _webhooks(cm_docs):
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NS}/llmaz-serverless-webhook"
        }


def test_policy_configmap_from_values(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("policy: |\n  defaults:\n    minReplicas: 0\n")
    docs = _template(helm, "-f", str(values))
    cm = _one(docs, "ConfigMap", "llmaz-serverless-policy")
    assert yaml.safe_load(cm["data"]["policy.yaml"]) == {"defaults": {"minReplicas": 0}}


def test_static_manifest_matches_a_fresh_render(helm):
    res = _run(["bash", str(RENDER), "--stdout"], env={**os.environ, "HELM": helm})
    assert res.returncode == 0, res.stderr
    assert MANIFEST.read_text() == res.stdout, "deploy/manifests/llmaz-serverless.yaml is stale: run deploy/render.sh"
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == NS
    assert "serverless.llmaz.io/enabled" not in docs[0]["metadata"].get("labels", {})


def _deployment(docs, name):
    dep = _one(docs, "Deployment", name)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, container


def test_controller_is_its_own_deployment(default_docs):
    web, _ = _deployment(default_docs, "llmaz-serverless")
    ctl, c = _deployment(default_docs, "llmaz-serverless-controller")
    assert ctl["spec"]["replicas"] == 1
    assert ctl["spec"]["template"]["spec"]["serviceAccountName"] == "llmaz-serverless-controller"
    assert c["args"] == ["serve", "--role=controller", "--metrics-port=8080",
                         "--policy-configmap=$(POD_NAMESPACE)/llmaz-serverless-policy", "--leader-election"]
    assert [p["name"] for p in c["ports"]] == ["metrics"]
    assert "/certs" not in {m["mountPath"] for m in c["volumeMounts"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Disjoint selectors: neither Deployment (nor the Service, nor the PDB) selects the other's pods.
    web_sel, ctl_sel = web["spec"]["selector"]["matchLabels"], ctl["spec"]["selector"]["matchLabels"]
    assert web_sel["app.kubernetes.io/component"] == "webhook"
    assert ctl_sel["app.kubernetes.io/component"] == "controller"
    assert not ctl["spec"]["template"]["metadata"]["labels"].items() >= web_sel.items()
    svc = _one(default_docs, "Service", "llmaz-serverless-webhook")
    pdb = _one(default_docs, "PodDisruptionBudget", "llmaz-serverless")
    assert svc["spec"]["selector"] == web_sel == pdb["spec"]["selector"]["matchLabels"]


def test_one_deployment_when_not_separate(helm):
    docs = _template(helm, "--set", "controller.separate=false")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"] == ["llmaz-serverless"]
    _, c = _deployment(docs, "llmaz-serverless")
    assert "--role=all" in c["args"] and "--leader-election" in c["args"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"] == ["llmaz-serverless"]


def test_pdb_only_with_more_than_one_webhook_replica(helm):
    docs = _template(helm, "--set", "replicaCount=1")
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert _one(docs, "Deployment", "llmaz-serverless")["spec"]["replicas"] == 1
    docs = _template(helm, "--set", "replicaCount=3")
    assert _one(docs, "PodDisruptionBudget", "llmaz-serverless")["spec"]["minAvailable"] == 1


def test_guaranteed_resources_and_priority_class(helm):
    docs = _template(helm, "--set", "guaranteedResources=true", "--set", "priorityClassName=system-cluster-critical",
                     "--set", "controller.priorityClassName=high")
    for name, priority in (("llmaz-serverless", "system-cluster-critical"), ("llmaz-serverless-controller", "high")):
        dep, c = _deployment(docs, name)
        res = c["resources"]
        assert res["requests"] == res["limits"], name
        assert set(res["limits"]) == {"cpu", "memory"}
        assert dep["spec"]["template"]["spec"]["priorityClassName"] == priority
    assert _deployment(docs, "llmaz-serverless")[1]["resources"]["limits"] == {"cpu": "100m", "memory": "512Mi"}
    # Default: Burstable as before, no priority class.
    dep, c = _deployment(_template(helm), "llmaz-serverless")
    assert c["resources"]["requests"] != c["resources"]["limits"]
    assert "priorityClassName" not in dep["spec"]["template"]["spec"]


def test_tls_and_limits_values_and_their_checks(helm):
    docs = _template(helm, "--set", "webhook.tlsMinVersion=1.2", "--set", "webhook.maxConnections=64",
                     "--set", "webhook.admissionDeadlineSeconds=1.5")
    _, c = _deployment(docs, "llmaz-serverless")
    assert "--tls-min-version=1.2" in c["args"] and "--max-connections=64" in c["args"]
    assert "--admission-deadline=1.5" in c["args"]
    for bad, message in ((["--set", "webhook.tlsMinVersion=1.1"], "tlsMinVersion"),
                         (["--set", "webhook.admissionDeadlineSeconds=5"], "must be below webhook.timeoutSeconds")):
        res = _run([helm, "template", "llmaz-serverless", str(CHART), "--namespace", NS, *bad])
        assert res.returncode != 0 and message in res.stderr, res.stderr


def test_network_policy(default_docs, helm):
    web = _one(default_docs, "NetworkPolicy", "llmaz-serverless")
    assert web["spec"]["policyTypes"] == ["Ingress"]
    assert web["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "webhook"
    rules = {r["ports"][0]["port"]: r.get("from") for r in web["spec"]["ingress"]}
    assert set(rules) == {"webhook", "metrics"}
    assert rules["metrics"] == [{"namespaceSelector": {}}]
    ctl = _one(default_docs, "NetworkPolicy", "llmaz-serverless-controller")
    assert [r["ports"][0]["port"] for r in ctl["spec"]["ingress"]] == ["metrics"]
    # With the API server's address set, only it reaches the webhook port; metrics from the given source.
    values = ["--set", "networkPolicy.apiServer[0].ipBlock.cidr=10.0.0.10/32",
              "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"]
    web = _one(_template(helm, *values), "NetworkPolicy", "llmaz-serverless")
    rules = {r["ports"][0]["port"]: r.get("from") for r in web["spec"]["ingress"]}
    assert rules["webhook"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert rules["metrics"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    assert not [d for d in _template(helm, "--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]
