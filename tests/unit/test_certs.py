"""certs: the CA, serving certs, renewal, bundles, hot reload, the manager and the dev CLI."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import logging
import os
import socket
import ssl
import threading
from contextlib import contextmanager

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import VerificationError

from certs import authority, cli as certs_cli
from certs.authority import KeyPair
from certs.manager import (
    CA_BUNDLE_KEY,
    CA_CERT_KEY,
    CA_KEY_KEY,
    MUTATING,
    VALIDATING,
    CertManager,
    Conflict,
    ManagerConfig,
    SecretState,
    WebhookConfigState,
    write_pair,
)
from certs.reload import ReloadingSSLContext

UTC = dt.timezone.utc
T0 = dt.datetime(2030, 1, 1, tzinfo=UTC)
NS = "llmaz-serverless-system"
SVC = "llmaz-serverless-webhook"


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return authority.generate_ca("test-ca", dt.timedelta(days=365), now=T0)


# ------------------------------------------------------------------------------------ authority


def test_ca_is_a_self_signed_p256_ca(ca):
    cert = ca.cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign
    assert cert.public_key().curve.name == "secp256r1"
    assert authority.issued_by(cert, cert)  # self-signed, signature checks out
    assert cert.not_valid_after_utc == T0 + dt.timedelta(days=365)
    assert cert.not_valid_before_utc <= T0
    assert authority.key_matches(ca.cert_pem, ca.key_pem)


def test_serving_cert_chains_to_the_ca_for_every_name(ca):
    names = authority.serving_dns_names(SVC, NS) + ["localhost"]
    leaf = authority.issue_serving_cert(ca, names, ["127.0.0.1", "::1"], dt.timedelta(days=30), now=T0)
    cert = leaf.cert
    dns, ips = authority.san_names(cert)
    assert dns == names
    assert ips == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert authority.issued_by(cert, ca.cert)
    assert authority.key_matches(leaf.cert_pem, leaf.key_pem)
    at = T0 + dt.timedelta(days=1)
    # RFC 5280 path validation plus the host name check, as a TLS client does it.
    for host in names + ["127.0.0.1", "::1"]:
        authority.verify_server_cert(leaf.cert_pem, ca.cert_pem, host, now=at)
    with pytest.raises(VerificationError):
        authority.verify_server_cert(leaf.cert_pem, ca.cert_pem, "evil.example", now=at)
    with pytest.raises(VerificationError):  # expired
        authority.verify_server_cert(leaf.cert_pem, ca.cert_pem, "localhost", now=T0 + dt.timedelta(days=31))
    other = authority.generate_ca("other", dt.timedelta(days=365), now=T0)
    with pytest.raises(VerificationError):
        authority.verify_server_cert(leaf.cert_pem, other.cert_pem, "localhost", now=at)
    assert not authority.issued_by(cert, other.cert)


def test_serving_cert_never_outlives_its_ca(ca):
    late = ca.cert.not_valid_after_utc - dt.timedelta(days=3)
    leaf = authority.issue_serving_cert(ca, ["x"], (), dt.timedelta(days=30), now=late)
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    with pytest.raises(ValueError):
        authority.issue_serving_cert(ca, ["x"], (), dt.timedelta(days=30), now=ca.cert.not_valid_after_utc)
    with pytest.raises(ValueError):
        authority.issue_serving_cert(ca, [], (), dt.timedelta(days=30), now=T0)
    with pytest.raises(ValueError):  # a leaf cannot issue
        leaf2 = authority.issue_serving_cert(ca, ["x"], (), dt.timedelta(days=30), now=T0)
        authority.issue_serving_cert(leaf2, ["y"], (), dt.timedelta(days=1), now=T0)


def test_renewal_thresholds():
    c = authority.generate_ca("r", dt.timedelta(days=300), now=T0).cert
    nb, na = c.not_valid_before_utc, c.not_valid_after_utc
    life = na - nb
    assert authority.remaining_fraction(c, nb) == 1.0
    assert authority.remaining_fraction(c, na) == 0.0
    assert authority.remaining_fraction(c, na + dt.timedelta(days=1)) == 0.0
    assert authority.remaining_fraction(c, nb + life / 2) == pytest.approx(0.5)
    two_thirds = nb + life * 2 / 3
    assert authority.renewal_time(c) == pytest.approx(two_thirds, abs=dt.timedelta(seconds=1))
    assert not authority.needs_renewal(c, two_thirds - dt.timedelta(minutes=1))
    assert authority.needs_renewal(c, two_thirds + dt.timedelta(minutes=1))
    assert authority.needs_renewal(c, na + dt.timedelta(seconds=1))
    # a custom threshold: renew with half the life left
    assert authority.needs_renewal(c, nb + life * 0.51, renew_at_fraction=0.5)
    assert not authority.needs_renewal(c, nb + life * 0.49, renew_at_fraction=0.5)
    # PEM input works as well as a parsed certificate
    assert authority.remaining_fraction(authority.cert_to_pem(c), nb + life / 4) == pytest.approx(0.75)


def test_bundle_merge_keeps_old_and_new_drops_expired_and_dedups():
    old = authority.generate_ca("old", dt.timedelta(days=100), now=T0)
    new = authority.generate_ca("new", dt.timedelta(days=365), now=T0 + dt.timedelta(days=60))
    now = T0 + dt.timedelta(days=60)

    b1 = authority.bundle_merge(None, old.cert_pem, now=T0)
    assert [c.subject.rfc4514_string() for c in authority.load_certs(b1)] == ["CN=old"]
    b2 = authority.bundle_merge(b1, new.cert_pem, now=now)
    assert [c.subject.rfc4514_string() for c in authority.load_certs(b2)] == ["CN=old", "CN=new"]
    # idempotent and stable: merging again changes nothing
    assert authority.bundle_merge(b2, new.cert_pem, now=now) == b2
    assert authority.bundle_merge(b2, old.cert_pem, now=now) == b2
    assert authority.bundle_merge(b2 + b2, new.cert_pem, now=now) == b2  # duplicates collapse
    # str input, garbage blocks are skipped
    junk = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    assert authority.bundle_merge((junk + b2).decode(), new.cert_pem.decode(), now=now) == b2
    # once the old CA has expired it leaves the bundle
    after = T0 + dt.timedelta(days=101)
    b3 = authority.bundle_merge(b2, new.cert_pem, now=after)
    assert [c.subject.rfc4514_string() for c in authority.load_certs(b3)] == ["CN=new"]
    # a leaf from either CA verifies against the merged bundle
    leaf_old = authority.issue_serving_cert(old, ["svc"], (), dt.timedelta(days=10), now=now)
    leaf_new = authority.issue_serving_cert(new, ["svc"], (), dt.timedelta(days=10), now=now)
    for leaf in (leaf_old, leaf_new):
        authority.verify_server_cert(leaf.cert_pem, b2, "svc", now=now + dt.timedelta(hours=1))


def test_serving_dns_names():
    assert authority.serving_dns_names("hook", "ns") == [
        "hook",
        "hook.ns",
        "hook.ns.svc",
        "hook.ns.svc.cluster.local",
    ]


# ----------------------------------------------------------------------------------------- reload


def _pair(ca: KeyPair, cn: str) -> KeyPair:
    return authority.issue_serving_cert(ca, [cn, "localhost"], ["127.0.0.1"], dt.timedelta(days=1))


@pytest.fixture()
def live_ca() -> KeyPair:
    return authority.generate_ca("live-ca", dt.timedelta(days=30))


class EchoTLSServer:
    """A tiny threaded TLS echo server on 127.0.0.1 that wraps every connection with ``context``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)
        self._accept.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                while True:
                    data = conn.recv(1024)
                    if not data:
                        return
                    conn.sendall(data)
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self._stop.set()
        self._accept.join(timeout=5)
        self.sock.close()
        for t in self._threads:
            t.join(timeout=5)


