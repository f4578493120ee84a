"""``llmaz-serverless certs``: certificates for development and tests.

    llmaz-serverless certs dev --out DIR [--service llmaz-serverless-webhook]
                               [--namespace llmaz-serverless-system] [--dns NAME ...] [--ip ADDR ...]

writes ``ca.crt ca.key tls.crt tls.key`` into DIR. The serving certificate is valid for
``localhost``, ``127.0.0.1`` (and ``::1``), the in-cluster names of the Service and whatever
``--dns``/``--ip`` add. It prints the paths and the base64 ``caBundle`` to paste into a webhook
configuration (``clientConfig.caBundle``).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import ipaddress
import os
import sys

from certs import authority
from certs.manager import atomic_write

DEFAULT_SERVICE = "llmaz-serverless-webhook"
DEFAULT_NAMESPACE = "llmaz-serverless-system"
DEFAULT_IPS = ("127.0.0.1", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create development certificates",
        description="Certificates for running the webhook outside the cluster or in tests.",
    )
    sub = parser.add_subparsers(dest="certs_command", metavar="{dev}")

    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    dev = sub.add_parser(
        "dev",
        help="write a CA and a serving certificate (ca.crt ca.key tls.crt tls.key) into a directory",
        description=(
            "Write a fresh CA and a serving certificate signed by it. The serving certificate covers "
            "localhost, 127.0.0.1, ::1 and the in-cluster names of the webhook Service."
        ),
    )
    dev.add_argument("--out", required=True, help="directory to write into (created if missing)")
    dev.add_argument("--service", default=DEFAULT_SERVICE, help="webhook Service name (default %(default)s)")
    dev.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="its namespace (default %(default)s)")
    dev.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS SAN (repeatable)")
    dev.add_argument("--ip", action="append", default=[], metavar="ADDR", help="extra IP SAN (repeatable)")
    dev.add_argument("--ca-days", type=int, default=365, help="CA validity in days (default %(default)s)")
    dev.add_argument("--days", type=int, default=30,
                     help="serving cert validity in days, at most --ca-days (default %(default)s)")
    dev.add_argument("--force", action="store_true",
                     help="replace a CA already in --out (every caBundle that trusts the old one must be updated)")
    dev.set_defaults(func=_cmd_dev)


def _out_problem(out: str, force: bool) -> str | None:
    """Why ``out`` cannot receive the files, or None. An existing CA is kept unless ``force``: replacing it
    silently breaks every webhook configuration whose caBundle holds the old one."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out} exists and is not a directory"
    existing = [n for n in ("ca.crt", "ca.key") if os.path.exists(os.path.join(out, n))]
    if existing and not force:
        return (f"{out} already holds a CA ({', '.join(existing)}); a new one would break every caBundle that "
                f"trusts it: choose another --out, or pass --force to replace it")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write into {out}: {parent} is not writable"
    return None


def _cmd_dev(args: argparse.Namespace) -> int:
    try:
        ips = list(dict.fromkeys(str(ipaddress.ip_address(i)) for i in [*DEFAULT_IPS, *args.ip]))
    except ValueError as exc:
        print(f"llmaz-serverless certs dev: {exc}", file=sys.stderr)
        return 2
    if args.ca_days <= 0 or args.days <= 0:
        print("llmaz-serverless certs dev: validities must be positive", file=sys.stderr)
        return 2
    if args.days > args.ca_days:
        # A leaf never outlives its issuer (authority.issue_serving_cert cuts it): say so instead.
        print(f"llmaz-serverless certs dev: --days {args.days} is longer than --ca-days {args.ca_days}; a serving "
              f"certificate cannot outlive its CA: raise --ca-days to at least {args.days} or lower --days",
              file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    problem = _out_problem(out, args.force)
    if problem:
        print(f"llmaz-serverless certs dev: {problem}", file=sys.stderr)
        return 2
    dns = list(
        dict.fromkeys(["localhost", *authority.serving_dns_names(args.service, args.namespace), *args.dns])
    )
    now = authority.utcnow()
    ca = authority.generate_ca("llmaz-serverless-dev-ca", _dt.timedelta(days=args.ca_days), now)
    leaf = authority.issue_serving_cert(ca, dns, ips, _dt.timedelta(days=args.days), now)

    paths = {}
    try:
        os.makedirs(out, exist_ok=True)
        for name, data, mode in (
            ("ca.crt", ca.cert_pem, 0o644),
            ("ca.key", ca.key_pem, 0o600),
            ("tls.key", leaf.key_pem, 0o600),
            ("tls.crt", leaf.cert_pem, 0o644),
        ):
            path = os.path.join(out, name)
            atomic_write(path, data, mode)
            paths[name] = path
    except OSError as exc:
        written = f" (written before the failure: {', '.join(paths.values())})" if paths else ""
        print(f"llmaz-serverless certs dev: cannot write into {out}: {exc.strerror or exc}{written}",
              file=sys.stderr)
        return 2

    for name in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
        print(f"{name}: {paths[name]}")
    print(f"SANs: {', '.join(dns + ips)}")
    print(f"expires: {authority.not_after(leaf.cert_pem).isoformat()}")
    print("caBundle: " + base64.b64encode(ca.cert_pem).decode("ascii"))
    return 0
