"""Serving-certificate rotation under load: the real ``WebhookServer`` over TLS with a
``ReloadingSSLContext`` on files (loopback only, no control plane).

A few client threads send AdmissionReviews back to back for a bounded time: some over one keep-alive
connection each for the whole run, some over a new connection per request. Half-way through, a new
pair issued by a NEW CA is written to the cert dir (the clients trust a bundle with the old and the new
CA: the overlapping trust a CA rotation relies on) and the file watcher reloads it. Expected:

- not a single request fails (HTTP error, TLS error, reset, wrong answer);
- every connection opened after the reload presents the new certificate (peer fingerprint), every
  connection opened before the write the old one;
- the keep-alive connections opened before the swap keep working on their old session.

The second test writes a mismatched pair (certificate and key that do not belong together): the
server keeps serving the old certificate, nothing fails, and a correct pair written afterwards is
picked up.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certs import authority
from certs.authority import KeyPair
from certs.manager import atomic_write, write_pair
from certs.reload import ReloadingSSLContext
from webhook.admission import Brain
from webhook.server import Health, WebhookServer

DURATION = 8.0            # seconds of load in the rotation test
SWAP_AT = 3.0             # seconds into the load when the new pair is written
WATCH_INTERVAL = 0.05     # the file watcher's poll interval (production: 10 s)
SPLIT_PAUSE = 0.3         # pause between the key and the cert rename: the watcher sees a mismatched pair
KEEPALIVE_CLIENTS = 3
NEW_CONNECTION_CLIENTS = 3
REQUEST_TIMEOUT = 5.0

PLAYGROUND = {
    "apiVersion": "inference.llmaz.io/v1alpha1", "kind": "Playground",
    "metadata": {"name": "chat", "namespace": "ai"},
    "spec": {"replicas": 0, "modelClaim": {"modelName": "m"},
             "backendRuntimeConfig": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def review_body(uid: str) -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid,
        "kind": {"group": "inference.llmaz.io", "version": "v1alpha1", "kind": "Playground"},
        "resource": {"group": "inference.llmaz.io", "version": "v1alpha1", "resource": "playgrounds"},
        "name": "chat", "namespace": "ai", "operation": "CREATE", "object": PLAYGROUND,
        "userInfo": {"username": "system:serviceaccount:kube-system:generic"}, "dryRun": False,
    }}).encode()


def fingerprint_of(sock: ssl.SSLSocket) -> str:
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def issue(ca: KeyPair) -> KeyPair:
    return authority.issue_serving_cert(ca, ["localhost"], ["127.0.0.1"], validity=_dt.timedelta(days=1))


# ============================================================================================ load


@dataclass
class Conn:
    kind: str            # "keepalive" | "new"
    started: float       # monotonic, before connect()
    connected: float     # monotonic, after the handshake
    fingerprint: str
    requests: int = 0


@dataclass
class Load:
    """Client threads (blocking http.client, so the clients do not share the server's event loop)."""

    port: int
    trust: ssl.SSLContext
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    conns: list[Conn] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ok: int = 0
    #: monotonic time of every successful request, with the kind of connection it used
    done: list[tuple[float, str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _connect(self, kind: str) -> tuple[http.client.HTTPSConnection, Conn]:
        t0 = time.monotonic()
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.trust, timeout=REQUEST_TIMEOUT)
        conn.connect()  # TLS handshake, hostname (IP SAN) and chain verified against the bundle
        c = Conn(kind, t0, time.monotonic(), fingerprint_of(conn.sock))
        with self.lock:
            self.conns.append(c)
        return conn, c

    def _request(self, conn: http.client.HTTPSConnection, endpoint: str) -> None:
        uid = str(uuid.uuid4())
        conn.request("POST", endpoint, body=review_body(uid), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise AssertionError(f"HTTP {resp.status}: {raw[:300]!r}")
        answer = json.loads(raw)["response"]
        if answer["uid"] != uid or answer["allowed"] is not True:
            raise AssertionError(f"unexpected answer {answer}")
        if resp.will_close:
            raise AssertionError("the server closed a keep-alive connection")

    def _fail(self, kind: str, exc: BaseException) -> None:
        with self.lock:
            self.failures.append(f"{kind} at {time.monotonic():.3f}: {type(exc).__name__}: {exc}")

    def _succeeded(self, kind: str, c: Conn) -> None:
        c.requests += 1
        with self.lock:
            self.ok += 1
            self.done.append((time.monotonic(), kind))

    def keepalive_client(self, i: int) -> None:
        """One connection for the whole run; any reconnect or error counts as a failure."""
        conn: http.client.HTTPSConnection | None = None
        n = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn, c = self._connect("keepalive")
                    sock = conn.sock
                if conn.sock is not sock:
                    raise AssertionError("keep-alive connection was replaced")
                self._request(conn, "/mutate" if n % 2 == 0 else "/validate")
                self._succeeded("keepalive", c)
            except Exception as exc:  # noqa: BLE001 - recorded; start over on a fresh connection
                self._fail("keepalive", exc)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
            n += 1
        if conn is not None:
            conn.close()

    def new_connection_client(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                conn, c = self._connect("new")
                try:
                    self._request(conn, "/mutate" if n % 2 == 0 else "/validate")
                    self._succeeded("new", c)
                finally:
                    conn.close()
            except Exception as exc:  # noqa: BLE001
                self._fail("new", exc)
                time.sleep(0.01)
            n += 1

    def start(self, keepalive: int = KEEPALIVE_CLIENTS, new: int = NEW_CONNECTION_CLIENTS) -> None:
        for i in range(keepalive):
            self.threads.append(threading.Thread(target=self.keepalive_client, args=(i,), daemon=True))
        for i in range(new):
            self.threads.append(threading.Thread(target=self.new_connection_client, args=(i,), daemon=True))
        for t in self.threads:
            t.start()

    async def finish(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + 3 * REQUEST_TIMEOUT
        for t in self.threads:
            await asyncio.to_thread(t.join, max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"client threads did not stop: {alive}"

    def requests_between(self, t0: float, t1: float, kind: str | None = None) -> int:
        return sum(1 for t, k in self.done if t0 <= t < t1 and (kind is None or k == kind))


# ============================================================================================ server


class Served:
    def __init__(self, cert_dir: Path) -> None:
        self.cert_dir = cert_dir
        self.reloads: list[tuple[float, str]] = []   # (monotonic time, fingerprint) of each load
        self.tls = ReloadingSSLContext(cert_dir / "tls.crt", cert_dir / "tls.key", on_reload=self._on_reload)
        self.health = Health()
        self.health.add_check("tls", lambda: self.tls.loaded, "no certificate")
        self.server = WebhookServer(Brain(), self.health)
        self.stop_watch = asyncio.Event()
        self.watcher: asyncio.Task | None = None

    def _on_reload(self, ctx: ReloadingSSLContext) -> None:
        self.reloads.append((time.monotonic(), ctx.fingerprint or ""))

    async def __aenter__(self) -> "Served":
        await self.server.start("127.0.0.1", 0, self.tls)
        self.watcher = self.tls.start_watching(WATCH_INTERVAL, self.stop_watch)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop_watch.set()
        if self.watcher is not None:
            await asyncio.wait_for(self.watcher, 5)
        await self.server.stop(grace=2)

    async def wait_reloads(self, n: int, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while len(self.reloads) < n:
            assert time.monotonic() < deadline, f"no reload within {timeout}s (reloads: {len(self.reloads)})"
            await asyncio.sleep(0.01)
        return self.reloads[n - 1][0]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    old_ca = authority.generate_ca("llmaz-serverless-ca", _dt.timedelta(days=2))
    new_ca = authority.generate_ca("llmaz-serverless-ca", _dt.timedelta(days=2))
    old, new = issue(old_ca), issue(new_ca)
    cert_dir = tmp_path / "certs"
    write_pair(str(cert_dir), old)
    trust = ssl.create_default_context(cadata=(old_ca.cert_pem + new_ca.cert_pem).decode())
    assert trust.check_hostname and trust.verify_mode == ssl.CERT_REQUIRED
    return {"old_ca": old_ca, "new_ca": new_ca, "old": old, "new": new, "cert_dir": cert_dir, "trust": trust,
            "old_fp": authority.fingerprint(old.cert_pem), "new_fp": authority.fingerprint(new.cert_pem)}


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[cert-rotation] {text}")


# ============================================================================================ tests


async def test_rotation_to_a_new_ca_under_load(pki, caplog, capsys):
    caplog.set_level(logging.INFO, logger="certs.reload")
    cert_dir: Path = pki["cert_dir"]
    old_fp, new_fp = pki["old_fp"], pki["new_fp"]
    assert authority.issued_by(pki["new"].cert_pem, pki["new_ca"].cert_pem)
    assert not authority.issued_by(pki["new"].cert_pem, pki["old_ca"].cert_pem)

    async with Served(cert_dir) as served:
        assert served.tls.fingerprint == old_fp and len(served.reloads) == 1
        load = Load(served.server.port, pki["trust"])
        t_begin = time.monotonic()
        load.start()
        try:
            await asyncio.sleep(SWAP_AT)
            # Write the new pair the way a second writer would: key first, then (after a pause the
            # watcher will notice) the certificate, each with an atomic rename.
            t_write = time.monotonic()

            def write_split() -> None:
                atomic_write(os.path.join(cert_dir, "tls.key"), pki["new"].key_pem, 0o600)
                time.sleep(SPLIT_PAUSE)
                atomic_write(os.path.join(cert_dir, "tls.crt"), pki["new"].cert_pem, 0o644)

            await asyncio.to_thread(write_split)
            t_reload = await served.wait_reloads(2)
            assert served.reloads[1][1] == new_fp == served.tls.fingerprint
            await asyncio.sleep(max(0.0, t_begin + DURATION - time.monotonic()))
        finally:
            await load.finish()
        t_end = time.monotonic()
        # Control: without the overlapping bundle (old CA only) the new certificate is refused, so it
        # is the bundle that kept the clients working.
        old_only = ssl.create_default_context(cadata=pki["old_ca"].cert_pem.decode())
        conn = http.client.HTTPSConnection("127.0.0.1", served.server.port, context=old_only, timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(conn.connect)
        conn.close()

    # Zero failures.
    assert not load.failures, f"{len(load.failures)} failed requests:\n" + "\n".join(load.failures[:20])
    # The watcher did see the half-written (mismatched) state and refused it.
    rejected = [r for r in caplog.records if "not reloading TLS pair" in r.getMessage()]
    assert rejected, "the watcher never saw the key/cert mismatch between the two renames"
    assert served.reloads[1][0] >= t_write + SPLIT_PAUSE * 0.9

    # Certificates seen per connection.
    before = [c for c in load.conns if c.connected < t_write]
    after = [c for c in load.conns if c.started > t_reload]
    between = [c for c in load.conns if c not in before and c not in after]
    assert before and after
    assert {c.fingerprint for c in before} == {old_fp}
    assert {c.fingerprint for c in after} == {new_fp}, "a connection opened after the reload got the old cert"
    assert {c.fingerprint for c in between} <= {old_fp, new_fp}
    # The keep-alive connections: opened before the swap, never replaced, still on the old certificate,
    # and they kept answering after the reload.
    keepalive = [c for c in load.conns if c.kind == "keepalive"]
    assert len(keepalive) == KEEPALIVE_CLIENTS
    assert all(c.fingerprint == old_fp and c.connected < t_write for c in keepalive)
    ka_after = load.requests_between(t_reload, t_end, "keepalive")
    assert ka_after > 0 and all(c.requests > 0 for c in keepalive)
    new_after = load.requests_between(t_reload, t_end, "new")
    assert new_after > 0

    during = load.requests_between(t_write, t_reload)
    report(capsys, f"{load.ok} requests in {t_end - t_begin:.1f}s ({load.ok / (t_end - t_begin):.0f}/s), "
                   f"0 failed; {len(load.conns)} TLS connections ({len(before)} before the write with the old "
                   f"cert, {len(after)} after the reload with the new one, {len(between)} in between); "
                   f"{during} requests while the pair was being replaced ({(t_reload - t_write) * 1000:.0f} ms); "
                   f"{ka_after} requests on {len(keepalive)} pre-swap keep-alive connections after the reload")


async def test_mismatched_pair_keeps_the_old_certificate(pki, caplog, capsys):
    caplog.set_level(logging.INFO, logger="certs.reload")
    cert_dir: Path = pki["cert_dir"]
    old_fp, new_fp = pki["old_fp"], pki["new_fp"]
    stray_key = issue(pki["new_ca"]).key_pem  # a valid key, but not the one of pki["new"]
    assert not authority.key_matches(pki["new"].cert_pem, stray_key)

    async with Served(cert_dir) as served:
        load = Load(served.server.port, pki["trust"])
        t_begin = time.monotonic()
        load.start(keepalive=2, new=2)
        try:
            await asyncio.sleep(1.0)
            t_bad = time.monotonic()
            await asyncio.to_thread(write_pair, str(cert_dir), KeyPair(pki["new"].cert_pem, stray_key))
            deadline = time.monotonic() + 5
            while not any("does not match" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the watcher never looked at the mismatched pair"
                await asyncio.sleep(0.01)
            t_seen = time.monotonic()
            await asyncio.sleep(1.5)  # keep serving with the bad pair on disk
            assert len(served.reloads) == 1 and served.tls.fingerprint == old_fp
            assert served.health.ready()
            t_fix = time.monotonic()
            await asyncio.to_thread(write_pair, str(cert_dir), pki["new"])
            t_reload = await served.wait_reloads(2)
            await asyncio.sleep(1.0)
        finally:
            await load.finish()
        t_end = time.monotonic()

    assert not load.failures, f"{len(load.failures)} failed requests:\n" + "\n".join(load.failures[:20])
    while_bad = [c for c in load.conns if c.started > t_seen and c.connected < t_fix]
    assert while_bad and {c.fingerprint for c in while_bad} == {old_fp}
    after = [c for c in load.conns if c.started > t_reload]
    assert after and {c.fingerprint for c in after} == {new_fp}
    assert served.reloads[1][1] == new_fp
    report(capsys, f"mismatched pair on disk for {t_fix - t_bad:.1f}s: {load.requests_between(t_bad, t_fix)} "
                   f"requests, {len(while_bad)} new connections all on the old cert, 0 failed; "
                   f"{load.ok} requests in {t_end - t_begin:.1f}s overall")