@contextmanager
def tls_server(context: ssl.SSLContext):
    server = EchoTLSServer(context)
    try:
        yield server
    finally:
        server.close()


def _connect(port: int, cafile: str) -> ssl.SSLSocket:
    client = ssl.create_default_context(cafile=cafile)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return client.wrap_socket(sock, server_hostname="localhost")


def _served_cn(conn: ssl.SSLSocket) -> str:
    der = conn.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.rfc4514_string()


def _write(path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_reload_swaps_the_cert_on_the_same_context_and_keeps_open_connections(tmp_path, live_ca, caplog):
    cafile = tmp_path / "ca.crt"
    cafile.write_bytes(live_ca.cert_pem)
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    rc = ReloadingSSLContext(crt, key)
    assert not rc.loaded and rc.not_after is None  # files not there yet: no error
    ctx = rc.context
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3   # the default; "1.2" is an option

    a = _pair(live_ca, "a.test")
    write_pair(str(tmp_path), a)
    assert rc.maybe_reload() is True
    assert rc.loaded and rc.not_after == a.cert.not_valid_after_utc
    assert rc.maybe_reload() is False  # unchanged files: no reload

    with tls_server(rc.context) as server:
        first = _connect(server.port, str(cafile))
        assert _served_cn(first) == "CN=a.test"
        first.sendall(b"ping")
        assert first.recv(4) == b"ping"

        b = _pair(live_ca, "b.test")
        write_pair(str(tmp_path), b)
        assert rc.maybe_reload() is True
        assert rc.context is ctx  # the same object the server holds
        second = _connect(server.port, str(cafile))
        assert _served_cn(second) == "CN=b.test"
        # the connection opened before the reload is still alive and still on the old cert
        first.sendall(b"pong")
        assert first.recv(4) == b"pong"
        assert _served_cn(first) == "CN=a.test"

        # a mismatched pair (cert C with key B) is refused; B keeps serving
        c = _pair(live_ca, "c.test")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="certs.reload"):
            _write(crt, c.cert_pem)
            assert rc.maybe_reload() is False
            assert rc.maybe_reload() is False  # same bad state: no second warning
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "does not match" in warnings[0].getMessage()
        assert rc.loaded and rc.fingerprint == authority.fingerprint(b.cert_pem)
        third = _connect(server.port, str(cafile))
        assert _served_cn(third) == "CN=b.test"

        # a half-written cert file is refused too
        _write(crt, c.cert_pem[: len(c.cert_pem) // 2])
        _write(key, c.key_pem)
        assert rc.maybe_reload() is False
        fourth = _connect(server.port, str(cafile))
        assert _served_cn(fourth) == "CN=b.test"

        # completing the pair loads it
        _write(crt, c.cert_pem)
        assert rc.maybe_reload() is True
        fifth = _connect(server.port, str(cafile))
        assert _served_cn(fifth) == "CN=c.test"
        for conn in (first, second, third, fourth, fifth):
            conn.close()


async def test_watch_polls_and_picks_up_changes(tmp_path, live_ca):
    write_pair(str(tmp_path), _pair(live_ca, "one.test"))
    seen = []
    rc = ReloadingSSLContext(tmp_path / "tls.crt", tmp_path / "tls.key", on_reload=lambda r: seen.append(r.fingerprint))
    assert rc.loaded and len(seen) == 1
    stop = asyncio.Event()
    task = rc.start_watching(interval=0.02, stop_event=stop)
    two = _pair(live_ca, "two.test")
    write_pair(str(tmp_path), two)
    for _ in range(200):
        if rc.fingerprint == authority.fingerprint(two.cert_pem):
            break
        await asyncio.sleep(0.01)
    assert rc.fingerprint == authority.fingerprint(two.cert_pem)
    assert seen[-1] == rc.fingerprint
    stop.set()
    await asyncio.wait_for(task, 2)


# ---------------------------------------------------------------------------------------- manager


class FakeKube:
    """An in-memory stand-in for the few API calls of the manager, with resourceVersions."""

    def __init__(self, webhook_names=("mutate.serverless.llmaz.io",)) -> None:
        self.lock = threading.Lock()
        self.rv = 0
        self.secrets: dict[tuple[str, str], tuple[str, dict[str, bytes]]] = {}
        self.configs: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        for kind in (MUTATING, VALIDATING):
            self.configs[(kind, "llmaz-serverless")] = (self._next(), {n: "" for n in webhook_names})
        self.writes: list[tuple] = []
        self.hooks: dict[str, list] = {}

    def _next(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _hook(self, name: str, *args) -> None:
        queue = self.hooks.get(name)
        if queue:
            queue.pop(0)(*args)

    # KubeAPI
    def read_secret(self, namespace, name):
        self._hook("read_secret", namespace, name)
        with self.lock:
            got = self.secrets.get((namespace, name))
            return None if got is None else SecretState(got[0], dict(got[1]))

    def create_secret(self, namespace, name, data, labels):
        self._hook("create_secret", namespace, name)
        with self.lock:
            if (namespace, name) in self.secrets:
                raise Conflict("exists")
            rv = self._next()
            self.secrets[(namespace, name)] = (rv, dict(data))
            self.writes.append(("create_secret", name))
            return SecretState(rv, dict(data))

    def replace_secret(self, namespace, name, resource_version, data, labels):
        self._hook("replace_secret", namespace, name)
        with self.lock:
            cur = self.secrets[(namespace, name)]
            if cur[0] != resource_version:
                raise Conflict("stale resourceVersion")
            rv = self._next()
            self.secrets[(namespace, name)] = (rv, dict(data))
            self.writes.append(("replace_secret", name))
            return SecretState(rv, dict(data))

    def read_webhook_config(self, kind, name):
        self._hook("read_webhook_config", kind, name)
        with self.lock:
            got = self.configs.get((kind, name))
            return None if got is None else WebhookConfigState(got[0], dict(got[1]))

    def patch_ca_bundles(self, kind, name, resource_version, ca_bundles):
        self._hook("patch_ca_bundles", kind, name)
        with self.lock:
            rv, hooks = self.configs[(kind, name)]
            if rv != resource_version:
                raise Conflict("stale resourceVersion")
            assert set(ca_bundles) <= set(hooks)
            hooks = {**hooks, **ca_bundles}
            self.configs[(kind, name)] = (self._next(), hooks)
            self.writes.append(("patch", kind, name))

    # helpers for the tests
    def put_secret(self, data: dict[str, bytes]) -> None:
        with self.lock:
            self.secrets[(NS, "llmaz-serverless-ca")] = (self._next(), dict(data))

    def secret(self) -> dict[str, bytes]:
        return self.secrets[(NS, "llmaz-serverless-ca")][1]

    def injected(self, kind: str) -> list[bytes]:
        return [base64.b64decode(v) for v in self.configs[(kind, "llmaz-serverless")][1].values()]


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _manager(kube, tmp_path, name, clock, **kw) -> CertManager:
    cfg = ManagerConfig(namespace=NS, cert_dir=str(tmp_path / name), ip_addresses=("127.0.0.1",), **kw)
    return CertManager(cfg, kube, clock=clock)


def _ca_of(data) -> bytes:
    return data[CA_CERT_KEY]


async def test_manager_bootstraps_ca_injects_and_issues(tmp_path):
    kube = FakeKube(webhook_names=("mutate.serverless.llmaz.io", "second.serverless.llmaz.io"))
    clock = Clock(T0)
    a = _manager(kube, tmp_path, "a", clock)
    b = _manager(kube, tmp_path, "b", clock)
    assert not a.ready

    delay = await a.reconcile_once()
    await b.reconcile_once()
    assert a.ready and b.ready
    # one CA for both replicas
    assert a.ca == b.ca
    assert _ca_of(kube.secret()) == a.ca.cert_pem
    assert authority.key_matches(kube.secret()[CA_CERT_KEY], kube.secret()[CA_KEY_KEY])
    assert kube.secret()[CA_BUNDLE_KEY] == a.ca.cert_pem
    # every webhook of both configurations carries the bundle
    for kind in (MUTATING, VALIDATING):
        assert kube.injected(kind) == [a.ca.cert_pem, a.ca.cert_pem]
    # each replica has its own serving cert on disk, valid for the service names
    crt_a = (tmp_path / "a" / "tls.crt").read_bytes()
    crt_b = (tmp_path / "b" / "tls.crt").read_bytes()
    assert crt_a != crt_b
    assert oct(os.stat(tmp_path / "a" / "tls.key").st_mode & 0o777) == "0o600"
    for crt in (crt_a, crt_b):
        for host in authority.serving_dns_names(SVC, NS) + ["127.0.0.1"]:
            authority.verify_server_cert(crt, kube.secret()[CA_BUNDLE_KEY], host, now=T0 + dt.timedelta(hours=1))
    # next wake-up: bounded by max_interval
    assert delay == a.config.max_interval

    # steady state: no writes at all
    writes = list(kube.writes)
    await a.reconcile_once()
    await b.reconcile_once()
    assert kube.writes == writes
    assert (tmp_path / "a" / "tls.crt").read_bytes() == crt_a


async def test_manager_create_race_uses_the_winners_ca(tmp_path):
    kube = FakeKube()
    winner = authority.generate_ca("winner", dt.timedelta(days=365), now=T0)

    def other_replica_creates_first(*_):
        kube.put_secret({CA_CERT_KEY: winner.cert_pem, CA_KEY_KEY: winner.key_pem, CA_BUNDLE_KEY: winner.cert_pem})

    kube.hooks["create_secret"] = [other_replica_creates_first]
    m = _manager(kube, tmp_path, "a", Clock(T0))
    await m.reconcile_once()
    assert m.ca.cert_pem == winner.cert_pem
    assert _ca_of(kube.secret()) == winner.cert_pem
    assert authority.issued_by((tmp_path / "a" / "tls.crt").read_bytes(), winner.cert_pem)
    assert kube.injected(MUTATING) == [winner.cert_pem]


async def test_manager_rotates_the_ca_keeping_the_old_one_in_the_bundle(tmp_path):
    kube = FakeKube()
    clock = Clock(T0)
    a = _manager(kube, tmp_path, "a", clock)
    await a.reconcile_once()
    old_ca = a.ca
    old_leaf = (tmp_path / "a" / "tls.crt").read_bytes()

    # 250 days later less than a third of the 365-day CA is left; the serving cert (renewed on
    # its own schedule) is fresh because the loop renewed it along the way.
    clock.now = T0 + dt.timedelta(days=250)
    write_pair(str(tmp_path / "a"), authority.issue_serving_cert(old_ca, a.config.dns_names(), ["127.0.0.1"], dt.timedelta(days=30), now=clock.now))
    leaf_before = (tmp_path / "a" / "tls.crt").read_bytes()
    await a.reconcile_once()
    assert a.ca != old_ca
    bundle = kube.secret()[CA_BUNDLE_KEY]
    assert [authority.fingerprint(c) for c in authority.load_certs(bundle)] == [
        authority.fingerprint(old_ca.cert_pem),
        authority.fingerprint(a.ca.cert_pem),
    ]
    assert kube.injected(MUTATING) == [bundle] and kube.injected(VALIDATING) == [bundle]
    # the still-fresh serving cert from the old CA is kept (trusted through the bundle) ...
    assert (tmp_path / "a" / "tls.crt").read_bytes() == leaf_before != old_leaf
    authority.verify_server_cert(leaf_before, bundle, SVC, now=clock.now)
    # ... and replaced by one from the new CA at its normal renewal
    clock.now += dt.timedelta(days=21)
    await a.reconcile_once()
    new_leaf = (tmp_path / "a" / "tls.crt").read_bytes()
    assert authority.issued_by(new_leaf, a.ca.cert_pem)
    # once the old CA has expired it leaves the bundle
    clock.now = T0 + dt.timedelta(days=366)
    await a.reconcile_once()
    assert authority.load_certs(kube.secret()[CA_BUNDLE_KEY]) == [a.ca.cert]
    assert kube.injected(MUTATING) == [a.ca.cert_pem]


async def test_manager_rotation_conflict_adopts_the_other_replicas_ca(tmp_path):
    kube = FakeKube()
    clock = Clock(T0)
    a = _manager(kube, tmp_path, "a", clock)
    await a.reconcile_once()
    old = a.ca
    clock.now = T0 + dt.timedelta(days=250)
    theirs = authority.generate_ca("theirs", dt.timedelta(days=365), now=clock.now)

    def other_replica_rotates_first(*_):
        kube.put_secret({
            CA_CERT_KEY: theirs.cert_pem,
            CA_KEY_KEY: theirs.key_pem,
            CA_BUNDLE_KEY: authority.bundle_merge(old.cert_pem, theirs.cert_pem, clock.now),
        })

    kube.hooks["replace_secret"] = [other_replica_rotates_first]
    await a.reconcile_once()
    assert a.ca.cert_pem == theirs.cert_pem
    assert _ca_of(kube.secret()) == theirs.cert_pem
    assert len(authority.load_certs(kube.injected(MUTATING)[0])) == 2


async def test_manager_injects_the_fresh_bundle_not_a_stale_one(tmp_path):
    """A rotation by another replica between our CA read and our injection must not be undone."""
    kube = FakeKube()
    clock = Clock(T0)
    a = _manager(kube, tmp_path, "a", clock)
    await a.reconcile_once()
    newer = authority.generate_ca("newer", dt.timedelta(days=365), now=T0)
    rotated = authority.bundle_merge(a.ca.cert_pem, newer.cert_pem, T0)

    def other_replica_rotates_and_injects(kind, name):
        kube.put_secret({CA_CERT_KEY: newer.cert_pem, CA_KEY_KEY: newer.key_pem, CA_BUNDLE_KEY: rotated})
        for k in (MUTATING, VALIDATING):
            rv, hooks = kube.configs[(k, "llmaz-serverless")]
            kube.configs[(k, "llmaz-serverless")] = (kube._next(), {n: base64.b64encode(rotated).decode() for n in hooks})

    # a believes in the old bundle (self.bundle) but must not write it back
    a.bundle = a.ca.cert_pem
    kube.hooks["read_webhook_config"] = [other_replica_rotates_and_injects]
    await a._inject()
    assert kube.injected(MUTATING) == [rotated] and kube.injected(VALIDATING) == [rotated]


async def test_manager_retries_a_conflicting_patch(tmp_path):
    kube = FakeKube()

    def someone_touches_the_config(kind, name):
        rv, hooks = kube.configs[(kind, name)]
        kube.configs[(kind, name)] = (kube._next(), hooks)

    kube.hooks["patch_ca_bundles"] = [someone_touches_the_config]
    m = _manager(kube, tmp_path, "a", Clock(T0))
    await m.reconcile_once()
    assert kube.injected(MUTATING) == [m.ca.cert_pem] and kube.injected(VALIDATING) == [m.ca.cert_pem]


async def test_manager_without_webhook_configs_and_with_a_reloader(tmp_path, caplog):
    kube = FakeKube()
    kube.configs.clear()
    cfg = ManagerConfig(namespace=NS, cert_dir=str(tmp_path / "c"))
    reloader = ReloadingSSLContext(os.path.join(cfg.cert_dir, "tls.crt"), os.path.join(cfg.cert_dir, "tls.key"))
    m = CertManager(cfg, kube, reloader=reloader)  # real clock: the reloader serves real TLS
    with caplog.at_level(logging.WARNING, logger="certs.manager"):
        await m.reconcile_once()
        await m.reconcile_once()
    assert sum("not found" in r.getMessage() for r in caplog.records) == 2  # once per configuration
    assert reloader.loaded and m.ready
    assert reloader.fingerprint == authority.fingerprint(m.leaf.cert_pem)


async def test_run_loop_backs_off_on_errors_and_stops(tmp_path):
    kube = FakeKube()
    calls = []

    def boom(*_):
        calls.append(1)
        raise RuntimeError("apiserver unavailable")

    kube.hooks["read_secret"] = [boom]
    cfg = ManagerConfig(namespace=NS, cert_dir=str(tmp_path / "r"), backoff_initial=0.01, max_interval=0.05, min_interval=0.01)
    m = CertManager(cfg, kube, clock=Clock(T0))
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    for _ in range(300):
        if m.ready:
            break
        await asyncio.sleep(0.01)
    assert calls == [1] and m.ready and m.last_error is None
    stop.set()
    await asyncio.wait_for(task, 2)


# -------------------------------------------------------------------------------------------- CLI


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="llmaz-serverless")
    certs_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_dev_cli_writes_usable_files(tmp_path, capsys):
    out = tmp_path / "dev"
    assert _run_cli(["certs", "dev", "--out", str(out), "--dns", "webhook.example", "--ip", "10.1.2.3"]) == 0
    printed = capsys.readouterr().out
    for name in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
        assert (out / name).is_file()
        assert str(out / name) in printed
    assert oct(os.stat(out / "tls.key").st_mode & 0o777) == "0o600"
    assert oct(os.stat(out / "ca.key").st_mode & 0o777) == "0o600"
    bundle_line = next(line for line in printed.splitlines() if line.startswith("caBundle: "))
    assert base64.b64decode(bundle_line.split(" ", 1)[1]) == (out / "ca.crt").read_bytes()

    ca_pem, crt = (out / "ca.crt").read_bytes(), (out / "tls.crt").read_bytes()
    hosts = ["localhost", "127.0.0.1", "::1", "webhook.example", "10.1.2.3"] + authority.serving_dns_names(
        "llmaz-serverless-webhook", "llmaz-serverless-system"
    )
    for host in hosts:
        authority.verify_server_cert(crt, ca_pem, host)
    assert authority.key_matches(crt, (out / "tls.key").read_bytes())

    # and a real TLS handshake with them, the client verifying against ca.crt
    rc = ReloadingSSLContext(out / "tls.crt", out / "tls.key")
    with tls_server(rc.context) as server:
        conn = _connect(server.port, str(out / "ca.crt"))
        conn.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        conn.close()


def test_dev_cli_through_the_main_command(tmp_path, capsys):
    from webhook import cli

    assert cli.main(["certs", "dev", "--out", str(tmp_path), "--service", "hook", "--namespace", "ns"]) == 0
    dns, ips = authority.san_names((tmp_path / "tls.crt").read_bytes())
    assert {"localhost", "hook", "hook.ns", "hook.ns.svc", "hook.ns.svc.cluster.local"} == set(dns)
    assert "127.0.0.1" in ips
    assert cli.main(["certs"]) == 2  # a certs subcommand is required: usage, exit 2
    assert _run_cli(["certs", "dev", "--out", str(tmp_path), "--ip", "not-an-ip"]) == 2


def test_tls12_option_offers_no_cbc_and_refuses_tls11(tmp_path, live_ca):
    write_pair(str(tmp_path), _pair(live_ca, "localhost"))
    rc = ReloadingSSLContext(tmp_path / "tls.crt", tmp_path / "tls.key", min_version="1.2")
    assert rc.context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in rc.context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and not [c for c in tls12 if "CBC" in c or "SHA" == c.rsplit("-", 1)[-1]]
    assert all(c.startswith("ECDHE-") for c in tls12)
    cafile = tmp_path / "ca.crt"
    cafile.write_bytes(live_ca.cert_pem)
    with tls_server(rc.context) as server:
        cbc_only = ssl.create_default_context(cafile=str(cafile))
        cbc_only.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc_only.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA")
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                cbc_only.wrap_socket(sock, server_hostname="localhost")
    with pytest.raises(ValueError, match="1.2, 1.3"):
        ReloadingSSLContext(tmp_path / "tls.crt", tmp_path / "tls.key", min_version="1.1")
