"""An ``ssl.SSLContext`` whose serving certificate follows ``tls.crt``/``tls.key`` on disk.

The context object is created once and handed to the HTTPS server. When the files change (a
renewal by :mod:`certs.manager`, or the kubelet updating a mounted Secret), :meth:`maybe_reload`
calls ``load_cert_chain`` on that same context: OpenSSL copies the certificate into each connection
when the connection is set up, so new handshakes get the new certificate while connections that are
already open keep going with the old one.

A pair is validated before it replaces the loaded one (the key must belong to the certificate);
a half-written or mismatched pair is ignored with a warning and the previous pair keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import ssl
from typing import Callable, Optional

from certs import authority

log = logging.getLogger(__name__)

_Signature = tuple  # ((dev, ino, size, mtime_ns) of the cert file, same of the key file)

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites: forward-secret AEAD only (no CBC, no RSA key exchange). TLS 1.3 has AEAD suites only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class ReloadingSSLContext:
    """A TLS server context that reloads its certificate pair in place.

    ``min_version`` "1.3" (the default) or "1.2"; with 1.2 only ECDHE key exchange with AES-GCM or
    ChaCha20-Poly1305 is offered.

    ``loaded`` tells whether a pair has been loaded; ``not_after`` is the expiry of the loaded
    certificate, ``fingerprint`` its SHA-256. Missing files are not an error: in self-managed mode
    the certificate is written a moment after start-up, and the first :meth:`maybe_reload` after
    that loads it.
    """

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        on_reload: Optional[Callable[["ReloadingSSLContext"], None]] = None,
        min_version: str = "1.3",
    ) -> None:
        if min_version not in TLS_VERSIONS:
            raise ValueError(f"TLS minimum version must be one of {', '.join(TLS_VERSIONS)}, got {min_version!r}")
        self.cert_file = os.fspath(cert_file)
        self.key_file = os.fspath(key_file)
        self.on_reload = on_reload
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[min_version]
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION
        ctx.set_alpn_protocols(["http/1.1"])
        self.context = ctx
        self.loaded = False
        self.not_after: _dt.datetime | None = None
        self.fingerprint: str | None = None
        self.reload_count = 0
        self._signature: _Signature | None = None
        self._rejected: _Signature | None = None
        self._missing_logged = False
        self.maybe_reload()

    # ------------------------------------------------------------------------------ public API

    def maybe_reload(self) -> bool:
        """Load the pair on disk if it changed since the last look. True when a new pair was loaded."""
        sig = self._stat()
        if sig is None:
            if not self._missing_logged:
                log.info("TLS files %s / %s not present (yet)", self.cert_file, self.key_file)
                self._missing_logged = True
            return False
        self._missing_logged = False
        if sig == self._signature or sig == self._rejected:
            return False
        try:
            with open(self.cert_file, "rb") as f:
                cert_pem = f.read()
            with open(self.key_file, "rb") as f:
                key_pem = f.read()
        except OSError as exc:  # vanished between stat and open: a writer is busy, look again later
            log.debug("TLS files changed while reading: %s", exc)
            return False
        if self._stat() != sig:  # still being written; the next poll sees the settled files
            return False
        problem = self._validate(cert_pem, key_pem)
        if problem is None:
            try:
                self._load(cert_pem, key_pem)
            except (ssl.SSLError, OSError, ValueError) as exc:
                problem = f"OpenSSL refused the pair: {exc}"
        if problem is not None:
            self._rejected = sig
            log.warning(
                "not reloading TLS pair %s / %s: %s; %s",
                self.cert_file,
                self.key_file,
                problem,
                "keeping the previous certificate" if self.loaded else "no certificate loaded yet",
            )
            return False
        leaf = authority.load_certs(cert_pem)[0]
        self._signature = sig
        self._rejected = None
        self.loaded = True
        self.not_after = leaf.not_valid_after_utc
        self.fingerprint = authority.fingerprint(leaf)
        self.reload_count += 1
        log.info(
            "loaded TLS certificate %s (sha256 %s…, expires %s)",
            self.cert_file,
            self.fingerprint[:16],
            self.not_after.isoformat(),
        )
        if self.on_reload is not None:
            try:
                self.on_reload(self)
            except Exception:  # a callback must not break reloading
                log.exception("on_reload callback failed")
        return True

    async def watch(self, interval: float = 10.0, stop_event: asyncio.Event | None = None) -> None:
        """Poll the files every ``interval`` seconds until ``stop_event`` is set (or cancelled)."""
        while stop_event is None or not stop_event.is_set():
            try:
                self.maybe_reload()
            except Exception:  # keep polling whatever happens
                log.exception("TLS reload check failed")
            if stop_event is None:
                await asyncio.sleep(interval)
            else:
                try:
                    await asyncio.wait_for(stop_event.wait(), timeout=interval)
                except asyncio.TimeoutError:
                    pass

    def start_watching(
        self, interval: float = 10.0, stop_event: asyncio.Event | None = None
    ) -> "asyncio.Task[None]":
        """:meth:`watch` as a task on the running loop."""
        return asyncio.get_running_loop().create_task(
            self.watch(interval, stop_event), name="tls-reload-watch"
        )

    # ----------------------------------------------------------------------------- internals

    def _stat(self) -> _Signature | None:
        try:
            c = os.stat(self.cert_file)
            k = os.stat(self.key_file)
        except OSError:
            return None
        return (
            (c.st_dev, c.st_ino, c.st_size, c.st_mtime_ns),
            (k.st_dev, k.st_ino, k.st_size, k.st_mtime_ns),
        )

    @staticmethod
    def _validate(cert_pem: bytes, key_pem: bytes) -> str | None:
        certs = authority.load_certs(cert_pem)
        if not certs:
            return "no certificate in the cert file"
        try:
            authority.load_private_key(key_pem)
        except (ValueError, TypeError) as exc:
            return f"unparsable private key ({exc})"
        if not authority.key_matches(certs[0], key_pem):
            return "the private key does not match the certificate"
        return None

    def _load(self, cert_pem: bytes, key_pem: bytes) -> None:
        """``load_cert_chain`` with exactly the bytes that were validated.

        The bytes go through anonymous in-memory files (memfd), so a writer replacing the files
        between validation and loading cannot slip an unvalidated pair in, and nothing is written
        to disk (the root filesystem is read-only in the pod). Where memfd is unavailable the
        files are loaded from their paths.
        """
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None and os.path.isdir("/proc/self/fd"):
            fds: list[int] = []
            try:
                for name, data in (("tls.crt", cert_pem), ("tls.key", key_pem)):
                    fd = memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
                    fds.append(fd)
                    view = memoryview(data)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                self.context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
                return
            except OSError as exc:
                if isinstance(exc, ssl.SSLError):
                    raise
                log.debug("memfd loading unavailable (%s); loading from the paths", exc)
            finally:
                for fd in fds:
                    os.close(fd)
        self.context.load_cert_chain(self.cert_file, self.key_file)
