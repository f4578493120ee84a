"""The HTTPS admission server, end to end over real TLS (test CA from conftest.py, hostname verified).

Decision documented here: an AdmissionReview that has ``kind: AdmissionReview`` and a ``request.uid`` but is
otherwise unusable (e.g. ``request.object`` is a string) is answered HTTP 200 with ``allowed: false``, status code
400 and the uid echoed -- the API server gets a well-formed answer and the user a precise message. Only bodies
with no review to answer (not JSON, not an AdmissionReview, no uid) get HTTP 400.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from certs.reload import ReloadingSSLContext
from tests.integration.controlplane import free_port
from webhook.admission import Brain
from webhook.errors import Internal
from webhook.connections import EVICT_AFTER
from webhook.errors import Denied
from webhook.lanes import AdmissionTimeout, Lanes
from webhook.review import AdmissionRequest
from webhook.server import BODIES, Health, Limits, WebhookServer

REPO = Path(__file__).resolve().parents[2]
MANAGED = "serverless.llmaz.io/managed"

GPU_PLAYGROUND: dict[str, Any] = {
    "apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
    "metadata": {"name": "qwen", "namespace": "ai"},
    "spec": {"replicas": 1, "modelClaim": {"modelName": "qwen"},
             "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def playground(**annotations: str) -> dict[str, Any]:
    obj = copy.deepcopy(GPU_PLAYGROUND)
    if annotations:
        obj["metadata"]["annotations"] = dict(annotations)
    return obj


def review(obj: Any, *, operation: str = "CREATE", old: Any = None, uid: str | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": "inference.llmaz.io", "version": "v1alpha1", "kind": "Playground"},
        "resource": {"group": "inference.llmaz.io", "version": "v1alpha1", "resource": "playgrounds"},
        "name": "qwen", "namespace": "ai", "operation": operation, "object": obj,
        "userInfo": {"username": "tester"}, "dryRun": False,
    }
    if old is not None:
        req["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


# ------------------------------------------------------------------------------------------ fixtures


class Running:
    def __init__(self, server: WebhookServer, health: Health) -> None:
        self.server, self.health = server, health

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    @property
    def probe_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}"


async def start(tls_dir: Path, brain: Brain | None = None) -> Running:
    tls = ReloadingSSLContext(tls_dir / "tls.crt", tls_dir / "tls.key")
    health = Health()
    health.add_check("tls", lambda: tls.loaded, "no certificate")
    server = WebhookServer(brain or Brain(), health)
    await server.start("127.0.0.1", 0, tls, metrics_port=0)
    return Running(server, health)


@pytest.fixture
async def running(tls_dir: Path):
    r = await start(tls_dir)
    yield r
    await r.server.stop(grace=1)


@pytest.fixture
async def client(client_ssl: ssl.SSLContext):
    # limit=20: the concurrency test reuses keep-alive connections.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl, limit=20)) as session:
        yield session


async def post(client: aiohttp.ClientSession, url: str, payload: Any = None, *, data: Any = None,
               content_type: str = "application/json", **kw: Any) -> tuple[int, Any]:
    body = data if data is not None else json.dumps(payload).encode()
    if isinstance(body, bytes):
        body = io.BytesIO(body)  # sized (Content-Length), and aiohttp does not warn about big raw bytes
    async with client.post(url, data=body, headers={"Content-Type": content_type}, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


# ------------------------------------------------------------------------------------------ admission


async def test_gpu_playground_create_is_patched(running: Running, client):
    rv = review(playground())
    status, out = await post(client, running.url + "/mutate", rv)
    assert status == 200
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["uid"] == rv["request"]["uid"] and resp["allowed"] is True
    patched = jsonpatch.apply_patch(rv["request"]["object"], decode_patch(resp))
    assert patched["spec"]["replicas"] == 0
    assert patched["metadata"]["annotations"][MANAGED] == "true"
    assert patched["spec"]["modelClaim"] == GPU_PLAYGROUND["spec"]["modelClaim"]  # nothing else touched


async def test_hostname_is_verified(running: Running, client):
    rv = review(playground())
    status, _ = await post(client, running.url + "/mutate", rv, server_hostname="localhost")
    assert status == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(client, running.url + "/mutate", rv, server_hostname="not-the-webhook.example")


@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
async def test_denial_names_the_annotation(running: Running, client, endpoint):
    rv = review(playground(**{"serverless.llmaz.io/min-replicas": "abc"}))
    status, out = await post(client, f"{running.url}/{endpoint}", rv)
    assert status == 200
    resp = out["response"]
    assert resp["uid"] == rv["request"]["uid"]
    assert resp["allowed"] is False and "patch" not in resp
    assert "serverless.llmaz.io/min-replicas" in resp["status"]["message"]
    assert resp["status"]["code"] == 422


async def test_validate_allows_a_good_object(running: Running, client):
    rv = review(playground())
    status, out = await post(client, running.url + "/validate", rv)
    assert status == 200 and out["response"] == {"uid": rv["request"]["uid"], "allowed": True}


async def test_warnings_are_returned(running: Running, client):
    rv = review(playground(**{"serverless.llmaz.io/min-replicas": "1"}))
    status, out = await post(client, running.url + "/mutate", rv)
    assert status == 200 and out["response"]["allowed"] is True
    assert any("GPU" in w for w in out["response"]["warnings"]), out


async def test_out_of_scope_request_is_allowed_unchanged(running: Running, client):
    rv = review(playground(), operation="DELETE")
    status, out = await post(client, running.url + "/mutate", rv)
    assert status == 200 and out["response"] == {"uid": rv["request"]["uid"], "allowed": True}


async def test_large_legal_update(running: Running, client):
    blob = "x" * (1536 * 1024)
    new = playground(**{"example.com/blob": blob})
    old = playground(**{"example.com/blob": blob, MANAGED: "true"})
    rv = review(new, operation="UPDATE", old=old)
    data = json.dumps(rv).encode()
    assert 3 * 1024 * 1024 < len(data) < 8 * 1024 * 1024
    status, out = await post(client, running.url + "/mutate", data=data)
    assert status == 200
    assert out["response"]["uid"] == rv["request"]["uid"] and out["response"]["allowed"] is True


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("body", [b"{not json", b"", "\u00e9".encode("latin-1"), b"[" * 100_000],
                         ids=["syntax", "empty", "not-utf8", "too-deep"])
async def test_malformed_json_is_400(running: Running, client, body):
    status, out = await post(client, running.url + "/mutate", data=body)
    assert status == 400 and "not valid JSON" in out["error"]


@pytest.mark.parametrize("payload", [
    {"hello": "world"},
    [1, 2, 3],
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"object": {}}},
    {"apiVersion": "v1", "kind": "ConfigMap", "request": {"uid": "abc"}},
], ids=["object", "array", "no-request", "no-uid", "other-kind"])
async def test_not_an_admission_review_is_400(running: Running, client, payload):
    status, out = await post(client, running.url + "/validate", payload)
    assert status == 400 and out["error"]


async def test_review_with_uid_but_bad_object_is_denied_not_400(running: Running, client):
    """Documented decision: a uid makes the review answerable, so the answer is a clean denial."""
    rv = review("this is not an object")
    status, out = await post(client, running.url + "/mutate", rv)
    assert status == 200
    resp = out["response"]
    assert resp["uid"] == rv["request"]["uid"] and resp["allowed"] is False
    assert resp["status"]["code"] == 400 and "request.object" in resp["status"]["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1"])
async def test_wrong_content_type_is_415(running: Running, client, content_type):
    status, out = await post(client, running.url + "/mutate", review(playground()), content_type=content_type)
    assert status == 415 and "application/json" in out["error"]


async def test_json_with_charset_utf8_is_accepted(running: Running, client):
    status, out = await post(client, running.url + "/mutate", review(playground()),
                             content_type="application/json; charset=utf-8")
    assert status == 200 and out["response"]["allowed"] is True


async def test_oversize_body_is_413(running: Running, client):
    status, out = await post(client, running.url + "/mutate", data=b" " * (9 * 1024 * 1024))
    assert status == 413 and "limit" in out["error"]


async def test_oversize_chunked_body_is_413(running: Running, client):
    async def chunks():
        for _ in range(9):
            yield b" " * (1024 * 1024)

    status, out = await post(client, running.url + "/mutate", data=chunks())
    assert status == 413 and "limit" in out["error"]
    # The server is still fine afterwards.
    status, _ = await post(client, running.url + "/mutate", review(playground()))
    assert status == 200


async def test_stalled_body_is_408(tls_dir, client_ssl):
    tls = ReloadingSSLContext(tls_dir / "tls.crt", tls_dir / "tls.key")
    server = WebhookServer(Brain(), read_timeout=0.2)
    await server.start("127.0.0.1", 0, tls)
    never = asyncio.Event()

    async def stalled():
        yield b'{"apiVersion":'
        await never.wait()

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as session:
            status, out = await asyncio.wait_for(
                post(session, f"https://127.0.0.1:{server.port}/mutate", data=stalled()), 5)
        assert status == 408 and out["error"]
    finally:
        await server.stop(grace=0.5)


async def test_unknown_route_and_method_are_json(running: Running, client):
    async with client.get(running.url + "/mutate") as resp:
        assert resp.status == 405 and (await resp.json())["error"]
    async with client.get(running.url + "/nope") as resp:
        assert resp.status == 404 and (await resp.json())["error"]


class Exploding(Brain):
    def mutate(self, req):
        raise RuntimeError("secret internal detail")

    def validate(self, req):
        raise Internal("model catalog unavailable")


async def test_brain_exception_is_a_clean_denial(tls_dir, client, caplog):
    r = await start(tls_dir, Exploding())
    try:
        with caplog.at_level(logging.ERROR, logger="llmaz_serverless.server"):
            rv = review(playground())
            status, out = await post(client, r.url + "/mutate", rv)
        assert status == 200
        resp = out["response"]
        uid = rv["request"]["uid"]
        assert resp["uid"] == uid and resp["allowed"] is False and resp["status"]["code"] == 500
        assert resp["status"]["message"] == f"llmaz-serverless internal error (see webhook logs, request uid {uid})"
        assert "secret" not in json.dumps(out)
        logged = [rec for rec in caplog.records if getattr(rec, "fields", {}).get("uid") == uid]
        assert logged and logged[0].exc_info is not None  # the stack trace goes to the log

        # Internal's message is meant to be shown.
        status, out = await post(client, r.url + "/validate", rv)
        assert status == 200 and "model catalog unavailable" in out["response"]["status"]["message"]
    finally:
        await r.server.stop(grace=1)


# ------------------------------------------------------------------------------------------ probes, metrics


async def test_health_and_readiness(running: Running, client):
    running.health.set("policy", False, "policy not loaded")
    base = running.probe_url
    async with client.get(base + "/healthz") as resp:
        assert resp.status == 200
    async with client.get(base + "/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["ready"] is False and "policy" in body["reason"]
    running.health.set("policy", True)
    async with client.get(base + "/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["ready"] is True
    # The plain-HTTP port serves probes and metrics only; the webhook port admission only.
    async with client.post(running.probe_url + "/mutate", json=review(playground())) as resp:
        assert resp.status in (404, 405)
    for path in ("/healthz", "/readyz", "/metrics"):
        async with client.get(running.url + path) as resp:
            assert resp.status == 404, path


async def test_metrics(running: Running, client):
    await post(client, running.url + "/mutate", review(playground()))
    await post(client, running.url + "/validate", data=b"{")
    for base in (running.probe_url,):
        async with client.get(base + "/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        assert ('llmaz_serverless_admissions_total{endpoint="mutate",kind="Playground",'
                'operation="CREATE",result="patched"}') in text
        assert 'result="bad_request"' in text
        assert 'llmaz_serverless_admission_duration_seconds_bucket{endpoint="mutate",le="0.0005"}' in text
        for name in ("llmaz_serverless_policy_valid", "llmaz_serverless_policy_errors_total",
                     "llmaz_serverless_cert_not_after_seconds"):
            assert name in text


# ------------------------------------------------------------------------------------------ load, shutdown


async def test_concurrent_requests(running: Running, client):
    reviews = [review(playground()) for _ in range(200)]
    results = await asyncio.gather(*(post(client, running.url + "/mutate", rv) for rv in reviews))
    assert all(status == 200 for status, _ in results)
    assert [out["response"]["uid"] for _, out in results] == [rv["request"]["uid"] for rv in reviews]
    assert all(out["response"]["allowed"] for _, out in results)


async def test_graceful_stop_lets_in_flight_request_finish(tls_dir, client, client_ssl):
    r = await start(tls_dir)
    rv = review(playground())
    data = json.dumps(rv).encode()
    release = asyncio.Event()

    async def slow_body():
        yield data[:10]
        await release.wait()
        yield data[10:]

    in_flight = asyncio.create_task(post(client, r.url + "/mutate", data=slow_body()))
    for _ in range(200):
        if r.server.inflight:
            break
        await asyncio.sleep(0.01)
    assert r.server.inflight == 1
    stopping = asyncio.create_task(r.server.stop(grace=5))
    await asyncio.sleep(0.2)
    assert not stopping.done()
    assert not r.health.ready()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as other:
        with pytest.raises(aiohttp.ClientConnectorError):  # the HTTPS listener is closed: no new connections
            await other.get(r.url + "/healthz")
        async with other.get(r.probe_url + "/readyz") as resp:  # probes keep answering, "not ready"
            assert resp.status == 503 and "shutting down" in (await resp.json())["reason"]
    release.set()
    status, out = await in_flight
    assert status == 200 and out["response"]["uid"] == rv["request"]["uid"]
    await asyncio.wait_for(stopping, 5)


# ------------------------------------------------------------------------------------------ the serve CLI


def serve_cmd(tls_dir: Path, policy: Path, port: int, metrics_port: int) -> list[str]:
    return [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port), "--cert-mode", "files", "--cert-dir", str(tls_dir),
            "--policy-file", str(policy), "--no-reconcile", "--log-level", "debug", "--shutdown-grace", "2"]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


async def test_serve_cli_end_to_end(tls_dir, client, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("gpu:\n  cooldownPeriod: 900\n")
    port, metrics_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        *serve_cmd(tls_dir, policy, port, metrics_port), cwd=REPO, env=child_env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(150):
            try:
                async with client.get(f"http://127.0.0.1:{metrics_port}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert proc.returncode is None, (await proc.stderr.read()).decode()
            await asyncio.sleep(0.1)
        else:
            pytest.fail("serve never became ready")
        rv = review(playground())
        status, out = await post(client, f"https://127.0.0.1:{port}/mutate", rv)
        assert status == 200 and out["response"]["uid"] == rv["request"]["uid"]
        patched = jsonpatch.apply_patch(rv["request"]["object"], decode_patch(out["response"]))
        resolved = json.loads(patched["metadata"]["annotations"]["serverless.llmaz.io/resolved"])
        assert resolved["cooldownPeriod"] == 900  # the policy file is in force
        proc.send_signal(signal.SIGTERM)
        stderr = (await asyncio.wait_for(proc.stderr.read(), 10)).decode()
        assert await asyncio.wait_for(proc.wait(), 10) == 0, stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    admission = [rec for rec in lines if rec.get("uid") == rv["request"]["uid"]]
    assert admission and admission[0]["result"] == "patched" and admission[0]["kind"] == "Playground"
    assert {"ts", "level", "logger", "msg", "duration_ms"} <= set(admission[0])


@pytest.mark.parametrize("case", ["bad-policy", "missing-cert"])
def test_serve_cli_refuses_bad_configuration(tls_dir, tmp_path, case):
    policy = tmp_path / "policy.yaml"
    policy.write_text("gpu:\n  cooldownPerod: 900\n" if case == "bad-policy" else "")
    cert_dir = tls_dir if case == "bad-policy" else tmp_path / "empty"
    proc = subprocess.run(serve_cmd(cert_dir, policy, free_port(), free_port()), cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("llmaz-serverless serve: ")
    if case == "bad-policy":
        assert "--policy-file" in message and "cooldownPerod" in message
    else:
        assert "tls.crt" in message and "not found" in message


# ------------------------------------------------------------------------------------------ connection bounds


async def start_limited(tls_dir: Path, limits: Limits, brain: Brain | None = None, lanes: Lanes | None = None
                        ) -> Running:
    tls = ReloadingSSLContext(tls_dir / "tls.crt", tls_dir / "tls.key")
    server = WebhookServer(brain or Brain(), Health(), limits=limits, lanes=lanes)
    await server.start("127.0.0.1", 0, tls, metrics_port=0)
    return Running(server, server.health)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) before ``within`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except asyncio.TimeoutError:
        return False


async def test_silent_connections_are_closed_after_the_header_deadline(tls_dir, client_ssl):
    r = await start_limited(tls_dir, Limits(max_connections=50, header_timeout=0.5, idle_timeout=30))
    try:
        # One client completes TLS and sends half a request head; one never starts TLS at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", r.server.port, ssl=client_ssl,
                                                       server_hostname="localhost")
        writer.write(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", r.server.port)
        assert await closed_by_server(reader, 5)
        assert await closed_by_server(raw_reader, 5)
        guard = r.server.sites[0].guard
        assert guard.timed_out >= 1 and not guard.conns   # the TLS-less one may go by the handshake timeout
        writer.close()
        raw_writer.close()
    finally:
        await r.server.stop(grace=1)


async def test_idle_keep_alive_connection_is_closed(tls_dir, client_ssl):
    r = await start_limited(tls_dir, Limits(max_connections=50, header_timeout=30, idle_timeout=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.server.port, ssl=client_ssl,
                                                       server_hostname="localhost")
        body = json.dumps(review(playground())).encode()
        writer.write(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        # The answer came; the keep-alive connection now idles past idle_timeout and is closed.
        assert await closed_by_server(reader, 5)
        writer.close()
    finally:
        await r.server.stop(grace=1)


async def test_connection_cap_refuses_then_evicts_silent_connections(tls_dir, client_ssl):
    r = await start_limited(tls_dir, Limits(max_connections=3, header_timeout=30, idle_timeout=30))
    guard = r.server.sites[0].guard
    try:
        held = [await asyncio.open_connection("127.0.0.1", r.server.port) for _ in range(3)]
        for _ in range(100):
            if len(guard.conns) == 3:
                break
            await asyncio.sleep(0.01)
        # At the cap, and every connection younger than EVICT_AFTER: the newcomer is refused.
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", r.server.port)
        assert await closed_by_server(extra_reader, 5)
        assert guard.rejected == 1 and guard.evicted == 0
        extra_writer.close()
        # Once they are older, a real client takes the place of the oldest silent one and is answered.
        await asyncio.sleep(EVICT_AFTER + 0.1)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as session:
            status, out = await post(session, r.url + "/mutate", review(playground()))
        assert status == 200 and out["response"]["allowed"] is True
        assert guard.evicted == 1
        assert await closed_by_server(held[0][0], 5)
        for _, w in held:
            w.close()
    finally:
        await r.server.stop(grace=1)


async def test_slow_body_is_not_cut_by_the_header_deadline(tls_dir, client, client_ssl):
    r = await start_limited(tls_dir, Limits(max_connections=50, header_timeout=0.3, idle_timeout=30))
    try:
        rv = review(playground())
        data = json.dumps(rv).encode()

        async def slow_body():
            yield data[:10]
            await asyncio.sleep(1.5)   # past the head deadline: the request is in a handler, never cut
            yield data[10:]

        status, out = await post(client, r.url + "/mutate", data=slow_body())
        assert status == 200 and out["response"]["uid"] == rv["request"]["uid"]
    finally:
        await r.server.stop(grace=1)


class _SlowBrain(Brain):
    """Rules that never finish for one object name (a stand-in for a pathological object)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def mutate(self, req):  # type: ignore[override]
        if req.name == "stuck":
            self.release.wait(10)
        return super().mutate(req)


