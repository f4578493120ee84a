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

EXPECTED_CLUSTER_RULES = {
    ("inference.llmaz.io", "playgrounds"): {"get", "list", "watch", "patch", "update"},
    ("inference.llmaz.io", "services"): {"get", "list", "watch", "patch", "update"},
    ("inference.llmaz.io", "playgrounds/finalizers"): {"update"},
    ("inference.llmaz.io", "services/finalizers"): {"update"},
    ("inference.llmaz.io", "playgrounds/scale"): {"get", "patch"},
    ("inference.llmaz.io", "services/scale"): {"get", "patch"},
    ("llmaz.io", "openmodels"): {"get", "list", "watch"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("http.keda.sh", "interceptorroutes"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "namespaces"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "delete"},
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"get", "list", "watch", "patch"},
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): {"get", "list", "watch", "patch"},
}

EXPECTED_ROLE_RULES = {
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "secrets"): {"get", "create", "update"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
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


def test_rbac_least_privilege(default_docs):
    cluster = _one(default_docs, "ClusterRole", "llmaz-serverless")
    role = _one(default_docs, "Role", "llmaz-serverless")
    assert _flatten(cluster["rules"]) == EXPECTED_CLUSTER_RULES
    assert _flatten(role["rules"]) == EXPECTED_ROLE_RULES
    assert role["metadata"]["namespace"] == NS

    def named(rules, group, resource, verb):
        return [
            r.get("resourceNames")
            for r in rules
            if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
        ]

    for res in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        for verb in ("get", "patch"):
            assert named(cluster["rules"], "admissionregistration.k8s.io", res, verb) == [["llmaz-serverless"]]
    assert named(role["rules"], "", "configmaps", "get") == [["llmaz-serverless-policy"]]
    for verb in ("get", "update"):
        assert named(role["rules"], "", "secrets", verb) == [["llmaz-serverless-ca"]]
        assert named(role["rules"], "coordination.k8s.io", "leases", verb) == [["llmaz-serverless-leader"]]

    for kind, ref_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = _one(default_docs, kind, "llmaz-serverless")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": "llmaz-serverless"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmaz-serverless", "namespace": NS}]


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
