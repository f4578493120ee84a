"""Certificates for the live stack's components: one CA, and per component a key pair with the names it is
reached by (webhooks, the aggregated metrics API, KEDA's gRPC between operator and adapter)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.controlplane import _new_cert, _write_cert, _write_key


@dataclass(frozen=True)
class CertPair:
    dir: Path
    cert: Path
    key: Path
    ca: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()


class StackPKI:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmaz-serverless-live-stack-ca")])
        self.ca = root / "ca.crt"
        _write_cert(self.ca, _new_cert(self._name, self._key.public_key(), self._name, self._key, ca=True))
        _write_key(root / "ca.key", self._key)

    def issue(self, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",),
              common_name: str | None = None, cert_name: str = "tls.crt", key_name: str = "tls.key",
              ca_name: str = "ca.crt") -> CertPair:
        """A key pair in ``<root>/<name>/`` (``tls.crt``, ``tls.key``, ``ca.crt``: the layout controller-runtime
        and KEDA read from a cert dir), usable for serving and as a client."""
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = _new_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)]),
                         key.public_key(), self._name, self._key, sans=sans,
                         usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        _write_cert(d / cert_name, cert)
        _write_key(d / key_name, key)
        (d / ca_name).write_bytes(self.ca.read_bytes())
        return CertPair(d, d / cert_name, d / key_name, d / ca_name)
