"""The HTTPS admission server and the ``serve`` subcommand.

Routes (``build_app``)::

    POST /mutate     AdmissionReview -> AdmissionReview (JSON Patch)
    POST /validate   AdmissionReview -> AdmissionReview

A separate plain-HTTP site (``--metrics-port``) serves, for kubelet probes and scraping, and nothing else::

    GET  /healthz    the process is alive
    GET  /readyz     200 when every readiness check passes (TLS pair loaded, policy parsed), else 503 + reason
    GET  /metrics    Prometheus text (webhook.metrics.METRICS.registry)

The webhook port serves admission only, so a NetworkPolicy can admit the API server alone to it. Both ports are
bounded (``webhook.connections``): a connection cap, a deadline for the TLS handshake plus request head, an
idle (keep-alive) timeout and a 32 KiB TLS read buffer.

What a client gets back, by failure kind (see webhook/errors.py):

- wrong Content-Type                      -> HTTP 415, ``{"error": ...}``
- body over ``MAX_BODY`` (8 MiB)           -> HTTP 413, ``{"error": ...}``
- bodies in flight over ``BODY_BUDGET``   -> HTTP 503, ``{"error": ...}`` (64 MiB across all requests: 256
                                             connections may not hold 8 MiB each)
- body not received within READ_TIMEOUT   -> HTTP 408, ``{"error": ...}``
- not JSON, or not an AdmissionReview     -> HTTP 400, ``{"error": ...}`` (there is no review to answer)
- an AdmissionReview with a uid whose request is otherwise unusable (e.g. ``request.object`` is a string)
                                          -> HTTP 200, ``allowed: false``, status code 400, uid echoed
- the object is denied by the rules       -> HTTP 200, ``allowed: false``, status code 422, uid echoed
- a defect of ours (any exception)        -> HTTP 200, ``allowed: false``, status code 500, uid echoed; the
                                             stack trace goes to the log only. Never an HTTP 500.
- the rules past ``--admission-deadline`` -> HTTP 200, ``allowed: false``, status code 500, uid echoed, the
                                             message naming the deadline (see below).

The rules (``Brain``) run in worker threads, or a worker process for requests over 64 KiB (``webhook.lanes``),
never on the event loop, with a deadline
(default 2 s) well under the API server's webhook timeout (the chart's 5 s). Past the deadline the answer is a
denial, whatever the webhook's failurePolicy: an object that takes seconds to evaluate is pathological (an
ordinary one takes about a millisecond), it would be as slow to reconcile, and admitting it unchecked is what
a hostile tenant wants. Answering before the API server's own timeout keeps the choice ours: with
failurePolicy Ignore a timeout at the API server would store the object unmutated and unvalidated.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine

from aiohttp import web

from .admission import Brain
from .connections import GuardedSite
from .errors import Denied, Internal
from .lanes import DEADLINE, AdmissionTimeout, Lanes
from .logging_setup import parse_level, setup_logging
from .metrics import METRICS, RESULTS, Metrics
from .review import API_VERSION, KIND, AdmissionRequest, AdmissionResult, uid_of

log = logging.getLogger("llmaz_serverless.server")

MAX_BODY = 8 * 1024 * 1024          # an UPDATE carries object + oldObject; controller-runtime allows 7 MiB
READ_TIMEOUT = 10.0                 # seconds to receive a body (the API server gives up after <= 30 s)
SLOW_ADMISSION = 1.0                # seconds; slower answers are logged as warnings
CLOSE_TIMEOUT = 1.0                 # after the grace period: how long aiohttp waits before cancelling handlers
MAX_CONNECTIONS = 256               # per port; the API server keeps a few keep-alive connections per replica
HEADER_TIMEOUT = 10.0               # seconds from connect to a complete request head (TLS handshake included)
IDLE_TIMEOUT = 60.0                 # seconds a keep-alive connection may wait for its next request
PROBE_MAX_CONNECTIONS = 64
BODY_BUDGET = 64 * 1024 * 1024      # request bodies held at once, all connections together
JSON_TYPE = "application/json"
REVIEW_API_VERSIONS = (API_VERSION, "admission.k8s.io/v1beta1")


# ------------------------------------------------------------------------------------------ readiness


class Health:
    """Readiness: every registered check passes and the server is not draining.

    A check is a callable returning a truthy value when fine. ``set(name, ok)`` registers a fixed value (for
    state that is pushed rather than polled, e.g. "policy ConfigMap read at least once").
    """

    def __init__(self) -> None:
        self._checks: dict[str, tuple[Callable[[], Any], str]] = {}
        self.draining = False

    def add_check(self, name: str, check: Callable[[], Any], reason: str = "not ready") -> None:
        self._checks[name] = (check, reason)

    def set(self, name: str, ok: bool, reason: str = "not ready") -> None:
        self._checks[name] = ((lambda: ok), reason)

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    def problems(self) -> list[str]:
        out = ["shutting down"] if self.draining else []
        for name, (check, reason) in list(self._checks.items()):
            try:
                ok = bool(check())
            except Exception as exc:  # a broken check means "not ready", never a failed probe request
                log.exception("readiness check %r failed", name)
                ok, reason = False, f"check failed: {type(exc).__name__}"
            if not ok:
                out.append(f"{name}: {reason}")
        return out

    def ready(self) -> bool:
        return not self.problems()

    __call__ = ready


class _Inflight:
    """Requests currently inside a handler; ``stop()`` waits for this to drop to zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout, 0.0))
            return True
        except asyncio.TimeoutError:
            return False


