"""Shared unit-test fixtures: a throw-away CA and a serving certificate for 127.0.0.1 / localhost."""

from __future__ import annotations

import datetime as _dt
import ssl
from pathlib import Path

import pytest

from certs import authority


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``ca.crt``, ``tls.crt`` and ``tls.key`` (SANs: localhost, 127.0.0.1)."""
    d = tmp_path_factory.mktemp("tls")
    ca = authority.generate_ca("llmaz-serverless test CA", _dt.timedelta(days=1))
    leaf = authority.issue_serving_cert(ca, ["localhost"], ["127.0.0.1"], validity=_dt.timedelta(days=1))
    (d / "ca.crt").write_bytes(ca.cert_pem)
    (d / "tls.crt").write_bytes(leaf.cert_pem)
    (d / "tls.key").write_bytes(leaf.key_pem)
    (d / "tls.key").chmod(0o600)
    return d


@pytest.fixture(scope="session")
def client_ssl(tls_dir: Path) -> ssl.SSLContext:
    """Client context trusting only the test CA, with hostname verification on."""
    ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx
