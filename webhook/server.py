"""The HTTPS admission server (the ``serve`` subcommand around it: ``webhook.serve``).

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

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from .admission import Brain
from .connections import GuardedSite
from .errors import Denied, Internal
from .lanes import AdmissionTimeout, Lanes
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
