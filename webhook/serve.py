"""The ``serve`` subcommand: flags, start-up checks and the process around the admission server.

``register`` adds ``serve`` to the CLI; ``prepare`` checks the flags and loads the policy and the TLS pair
before anything listens; ``serve`` runs a :class:`webhook.server.WebhookServer` and, by ``--role``, the
informers, the certificate manager and the reconcile workers (``start_background``) until SIGTERM.

Kept apart from ``webhook.server`` so the HTTP side (routes, limits, answers) reads on its own and tests
that only need a server do not pull in the process wiring.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Coroutine

from .admission import Brain
from .lanes import DEADLINE, Lanes
from .logging_setup import parse_level, setup_logging
from .metrics import METRICS, Metrics
from .server import HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, Health, Limits, WebhookServer

# The server's logger: the start and stop lines of one process stay under one name, as before the split.
log = logging.getLogger("llmaz_serverless.server")

class ConfigError(Exception):
    """Unusable command-line configuration; ``serve`` prints it on one line and exits with 2."""


EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
TLS_RELOAD_INTERVAL = 10.0


DEFAULT_NAMESPACE = "llmaz-serverless-system"


@dataclass
class AppState:
    """Everything ``serve`` built, handed to :func:`start_background`."""

    args: argparse.Namespace
    brain: Brain
    health: Health
    metrics: Metrics
    tls: Any = None                          # certs.reload.ReloadingSSLContext (None: plain HTTP, tests only)
    cert_file: str = ""
    key_file: str = ""
    policy_ready: bool = True                # False until a --policy-configmap was read once
    kube_config: Any = None                  # webhook.kube.KubeConfig, loaded by prepare() when a cluster is used
    server: WebhookServer | None = None
    stop_event: asyncio.Event | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    exit_code: int = EXIT_OK
    stop_reason: str = ""

    def request_stop(self, reason: str, exit_code: int | None = None) -> None:
        if exit_code is not None and self.exit_code == EXIT_OK:
            self.exit_code = exit_code
        if self.stop_event is not None and not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, critical: bool = True) -> asyncio.Task:
        """Run a background task until shutdown. If a ``critical`` task dies, the process stops with exit 1
        (so Kubernetes restarts it) instead of running on half-working."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)

        def done(t: asyncio.Task) -> None:
            if t.cancelled() or (self.stop_event is not None and self.stop_event.is_set()):
                return
            exc = t.exception()
            if exc is not None:
                log.error("background task %s failed", name, exc_info=(type(exc), exc, exc.__traceback__))
                if critical:
                    self.request_stop(f"background task {name} failed", EXIT_FAILURE)
            elif critical:
                log.error("background task %s ended unexpectedly", name)
                self.request_stop(f"background task {name} ended", EXIT_FAILURE)

        task.add_done_callback(done)
        return task


