"""The ``llmaz-serverless`` command.

Subcommands are registered by the module that owns them, so the CLI stays a thin dispatcher:

- ``preview``  (webhook.preview)  what the webhook would do to a manifest, offline
- ``serve``    (webhook.server)   run the admission webhook (and the reconciler)
- ``check``    (webhook.check)    preflight: is the cluster ready, is every managed workload safe
- ``certs``    (certs.cli)        create development certificates
- ``simulate``, ``recommend`` (webhook.simulate.cli)  replay a trace offline; the cheapest settings for an
  objective
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = (
    ("preview", "webhook.preview"),
    ("serve", "webhook.server"),
    ("check", "webhook.check"),
    ("certs", "certs.cli"),
    ("simulate, recommend", "webhook.simulate.cli"),   # one module, two subcommands
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmaz-serverless",
        description="Serverless, KEDA-driven autoscaling for llmaz Playgrounds and Services.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # a subcommand whose module is not importable is left out, loudly
            print(f"llmaz-serverless: subcommand {name!r} unavailable: {exc}", file=sys.stderr)
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `preview ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
