"""Self-managed certificates: the webhook runs its own small CA inside the cluster.

What one :class:`CertManager` (one per replica) does, in a loop (:meth:`CertManager.run`):

1. **CA** — kept in the Secret ``llmaz-serverless-ca`` (service namespace) under ``ca.crt``,
   ``ca.key`` and ``ca-bundle.crt``. All replicas share it:

   - absent: create it; on 409 Conflict another replica won the race, re-read and use its CA;
   - less than a third of the CA's life left (or unusable): rotate with a ``replace`` that carries
     the ``resourceVersion`` read (optimistic concurrency); on conflict re-read and use the winner's;
   - ``ca-bundle.crt`` holds the current CA *and* older CAs that have not expired yet, so during a
     rotation serving certs signed by either CA are trusted.

2. **Inject** — the bundle goes, base64, into ``clientConfig.caBundle`` of every webhook of the
   MutatingWebhookConfiguration and ValidatingWebhookConfiguration (both ``llmaz-serverless`` by
   default). Only ``caBundle`` is patched (strategic merge on the ``name`` key, conditional on the
   ``resourceVersion`` read) and only when it differs, so a steady state does no writes. The Secret
   is re-read *after* the configuration: a bundle injected by a replica that just rotated the CA is
   then always already visible in the Secret, and a stale replica never overwrites it.

3. **Serve** — each replica issues its own serving certificate from the current CA (key generated
   in memory) and writes ``tls.crt``/``tls.key`` into the cert dir with atomic renames;
   :class:`certs.reload.ReloadingSSLContext` picks the pair up. The certificate is renewed at two
   thirds of its life, or when the SANs change or its issuer left the bundle. It is *not* reissued
   merely because the CA rotated: the old CA stays in the bundle until it expires, and letting
   serving certs move to the new CA at their normal renewal gives every apiserver ample time to see
   the new bundle first.

Default validities (see :class:`ManagerConfig`): CA 365 days, rotated when less than a third
(~122 days) remains; serving certs 30 days, renewed after 20. The loop wakes at the next renewal or
after ``max_interval`` (10 min; a cheap check that re-injects a ``caBundle`` wiped by a re-applied
manifest), and backs off exponentially (2 s .. 5 min) on API errors.

Kubernetes calls go through a small :class:`KubeAPI` interface; :class:`KubernetesAPI` implements
it with the official ``kubernetes`` client, run in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import json
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

from certs import authority
from certs.authority import KeyPair

log = logging.getLogger(__name__)

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
CA_BUNDLE_KEY = "ca-bundle.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

MUTATING = "mutating"
VALIDATING = "validating"

MANAGED_BY_LABELS = {
    "app.kubernetes.io/name": "llmaz-serverless",
    "app.kubernetes.io/component": "webhook-ca",
    "app.kubernetes.io/managed-by": "llmaz-serverless",
}


# --------------------------------------------------------------------------------- API surface


class Conflict(Exception):
    """HTTP 409: the object exists already / the resourceVersion is stale."""


@dataclass(frozen=True)
class SecretState:
    resource_version: str
    data: Mapping[str, bytes]


@dataclass(frozen=True)
class WebhookConfigState:
    resource_version: str
    #: webhook name -> caBundle as stored (base64 text, "" when unset), in the configuration's order
    ca_bundles: Mapping[str, str]


class KubeAPI(Protocol):
    """The few blocking calls the manager needs (run with ``asyncio.to_thread``)."""

    def read_secret(self, namespace: str, name: str) -> Optional[SecretState]: ...

    def create_secret(
        self, namespace: str, name: str, data: Mapping[str, bytes], labels: Mapping[str, str]
    ) -> SecretState: ...

    def replace_secret(
        self,
        namespace: str,
        name: str,
        resource_version: str,
        data: Mapping[str, bytes],
        labels: Mapping[str, str],
    ) -> SecretState: ...

    def read_webhook_config(self, kind: str, name: str) -> Optional[WebhookConfigState]: ...

    def patch_ca_bundles(
        self, kind: str, name: str, resource_version: str, ca_bundles: Mapping[str, str]
    ) -> None: ...


def load_api_client():
    """An ``ApiClient`` from the in-cluster service account, else from the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class KubernetesAPI:
    """:class:`KubeAPI` over the official client. Reads use raw JSON (``_preload_content=False``)
    so the code does not depend on how a client version models ``caBundle`` (bytes vs. str)."""

    def __init__(self, api_client=None, request_timeout: float = 15.0) -> None:
        from kubernetes import client

        self._api_client = api_client if api_client is not None else load_api_client()
        self._core = client.CoreV1Api(self._api_client)
        self._adm = client.AdmissionregistrationV1Api(self._api_client)
        self._timeout = request_timeout

    @staticmethod
    def _status(exc: Exception) -> int | None:
        return getattr(exc, "status", None)

    def _call(self, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason or "conflict")) from exc
            raise
        data = resp.data
        return json.loads(data) if data else {}

    @staticmethod
    def _secret_state(obj: Mapping) -> SecretState:
        raw = obj.get("data") or {}
        return SecretState(
            resource_version=str(obj.get("metadata", {}).get("resourceVersion", "")),
            data={k: base64.b64decode(v) for k, v in raw.items()},
        )

    @staticmethod
    def _secret_body(
        namespace: str, name: str, data: Mapping[str, bytes], labels: Mapping[str, str], rv: str | None
    ) -> dict:
        meta: dict = {"name": name, "namespace": namespace, "labels": dict(labels)}
        if rv is not None:
            meta["resourceVersion"] = rv
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
        }

    def read_secret(self, namespace: str, name: str) -> Optional[SecretState]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._call(self._core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._secret_state(obj)

    def create_secret(self, namespace, name, data, labels) -> SecretState:
        body = self._secret_body(namespace, name, data, labels, None)
        return self._secret_state(self._call(self._core.create_namespaced_secret, namespace, body))

    def replace_secret(self, namespace, name, resource_version, data, labels) -> SecretState:
        body = self._secret_body(namespace, name, data, labels, resource_version)
        return self._secret_state(
            self._call(self._core.replace_namespaced_secret, name, namespace, body)
        )

    def read_webhook_config(self, kind: str, name: str) -> Optional[WebhookConfigState]:
        from kubernetes.client.exceptions import ApiException

        fn = (
            self._adm.read_mutating_webhook_configuration
            if kind == MUTATING
            else self._adm.read_validating_webhook_configuration
        )
        try:
            obj = self._call(fn, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return WebhookConfigState(
            resource_version=str(obj.get("metadata", {}).get("resourceVersion", "")),
            ca_bundles={
                w["name"]: (w.get("clientConfig") or {}).get("caBundle") or ""
                for w in obj.get("webhooks") or []
            },
        )

    def patch_ca_bundles(self, kind, name, resource_version, ca_bundles) -> None:
        # A dict body is sent as a strategic merge patch by every client version; ``webhooks``
        # merges on ``name``, so only caBundle changes. The resourceVersion makes it conditional.
        body = {
            "metadata": {"resourceVersion": resource_version},
            "webhooks": [{"name": n, "clientConfig": {"caBundle": b}} for n, b in ca_bundles.items()],
        }
        fn = (
            self._adm.patch_mutating_webhook_configuration
            if kind == MUTATING
            else self._adm.patch_validating_webhook_configuration
        )
        self._call(fn, name, body)


# ------------------------------------------------------------------------------------- manager


@dataclass
class ManagerConfig:
    namespace: str
    service_name: str = "llmaz-serverless-webhook"
    cert_dir: str = "/certs"
    ca_secret_name: str = "llmaz-serverless-ca"
    #: configuration names; None (or "") skips that kind
    mutating_webhook_config: Optional[str] = "llmaz-serverless"
    validating_webhook_config: Optional[str] = "llmaz-serverless"
    extra_dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    ca_common_name: str = "llmaz-serverless-ca"
    ca_validity: _dt.timedelta = _dt.timedelta(days=365)
    leaf_validity: _dt.timedelta = _dt.timedelta(days=30)
    #: renew (CA and serving certs) when less than this fraction of the lifetime remains
    renew_at_fraction: float = authority.RENEW_AT_FRACTION
    #: longest sleep between two reconciles (seconds)
    max_interval: float = 600.0
    #: shortest sleep between two successful reconciles (seconds)
    min_interval: float = 5.0
    backoff_initial: float = 2.0
    backoff_max: float = 300.0
    #: attempts per reconcile when optimistic concurrency keeps losing
    conflict_retries: int = 5

    def dns_names(self) -> list[str]:
        names = authority.serving_dns_names(self.service_name, self.namespace)
        return list(dict.fromkeys(names + list(self.extra_dns_names)))


class CertManager:
    """One replica's share of self-managed certificates. See the module docstring."""

    def __init__(
        self,
        config: ManagerConfig,
        api: KubeAPI,
        *,
        reloader=None,
        clock: Callable[[], _dt.datetime] = authority.utcnow,
    ) -> None:
        self.config = config
        self.api = api
        self.reloader = reloader  # a certs.reload.ReloadingSSLContext, or None
        self.clock = clock
        self.ca: KeyPair | None = None
        self.bundle: bytes = b""
        self.leaf: KeyPair | None = None
        self.injected = False  # every configured webhook configuration carries our bundle
        self.last_error: str | None = None
        self._missing_configs_logged: set[tuple[str, str]] = set()

    # ----------------------------------------------------------------------------- properties

    @property
    def cert_file(self) -> str:
        return os.path.join(self.config.cert_dir, TLS_CERT)

    @property
    def key_file(self) -> str:
        return os.path.join(self.config.cert_dir, TLS_KEY)

    @property
    def ready(self) -> bool:
        """A serving certificate is on disk (and loaded, when a reloader is attached) and the CA
        bundle has been injected into the webhook configurations that exist."""
        if self.leaf is None or not self.injected:
            return False
        if self.reloader is not None and not self.reloader.loaded:
            return False
        return os.path.exists(self.cert_file) and os.path.exists(self.key_file)

    # ---------------------------------------------------------------------------------- loop

    async def run(self, stop_event: asyncio.Event) -> None:
        """Reconcile until ``stop_event`` is set."""
        backoff = self.config.backoff_initial
        while not stop_event.is_set():
            try:
                delay = await self.reconcile_once()
                backoff = self.config.backoff_initial
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self.config.backoff_max)
                log.warning("certificate reconcile failed (retry in %.0fs): %s", delay, self.last_error)
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    async def reconcile_once(self) -> float:
        """Ensure the CA, inject the bundle, ensure this replica's serving cert.

        Returns the number of seconds until the next reconcile is due. Raises on API errors
        (after the serving cert was taken care of, if the CA could be had).
        """
        now = self.clock()
        self.ca, self.bundle = await self._ensure_ca(now)
        inject_error: Exception | None = None
        try:
            await self._inject()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # still get a serving cert on disk; report the error afterwards
            inject_error = exc
        self.leaf = self._ensure_leaf(self.ca, self.bundle, now)
        if self.reloader is not None:
            self.reloader.maybe_reload()
        if inject_error is not None:
            raise inject_error
        return self._next_delay(now)

    def _next_delay(self, now: _dt.datetime) -> float:
        due = [
            authority.renewal_time(c, self.config.renew_at_fraction)
            for c in (self.ca.cert_pem if self.ca else None, self.leaf.cert_pem if self.leaf else None)
            if c is not None
        ]
        delay = self.config.max_interval
        for t in due:
            delay = min(delay, (t - now).total_seconds())
        return max(self.config.min_interval, delay)

    # ------------------------------------------------------------------------------------ CA

    async def _ensure_ca(self, now: _dt.datetime) -> tuple[KeyPair, bytes]:
        cfg = self.config
        for _ in range(cfg.conflict_retries):
            secret = await asyncio.to_thread(self.api.read_secret, cfg.namespace, cfg.ca_secret_name)
            if secret is None:
                ca = authority.generate_ca(cfg.ca_common_name, cfg.ca_validity, now)
                data = _secret_data(ca, ca.cert_pem)
                try:
                    await asyncio.to_thread(
                        self.api.create_secret, cfg.namespace, cfg.ca_secret_name, data, MANAGED_BY_LABELS
                    )
                except Conflict:
                    log.info("CA Secret %s was created by another replica; using it", cfg.ca_secret_name)
                    continue
                log.info("created CA Secret %s/%s", cfg.namespace, cfg.ca_secret_name)
                return ca, ca.cert_pem

            current = _usable_ca(secret.data, now)
            stored_bundle = secret.data.get(CA_BUNDLE_KEY, b"")
            if current is None or authority.needs_renewal(current.cert_pem, now, cfg.renew_at_fraction):
                # Rotate: new CA, old one(s) stay in the bundle until they expire.
                new = authority.generate_ca(cfg.ca_common_name, cfg.ca_validity, now)
                old = stored_bundle + secret.data.get(CA_CERT_KEY, b"")
                bundle = authority.bundle_merge(old, new.cert_pem, now)
                action = "rotated" if current is not None else "replaced an unusable"
            else:
                new = current
                bundle = authority.bundle_merge(stored_bundle, current.cert_pem, now)
                if bundle == stored_bundle:
                    return current, bundle
                action = "refreshed the bundle of the"
            try:
                await asyncio.to_thread(
                    self.api.replace_secret,
                    cfg.namespace,
                    cfg.ca_secret_name,
                    secret.resource_version,
                    _secret_data(new, bundle),
                    MANAGED_BY_LABELS,
                )
            except Conflict:
                log.info("CA Secret changed concurrently; re-reading it")
                continue
            log.info("%s CA in Secret %s/%s", action, cfg.namespace, cfg.ca_secret_name)
            return new, bundle
        raise RuntimeError(f"CA Secret {cfg.ca_secret_name} kept changing; giving up this round")

    # -------------------------------------------------------------------------------- inject

    def _configs(self) -> list[tuple[str, str]]:
        out = []
        if self.config.mutating_webhook_config:
            out.append((MUTATING, self.config.mutating_webhook_config))
        if self.config.validating_webhook_config:
            out.append((VALIDATING, self.config.validating_webhook_config))
        return out

    async def _inject(self) -> None:
        cfg = self.config
        for kind, name in self._configs():
            for _ in range(cfg.conflict_retries):
                state = await asyncio.to_thread(self.api.read_webhook_config, kind, name)
                if state is None:
                    if (kind, name) not in self._missing_configs_logged:
                        log.warning("%sWebhookConfiguration %s not found; nothing to inject", kind.title(), name)
                        self._missing_configs_logged.add((kind, name))
                    break
                self._missing_configs_logged.discard((kind, name))
                # Re-read the Secret after the configuration (see the module docstring).
                secret = await asyncio.to_thread(self.api.read_secret, cfg.namespace, cfg.ca_secret_name)
                if secret is None:
                    raise RuntimeError(f"CA Secret {cfg.ca_secret_name} disappeared")
                bundle = secret.data.get(CA_BUNDLE_KEY) or secret.data.get(CA_CERT_KEY) or b""
                if not authority.load_certs(bundle):
                    raise RuntimeError(f"CA Secret {cfg.ca_secret_name} holds no CA bundle")
                want = base64.b64encode(bundle).decode("ascii")
                stale = {w: want for w, have in state.ca_bundles.items() if have != want}
                if not stale:
                    break
                try:
                    await asyncio.to_thread(
                        self.api.patch_ca_bundles, kind, name, state.resource_version, stale
                    )
                except Conflict:
                    continue
                log.info(
                    "injected the CA bundle into %sWebhookConfiguration %s (%s)",
                    kind.title(), name, ", ".join(stale),
                )
                break
            else:
                raise RuntimeError(f"{kind}WebhookConfiguration {name} kept changing; giving up this round")
        self.injected = True

    # --------------------------------------------------------------------------- serving cert

    def _ensure_leaf(self, ca: KeyPair, bundle: bytes, now: _dt.datetime) -> KeyPair:
        cfg = self.config
        reason = self._leaf_problem(bundle, now)
        if reason is None:
            assert self.leaf is not None
            return self.leaf
        leaf = authority.issue_serving_cert(
            ca, cfg.dns_names(), cfg.ip_addresses, cfg.leaf_validity, now
        )
        write_pair(cfg.cert_dir, leaf)
        log.info(
            "issued serving certificate (%s), expires %s",
            reason,
            authority.not_after(leaf.cert_pem).isoformat(),
        )
        return leaf

    def _leaf_problem(self, bundle: bytes, now: _dt.datetime) -> str | None:
        """Why the serving cert on disk cannot stay (None when it can); loads it into ``self.leaf``."""
        cfg = self.config
        try:
            with open(self.cert_file, "rb") as f:
                cert_pem = f.read()
            with open(self.key_file, "rb") as f:
                key_pem = f.read()
        except OSError:
            return "none on disk"
        try:
            cert = authority.load_cert(cert_pem)
        except ValueError:
            return "unparsable certificate on disk"
        if not authority.key_matches(cert, key_pem):
            return "key on disk does not match"
        if authority.needs_renewal(cert, now, cfg.renew_at_fraction):
            return "due for renewal"
        dns, ips = authority.san_names(cert)
        if set(dns) != set(cfg.dns_names()) or set(ips) != {str(_ip(i)) for i in cfg.ip_addresses}:
            return "names changed"
        cas = [c for c in authority.load_certs(bundle) if c.not_valid_after_utc > now]
        if not any(authority.issued_by(cert, c) for c in cas):
            return "issuer not in the CA bundle"
        self.leaf = KeyPair(cert_pem, key_pem)
        return None


# ------------------------------------------------------------------------------------- helpers


def _ip(value: str):
    import ipaddress

    return ipaddress.ip_address(value)


def _secret_data(ca: KeyPair, bundle: bytes) -> dict[str, bytes]:
    return {CA_CERT_KEY: ca.cert_pem, CA_KEY_KEY: ca.key_pem, CA_BUNDLE_KEY: bundle}


def _usable_ca(data: Mapping[str, bytes], now: _dt.datetime) -> KeyPair | None:
    cert_pem, key_pem = data.get(CA_CERT_KEY), data.get(CA_KEY_KEY)
    if not cert_pem or not key_pem:
        return None
    try:
        cert = authority.load_cert(cert_pem)
    except ValueError:
        return None
    if not authority.is_ca(cert) or authority.is_expired(cert, now) or not authority.key_matches(cert, key_pem):
        return None
    return KeyPair(bytes(cert_pem), bytes(key_pem))


def atomic_write(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_pair(cert_dir: str, pair: KeyPair, cert_name: str = TLS_CERT, key_name: str = TLS_KEY) -> None:
    """Write ``tls.key`` then ``tls.crt`` into ``cert_dir``, each with an atomic rename.

    Between the two renames the pair on disk does not match; a reloader rejects that state and
    loads the pair once both are in place (in-process reloads cannot observe it: this function
    does not yield to the event loop).
    """
    os.makedirs(cert_dir, exist_ok=True)
    atomic_write(os.path.join(cert_dir, key_name), pair.key_pem, 0o600)
    atomic_write(os.path.join(cert_dir, cert_name), pair.cert_pem, 0o644)