async def start_background(app_state: AppState) -> None:
    """Start everything that talks to the Kubernetes API; called once the HTTPS server listens.

    - ``--cert-mode self-managed``: ``certs.manager.CertManager`` keeps the CA Secret, this replica's serving
      certificate (hot-reloaded by ``app_state.tls``) and the caBundle; readiness waits for it.
    - informers (every replica, also with ``--no-reconcile``): the policy ConfigMap feeds ``brain.policy``
      (readiness waits for its first read) and OpenModels feed ``brain.models``, so admission never calls
      the API server; API discovery feeds ``brain.installed`` (readiness waits for its first round).
    - reconcile workers (unless ``--no-reconcile``), gated by the Lease with ``--leader-election``.

    ``--role admission`` keeps only what admission reads (policy, OpenModels, discovery): no workload, KEDA or
    HPA caches, no workers, no Lease. ``--role controller`` serves no admission (no TLS, no certificates) and runs
    the full caches and the workers. ``--role all`` (the default) does both in one process.

    Nothing here runs in the ``--cert-mode files --policy-file ... --no-reconcile`` set-up.
    Raising ``ConfigError`` stops the server with exit code 2.
    """
    args = app_state.args
    admission = args.role in ("all", "admission")
    reconcile = args.role in ("all", "controller") and not args.no_reconcile
    if not cluster_reasons(args):
        return
    service_namespace = (args.policy_configmap.split("/")[0] if args.policy_configmap
                         else os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE)
    from .kube import Kube

    kube = Kube(app_state.kube_config if app_state.kube_config is not None else load_kube_config(args))

    if admission and args.cert_mode == "self-managed":
        _start_cert_manager(app_state, service_namespace)

    from .controller.reconciler import Controller, run_controller

    policy_name = args.policy_configmap.split("/")[1] if args.policy_configmap else None
    controller = Controller(kube, app_state.brain, namespace=service_namespace, policy_configmap=policy_name,
                            identity=None, resync=args.resync, discovery_interval=args.discovery_interval,
                            keda_ready_bound=args.keda_ready_timeout)
    # Admission must not decide "start at zero" on a guess: readiness waits for the first discovery round
    # (answered or not), one GET per optional API.
    app_state.health.add_check("discovery", controller.discovery.first_round.is_set,
                               "installed APIs (KEDA, HTTP add-on) not discovered yet")
    if controller.policy_informer is not None:
        async def mark_policy_read() -> None:
            # Readiness waits for the first read of the policy ConfigMap (or its absence).
            await controller.policy_informer.synced.wait()
            app_state.policy_ready = True
            log.info("policy ConfigMap %s read", args.policy_configmap)

        app_state.spawn(mark_policy_read(), "policy-ready", critical=False)
    async def run_and_close() -> None:
        try:
            if not reconcile:
                # Admission only: the caches it reads (policy, OpenModels, installed APIs) follow the cluster;
                # with --role admission nothing else is cached.
                await controller.run_informers(app_state.stop_event, admission_only=args.role == "admission")
            else:
                await run_controller(kube, app_state.brain, namespace=service_namespace,
                                     policy_configmap=policy_name, leader_election=args.leader_election,
                                     identity=None, stop=app_state.stop_event, controller=controller)
        finally:
            await kube.close()

    app_state.spawn(run_and_close(), "controller" if reconcile else "informers")


def cluster_reasons(args: argparse.Namespace) -> list[str]:
    """Why this ``serve`` needs a cluster (empty: admission only, from files)."""
    reasons = []
    role = getattr(args, "role", "all")
    if role in ("all", "controller") and not args.no_reconcile:
        reasons.append("the reconciler runs (--no-reconcile turns it off)")
    if args.policy_configmap:
        reasons.append("--policy-configmap")
    if role in ("all", "admission") and args.cert_mode == "self-managed":
        reasons.append("--cert-mode self-managed")
    if args.kubeconfig or getattr(args, "context", None):
        # An explicit kubeconfig also means: keep admission's caches (OpenModels, installed APIs) in step with
        # that cluster, even when serving admission only.
        reasons.append("--kubeconfig/--context")
    return reasons


def load_kube_config(args: argparse.Namespace) -> Any:
    """The cluster's address and credentials, loaded before anything listens: a serve that cannot reach its
    cluster must fail at once with the reason and the way out, not after announcing that it serves."""
    from .kube import KubeConfig

    try:
        return KubeConfig.auto(args.kubeconfig, getattr(args, "context", None))
    except Exception as exc:  # noqa: BLE001 - any config problem is a start-up error with one line
        why = "; ".join(cluster_reasons(args))
        raise ConfigError(f"cannot load Kubernetes credentials: {str(exc).rstrip('.')}. A cluster is needed "
                          f"because: {why}. To serve admission only, without a cluster, add --no-reconcile "
                          f"(with --cert-mode files, and --policy-file for a policy; no --policy-configmap or "
                          f"--kubeconfig)") from None


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _start_cert_manager(app_state: AppState, namespace: str) -> None:
    """Self-managed certificates: CA in a Secret, a serving cert per replica, caBundle injection."""
    from certs.manager import CertManager, KubernetesAPI, ManagerConfig

    args = app_state.args
    api_client = None
    if args.kubeconfig:
        from kubernetes import config as kconfig

        api_client = kconfig.new_client_from_config(config_file=args.kubeconfig)
    manager = CertManager(
        ManagerConfig(namespace=namespace, cert_dir=args.cert_dir or "/certs", service_name=args.service_name,
                      mutating_webhook_config=args.webhook_config_name,
                      validating_webhook_config=args.webhook_config_name,
                      extra_dns_names=tuple(n for n in args.cert_extra_san if not _is_ip(n)),
                      ip_addresses=tuple(n for n in args.cert_extra_san if _is_ip(n))),
        KubernetesAPI(api_client), reloader=app_state.tls)
    app_state.health.add_check("certs", lambda: manager.ready, "serving certificate or caBundle not ready")
    app_state.spawn(manager.run(app_state.stop_event), "cert-manager")


