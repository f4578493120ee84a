"""TLS material for the llmaz-serverless admission webhook.

- :mod:`certs.authority`  pure functions: a small CA, serving certificates, renewal maths, CA bundles
- :mod:`certs.reload`     an ``ssl.SSLContext`` that picks up new ``tls.crt``/``tls.key`` files in place
- :mod:`certs.manager`    self-managed mode: CA in a Secret, per-replica serving cert, ``caBundle`` injection
- :mod:`certs.cli`        ``llmaz-serverless certs dev``: development certificates
"""

from __future__ import annotations

from certs.authority import (
    KeyPair,
    bundle_merge,
    generate_ca,
    issue_serving_cert,
    needs_renewal,
    remaining_fraction,
    serving_dns_names,
)

__all__ = [
    "KeyPair",
    "bundle_merge",
    "generate_ca",
    "issue_serving_cert",
    "needs_renewal",
    "remaining_fraction",
    "serving_dns_names",
]
