"""``llmaz-serverless preview``: what the webhook and the reconciler would do to a manifest, offline.

It runs the exact rules the webhook runs (``mutation.mutate`` then ``validation.validate``) and the builders
the reconciler applies (``keda.desired_objects``), on objects read from files, with no cluster. The output is
a YAML stream: per object, the patched object, the KEDA objects, then warnings and denials as comments.
Exit code: 0 when every object is admitted, 1 when any is denied, 2 on unusable input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, TextIO

import yaml

from . import constants as C
from .admission import make_patch
from .drain import hold_supported
from .errors import Denied
from .keda import desired_objects, metadata_problems
from .models import ModelCatalog
from .mutation import mutate
from .policy import Policy, PolicyError, load_policy_file
from .settings import owned_by_playground
from .spelling import inert_annotations_hint
from .validation import validate

EXIT_OK, EXIT_DENIED, EXIT_INPUT = 0, 1, 2

DESCRIPTION = """\
Show what llmaz-serverless would do to a manifest, offline: each Playground or Service as the admission webhook
would admit and change it, the KEDA objects (ScaledObject, InterceptorRoute) it would get, and the warnings and
denials as YAML comments. The rules are the webhook's own; no cluster is needed. OpenModels in the files (or in
--models) tell which models need GPUs.