def _resolve_tls_paths(args: argparse.Namespace) -> tuple[str, str]:
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise ConfigError("--tls-cert-file and --tls-key-file must be given together")
    if args.tls_cert_file and args.cert_dir and args.cert_mode != "self-managed":
        raise ConfigError("use either --cert-dir or --tls-cert-file/--tls-key-file, not both")
    if args.cert_mode == "self-managed":
        if args.tls_cert_file:
            raise ConfigError("--cert-mode self-managed writes into --cert-dir; "
                              "--tls-cert-file/--tls-key-file do not apply")
        cert_dir = args.cert_dir or "/certs"
        return os.path.join(cert_dir, "tls.crt"), os.path.join(cert_dir, "tls.key")
    if args.tls_cert_file:
        return args.tls_cert_file, args.tls_key_file
    if args.cert_dir:
        return os.path.join(args.cert_dir, "tls.crt"), os.path.join(args.cert_dir, "tls.key")
    raise ConfigError(f"--cert-mode {args.cert_mode} needs --cert-dir or --tls-cert-file/--tls-key-file")


def _is_namespaced_name(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts)


def prepare(args: argparse.Namespace, metrics: Metrics | None = None) -> AppState:
    """Check the flags, load the policy and the TLS pair. Raises ConfigError with a one-line message."""
    from certs.reload import ReloadingSSLContext  # local: keeps `import webhook.serve` light (every CLI command imports it)
    from .policy import PolicyError, load_policy_file

    metrics = metrics or METRICS
    if args.policy_file and args.policy_configmap:
        raise ConfigError("use either --policy-file or --policy-configmap, not both")
    if args.policy_configmap is not None and not _is_namespaced_name(args.policy_configmap):
        raise ConfigError(f"--policy-configmap must be NAMESPACE/NAME, got {args.policy_configmap!r}")
    if not 0 <= args.port <= 65535 or not 0 <= args.metrics_port <= 65535:
        raise ConfigError("--port and --metrics-port must be between 0 and 65535")
    if args.metrics_port and args.metrics_port == args.port:
        raise ConfigError("--metrics-port must differ from --port")
    if args.role == "controller" and args.no_reconcile:
        raise ConfigError("--role controller only reconciles; --no-reconcile does not apply")
    if args.role == "controller" and not args.metrics_port:
        raise ConfigError("--role controller serves only the metrics port; --metrics-port must not be 0")

    brain = Brain()
    if args.policy_file:
        try:
            brain.policy = load_policy_file(args.policy_file)
        except OSError as exc:
            raise ConfigError(f"--policy-file {args.policy_file}: {exc.strerror or exc}") from None
        except PolicyError as exc:
            raise ConfigError(f"--policy-file {args.policy_file}: {exc}") from None
        metrics.policy_valid.set(1)

    kube_config = load_kube_config(args) if cluster_reasons(args) else None
    health = Health()
    if args.role == "controller":   # no admission: no serving certificate
        state = AppState(args=args, brain=brain, health=health, metrics=metrics,
                         policy_ready=not args.policy_configmap, kube_config=kube_config)
        health.add_check("policy", lambda: state.policy_ready, "policy ConfigMap not read yet")
        return state

    cert_file, key_file = _resolve_tls_paths(args)

    def on_reload(ctx: Any) -> None:
        if getattr(ctx, "not_after", None) is not None:
            metrics.cert_not_after.set(ctx.not_after.timestamp())

    tls = ReloadingSSLContext(cert_file, key_file, on_reload=on_reload, min_version=args.tls_min_version)
    if args.cert_mode == "files" and not tls.loaded:
        for path in (cert_file, key_file):
            if not os.path.isfile(path):
                raise ConfigError(f"TLS file {path} not found")
        raise ConfigError(f"TLS files {cert_file} / {key_file} are not a usable certificate and key pair")

    state = AppState(args=args, brain=brain, health=health, metrics=metrics, tls=tls,
                     cert_file=cert_file, key_file=key_file, policy_ready=not args.policy_configmap,
                     kube_config=kube_config)
    health.add_check("tls", lambda: tls.loaded, f"no serving certificate loaded from {cert_file}")
    health.add_check("policy", lambda: state.policy_ready, "policy ConfigMap not read yet")
    return state