class _Budget:
    """Bytes of request bodies held at once. A request reserves its Content-Length (or the body limit when it
    does not say) before reading, and gives it back when answered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


BRAIN = web.AppKey("brain", Brain)
HEALTH = web.AppKey("health", Health)
METRICS_KEY = web.AppKey("metrics", Metrics)
INFLIGHT = web.AppKey("inflight", _Inflight)
READ_TIMEOUT_KEY = web.AppKey("read_timeout", float)
LANES = web.AppKey("lanes", Lanes)
BODIES = web.AppKey("bodies", "_Budget")
GUARDS = web.AppKey("guards", list)


# ------------------------------------------------------------------------------------------ middleware


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _track(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """Count in-flight requests; while draining, ask keep-alive clients to reconnect (to another replica)."""
    inflight = request.app[INFLIGHT]
    guards = request.app[GUARDS]
    inflight.enter()
    for guard in guards:
        guard.request_started(request.protocol)
    try:
        resp = await handler(request)
    finally:
        inflight.leave()
        for guard in guards:
            guard.request_finished(request.protocol)
    if request.app[HEALTH].draining:
        resp.force_close()
    return resp


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """aiohttp's own 4xx answers (404, 405, 413, ...) as JSON; an unexpected exception as a logged JSON 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:  # the admission handlers catch everything themselves; this is the last line
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return _error(500, "llmaz-serverless internal error (see webhook logs)")


# ------------------------------------------------------------------------------------------ handlers


def _result_label(result: AdmissionResult) -> str:
    if result.reason in RESULTS:
        return result.reason
    if not result.allowed:
        return "denied"
    return "patched" if result.patch else "allowed"


def _object_name(req: AdmissionRequest) -> str:
    if req.name:
        return req.name
    meta = (req.object or {}).get("metadata")
    if isinstance(meta, dict):
        if isinstance(meta.get("name"), str) and meta["name"]:
            return meta["name"]
        if isinstance(meta.get("generateName"), str) and meta["generateName"]:
            return meta["generateName"] + "*"
    return ""


def internal_error_result(uid: str, exc: BaseException | None = None) -> AdmissionResult:
    detail = f": {exc}" if isinstance(exc, Internal) and str(exc) else ""
    return AdmissionResult(
        allowed=False, code=500, reason="error",
        message=f"llmaz-serverless internal error{detail} (see webhook logs, request uid {uid})")


async def _admit(request: web.Request, endpoint: str) -> web.Response:
    budget = request.app[BODIES]
    reserve = min(request.content_length if request.content_length is not None else request.client_max_size,
                  request.client_max_size)
    if not budget.take(reserve):
        request.app[METRICS_KEY].observe_admission(endpoint, "", "", "bad_request", 0.0)
        log.warning("refused a %d-byte %s request: %d bytes of request bodies already in flight", reserve,
                    endpoint, budget.used, extra={"fields": {"endpoint": endpoint, "remote": request.remote}})
        return _error(503, "too many large requests in flight; retry")
    try:
        return await _admit_body(request, endpoint)
    finally:
        budget.give(reserve)


