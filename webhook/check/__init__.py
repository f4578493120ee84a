"""``llmaz-serverless check``: is this cluster ready for llmaz-serverless, and is every managed workload safe?

Run it first after an install, and whenever something does not scale. Each line is one check with ok, warn
or FAIL, and for each failure the fix. Exit code: 0 when nothing failed (warnings allowed), 1 when a check
failed, 2 when the cluster could not be asked (bad kubeconfig, API server unreachable) or the usage is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from ..policy import Policy, PolicyError, policy_from_configmap
from .judge import FAIL, OK, WARN, Facts, Result, judge_all

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
Is this cluster ready for llmaz-serverless, and is every managed workload safe? Reads (never writes) llmaz,
KEDA, the HTTP add-on, the policy, the webhook configurations and the workloads in opted-in namespaces. Each
line is one check with ok, warn or FAIL, and each failure comes with its fix. Run it after an install and
whenever something does not scale.

Exit code: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when the cluster could not be
asked (bad kubeconfig, API server unreachable) or the usage is wrong."""
DEFAULT_POLICY_CONFIGMAP = "llmaz-serverless-system/llmaz-serverless-policy"   # as in deploy/manifests

MARKS = {
    True: {OK: "\u2714", WARN: "\u203c", FAIL: "\u2716"},
    False: {OK: "[ok]", WARN: "[warn]", FAIL: "[FAIL]"},
}


def policy_of(configmap: dict[str, Any] | None) -> tuple[Policy, str | None]:
    """The policy to judge workloads with, and why the ConfigMap was rejected (then: the default policy)."""
    if configmap is None:
        return Policy.default(), None
    try:
        return policy_from_configmap(configmap), None
    except PolicyError as exc:
        return Policy.default(), str(exc)
    except Exception as exc:  # noqa: BLE001 - a policy the loader chokes on is a finding, not a crash
        return Policy.default(), f"policy could not be read: {exc}"


def _utf8(out: TextIO) -> bool:
    return "utf" in (getattr(out, "encoding", None) or "").lower()


def render(results: list[Result], out: TextIO) -> None:
    marks = MARKS[_utf8(out)]
    group = None
    for r in results:
        if r.group != group:
            out.write(("\n" if group else "") + r.group + "\n" + "-" * len(r.group) + "\n")
            group = r.group
        line = f"{marks[r.status]} {r.name}"
        if r.detail:
            line += f": {r.detail}"
        out.write(line + "\n")
        if r.fix and r.status != OK:
            out.write(f"    fix: {r.fix}\n")
    fails = sum(r.status == FAIL for r in results)
    warns = sum(r.status == WARN for r in results)
    out.write(f"\nStatus check results: {len(results) - fails - warns} ok, {warns} warning(s), {fails} failure(s)\n")


def exit_code(results: list[Result]) -> int:
    return EXIT_FAILED if any(r.status == FAIL for r in results) else EXIT_OK


async def collect(kube: Any, args: argparse.Namespace) -> tuple[Facts, Policy, str | None]:
    from .gather import gather
    try:
        facts = await gather(kube, keda_namespace=args.keda_namespace, policy_ref=args.policy_configmap,
                             webhook_config_name=args.webhook_config_name, timeout=args.timeout,
                             policy_for=lambda cm: policy_of(cm)[0])
    finally:
        await kube.close()
    policy, error = policy_of(facts.policy_configmap)
    return facts, policy, error


def run(args: argparse.Namespace) -> int:
    ns, _, name = (args.policy_configmap or "").partition("/")
    if not ns or not name or "/" in name:
        print(f"llmaz-serverless check: --policy-configmap must be NAMESPACE/NAME, got {args.policy_configmap!r}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.timeout <= 0:
        print("llmaz-serverless check: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    from ..kube import Kube
    try:
        kube = Kube.auto(args.kubeconfig, args.context, request_timeout=args.timeout,
                         connect_timeout=min(args.timeout, 5.0))
    except Exception as exc:  # noqa: BLE001 - credentials that cannot be loaded: a message, no traceback
        print(f"llmaz-serverless check: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        facts, policy, error = asyncio.run(collect(kube, args))
    except Exception as exc:  # noqa: BLE001 - a defect of ours on an answer we did not foresee
        print(f"llmaz-serverless check: internal error while reading the cluster (please report it): "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results = judge_all(facts, policy, error)
    if args.output == "json":
        json.dump({"results": [r.as_dict() for r in results],
                   "failed": any(r.status == FAIL for r in results)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(results, sys.stdout)
    if facts.api_error:
        print(f"llmaz-serverless check: cannot reach the API server: {facts.api_error}", file=sys.stderr)
        return EXIT_USAGE
    return exit_code(results)


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="check the cluster and every managed workload (run first after install)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--keda-namespace", default="keda", help="namespace of KEDA (default %(default)s)")
    p.add_argument("--policy-configmap", default=DEFAULT_POLICY_CONFIGMAP, metavar="NAMESPACE/NAME",
                   help="the policy ConfigMap (default %(default)s)")
    p.add_argument("--webhook-config-name", default="llmaz-serverless",
                   help="name of the Mutating/ValidatingWebhookConfiguration (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per API call (default %(default)s)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(func=run)
