"""The never-stranded rule: what is built and admitted when KEDA or the HTTP add-on is not installed;
what KEDA's conditions on a ScaledObject turn into; how discovery documents are read."""

from __future__ import annotations

import datetime as dt

from tests.unit.helpers import catalog, playground
from webhook import constants as C
from webhook.controller.discovery import served
from webhook.controller.kedastatus import (REASON_FALLBACK, REASON_NOT_READY, REASON_NOT_RECONCILED, REASON_READY,
                                           judge)
from webhook.keda import desired_objects
from webhook.mutation import mutate
from webhook.policy import Policy
from webhook.prerequisites import ASSUMED, HTTP_ADDON, KEDA, Installed, degrade
from webhook.settings import analyze

P = Policy.default()
NO_KEDA = Installed(keda=False, http_addon=False)
NO_HTTP = Installed(keda=True, http_addon=False)
ALL = Installed(keda=True, http_addon=True)
REDIS = '[{type: redis, address: "r.ai:6379", listName: jobs}]'
HTTP_AND_REDIS = '[http, {type: redis, address: "r.ai:6379", listName: jobs}]'


def settings_of(obj):
    return analyze(obj, P, catalog()).settings


def stored(obj, installed=ASSUMED):
    m = mutate(obj, None, "CREATE", P, catalog(), installed)
    m.obj["metadata"]["uid"] = "uid-1"
    return m


# ------------------------------------------------------------------------------------------ degrade (pure)

def test_everything_installed_changes_nothing():
    s = settings_of(playground())
    for installed in (ASSUMED, ALL, Installed(keda=True)):
        d = degrade(s, installed)
        assert d.settings == s and d.scaled_object and d.missing == () and d.reasons == ()


def test_keda_missing_keeps_at_least_one_replica_and_builds_nothing():
    s = settings_of(playground(annotations={C.ANN_MIN_REPLICAS: "0"}))
    assert s.start_at_zero and s.min_replicas == 0
    d = degrade(s, NO_KEDA)
    assert not d.scaled_object and d.missing == (KEDA,)
    assert d.settings.min_replicas == 1 and not d.settings.start_at_zero and d.floor == 1
    assert "KEDA is not installed (keda.sh/v1alpha1 scaledobjects is not served)" in d.reasons[0]
    assert "install KEDA" in d.reasons[0]


def test_keda_missing_keeps_a_higher_min():
    s = settings_of(playground(annotations={C.ANN_MIN_REPLICAS: "2", C.ANN_MAX_REPLICAS: "4"}))
    assert degrade(s, NO_KEDA).floor == 2


def test_http_addon_missing_drops_http_and_keeps_the_other_triggers_above_zero():
    s = settings_of(playground(annotations={C.ANN_TRIGGERS: HTTP_AND_REDIS}))
    d = degrade(s, NO_HTTP)
    assert d.scaled_object and d.missing == (HTTP_ADDON,)
    assert [t.type for t in d.settings.triggers] == ["redis"]
    assert d.settings.min_replicas == 1 and not d.settings.start_at_zero
    assert "scales on its other triggers only" in d.reasons[0]


def test_http_only_without_the_addon_is_not_autoscaled_and_kept_up():
    d = degrade(settings_of(playground()), NO_HTTP)
    assert not d.scaled_object and d.missing == (HTTP_ADDON,) and d.floor == 1
    assert "http is its only trigger" in d.reasons[0]


def test_http_addon_missing_does_not_matter_without_http():
    s = settings_of(playground(annotations={C.ANN_TRIGGERS: REDIS}))
    d = degrade(s, NO_HTTP)
    assert d.settings == s and d.scaled_object and d.missing == ()


# ------------------------------------------------------------------------------------------ admission

def test_admission_does_not_start_at_zero_without_keda_and_says_why():
    m = mutate(playground(), None, "CREATE", P, catalog(), NO_KEDA)
    assert m.obj["spec"]["replicas"] == 1
    assert any("KEDA is not installed" in w for w in m.warnings)
    # the requested settings are recorded unchanged: they come back into force once KEDA is installed
    assert '"startAtZero":true' in m.obj["metadata"]["annotations"][C.ANN_RESOLVED].replace(" ", "")