async def test_rules_past_the_deadline_are_denied_and_others_still_answered(tls_dir, client):
    release = threading.Event()
    r = await start_limited(tls_dir, Limits(), brain=_SlowBrain(release), lanes=Lanes(deadline=0.5))
    try:
        stuck = review(playground())
        stuck["request"]["name"] = "stuck"
        pending = asyncio.create_task(post(client, r.url + "/mutate", stuck))
        status, out = await post(client, r.url + "/mutate", review(playground()))
        assert status == 200 and out["response"]["allowed"] is True
        status, out = await pending
        resp = out["response"]
        assert status == 200 and resp["allowed"] is False and resp["uid"] == stuck["request"]["uid"]
        assert resp["status"]["code"] == 500 and "longer than 0.5s" in resp["status"]["message"]
        assert r.server.lanes.timeouts == 1
    finally:
        release.set()
        await r.server.stop(grace=1)


def test_large_requests_take_their_own_lane():
    lanes = Lanes(large_body=1000)
    try:
        assert lanes.lane(1000) == "small" and lanes.lane(1001) == "large"
    finally:
        lanes.shutdown()


async def test_large_lane_runs_in_a_process_that_is_replaced_past_the_deadline():
    lanes = Lanes(large_body=10, deadline=3.0)
    try:
        await asyncio.to_thread(lanes.warm)   # as serve does at start-up: the first request does not pay for it
        brain = Brain()
        ok = review(playground())
        req = AdmissionRequest.from_review(ok)
        result = await lanes.run(1000, brain.mutate, req)
        assert result.allowed and result.patch
        bad = AdmissionRequest.from_review(review(playground(**{"serverless.llmaz.io/min-replicas": "abc"})))
        denied = await lanes.run(1000, brain.validate, bad)
        assert not denied.allowed and "min-replicas" in denied.message
        with pytest.raises(Denied, match="too big"):     # a Denied raised in the process comes back as one
            await lanes.run(1000, _Denier().mutate, req)
        # A rule that never returns: the worker process is killed at the deadline and the next request is served
        # by a fresh one.
        with pytest.raises(AdmissionTimeout):
            await lanes.run(1000, _sleeping_brain().mutate, req)
        assert lanes._process.restarts == 1
        assert (await lanes.run(1000, brain.mutate, req)).allowed
    finally:
        lanes.shutdown()