async def _admit_body(request: web.Request, endpoint: str) -> web.Response:
    started = time.perf_counter()
    metrics = request.app[METRICS_KEY]

    def reject(status: int, message: str) -> web.Response:
        metrics.observe_admission(endpoint, "", "", "bad_request", time.perf_counter() - started)
        log.info("rejected %s request: %s", endpoint, message, extra={"fields": {
            "endpoint": endpoint, "status": status, "result": "bad_request", "remote": request.remote}})
        return _error(status, message)

    # 1. Content-Type: application/json, optionally with charset=utf-8.
    charset = (request.charset or "utf-8").lower()
    if request.content_type != JSON_TYPE or charset not in ("utf-8", "utf8"):
        got = request.headers.get("Content-Type", "")
        return reject(415, f"Content-Type must be application/json, got {got!r}" if got
                      else "Content-Type must be application/json")

    # 2. Body, bounded in size and time.
    max_body = request.client_max_size
    if request.content_length is not None and request.content_length > max_body:
        return reject(413, f"body of {request.content_length} bytes exceeds the limit of {max_body} bytes")
    try:
        if request.content.is_eof():
            # The whole body came with the headers (the usual case): reading it cannot wait, so no timer.
            body = await request.read()
        else:
            # asyncio.timeout, not wait_for: wait_for wraps the read in a task of its own on every request.
            async with asyncio.timeout(request.app[READ_TIMEOUT_KEY]):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return reject(413, f"body exceeds the limit of {max_body} bytes")
    except TimeoutError:  # asyncio.TimeoutError is TimeoutError since Python 3.11
        return reject(408, "request body not received in time")

    # 3. Decode once.
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        return reject(400, f"body is not valid JSON: {str(exc)[:200]}")

    uid = uid_of(review)
    try:
        req = AdmissionRequest.from_review(review)
    except Exception as exc:  # BadRequest, or anything odd in a hostile body
        answerable = isinstance(review, dict) and review.get("kind") == KIND and bool(uid)
        if not answerable:
            return reject(400, f"not an AdmissionReview: {exc}")
        # A review we can answer (it has a uid): deny it rather than fail the HTTP request.
        api_version = review.get("apiVersion")
        result = AdmissionResult(allowed=False, code=400, reason="bad_request",
                                 message=f"llmaz-serverless: malformed AdmissionReview: {exc}")
        text = json.dumps(result.to_review(uid, api_version if api_version in REVIEW_API_VERSIONS
                                           else API_VERSION), separators=(",", ":"))
        metrics.observe_admission(endpoint, "", "", "bad_request", time.perf_counter() - started)
        log.info("denied malformed AdmissionReview: %s", exc, extra={"fields": {
            "uid": uid, "endpoint": endpoint, "result": "bad_request", "remote": request.remote}})
        return web.Response(text=text, content_type=JSON_TYPE)

    # 4. Decide. From here on there is a uid to answer: whatever goes wrong is answered as a denial.
    try:
        result, failure = await _rules(request, endpoint, req, len(body))
        return _answer(request, endpoint, req, started, result, failure)
    except Exception:
        log.exception("%s failed with an internal error", endpoint, extra={"fields": {"uid": req.uid}})
        result = internal_error_result(req.uid)
        text = json.dumps(result.to_review(req.uid, req.api_version), separators=(",", ":"))
        return web.Response(text=text, content_type=JSON_TYPE)


def timeout_result(uid: str, exc: AdmissionTimeout) -> AdmissionResult:
    return AdmissionResult(
        allowed=False, code=500, reason="error",
        message=f"llmaz-serverless: {exc}; the object is too expensive to evaluate and is refused "
                f"(make its serverless.llmaz.io annotations smaller; request uid {uid})")


async def _rules(request: web.Request, endpoint: str, req: AdmissionRequest, body_size: int
                 ) -> tuple[AdmissionResult, BaseException | None]:
    """Run the rules in a worker lane; returns the result and the defect (if any) to log."""
    brain = request.app[BRAIN]
    rule = brain.mutate if endpoint == "mutate" else brain.validate
    try:
        result = await request.app[LANES].run(body_size, rule, req)
        if not isinstance(result, AdmissionResult):
            raise TypeError(f"Brain.{endpoint} returned {type(result).__name__}, not AdmissionResult")
    except Denied as d:
        return AdmissionResult(allowed=False, message=d.message, code=d.code, reason="denied"), None
    except AdmissionTimeout as exc:
        log.warning("%s past its deadline: %s", endpoint, exc, extra={"fields": {
            "uid": req.uid, "endpoint": endpoint, "namespace": req.namespace, "body_bytes": body_size}})
        return timeout_result(req.uid, exc), None
    except Exception as exc:  # a defect of ours: log it, deny cleanly
        return internal_error_result(req.uid, exc), exc
    return result, None


