"""The peer for benchmarks/admission.py: the same Playground mutation as a kopf admission webhook.

The mutation is ``webhook.mutation.mutate`` (the very function our server runs); kopf receives the request,
builds its cause/body/patch objects, calls the handler and computes the JSON Patch itself (jsonpatch diff of the
body before and after the handler's patch function), so the comparison measures the two server frameworks and
their admission paths, not two different rule sets. Denials become ``kopf.AdmissionError`` with our message and
code; warnings go into kopf's ``warnings`` list.

kopf is an operator framework: before it serves admission it logs in to a cluster and discovers the resources
(it answers 404 for a resource it has not seen in discovery). ``benchmarks/admission.py`` therefore starts the
test kube-apiserver (``tests/integration/controlplane.py``, llmaz CRDs installed) and points ``KUBECONFIG`` at
it; nothing is registered there and no request of the benchmark goes through it.

    KUBECONFIG=... python benchmarks/kopf_peer.py --port 9444 --cert tls.crt --key tls.key

The webhook path is ``/mutate-playground`` (kopf routes ``/<handler id>``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kopf  # noqa: E402

from webhook.errors import Denied  # noqa: E402
from webhook.models import ModelCatalog  # noqa: E402
from webhook.mutation import mutate  # noqa: E402
from webhook.policy import Policy  # noqa: E402

POLICY = Policy.default()
MODELS = ModelCatalog()
ARGS: argparse.Namespace


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1", port=ARGS.port, certfile=ARGS.cert, pkeyfile=ARGS.key, host="127.0.0.1")
    settings.admission.managed = None          # do not write webhook configurations into the cluster
    settings.posting.enabled = False           # no Kubernetes events for log lines


@kopf.on.mutate("inference.llmaz.io", "v1alpha1", "playgrounds", id="mutate-playground",
                operations=["CREATE", "UPDATE"])
def mutate_playground(body: kopf.Body, old: Any, operation: str, patch: kopf.Patch, warnings: list[str],
                      **_: Any) -> None:
    raw = dict(body)                       # kopf's Body is a read-only view; mutate() only reads ``raw``
    old_raw = dict(old) if old is not None else None
    try:
        m = mutate(raw, old_raw, operation, POLICY, MODELS)
    except Denied as d:
        raise kopf.AdmissionError(d.message, code=d.code)
    warnings.extend(m.warnings)
    if m.changed:
        mutated = m.obj

        def apply(target: dict[str, Any]) -> None:
            target.clear()
            target.update(mutated)

        patch.fns.append(apply)


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log-level", default="warning", choices=("info", "warning"),
                   help="kopf's INFO logs one line per handled admission; warning keeps the hot path quiet "
                        "like our server (default %(default)s)")
    ARGS = p.parse_args()
    if not os.environ.get("KUBECONFIG"):
        p.error("KUBECONFIG must point at a (test) cluster: kopf needs one to start")
    kopf.configure(quiet=ARGS.log_level == "warning")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(kopf.operator(standalone=True, clusterwide=True))


if __name__ == "__main__":
    main()
