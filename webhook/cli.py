"""The ``llmaz-serverless`` command.

Subcommands are registered by the module that owns them, so the CLI stays a thin dispatcher:

- ``preview``  (webhook.preview)  what the webhook would do to a manifest, offline
- ``serve``    (webhook.serve)    run the admission webhook (and the reconciler)
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
import traceback

from . import __version__

SUBCOMMANDS = (
    ("preview", "webhook.preview"),
    ("serve", "webhook.serve"),
    ("check", "webhook.check"),
    ("certs", "certs.cli"),
    ("simulate, recommend", "webhook.simulate.cli"),   # one module, two subcommands
)


DEBUG_ENV = "LLMAZ_SERVERLESS_DEBUG"
EXIT_INPUT = 2   # every subcommand: 2 is "could not do it" (bad input, usage, our own defect); 1 is "denied/failed"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmaz-serverless",
        description="Serverless, KEDA-driven autoscaling for llmaz Playgrounds and Services.",
        epilog="Run 'llmaz-serverless COMMAND --help' for a command's options. Exit codes: 0 ok, 1 denied or "
               "a check failed, 2 unusable input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an unexpected error (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_INPUT

    parser.set_defaults(func=usage)
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
    except Exception as exc:  # noqa: BLE001 - the last guard: one line and exit 2, never a traceback and 1
        if args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            traceback.print_exc()
        else:
            print(f"llmaz-serverless {args.command or ''}: unexpected error: {type(exc).__name__}: {exc} "
                  f"(run with --debug, or {DEBUG_ENV}=1, for the traceback; please report it)".replace("  ", " "),
                  file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