def _answer(request: web.Request, endpoint: str, req: AdmissionRequest, started: float,
            result: AdmissionResult, failure: BaseException | None) -> web.Response:
    metrics = request.app[METRICS_KEY]

    # Encode (a result that cannot be encoded is a defect too).
    try:
        text = json.dumps(result.to_review(req.uid, req.api_version), separators=(",", ":"))
    except Exception as exc:
        failure = failure or exc
        result = internal_error_result(req.uid, exc)
        text = json.dumps(result.to_review(req.uid, req.api_version), separators=(",", ":"))

    elapsed = time.perf_counter() - started
    label = _result_label(result)
    metrics.observe_admission(endpoint, req.kind, req.operation, label, elapsed)
    slow = elapsed > SLOW_ADMISSION
    # The per-request log fields are built only when a line is written: an allowed admission logs at debug,
    # which is off in production, and building them cost as much as the metrics.
    if failure is not None or not result.allowed or slow or log.isEnabledFor(logging.DEBUG):
        fields = {"uid": req.uid, "endpoint": endpoint, "kind": req.kind, "namespace": req.namespace,
                  "name": _object_name(req), "operation": req.operation, "result": label,
                  "duration_ms": round(elapsed * 1000, 3), "dry_run": req.dry_run}
        if failure is not None:
            log.error("%s failed with an internal error", endpoint, extra={"fields": fields},
                      exc_info=(type(failure), failure, failure.__traceback__))
        elif not result.allowed:
            log.info("%s denied: %s", endpoint, result.message, extra={"fields": fields})
        else:
            log.debug("%s %s", endpoint, label, extra={"fields": {**fields, "warnings": len(result.warnings)}})
        if slow:
            log.warning("slow admission (%.3fs)", elapsed, extra={"fields": fields})
    return web.Response(text=text, content_type=JSON_TYPE)


async def _mutate(request: web.Request) -> web.Response:
    return await _admit(request, "mutate")


async def _validate(request: web.Request) -> web.Response:
    return await _admit(request, "validate")


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    problems = request.app[HEALTH].problems()
    if problems:
        return web.json_response({"ready": False, "reason": "; ".join(problems)}, status=503)
    return web.json_response({"ready": True})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def _base_app(health: Health, metrics: Metrics, **kwargs: Any) -> web.Application:
    app = web.Application(middlewares=[_track, _json_errors], **kwargs)
    app[HEALTH] = health
    app[METRICS_KEY] = metrics
    app[INFLIGHT] = _Inflight()
    app[GUARDS] = []
    return app


def build_app(brain: Brain, health: Health, *, metrics: Metrics | None = None, max_body: int = MAX_BODY,
              read_timeout: float = READ_TIMEOUT, lanes: Lanes | None = None,
              body_budget: int = BODY_BUDGET) -> web.Application:
    """The admission application: /mutate /validate only."""
    app = _base_app(health, metrics or METRICS, client_max_size=max_body)
    app[BODIES] = _Budget(body_budget)
    app[BRAIN] = brain
    app[READ_TIMEOUT_KEY] = float(read_timeout)
    app[LANES] = lanes or Lanes()
    app.router.add_post("/mutate", _mutate)
    app.router.add_post("/validate", _validate)
    return app


def build_probe_app(health: Health, metrics: Metrics | None = None) -> web.Application:
    """Plain-HTTP side application: /healthz /readyz /metrics only."""
    app = _base_app(health, metrics or METRICS, client_max_size=64 * 1024)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# ------------------------------------------------------------------------------------------ server


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not bound to a TCP port")


@dataclass(frozen=True)
class Limits:
    """Connection bounds of one port (see ``webhook.connections``)."""

    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