def _sleeping_brain() -> Brain:
    return _Sleeper()


class _Denier(Brain):
    def mutate(self, req):  # type: ignore[override]
        raise Denied.one("metadata.annotations", "too big")


class _Sleeper(Brain):
    def mutate(self, req):  # type: ignore[override]
        import time as _time
        _time.sleep(60)


async def test_request_bodies_in_flight_are_bounded(tls_dir, client):
    tls = ReloadingSSLContext(tls_dir / "tls.crt", tls_dir / "tls.key")
    server = WebhookServer(Brain(), Health(), body_budget=64 * 1024)
    await server.start("127.0.0.1", 0, tls, metrics_port=0)
    url = f"https://127.0.0.1:{server.port}/mutate"
    try:
        rv = review(playground())
        data = json.dumps(rv).encode()
        release = asyncio.Event()

        async def slow_body():       # no Content-Length: reserves the whole body limit (8 MiB > 64 KiB)
            yield data[:10]
            await release.wait()
            yield data[10:]

        async with client.post(url, data=slow_body(), headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 503 and "in flight" in (await resp.json())["error"]
        status, out = await post(client, url, rv)     # a sized ordinary request fits
        assert status == 200 and out["response"]["allowed"] is True
        big = json.dumps(review(playground(**{"example.com/blob": "x" * 70_000}))).encode()
        async with client.post(url, data=io.BytesIO(big), headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 503
        release.set()
        assert server.app[BODIES].used == 0
    finally:
        await server.stop(grace=1)