def test_admission_starts_at_zero_when_installed():
    assert mutate(playground(), None, "CREATE", P, catalog(), ALL).obj["spec"]["replicas"] == 0


def test_update_never_keeps_zero_while_nothing_can_wake_it():
    old = stored(playground(), ALL).obj
    assert old["spec"]["replicas"] == 0
    new = mutate(old, old, "UPDATE", P, catalog(), NO_HTTP)
    assert new.obj["spec"]["replicas"] == 1
    # installed: the live value (KEDA's) is kept as before
    assert mutate(old, old, "UPDATE", P, catalog(), ALL).obj["spec"]["replicas"] == 0


# ------------------------------------------------------------------------------------------ builders

def test_builders_leave_out_http_and_raise_min_without_the_addon():
    obj = stored(playground(annotations={C.ANN_TRIGGERS: HTTP_AND_REDIS})).obj
    d = desired_objects(obj, P, catalog(), NO_HTTP)
    assert d.interceptor_route is None and d.missing == (HTTP_ADDON,)
    spec = d.scaled_object["spec"]
    assert spec["minReplicaCount"] == 1 and [t["type"] for t in spec["triggers"]] == ["redis"]
    full = desired_objects(obj, P, catalog(), ALL)
    assert full.interceptor_route is not None and full.scaled_object["spec"]["minReplicaCount"] == 0


def test_builders_build_nothing_without_keda():
    obj = stored(playground()).obj
    d = desired_objects(obj, P, catalog(), NO_KEDA)
    assert d.scaled_object is None and d.interceptor_route is None and d.missing == (KEDA,)
    assert d.analysis.managed


# ------------------------------------------------------------------------------------------ KEDA's view

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def so(age_s, conditions=None):
    created = (NOW - dt.timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj = {"metadata": {"name": "chat", "creationTimestamp": created}}
    if conditions is not None:
        obj["status"] = {"conditions": [{"type": t, "status": st, "reason": r, "message": m}
                                        for t, st, r, m in conditions]}
    return obj


def test_unreconciled_scaled_object_is_rechecked_until_the_bound_then_reported():
    v = judge(so(10), NOW, bound=60)
    assert v.reason == "" and v.recheck_in == 50
    v = judge(so(61, [("Ready", "Unknown", "", "")]), NOW, bound=60)
    assert v.reason == REASON_NOT_RECONCILED and v.warning and "within 60s" in v.message
    assert "kubectl get pods -n keda" in v.message


def test_not_ready_carries_kedas_message():
    v = judge(so(5, [("Ready", "False", "ScaledObjectCheckFailed", "error connecting to scaler")]), NOW)
    assert v.reason == REASON_NOT_READY and v.warning
    assert "ScaledObjectCheckFailed: error connecting to scaler" in v.message


def test_kedas_partial_trigger_error_is_not_mistaken_for_no_operator():
    v = judge(so(120, [("Ready", "Unknown", "PartialTriggerError", "Some triggers defined in ScaledObject are "
                                                                   "not working correctly")]), NOW, bound=60)
    assert v.reason == REASON_NOT_READY and v.warning and "partly working (PartialTriggerError" in v.message


def test_fallback_is_a_warning_and_ready_is_not():
    v = judge(so(5, [("Ready", "True", "", ""), ("Fallback", "True", "FallbackExists", "using fallback")]), NOW)
    assert v.reason == REASON_FALLBACK and v.warning and "using fallback" in v.message
    v = judge(so(5, [("Ready", "True", "", ""), ("Active", "True", "", ""), ("Fallback", "False", "", "")]), NOW)
    assert v.reason == REASON_READY and not v.warning and "(active)" in v.message
    assert judge(None, NOW).reason == ""


def test_discovery_document_lists_the_resource():
    doc = {"kind": "APIResourceList", "resources": [{"name": "scaledobjects"}, {"name": "scaledobjects/status"}]}
    assert served(doc, "scaledobjects")
    assert not served(doc, "interceptorroutes")
    assert not served({"resources": "nope"}, "scaledobjects") and not served(None, "scaledobjects")