def _freeze_startup_heap() -> None:
    """Start-up is over: collect once, then move everything allocated so far (modules, policy, TLS context, API
    clients) out of the cyclic garbage collector's generations (``gc.freeze``). Its full collections then scan
    only what was allocated since instead of the ~60,000 start-up objects, so the pause they add to whichever
    admission is running drops from ~13 ms to ~1 ms. Nothing is kept alive longer: reference counting still frees
    frozen objects; only cycles among start-up objects would no longer be collected."""
    gc.collect()
    gc.freeze()


async def serve(state: AppState) -> int:
    """Run until SIGTERM/SIGINT (or a critical background failure); returns the exit code."""
    args = state.args
    loop = asyncio.get_running_loop()
    state.stop_event = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, state.request_stop, f"signal {sig.name}")
    lanes = Lanes(deadline=args.admission_deadline)
    server = WebhookServer(state.brain, state.health, metrics=state.metrics,
                           limits=Limits(args.max_connections, args.header_timeout, args.idle_timeout),
                           lanes=lanes)
    state.server = server
    try:
        try:
            await server.start(args.host, None if args.role == "controller" else args.port, state.tls,
                               args.metrics_port or None)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
            return EXIT_FAILURE
        try:
            if args.role != "controller":   # the large lane's process, started once listening (not before)
                state.spawn(asyncio.to_thread(lanes.warm), "admission-worker", critical=False)
            if state.tls is not None and hasattr(state.tls, "watch"):
                state.spawn(state.tls.watch(TLS_RELOAD_INTERVAL, state.stop_event), "tls-reload")
            try:
                await start_background(state)
            except ConfigError as exc:
                print(f"llmaz-serverless serve: {exc}", file=sys.stderr)
                state.request_stop("configuration error", EXIT_CONFIG)
            _freeze_startup_heap()
            await state.stop_event.wait()
            log.info("stopping: %s", state.stop_reason)
            if args.shutdown_delay > 0:  # let endpoints drop this pod before the listener closes
                state.health.draining = True
                await asyncio.sleep(args.shutdown_delay)
        finally:
            await server.stop(grace=args.shutdown_grace)
            if state.tasks:
                _, pending = await asyncio.wait(state.tasks, timeout=5.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*state.tasks, return_exceptions=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return state.exit_code


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        setup_logging(args.log_level, json=args.log_format == "json")
    except ValueError as exc:
        print(f"llmaz-serverless serve: --log-level: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        state = prepare(args)
    except ConfigError as exc:
        print("llmaz-serverless serve: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(serve(state))


def _log_level(value: str) -> str:
    try:
        parse_level(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the admission webhook (and the reconciler)",
        description="Serve the mutating and validating admission webhook over HTTPS.")
    p.add_argument("--role", choices=("all", "admission", "controller"), default="all",
                   help="admission: serve the webhook only (caches: policy, OpenModels); controller: reconcile "
                        "only, no webhook port (with --leader-election); all: both in one process "
                        "(default %(default)s)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=9443, help="HTTPS port of the webhook (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=8080,
                   help="plain-HTTP port for /healthz /readyz /metrics; 0 disables it (default %(default)s)")
    tls = p.add_argument_group("TLS")
    tls.add_argument("--cert-mode", choices=("self-managed", "files", "cert-manager"), default="files",
                     help="files: a pair provided on disk; cert-manager: the same, issued by cert-manager; "
                          "self-managed: the webhook runs its own CA and writes into --cert-dir "
                          "(default %(default)s)")
    tls.add_argument("--tls-min-version", choices=("1.2", "1.3"), default="1.3",
                     help="lowest TLS version the webhook accepts; with 1.2 only ECDHE with AES-GCM or "
                          "ChaCha20-Poly1305 (default %(default)s)")
    tls.add_argument("--cert-dir", help="directory holding tls.crt and tls.key (reloaded when they change)")
    tls.add_argument("--tls-cert-file", help="serving certificate (alternative to --cert-dir)")
    tls.add_argument("--tls-key-file", help="its private key (alternative to --cert-dir)")
    pol = p.add_argument_group("policy")
    pol.add_argument("--policy-file", help="policy YAML (or a ConfigMap manifest carrying policy.yaml)")
    pol.add_argument("--policy-configmap", metavar="NAMESPACE/NAME",
                     help="watch the policy in this ConfigMap (key policy.yaml)")
    kube = p.add_argument_group("Kubernetes")
    kube.add_argument("--webhook-config-name", default="llmaz-serverless",
                      help="name of the Mutating/ValidatingWebhookConfiguration (default %(default)s)")
    kube.add_argument("--service-name", default="llmaz-serverless-webhook",
                      help="Service in front of the webhook (default %(default)s)")
    kube.add_argument("--leader-election", action="store_true",
                      help="only the replica holding the Lease runs the reconciler")
    kube.add_argument("--no-reconcile", action="store_true",
                      help="serve admission only; do not create KEDA objects")
    kube.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    kube.add_argument("--context", help="kubeconfig context (default: the current one)")
    kube.add_argument("--resync", type=float, default=300.0,
                      help="seconds between full resyncs of every managed workload (default %(default)s)")
    kube.add_argument("--discovery-interval", type=_positive_float, default=15.0, metavar="SECONDS",
                      help="how often to ask the API server whether KEDA and the HTTP add-on are installed "
                           "(default %(default)s)")
    kube.add_argument("--keda-ready-timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                      help="a ScaledObject KEDA has not reconciled this long after its creation gets a Warning "
                           "Event on its workload (default %(default)s)")
    tls.add_argument("--cert-extra-san", action="append", default=[], metavar="NAME_OR_IP",
                     help="self-managed mode: extra DNS name or IP address in the serving certificate "
                          "(repeatable; e.g. 127.0.0.1 for a webhook reached on loopback)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                     help="open connections on the webhook port; more are closed at once (default %(default)s)")
    lim.add_argument("--header-timeout", type=_positive_float, default=HEADER_TIMEOUT, metavar="SECONDS",
                     help="from connect to a complete request head, TLS handshake included (default %(default)s)")
    lim.add_argument("--idle-timeout", type=_positive_float, default=IDLE_TIMEOUT, metavar="SECONDS",
                     help="how long a keep-alive connection may wait for its next request (default %(default)s)")
    lim.add_argument("--admission-deadline", type=_positive_float, default=DEADLINE, metavar="SECONDS",
                     help="time the rules get per request, queueing included; past it the request is denied; "
                          "keep it well under the webhook timeoutSeconds (default %(default)s)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--shutdown-delay", type=float, default=0.0,
                   help="seconds to keep serving (reporting not ready) after SIGTERM before closing the "
                        "listener, so endpoints drop the pod first (default %(default)s)")
    p.add_argument("--log-level", type=_log_level, default="info", help="debug|info|warning|error (default %(default)s)")
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="(default %(default)s)")
    p.set_defaults(func=_cmd_serve)
