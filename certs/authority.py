"""A tiny certificate authority for the webhook: pure functions, no I/O.

Keys are ECDSA P-256 (small, fast, accepted by every kube-apiserver). All times are timezone-aware
UTC ``datetime`` objects; every function that depends on the clock takes ``now`` so that callers and
tests control time.

Renewal rule (the same for the CA and for serving certificates): a certificate is renewed once
less than ``renew_at_fraction`` (default one third) of its lifetime remains, i.e. at two thirds of
its life.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

PemLike = Union[bytes, str]
IPLike = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]

#: Default renewal threshold: renew when less than this fraction of the lifetime remains.
RENEW_AT_FRACTION = 1 / 3
#: ``notBefore`` is set this far in the past so that clocks that lag a little still accept a fresh cert.
BACKDATE = _dt.timedelta(minutes=5)
_CN_MAX = 64  # ub-common-name (RFC 5280)

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return load_cert(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return load_private_key(self.key_pem)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- helpers


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _now(now: _dt.datetime | None) -> _dt.datetime:
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        return now.replace(tzinfo=_dt.timezone.utc)
    return now.astimezone(_dt.timezone.utc)


def _as_bytes(pem: PemLike) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else bytes(pem)


def load_cert(cert: PemLike | x509.Certificate) -> x509.Certificate:
    """The first certificate of a PEM blob (or the certificate itself)."""
    if isinstance(cert, x509.Certificate):
        return cert
    return x509.load_pem_x509_certificate(_as_bytes(cert))


def load_certs(bundle: PemLike | None) -> list[x509.Certificate]:
    """Every parsable certificate of a PEM bundle, in order. Unparsable blocks are skipped (logged)."""
    if not bundle:
        return []
    out: list[x509.Certificate] = []
    for block in _PEM_CERT_RE.findall(_as_bytes(bundle)):
        try:
            out.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            log.warning("skipping an unparsable certificate in a CA bundle: %s", exc)
    return out


def load_private_key(key: PemLike):
    return serialization.load_pem_private_key(_as_bytes(key), password=None)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert: PemLike | x509.Certificate) -> str:
    """SHA-256 of the DER encoding, hex."""
    der = load_cert(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: PemLike | x509.Certificate, key_pem: PemLike) -> bool:
    """Whether ``key_pem`` is the private key of ``cert``. False on anything unparsable."""
    try:
        c = load_cert(cert)
        k = load_private_key(key_pem)
    except (ValueError, TypeError):
        return False
    return _public_der(c.public_key()) == _public_der(k.public_key())


def not_before(cert: PemLike | x509.Certificate) -> _dt.datetime:
    return load_cert(cert).not_valid_before_utc


def not_after(cert: PemLike | x509.Certificate) -> _dt.datetime:
    return load_cert(cert).not_valid_after_utc


def is_ca(cert: PemLike | x509.Certificate) -> bool:
    try:
        bc = load_cert(cert).extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def issued_by(leaf: PemLike | x509.Certificate, ca: PemLike | x509.Certificate) -> bool:
    """Whether ``leaf`` carries a valid signature of ``ca`` (names and signature; not time)."""
    try:
        load_cert(leaf).verify_directly_issued_by(load_cert(ca))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def san_names(cert: PemLike | x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses as strings) of the subjectAltName extension."""
    try:
        san = load_cert(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        list(san.get_values_for_type(x509.DNSName)),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


# ------------------------------------------------------------------------------------ life cycle


def lifetime(cert: PemLike | x509.Certificate) -> _dt.timedelta:
    c = load_cert(cert)
    return c.not_valid_after_utc - c.not_valid_before_utc


def remaining_fraction(cert: PemLike | x509.Certificate, now: _dt.datetime | None = None) -> float:
    """The fraction of the certificate's lifetime still ahead of ``now``, clamped to [0, 1]."""
    c = load_cert(cert)
    total = (c.not_valid_after_utc - c.not_valid_before_utc).total_seconds()
    if total <= 0:
        return 0.0
    left = (c.not_valid_after_utc - _now(now)).total_seconds()
    return min(1.0, max(0.0, left / total))


def renewal_time(
    cert: PemLike | x509.Certificate, renew_at_fraction: float = RENEW_AT_FRACTION
) -> _dt.datetime:
    """The moment from which :func:`needs_renewal` answers True."""
    c = load_cert(cert)
    return c.not_valid_after_utc - (c.not_valid_after_utc - c.not_valid_before_utc) * renew_at_fraction


def needs_renewal(
    cert: PemLike | x509.Certificate,
    now: _dt.datetime | None = None,
    renew_at_fraction: float = RENEW_AT_FRACTION,
) -> bool:
    """True when less than ``renew_at_fraction`` of the lifetime remains (or the cert has expired)."""
    return remaining_fraction(cert, now) < renew_at_fraction


def is_expired(cert: PemLike | x509.Certificate, now: _dt.datetime | None = None) -> bool:
    return load_cert(cert).not_valid_after_utc <= _now(now)


# ----------------------------------------------------------------------------------- generation


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signatures (ECDSA TLS handshakes) for every certificate; certificate and CRL signing for a CA only."""
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def generate_ca(
    common_name: str,
    validity: _dt.timedelta,
    now: _dt.datetime | None = None,
) -> KeyPair:
    """A self-signed CA (ECDSA P-256, ``CA:TRUE, pathlen:0``, keyCertSign) valid for ``validity``."""
    if validity <= _dt.timedelta(0):
        raise ValueError("validity must be positive")
    now = _now(now)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:_CN_MAX])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_to_pem(cert), key_to_pem(key))


def issue_serving_cert(
    ca: KeyPair,
    dns_names: Sequence[str],
    ip_addresses: Iterable[IPLike] = (),
    validity: _dt.timedelta = _dt.timedelta(days=30),
    now: _dt.datetime | None = None,
) -> KeyPair:
    """A TLS server certificate signed by ``ca``: serverAuth EKU, the given DNS and IP SANs.

    ``notAfter`` never exceeds the CA's own ``notAfter`` (a leaf must not outlive its issuer).
    """
    ips = [ipaddress.ip_address(ip) if isinstance(ip, str) else ip for ip in ip_addresses]
    dns = list(dict.fromkeys(n for n in dns_names if n))  # dedup, keep order
    if not dns and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    if validity <= _dt.timedelta(0):
        raise ValueError("validity must be positive")
    now = _now(now)
    ca_cert = load_cert(ca.cert_pem)
    ca_key = load_private_key(ca.key_pem)
    if not is_ca(ca_cert):
        raise ValueError("the issuing certificate is not a CA")
    if not key_matches(ca_cert, ca.key_pem):
        raise ValueError("the CA key does not belong to the CA certificate")
    end = min(now + validity, ca_cert.not_valid_after_utc)
    if end <= now:
        raise ValueError("the CA has expired")
    cn = next((n for n in dns if len(n) <= _CN_MAX), None) or (str(ips[0]) if ips else "llmaz-serverless")
    key = _new_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert_to_pem(cert), key_to_pem(key))


# -------------------------------------------------------------------------------------- bundles


def bundle_merge(
    existing_bundle_pem: PemLike | None,
    new_ca_pem: PemLike,
    now: _dt.datetime | None = None,
) -> bytes:
    """A CA bundle holding the CAs of ``existing_bundle_pem`` followed by ``new_ca_pem``.

    During a CA rotation the old and the new CA stand side by side, so a client that got the new
    bundle trusts serving certs from either CA. Expired certificates are dropped, duplicates (same
    DER) are kept once, and the order is stable: existing ones first in their order, new ones last.
    """
    now = _now(now)
    seen: set[bytes] = set()
    out: list[bytes] = []
    for cert in load_certs(existing_bundle_pem) + load_certs(new_ca_pem):
        der = cert.public_bytes(serialization.Encoding.DER)
        if der in seen or cert.not_valid_after_utc <= now:
            continue
        seen.add(der)
        out.append(cert_to_pem(cert))
    return b"".join(out)


def verify_server_cert(
    leaf_pem: PemLike,
    ca_bundle_pem: PemLike,
    host: str,
    now: _dt.datetime | None = None,
) -> None:
    """Path validation as a TLS client would do it (RFC 5280 + the name check for ``host``).

    ``host`` is a DNS name or an IP address. Raises ``cryptography.x509.verification.VerificationError``
    (or ``ValueError``) when the certificate would be rejected.
    """
    from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

    roots = load_certs(ca_bundle_pem)
    if not roots:
        raise ValueError("empty CA bundle")
    try:
        subject = IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = DNSName(host)  # type: ignore[assignment]
    verifier = PolicyBuilder().store(Store(roots)).time(_now(now)).build_server_verifier(subject)
    verifier.verify(load_cert(leaf_pem), [])


# ----------------------------------------------------------------------------------------- names


def serving_dns_names(service: str, namespace: str) -> list[str]:
    """The names under which the apiserver (and pods) reach ``service`` in ``namespace``."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]
