"""Request counts per InterceptorRoute, read from Prometheus, for ``keep-alive: learned`` (policy ``learnFrom``).

KEDA's ``lastActiveTime`` (``controller.learning``) tells the learner when a workload was active, not how many
requests came nor whether a request came inside a pre-warm window of ours. The HTTP add-on's interceptor
counts every request it proxies, per route, when the response is written, with the request's duration
(``interceptor_request_count_total`` and ``interceptor_request_duration_seconds``, labels ``route_name`` and
``route_namespace``, HTTP add-on v0.15.0). From two cumulative series per route, the requests completed and
the sum of their durations, ``learning.observe_counts`` recovers when requests came: in each step of the
series, ``n`` requests completed with a mean duration ``d`` came about ``d`` before it.

One poller serves the whole cluster: every ``learnFrom.interval`` it asks Prometheus two range queries (all
routes at once) from where its last read ended, so the load does not grow with the number of workloads and a
reconcile never waits on Prometheus; it reads what the poller holds (``since``). A route whose counts moved
is handed to ``on_change`` (the controller enqueues its workload). When Prometheus does not answer, or a
route's series is missing from the last answer, ``since`` says so (None) and the learner reads KEDA's status
instead. Everything read is bounded: the body (``MAX_BODY``), the routes (``MAX_ROUTES``), the span of one
read (``MAX_SPAN_S``) and what is kept per route (``MAX_SPAN_S`` of samples).

A Prometheus that asks for credentials (behind kube-rbac-proxy, a Thanos or Mimir gateway) is read with
``learnFrom.auth``: a bearer token and a CA bundle from files in the pod, sent to ``prometheus.serverAddress``
only, over https only (the policy refuses a token with an http address), never following a redirect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections import deque
from typing import Callable

import aiohttp

from ..policy import Policy, PrometheusAuth

log = logging.getLogger("llmaz_serverless.requestcounts")

Route = tuple[str, str]                 # (namespace, InterceptorRoute name)
Sample = tuple[float, float, float]     # (time, requests completed so far, sum of their durations in seconds)

MAX_BODY = 16 << 20                     # bytes of one Prometheus answer
MAX_ROUTES = 20000                      # series of one answer
MAX_SPAN_S = 3600.0                     # one read covers at most this much; samples are kept this long
FIRST_SPAN_S = 60.0                     # the first read looks back this far
MAX_TOKEN = 16 << 10                    # bytes of learnFrom.auth.bearerTokenFile
MAX_CA = 1 << 20                        # bytes of learnFrom.auth.caFile


class QueryError(Exception):
    """Prometheus did not answer, or not with a matrix this poller can read."""


def parse_matrix(body: bytes, ns_label: str, name_label: str) -> dict[Route, dict[float, float]]:
    """A ``query_range`` answer -> {route: {time: value}}. Series without both labels are left out; a value
    that is not a finite number is left out. Raises ``QueryError`` on anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"answer is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error") if isinstance(doc, dict) else None
        raise QueryError(f"query failed: {str(err)[:200] if err else 'status is not success'}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise QueryError("answer is not a range vector (matrix); the query must return one series per route")
    result = data["result"]
    if len(result) > MAX_ROUTES:
        raise QueryError(f"{len(result)} series, more than {MAX_ROUTES}")
    out: dict[Route, dict[float, float]] = {}
    for series in result:
        if not isinstance(series, dict):
            continue
        metric, values = series.get("metric"), series.get("values")
        if not isinstance(metric, dict) or not isinstance(values, list):
            continue
        ns, name = metric.get(ns_label), metric.get(name_label)
        if not isinstance(ns, str) or not isinstance(name, str) or not ns or not name:
            continue
        points = out.setdefault((ns, name), {})
        for point in values:
            try:
                t, v = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError):
                continue
            if math.isfinite(t) and math.isfinite(v):
                points[t] = v
    return out


def join(counts: dict[Route, dict[float, float]],
         durations: dict[Route, dict[float, float]]) -> dict[Route, list[Sample]]:
    """Samples of each route present in both answers, at the times both have, in time order."""
    out: dict[Route, list[Sample]] = {}
    for route, c in counts.items():
        d = durations.get(route)
        if d is None:
            continue
        out[route] = [(t, c[t], d[t]) for t in sorted(c) if t in d]
    return out


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise QueryError(f"cannot read learnFrom.auth.{what} {path} ({exc.strerror or type(exc).__name__})") \
            from None
    if len(data) > limit:
        raise QueryError(f"learnFrom.auth.{what} {path} is larger than {limit >> 10} KiB")
    return data


