"""The pure parts of the reconciler: work queue, event mapping, live-vs-desired, replica restore, policy source."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from webhook import constants as C
from webhook.keda import desired_objects
from webhook.models import ModelCatalog
from webhook.policy import Policy
from webhook.policy_source import PolicySource
from webhook.controller.events import EventRecorder
from webhook.controller.informer import Informer
from webhook.controller.objects import (classify_hpas, contains, convert_elastic_config, fields_v1_paths,
                                        hpa_target_key, live_matches, namespace_enabled, object_paths,
                                        restore_replicas, slim_owned, workload_key_of_owned)
from webhook.controller.workqueue import WorkQueue
from webhook.kube import PLAYGROUNDS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


K1 = ("Playground", "ai", "a")
K2 = ("Playground", "ai", "b")


# ------------------------------------------------------------------------------------------- queue


def test_queue_dedups_waiting_keys():
    q = WorkQueue(clock=FakeClock())
    q.add(K1)
    q.add(K1)
    q.add(K2)
    q.add(K1)
    assert len(q) == 2
    assert q.get_nowait() == K1
    assert q.get_nowait() == K2
    assert q.get_nowait() is None


def test_queue_one_worker_per_key_and_no_lost_update():
    q = WorkQueue(clock=FakeClock())
    q.add(K1)
    assert q.get_nowait() == K1          # a worker holds K1
    q.add(K1)                             # changed again while processing
    assert q.get_nowait() is None        # not handed to a second worker
    q.add(K1)
    q.done(K1)                            # ... but queued again (once) when the first worker is done
    assert len(q) == 1
    assert q.get_nowait() == K1
    q.done(K1)
    assert q.get_nowait() is None


def test_queue_backoff_doubles_and_caps_with_fake_clock():
    clock = FakeClock()
    q = WorkQueue(base_delay=0.5, max_delay=60.0, clock=clock)
    delays = []
    for _ in range(10):
        delays.append(q.add_rate_limited(K1))
        assert q.get_nowait() is None        # not ready before its delay
        clock.advance(delays[-1] - 0.01)
        assert q.get_nowait() is None
        clock.advance(0.02)
        assert q.get_nowait() == K1           # ready exactly after the delay
        q.done(K1)
    assert delays[:8] == [0.5, 1, 2, 4, 8, 16, 32, 60]
    assert delays[8:] == [60, 60]
    q.forget(K1)
    assert q.backoff(K1) == 0.5
    assert q.failures(K1) == 0


def test_queue_backoff_is_per_key():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    for _ in range(4):
        q.add_rate_limited(K1)
    assert q.backoff(K1) == 8.0
    assert q.backoff(K2) == 0.5


def test_queue_delayed_earliest_wins_and_next_due():
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add_after(K1, 10)
    q.add_after(K1, 2)
    q.add_after(K1, 30)
    assert q.next_due() == clock.now + 2
    clock.advance(2)
    assert q.get_nowait() == K1
    q.done(K1)
    clock.advance(100)
    assert q.get_nowait() is None             # the superseded entries do not fire again
    assert q.next_due() is None


def test_queue_clear_drops_everything():
    q = WorkQueue(clock=FakeClock())
    q.add(K1)
    q.add_rate_limited(K2)
    q.clear()
    assert len(q) == 0 and q.pending_delayed == 0 and q.failures(K2) == 0


async def test_queue_get_waits_without_busy_loop():
    q = WorkQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.05)
    assert not getter.done()
    q.add(K1)
    assert await asyncio.wait_for(getter, 1) == K1
    q.done(K1)
    q.add_after(K2, 0.05)
    assert await asyncio.wait_for(q.get(), 1) == K2


def test_depth_callback():
    seen = []
    q = WorkQueue(clock=FakeClock(), on_depth=seen.append)
    q.add(K1)
    q.add(K2)
    q.get_nowait()
    assert seen == [1, 2, 1]


# ------------------------------------------------------------------------------------------- event mapping


def _owned(kind="Playground", name="a", ns="ai", managed=True):
    labels = {C.LABEL_WORKLOAD_KIND: kind, C.LABEL_WORKLOAD_NAME: name}
    if managed:
        labels[C.LABEL_MANAGED_BY] = C.MANAGED_BY
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}}


def test_owned_object_maps_to_workload():
    assert workload_key_of_owned(_owned()) == ("Playground", "ai", "a")
    assert workload_key_of_owned(_owned(kind="Service", name="s")) == ("Service", "ai", "s")
    assert workload_key_of_owned(_owned(managed=False)) is None
    assert workload_key_of_owned(_owned(kind="Deployment")) is None
    assert workload_key_of_owned({"metadata": {"name": "x"}}) is None


def test_hpa_maps_to_its_llmaz_target():
    hpa = {"metadata": {"name": "h", "namespace": "ai"},
           "spec": {"scaleTargetRef": {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                                       "name": "a"}}}
    assert hpa_target_key(hpa) == ("Playground", "ai", "a")
    hpa["spec"]["scaleTargetRef"]["apiVersion"] = "apps/v1"
    assert hpa_target_key(hpa) is None


def test_namespace_label():
    assert namespace_enabled({"metadata": {"labels": {C.NAMESPACE_LABEL: "true"}}})
    assert not namespace_enabled({"metadata": {"labels": {C.NAMESPACE_LABEL: "false"}}})
    assert not namespace_enabled({"metadata": {}})
    assert not namespace_enabled(None)


def test_event_recorder_dedupes_consecutive_identical_events():
    r = EventRecorder(None, "me")
    assert r.should_emit(K1, "Attached", "m1")
    assert not r.should_emit(K1, "Attached", "m1")
    assert r.should_emit(K2, "Attached", "m1")         # per object
    assert r.should_emit(K1, "Updated", "m2")
    assert r.should_emit(K1, "Attached", "m1")         # not consecutive any more
    r.forget(K1)
    assert r.should_emit(K1, "Attached", "m1")


def test_informer_relist_diff_emits_adds_updates_and_deletes():
    inf = Informer(None, PLAYGROUNDS)  # type: ignore[arg-type]
    seen = []
    inf.add_handler(lambda t, new, old: seen.append((t, (new or old)["metadata"]["name"])))

    def obj(name, rv):
        return {"metadata": {"name": name, "namespace": "ai", "resourceVersion": rv}}

    inf._replace([obj("a", "1"), obj("b", "1")])
    assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]
    seen.clear()
    inf._replace([obj("a", "1"), obj("b", "2"), obj("c", "3")])
    assert sorted(seen) == [("ADDED", "c"), ("MODIFIED", "b")]
    seen.clear()
    inf._replace([obj("c", "3")])
    assert sorted(seen) == [("DELETED", "a"), ("DELETED", "b")]
    seen.clear()
    inf._apply_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert inf.resource_version == "9" and seen == []
    inf._apply_event({"type": "DELETED", "object": obj("c", "10")})
    assert seen == [("DELETED", "c")] and inf.cache == {}


def test_informer_write_through_never_goes_backwards():
    inf = Informer(None, PLAYGROUNDS)  # type: ignore[arg-type]
    inf.put_local({"metadata": {"name": "a", "namespace": "ai", "resourceVersion": "20"}})
    inf.put_local({"metadata": {"name": "a", "namespace": "ai", "resourceVersion": "10"}})
    assert inf.get("ai", "a")["metadata"]["resourceVersion"] == "20"


# ------------------------------------------------------------------------------------------- live == desired


def _desired(**ann):
    pg = {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
          "metadata": {"name": "a", "namespace": "ai", "uid": "u-1", "annotations": ann},
          "spec": {"modelClaim": {"modelName": "m"}}}
    return desired_objects(pg, Policy.default(), ModelCatalog())


def _fields(obj):
    """The fieldsV1 tree server-side apply would record for ``obj``."""
    def tree(v):
        if isinstance(v, dict) and v:
            return {f"f:{k}": tree(x) for k, x in v.items()}
        return {}
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("name", "namespace")}
    out = {"f:metadata": tree(meta), "f:spec": tree(obj["spec"])}
    refs = obj["metadata"].get("ownerReferences")
    if refs:
        out["f:metadata"]["f:ownerReferences"] = {f'k:{{"uid":"{r["uid"]}"}}': {".": {}, "f:uid": {}} for r in refs}
    return out


def _live(desired, **extra_spec):
    live = copy.deepcopy(desired)
    live["metadata"]["uid"] = "so-uid"
    live["metadata"]["resourceVersion"] = "5"
    live["metadata"]["labels"]["extra"] = "someone else's label"
    live["metadata"]["managedFields"] = [
        {"manager": C.FIELD_MANAGER, "operation": "Apply", "fieldsV1": _fields(desired)},
        {"manager": "keda", "operation": "Update", "fieldsV1": {"f:status": {}}},
    ]
    live["spec"].update(extra_spec)
    live["status"] = {"conditions": []}
    return live


def test_live_matches_when_only_defaults_and_foreign_fields_differ():
    so = _desired().scaled_object
    live = _live(so, fallback={"failureThreshold": 3})   # someone else's field, defaults, status
    assert live_matches(so, live)
    assert live_matches(so, slim_owned(live))


def test_live_differs_on_changed_or_missing_values():
    so = _desired().scaled_object
    live = _live(so)
    live["spec"]["maxReplicaCount"] = 9
    assert not live_matches(so, live)
    live = _live(so)
    del live["spec"]["triggers"][0]["metadata"]["interceptorRoute"]
    assert not live_matches(so, live)
    live = _live(so)
    live["spec"]["triggers"].append({"type": "cron", "metadata": {}})
    assert not live_matches(so, live)
    live = _live(so)
    live["metadata"]["ownerReferences"][0]["uid"] = "other"
    assert not live_matches(so, live)
    live = _live(so)
    live["metadata"]["labels"][C.LABEL_WORKLOAD_NAME] = "b"
    assert not live_matches(so, live)
    assert not live_matches(so, None)


def test_live_differs_when_we_stopped_setting_a_field():
    with_behavior = _desired(**{C.ANN_BEHAVIOR: '{"scaleDown": {"stabilizationWindowSeconds": 60}}'}).scaled_object
    without = _desired().scaled_object
    live = _live(with_behavior)            # applied earlier with `advanced`
    assert live_matches(with_behavior, live)
    assert not live_matches(without, live)  # `advanced` must go: we own it but no longer set it


def test_live_differs_when_someone_took_over_a_field():
    so = _desired().scaled_object
    live = _live(so)
    fields = live["metadata"]["managedFields"][0]["fieldsV1"]
    del fields["f:spec"]["f:triggers"]     # kubectl edit moved ownership of the list to another manager
    assert not live_matches(so, live)
    live["metadata"]["managedFields"] = []
    assert not live_matches(so, live)      # nothing owned by us at all


def test_bool_is_not_int():
    assert not contains({"x": 1}, {"x": True})
    assert contains({"x": True}, {"x": True})
    assert contains({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2, "c": 3}], "z": 0})
    assert not contains({"a": [1]}, {"a": [1, 2]})


def test_paths_of_desired_equal_paths_of_fieldsv1():
    d = _desired()
    for obj in (d.scaled_object, d.interceptor_route):
        assert object_paths(obj) == fields_v1_paths(_fields(obj))
    assert ("spec", "triggers") in object_paths(d.scaled_object)
    assert ("metadata", "name") not in object_paths(d.scaled_object)


# ------------------------------------------------------------------------------------------- replicas, HPAs


@pytest.mark.parametrize("spec,expected", [
    ({"minReplicaCount": 0}, 1), ({"minReplicaCount": 3}, 3), ({}, 1), ({"minReplicaCount": True}, 1)])
def test_restore_replicas(spec, expected):
    assert restore_replicas({"spec": spec}) == expected
    assert restore_replicas(None) == 1


def _pg(elastic=True, uid="pg-uid"):
    spec = {"modelClaim": {"modelName": "m"}}
    if elastic:
        spec["elasticConfig"] = {"minReplicas": 1, "maxReplicas": 3}
    return {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
            "metadata": {"name": "a", "namespace": "ai", "uid": uid, "resourceVersion": "7"}, "spec": spec}


def _hpa(name, owner_uid=None, owner_kind="Playground"):
    meta = {"name": name, "namespace": "ai"}
    if owner_uid:
        meta["ownerReferences"] = [{"kind": owner_kind, "uid": owner_uid, "name": "x"}]
    return {"metadata": meta, "spec": {"scaleTargetRef": {"apiVersion": C.LLMAZ_API_VERSION,
                                                          "kind": "Playground", "name": "a"}}}


def test_classify_hpas():
    keda = _hpa("keda-hpa-a", "so-uid", "ScaledObject")
    llmaz_owned = _hpa("a", "pg-uid")
    llmaz_named = _hpa("a")
    foreign = _hpa("mine")
    assert classify_hpas(_pg(), [keda, llmaz_owned, foreign]) == ([llmaz_owned], [foreign])
    assert classify_hpas(_pg(), [llmaz_named]) == ([llmaz_named], [])
    # without elasticConfig an unowned HPA named after the Playground is somebody else's
    assert classify_hpas(_pg(elastic=False), [llmaz_named]) == ([], [llmaz_named])
    assert classify_hpas(_pg(elastic=False), [llmaz_owned]) == ([llmaz_owned], [])


def test_convert_elastic_config_patch():
    pg = _pg()
    converted, ops, notes = convert_elastic_config(pg)
    assert "elasticConfig" not in converted["spec"]
    assert converted["metadata"]["annotations"][C.ANN_MAX_REPLICAS] == "3"
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    assert {"op": "remove", "path": "/spec/elasticConfig"} in ops
    assert any(op["op"] == "add" and op["path"] == "/metadata/annotations" for op in ops)
    assert notes and "elasticConfig" in notes[0]
    assert "elasticConfig" in pg["spec"]          # the input is not modified


# ------------------------------------------------------------------------------------------- policy source


def _cm(text, rv="1"):
    return {"metadata": {"name": "p", "namespace": "sys", "resourceVersion": rv}, "data": {"policy.yaml": text}}


def test_policy_source_keeps_last_good():
    src = PolicySource()
    assert src.policy == Policy.default() and src.valid
    policy, err = src.update(_cm("maxReplicasCap: 10\ndefaults: {minReplicas: 0, maxReplicas: 8, "
                                 "cooldownPeriod: 60, pollingInterval: 10, initialCooldownPeriod: 0, "
                                 "startAtZero: true, triggers: [http]}", "1"))
    assert err is None and policy.maxReplicasCap == 10
    good = policy
    policy, err = src.update(_cm("maxReplicasCap: [not, a, number]", "2"))
    assert err and "maxReplicasCap" in err
    assert policy is good and src.policy is good and not src.valid
    assert src.good_version == "1" and src.source_version == "2"
    policy, err = src.update(_cm("unknownKey: 1", "3"))
    assert err and "unknownKey" in err and policy is good
    policy, err = src.update(_cm(": : not yaml", "4"))
    assert err and policy is good


def test_policy_source_changed_flag_and_deletion():
    src = PolicySource()
    u = src.apply(_cm(""))                 # empty document = built-in default: nothing changed
    assert u.error is None and not u.changed
    u = src.apply(_cm("maxReplicasCap: 100"))
    assert u.changed and u.policy.maxReplicasCap == 100
    u = src.apply(_cm("maxReplicasCap: 100", "2"))
    assert not u.changed
    u = src.apply(_cm("bad: 1", "3"))
    assert not u.changed and u.error
    u = src.apply(None)                    # ConfigMap deleted: built-in default, error cleared
    assert u.changed and u.policy == Policy.default() and u.error is None and src.valid


# ------------------------------------------------------------------------------------------- quarantine


def test_a_build_that_raises_is_quarantined_once_and_not_rebuilt_until_the_object_changes(monkeypatch):
    """The builders are replaced by one that raises (no real input does any more); the reconciler must hold
    the workload aside with a metric, without raising into its worker, and build it again only once edited."""
    from webhook.admission import Brain
    from webhook.controller import reconciler as R

    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(R, "desired_objects", boom)
    ctl = R.Controller(None, Brain(), namespace="sys", policy_configmap=None, events=False)  # type: ignore[arg-type]
    ctl.namespaces.put_local({"metadata": {"name": "ai", "labels": {C.NAMESPACE_LABEL: "true"}}})
    pg = {"apiVersion": C.LLMAZ_API_VERSION, "kind": "Playground",
          "metadata": {"name": "a", "namespace": "ai", "uid": "u", "resourceVersion": "1"}, "spec": {}}
    ctl.playgrounds.put_local(pg)
    key = ("Playground", "ai", "a")
    before = ctl.metrics.quarantines.labels("error")._value.get()
    assert asyncio.run(ctl.reconcile(key)) == "quarantined"
    assert asyncio.run(ctl.reconcile(key)) == "quarantined"
    assert len(calls) == 1 and key in ctl.quarantine
    assert ctl.metrics.quarantines.labels("error")._value.get() == before + 1
    ctl.playgrounds.put_local(dict(pg, metadata=dict(pg["metadata"], resourceVersion="2")))
    assert asyncio.run(ctl.reconcile(key)) == "quarantined"
    assert len(calls) == 2
    ctl.playgrounds.remove_local("ai", "a")
    assert asyncio.run(ctl.reconcile(key)) == "gone" and key not in ctl.quarantine


def test_cached_objects_keep_neither_managed_fields_nor_last_applied():
    from webhook.controller.objects import LAST_APPLIED, slim_model, slim_workload

    big = "{" + "x" * 10_000 + "}"
    pg = {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
          "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "5",
                       "annotations": {LAST_APPLIED: big, "serverless.llmaz.io/min-replicas": "0"},
                       "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
          "spec": {"replicas": 1}, "status": {"conditions": []}}
    slim = slim_workload(pg)
    assert slim["metadata"]["annotations"] == {"serverless.llmaz.io/min-replicas": "0"}
    assert "managedFields" not in slim["metadata"] and "status" not in slim
    assert pg["metadata"]["annotations"][LAST_APPLIED] == big           # the input is not modified
    model = {"apiVersion": "llmaz.io/v1alpha1", "kind": "OpenModel",
             "metadata": {"name": "m", "resourceVersion": "3", "annotations": {LAST_APPLIED: big},
                          "managedFields": [{}]},
             "spec": {"source": {"modelHub": {"modelID": "x"}}, "inferenceConfig": {"flavors": [{"name": "a100"}]}}}
    assert slim_model(model) == {"apiVersion": "llmaz.io/v1alpha1", "kind": "OpenModel",
                                 "metadata": {"name": "m", "resourceVersion": "3"},
                                 "spec": {"inferenceConfig": {"flavors": [{"name": "a100"}]}}}


def test_stub_keeps_what_unmanaging_needs_and_nothing_else():
    from webhook.controller.objects import is_stub, stub_workload
    from webhook.mutation import spec_replicas
    from webhook.settings import opted_out, owned_by_playground

    svc = {"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Service",
           "metadata": {"name": "s", "namespace": "ns", "uid": "u1", "resourceVersion": "9",
                        "ownerReferences": [{"apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
                                             "name": "p", "uid": "u0", "controller": True}],
                        "annotations": {"serverless.llmaz.io/enabled": "false", "team": "x" * 5000}},
           "spec": {"replicas": 0, "modelClaims": {"models": [{"name": "m"}]}, "workloadTemplate": {"x": 1}}}
    stub = stub_workload(svc)
    assert is_stub(stub) and not is_stub(svc)
    assert stub["metadata"]["annotations"] == {"serverless.llmaz.io/enabled": "false"}
    assert stub["spec"] == {"replicas": 0} and spec_replicas(stub) == 0
    assert opted_out(stub) and owned_by_playground(stub)
    assert stub["metadata"]["uid"] == "u1" and stub["kind"] == "Service"
    assert len(json.dumps(stub)) < 600 < len(json.dumps(svc))
