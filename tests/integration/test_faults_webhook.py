"""Fault injection: the webhook process is SIGKILLed while a client creates Playgrounds, then restarted.

The shipped webhook configurations (``deploy/manifests``, via ``webhook_harness.loopback_configurations``) are
registered with the real kube-apiserver, unchanged except for the loopback URL and the test CA, so the failure
policy under test is the shipped one (``Ignore``). Expected:

- every create succeeds (the API server fails open while the webhook is gone);
- Playgrounds created while the webhook was down are stored unmutated;
- Playgrounds created after the restarted webhook is ready are mutated again (as are those before the kill).

Bounded: 60 creates at ~5/s, the webhook down for ~3 s; the whole test takes well under a minute.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.webhook_harness import WebhookProcess, loopback_configurations
from webhook import constants as C

GROUP, VERSION, PLURAL = C.LLMAZ_GROUP, C.LLMAZ_VERSION, "playgrounds"
OPT_IN = {C.NAMESPACE_LABEL: "true"}
CREATES = 60
INTERVAL = 0.2          # seconds between creates (~5/s)
KILL_AT = 15            # SIGKILL the webhook just before this create
DOWNTIME = 3.0          # seconds between the kill and the restart
TEST_DEADLINE = 120.0   # hard bound for the create loop and the restart


def playground(name: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Playground", "metadata": {"name": name},
            "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen-7b"},
                     "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}


def apply(kube, configs: list[dict]) -> None:
    adm = client.AdmissionregistrationV1Api(kube)
    for cfg in configs:
        mutating = cfg["kind"] == "MutatingWebhookConfiguration"
        read = adm.read_mutating_webhook_configuration if mutating else adm.read_validating_webhook_configuration
        create = (adm.create_mutating_webhook_configuration if mutating
                  else adm.create_validating_webhook_configuration)
        replace = (adm.replace_mutating_webhook_configuration if mutating
                   else adm.replace_validating_webhook_configuration)
        name = cfg["metadata"]["name"]
        try:
            live = read(name)
        except ApiException as e:
            if e.status != 404:
                raise
            create(cfg)
        else:
            replace(name, dict(cfg, metadata=dict(cfg["metadata"], resourceVersion=live.metadata.resource_version)))


def delete(kube, configs: list[dict]) -> None:
    adm = client.AdmissionregistrationV1Api(kube)
    for cfg in configs:
        fn = (adm.delete_mutating_webhook_configuration if cfg["kind"] == "MutatingWebhookConfiguration"
              else adm.delete_validating_webhook_configuration)
        try:
            fn(cfg["metadata"]["name"])
        except ApiException as e:
            if e.status != 404:
                raise


def is_mutated(obj: dict) -> bool:
    return (obj["metadata"].get("annotations") or {}).get(C.ANN_MANAGED) == "true"


@dataclass
class Created:
    name: str
    started: float
    finished: float
    mutated: bool


@pytest.fixture
def webhook(control_plane, kube, tmp_path):
    proc = WebhookProcess(tmp_path / "webhook")
    proc.start()
    configs = loopback_configurations(proc.port, proc.ca_pem)   # the shipped failurePolicy (Ignore)
    assert {h["failurePolicy"] for c in configs for h in c["webhooks"]} == {"Ignore"}
    apply(kube, configs)
    try:
        yield proc
    finally:
        delete(kube, configs)
        proc.stop()


def wait_until_mutating(api: client.CustomObjectsApi, ns: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, playground("probe"), dry_run="All")
        if is_mutated(out):
            return
        time.sleep(0.2)
    raise AssertionError(f"the webhook did not become active within {timeout}s")


def test_sigkill_and_restart_with_failure_policy_ignore(kube, webhook, namespace):
    ns = namespace(labels=OPT_IN, prefix="faults")
    api = client.CustomObjectsApi(kube)
    wait_until_mutating(api, ns)

    t0 = time.monotonic()
    events: dict[str, float] = {}
    restart_error: list[BaseException] = []

    def restart() -> None:
        try:
            time.sleep(DOWNTIME)
            events["restart_begun"] = time.monotonic()
            webhook.start()                    # returns once /readyz answers 200
            events["ready_again"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            restart_error.append(exc)

    restarter = threading.Thread(target=restart, daemon=True)
    created: list[Created] = []
    failures: list[str] = []
    for i in range(CREATES):
        assert time.monotonic() - t0 < TEST_DEADLINE, "the create loop ran past its deadline"
        if i == KILL_AT:
            os.killpg(webhook.proc.pid, signal.SIGKILL)        # our own child, in its own session
            webhook.proc.wait(timeout=10)
            events["killed"] = time.monotonic()
            restarter.start()
        name = f"pg-{i:02d}"
        started = time.monotonic()
        try:
            obj = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, playground(name))
        except ApiException as e:
            failures.append(f"{name}: HTTP {e.status} {e.reason}: {e.body[:300] if e.body else ''}")
            continue
        finished = time.monotonic()
        created.append(Created(name, started, finished, is_mutated(obj)))
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
    restarter.join(timeout=TEST_DEADLINE)
    assert not restarter.is_alive(), "the webhook restart did not finish"
    assert not restart_error, f"the webhook did not restart: {restart_error[0]}"

    # 1. The shipped failurePolicy Ignore: no create failed.
    assert not failures, failures
    assert len(created) == CREATES

    # 2. What was stored agrees with what the create returned.
    for c in created:
        stored = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, c.name)
        assert is_mutated(stored) == c.mutated, c
        assert stored["spec"]["replicas"] == (0 if c.mutated else 1), c

    killed, restart_begun, ready = events["killed"], events["restart_begun"], events["ready_again"]
    before = [c for c in created if c.finished < killed]
    down = [c for c in created if c.started > killed and c.finished < restart_begun]
    after = [c for c in created if c.started > ready]
    in_between = [c for c in created if c not in before and c not in down and c not in after]
    summary = (f"{len(created)} creates, all succeeded: {len(before)} before the SIGKILL (mutated "
               f"{sum(c.mutated for c in before)}), {len(down)} while down (unmutated "
               f"{sum(not c.mutated for c in down)}), {len(after)} after the restart was ready (mutated "
               f"{sum(c.mutated for c in after)}), {len(in_between)} while the new process was starting (mutated "
               f"{sum(c.mutated for c in in_between)}); down {restart_begun - killed:.1f}s, restart to ready "
               f"{ready - restart_begun:.1f}s, total {time.monotonic() - t0:.1f}s")
    print("\n" + summary)

    assert len(before) >= KILL_AT - 1 and all(c.mutated for c in before), summary
    assert len(down) >= 5, f"too few creates while the webhook was down to tell anything: {summary}"
    assert not any(c.mutated for c in down), summary
    assert len(after) >= 20, summary
    assert all(c.mutated for c in after), summary