def credentials(auth: PrometheusAuth, cache: dict[str, tuple[bytes, ssl.SSLContext]]) -> \
        tuple[dict[str, str], ssl.SSLContext | None]:
    """The headers and TLS context of one read, from the files ``auth`` names (read again each time, so a
    rotated token or CA applies at the next poll; a TLS context is rebuilt only when the CA file changed).
    Raises QueryError naming the file and what is wrong with it."""
    headers: dict[str, str] = {}
    if auth.bearerTokenFile:
        raw = _read_bounded(auth.bearerTokenFile, MAX_TOKEN, "bearerTokenFile").strip()
        if not raw or any(b < 0x21 or b > 0x7e for b in raw):
            raise QueryError(f"learnFrom.auth.bearerTokenFile {auth.bearerTokenFile} must hold one token of "
                             f"printable ASCII without spaces")
        headers["Authorization"] = "Bearer " + raw.decode("ascii")
    ctx = None
    if auth.caFile:
        pem = _read_bounded(auth.caFile, MAX_CA, "caFile")
        hit = cache.get(auth.caFile)
        if hit and hit[0] == pem:
            ctx = hit[1]
        else:
            try:
                ctx = ssl.create_default_context(cadata=pem.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise QueryError(f"learnFrom.auth.caFile {auth.caFile} holds no PEM certificate this controller "
                                 f"can use ({str(exc)[:120]})") from None
            cache.clear()
            cache[auth.caFile] = (pem, ctx)
    return headers, ctx


class RequestCounts:
    """The poller (see the module docstring). ``policy`` gives the policy in force at each read."""

    def __init__(self, policy: Callable[[], Policy], on_change: Callable[[Route], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.on_change = on_change
        self.clock = clock
        self.samples: dict[Route, deque[Sample]] = {}
        self.present: set[Route] = set()       # routes in the last answer
        self.up: bool | None = None            # None: not read yet
        self.error: str | None = None
        self.read_until: float | None = None   # the end of the last read that succeeded
        self.reads = 0
        self.on_read: Callable[[bool], None] = lambda up: None   # told after every read, answered or not
        self._tls: dict[str, tuple[bytes, ssl.SSLContext]] = {}     # caFile -> (its bytes, its context)

    # -- what reconciles read
    def since(self, route: Route, after: float | None) -> list[Sample] | None:
        """The route's samples after ``after`` (all kept when None). None when the counts cannot be trusted
        now: Prometheus did not answer the last read, or the route's series was not in it (no request counted
        yet, or its interceptor is not scraped)."""
        if not self.up or route not in self.present:
            return None
        return [s for s in self.samples.get(route, ()) if after is None or s[0] > after]

    # -- the poll loop
    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                p = self.policy().learnFrom
                if p.source == "requests":
                    await self.poll_once(session)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=p.interval)
                except asyncio.TimeoutError:
                    pass

    async def poll_once(self, session: aiohttp.ClientSession) -> bool:
        """One read of every route; True when Prometheus answered."""
        policy = self.policy()
        lf = policy.learnFrom
        now = self.clock()
        start = max(self.read_until if self.read_until is not None else now - FIRST_SPAN_S, now - MAX_SPAN_S)
        start = math.floor(start / lf.step) * lf.step
        try:
            headers, tls = credentials(lf.auth, self._tls)
            counts = await self._query(session, policy, lf.countQuery, start, now, headers, tls)
            durations = await self._query(session, policy, lf.durationQuery, start, now, headers, tls)
        except QueryError as exc:
            self._down(str(exc))
            self.on_read(False)
            return False
        self.reads += 1
        self.on_read(True)
        if self.up is not True:
            log.info("request counts: Prometheus at %s answers; learning from requests where routes are counted",
                     policy.prometheus.serverAddress)
        self.up, self.error = True, None
        self.read_until = now
        joined = join(counts, durations)
        self.present = set(joined)
        horizon = now - MAX_SPAN_S
        for route, new in joined.items():
            kept = self.samples.setdefault(route, deque())
            before = kept[-1][1] if kept else (new[0][1] if new else None)
            for s in new:
                if not kept or s[0] > kept[-1][0]:
                    kept.append(s)
            while kept and kept[0][0] < horizon:
                kept.popleft()
            if kept and kept[-1][1] != before:
                self.on_change(route)
        for route in [r for r in self.samples if r not in self.present]:
            if not self.samples[route] or self.samples[route][-1][0] < horizon:
                del self.samples[route]
        return True

    def _down(self, why: str) -> None:
        if self.up is not False or self.error != why:
            log.warning("request counts: %s; keep-alive: learned reads KEDA's status until Prometheus answers", why)
        self.up, self.error = False, why

    async def _query(self, session: aiohttp.ClientSession, policy: Policy, query: str, start: float,
                     end: float, headers: dict[str, str],
                     tls: ssl.SSLContext | None) -> dict[Route, dict[float, float]]:
        lf = policy.learnFrom
        url = policy.prometheus.serverAddress.rstrip("/") + "/api/v1/query_range"
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(lf.step)}
        try:
            # No redirects: the token goes to serverAddress and nowhere else.
            async with session.get(url, params=params, headers=headers, ssl=tls if tls is not None else True,
                                   allow_redirects=False, timeout=aiohttp.ClientTimeout(total=lf.timeout)) as r:
                body = await r.content.read(MAX_BODY + 1)
                if len(body) > MAX_BODY:
                    raise QueryError(f"answer from {url} is larger than {MAX_BODY >> 20} MiB")
                if r.status in (401, 403):
                    hint = ("check the token in learnFrom.auth.bearerTokenFile" if headers else
                            "it asks for credentials: set learnFrom.auth.bearerTokenFile")
                    raise QueryError(f"{url} answered HTTP {r.status} ({hint})")
                if 300 <= r.status < 400:
                    raise QueryError(f"{url} answered HTTP {r.status} (a redirect, not followed: set "
                                     f"prometheus.serverAddress to where it points)")
                if r.status != 200 and not body.startswith(b"{"):
                    raise QueryError(f"{url} answered HTTP {r.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, ssl.SSLError) as exc:
            raise QueryError(f"cannot read {url} ({type(exc).__name__}: {str(exc)[:200]})") from None
        return parse_matrix(body, lf.namespaceLabel, lf.nameLabel)