class WebhookServer:
    """The admission app on an HTTPS site, plus an optional plain-HTTP probe/metrics site."""

    def __init__(self, brain: Brain, health: Health | None = None, *, metrics: Metrics | None = None,
                 max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT, limits: Limits | None = None,
                 lanes: Lanes | None = None, body_budget: int = BODY_BUDGET) -> None:
        self.brain = brain
        self.health = health if health is not None else Health()
        self.metrics = metrics or METRICS
        self.limits = limits or Limits()
        self.lanes = lanes or Lanes()
        self.app = build_app(brain, self.health, metrics=self.metrics, max_body=max_body,
                             read_timeout=read_timeout, lanes=self.lanes, body_budget=body_budget)
        self.probe_app = build_probe_app(self.health, self.metrics)
        self._runner: web.AppRunner | None = None
        self._probe_runner: web.AppRunner | None = None
        self.sites: list[GuardedSite] = []
        self.port: int | None = None
        self.metrics_port: int | None = None

    @property
    def inflight(self) -> int:
        return self.app[INFLIGHT].count

    async def _run_site(self, app: web.Application, host: str, port: int, ssl_context: Any,
                        limits: Limits) -> web.AppRunner:
        # aiohttp's keep-alive timer as a second line behind the guard's sweep.
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=CLOSE_TIMEOUT,
                               keepalive_timeout=limits.idle_timeout)
        await runner.setup()
        try:
            site = GuardedSite(runner, host, port, ssl_context=ssl_context,
                               max_connections=limits.max_connections, header_timeout=limits.header_timeout,
                               idle_timeout=limits.idle_timeout)
            app[GUARDS].append(site.guard)
            await site.start()
            self.sites.append(site)
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def start(self, host: str = "0.0.0.0", port: int | None = 9443, ssl_context: Any = None,
                    metrics_port: int | None = None) -> None:
        """Listen on ``host:port`` (HTTPS when ``ssl_context`` is given; ``port=None``: no admission site, the
        controller role) and, when ``metrics_port`` is not None, on ``host:metrics_port`` in plain HTTP for
        probes and scraping. Port 0 picks a free port (see ``.port`` and ``.metrics_port``). ``ssl_context``
        may be an ``ssl.SSLContext`` or anything with a ``.context`` attribute holding one
        (``certs.reload.ReloadingSSLContext``), read at each new connection."""
        if self._runner is not None or self._probe_runner is not None:
            raise RuntimeError("server already started")
        if port is None and metrics_port is None:
            raise ValueError("nothing to listen on")
        self.health.draining = False
        runner = None
        if port is not None:
            runner = await self._run_site(self.app, host, port, ssl_context, self.limits)
        try:
            if runner is not None:
                self.port = _bound_port(runner)
            if metrics_port is not None:
                probe_limits = Limits(PROBE_MAX_CONNECTIONS, self.limits.header_timeout, self.limits.idle_timeout)
                self._probe_runner = await self._run_site(self.probe_app, host, metrics_port, None, probe_limits)
                self.metrics_port = _bound_port(self._probe_runner)
        except BaseException:
            if runner is not None:
                await runner.cleanup()
            raise
        self._runner = runner
        tls = ssl_context is not None
        log.info("webhook %s%s", f"listening on {'https' if tls else 'http'}://{host}:{self.port}"
                 if self.port is not None else "not serving admission (controller role)",
                 f", probes and metrics on http://{host}:{self.metrics_port}" if self.metrics_port else "",
                 extra={"fields": {"port": self.port, "metrics_port": self.metrics_port,
                                   "max_connections": self.limits.max_connections,
                                   "header_timeout": self.limits.header_timeout,
                                   "idle_timeout": self.limits.idle_timeout,
                                   "admission_deadline": self.lanes.deadline}})

    async def stop(self, grace: float = 10.0) -> None:
        """Graceful stop: readiness turns 503, no new connections, requests in flight get up to ``grace``
        seconds to finish (idle keep-alive connections are closed, busy ones told to close), then everything
        is closed."""
        runner, self._runner = self._runner, None
        if runner is None and self._probe_runner is None:
            return
        self.health.draining = True
        if runner is not None:
            for site in list(runner.sites):
                await site.stop()
            inflight = self.app[INFLIGHT]
            if not await inflight.wait_idle(grace):
                log.warning("%d request(s) still in flight after the %.1fs grace period; cancelling them",
                            inflight.count, grace)
            await runner.cleanup()
        if self._probe_runner is not None:
            probe, self._probe_runner = self._probe_runner, None
            await probe.cleanup()
        for site in self.sites:
            await site.close()
        self.sites = []
        self.lanes.shutdown()
        log.info("webhook stopped")


# ------------------------------------------------------------------------------------------ serve


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
    from certs.reload import ReloadingSSLContext  # local: keeps `import webhook.server` light
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