Exit code: 0 when every object is admitted, 1 when any is denied, 2 on unusable input."""

# The Service CRD of llmaz v0.1.1 and older has no spec.replicas (``check`` reads the installed CRD and says
# which one the cluster has; preview has no cluster, so it says what to look for).
STANDALONE_SERVICE_NOTE = (
    "a standalone Service is scaled through spec.replicas, which the Service CRD of llmaz v0.1.1 and older does "
    "not have: there only Playgrounds can be scaled (upgrade llmaz to v0.1.4 or newer; `llmaz-serverless "
    "check` tells which one the cluster runs)")

# What preview shows in place of the characters the API server appends to a ``generateName``.
GENERATED_SUFFIX = "xxxxx"


class InputError(Exception):
    pass


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{'standard input' if path == '-' else path}: not UTF-8 text (byte {exc.start}); a "
                         "manifest is YAML or JSON text") from None


def load_documents(path: str) -> list[dict[str, Any]]:
    text = _read(path)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    except (ValueError, TypeError, RecursionError) as exc:   # e.g. out-of-range dates, deep nesting
        raise InputError(f"{path}: YAML that cannot be read as Kubernetes objects: {exc}") from None
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InputError(f"{path}: document {i + 1} is a {type(doc).__name__}, not a Kubernetes object "
                             "(each YAML document must be a mapping with apiVersion, kind and metadata)")
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            for j, item in enumerate(doc["items"]):
                if not isinstance(item, dict):
                    raise InputError(f"{path}: document {i + 1}, items[{j}] is a {type(item).__name__}, "
                                     "not a Kubernetes object")
                out.append(item)
        else:
            out.append(doc)
    return out


def _shape_problem(obj: dict[str, Any]) -> str | None:
    """Why ``obj`` cannot be a Kubernetes object at all (checked before any rule runs), or None."""
    for key in ("apiVersion", "kind"):
        if key in obj and not isinstance(obj[key], str):
            return f"{key} must be a string, got {type(obj[key]).__name__}"
    problems = metadata_problems(obj)
    return "; ".join(problems) if problems else None


def preview_object(obj: dict[str, Any], policy: Policy, models: ModelCatalog, *, namespace: str,
                   operation: str = "CREATE", old: dict[str, Any] | None = None) -> dict[str, Any]:
    """One object through the rules. Returns a report dict (used by the CLI and by tests)."""
    obj = dict(obj)
    shape = _shape_problem(obj)
    meta = dict(obj["metadata"]) if isinstance(obj.get("metadata"), dict) else {}
    if not meta.get("namespace"):
        meta["namespace"] = namespace
    if shape is None:
        obj["metadata"] = meta
    generate = meta.get("generateName") if not meta.get("name") else None
    shown_name = f"{generate}{GENERATED_SUFFIX}" if generate else meta.get("name")
    report: dict[str, Any] = {"kind": obj.get("kind"), "name": shown_name or "<no name>",
                              "namespace": meta["namespace"], "allowed": True, "warnings": [], "notes": [],
                              "patch": [], "object": obj, "keda": []}
    if shape is not None:
        report.update(allowed=False, message=f"llmaz-serverless: {shape} (fix the manifest)")
        return report
    if not obj.get("kind"):
        report["skipped"] = "no kind (not a Kubernetes object)"
        return report
    if obj.get("apiVersion") != C.LLMAZ_API_VERSION or obj.get("kind") not in C.WORKLOAD_KINDS:
        report["skipped"] = "not an inference.llmaz.io/v1alpha1 Playground or Service"
        hint = inert_annotations_hint(obj, f"a {obj.get('apiVersion')} {obj.get('kind')} is not handled")
        if hint:
            report["notes"].append(hint)
        return report
    try:
        m = mutate(obj, old, operation, policy, models)
    except Denied as d:
        report.update(allowed=False, message=d.message)
        return report
    report["warnings"] = list(m.warnings)
    report["patch"] = make_patch(obj, m.obj)
    report["object"] = m.obj
    if not m.analysis.managed:
        report["skipped"] = m.analysis.skip_reason
        if owned_by_playground(obj):
            hint = inert_annotations_hint(obj, "a Service owned by a Playground follows the Playground")
            if hint:
                report["notes"].append(hint)
        return report
    if obj.get("kind") == C.KIND_SERVICE:
        report["notes"].append(STANDALONE_SERVICE_NOTE)
    verdict = validate(m.obj, old, operation, policy, models)
    report["warnings"].extend(w for w in verdict.warnings if w not in report["warnings"])
    if not verdict.allowed:
        report.update(allowed=False, message=Denied(verdict.problems).message)
        return report
    drain = m.analysis.settings.drain if m.analysis.settings is not None else None
    if drain is not None:
        report["notes"].append(drain_note(drain, m.analysis.backend, m.analysis.settings.min_replicas))
    # The reconciler builds from the stored object, which then has a uid; show the ownerReference shape.
    stored = dict(m.obj)
    stored["metadata"] = dict(m.obj["metadata"])
    stored["metadata"].setdefault("uid", "<uid of the stored object>")
    if generate:
        # The API server appends 5 random characters to generateName when it stores the object; the KEDA
        # objects carry that final name, which nobody knows at admission.
        stored["metadata"]["name"] = shown_name
        report["notes"].append(
            f"metadata.generateName {generate!r}: the API server picks the name when it stores the object; "
            f"{shown_name!r} stands for it, and the ScaledObject/InterceptorRoute will carry the real name")
    report["keda"] = desired_objects(stored, policy, models).objects()
    return report


def drain_note(drain: Any, backend: str, min_replicas: int) -> str:
    """What happens to the work on a replica that is removed, and what holds the workload above zero."""
    flag = f"{backend} --shutdown-timeout={drain.timeout}" if backend == "vllm" else f"{backend}: no drain flag"
    text = (f"drain: a removed replica gets no new requests, waits {drain.pre_stop} s (preStop), then has "
            f"{drain.timeout} s to finish its requests ({flag}); terminationGracePeriodSeconds "
            f"{drain.grace_period}")
    if drain.max_request is not None:
        text += f"; longest request declared: {drain.max_request} s"
    if min_replicas > 0:
        return text + "; hold: not needed (never scaled to zero)"
    if drain.hold and hold_supported(backend):
        return text + (f"; hold: not scaled to zero while requests run or wait (unless no token for "
                       f"{drain.stuck_after} s) or while a pod loads (at most {drain.load_timeout} s)")
    if drain.hold:
        return text + f"; hold: none (no busy metrics known for backend {backend!r})"
    return text + "; hold: off in the policy (drain.holdWhileBusy)"


def _comment(text: str) -> str:
    return "\n".join("# " + line for line in text.splitlines())


def render(reports: Iterable[dict[str, Any]], out: TextIO, show_patch: bool) -> None:
    for r in reports:
        title = f"{r['kind']} {r['namespace']}/{r['name']}"
        out.write(f"---\n# {title}: ")
        if "skipped" in r:
            out.write(f"left unchanged ({r['skipped']})\n")
        elif not r["allowed"]:
            out.write("DENIED\n" + _comment(r["message"]) + "\n")
            continue
        else:
            out.write("admitted\n")
        for w in r["warnings"]:
            out.write(_comment("warning: " + w) + "\n")
        for n in r.get("notes", []):
            out.write(_comment("note: " + n) + "\n")
        if show_patch and r["patch"]:
            out.write(_comment("JSON Patch:\n" + yaml.safe_dump(r["patch"], sort_keys=False).rstrip()) + "\n")
        out.write(yaml.safe_dump(r["object"], sort_keys=False))
        for k in r["keda"]:
            out.write(f"---\n# {k['kind']} created by the reconciler for {title}\n")
            out.write(yaml.safe_dump(k, sort_keys=False))


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_file(args.policy) if args.policy else Policy.default()
    except PolicyError as exc:
        print(f"llmaz-serverless: {args.policy}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"llmaz-serverless: cannot read policy {args.policy}: {exc.strerror}", file=sys.stderr)
        return EXIT_INPUT
    try:
        models = ModelCatalog()
        objects: list[dict[str, Any]] = []
        for path in args.models or []:
            for doc in load_documents(path):
                if doc.get("kind") == "OpenModel":
                    models.put(doc)
        for path in args.file:
            for doc in load_documents(path):
                if doc.get("kind") == "OpenModel":
                    models.put(doc)   # models may sit in the same file as the workloads
                else:
                    objects.append(doc)
    except InputError as exc:
        print(f"llmaz-serverless: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not objects:
        print("llmaz-serverless: no objects in the input", file=sys.stderr)
        return EXIT_INPUT
    try:
        reports = [preview_object(o, policy, models, namespace=args.namespace) for o in objects]
        render(reports, sys.stdout, show_patch=args.patch)
    except Denied as d:   # a rule refused the input outright
        print(f"llmaz-serverless: {d.message}", file=sys.stderr)
        return EXIT_DENIED
    except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as exc:
        # A defect of ours on an input shape we did not foresee: say so plainly, with no traceback.
        print(f"llmaz-serverless: internal error while previewing (please report it with the manifest): "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    denied = [r for r in reports if not r["allowed"]]
    for r in denied:
        print(f"denied: {r['kind']} {r['namespace']}/{r['name']}: {r['message']}", file=sys.stderr)
    return EXIT_DENIED if denied else EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("preview", help="show what the webhook would do to a manifest (offline)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--file", action="append", required=True,
                   help="manifest file (several objects allowed; '-' for stdin); repeatable")
    p.add_argument("--policy", help="policy file (policy.yaml or a ConfigMap manifest); default: built-in")
    p.add_argument("--models", action="append", help="file with OpenModel objects; repeatable")
    p.add_argument("-n", "--namespace", default="default", help="namespace for objects that name none")
    p.add_argument("--patch", action="store_true", help="also print the JSON Patch")
    p.set_defaults(func=run)
