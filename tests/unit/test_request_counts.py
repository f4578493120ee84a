"""Learning from request counts (policy ``learnFrom.source: requests``): reading Prometheus' range answers
(webhook.controller.requestcounts) and what the learner makes of them (webhook.controller.learning
``observe_counts``). The live path, with the HTTP add-on's interceptor scraped by a real Prometheus, is in
tests/e2e/test_learned_counts.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from certs.authority import generate_ca, issue_serving_cert
from webhook import constants as C
from webhook.controller import learning as L
from webhook.controller.requestcounts import MAX_ROUTES, QueryError, RequestCounts, join, parse_matrix
from webhook.policy import Policy

from .test_learning_live import POLL, T0, live, scaled_object

NS, ROUTE = "route_namespace", "route_name"


def matrix(series: dict[tuple[str, str], list[tuple[float, float]]]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {NS: ns, ROUTE: name}, "values": [[t, str(v)] for t, v in points]}
        for (ns, name), points in series.items()]}}).encode()


def test_parse_matrix_reads_routes_and_leaves_out_what_it_cannot_read() -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {NS: "ai", ROUTE: "chat"}, "values": [[100, "3"], [105, "NaN"], [110, "x"], [115, "4"]]},
        {"metric": {NS: "ai"}, "values": [[100, "1"]]},                       # no route name: not ours
        "not a series",
    ]}}).encode()
    assert parse_matrix(body, NS, ROUTE) == {("ai", "chat"): {100.0: 3.0, 115.0: 4.0}}


@pytest.mark.parametrize("body, why", [
    (b"<html>", "not JSON"),
    (json.dumps({"status": "error", "error": "parse error at char 3"}).encode(), "parse error"),
    (json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode(), "matrix"),
    (json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": []}] * (MAX_ROUTES + 1)}}).encode(), "more than"),
])
def test_parse_matrix_refuses_answers_it_cannot_trust(body: bytes, why: str) -> None:
    with pytest.raises(QueryError, match=why):
        parse_matrix(body, NS, ROUTE)


def test_join_keeps_the_times_both_series_have() -> None:
    counts = {("ai", "a"): {1.0: 1.0, 2.0: 2.0, 3.0: 2.0}, ("ai", "b"): {1.0: 5.0}}
    sums = {("ai", "a"): {2.0: 0.5, 3.0: 0.5, 1.0: 0.2}}
    assert join(counts, sums) == {("ai", "a"): [(1.0, 1.0, 0.2), (2.0, 2.0, 0.5), (3.0, 2.0, 0.5)]}


# -- the learner fed from counts

def test_counts_date_arrivals_and_end_idle_times() -> None:
    lv = live()
    # (time, requests completed so far, sum of their durations): a request of 2 s completes at +10 (the
    # reference), the next one, 20 s long, completes at +640: it came at +620, 610 s after the first ended.
    changed = L.observe_counts(lv, [(T0, 4, 8.0), (T0 + 10, 5, 10.0), (T0 + 20, 5, 10.0)], POLL)
    assert not changed and lv.done == T0 + 10 and lv.anchor == T0 + 10
    assert lv.learner.state.first is None                   # the first requests counted only set the reference
    assert L.observe_counts(lv, [(T0 + 630, 5, 10.0), (T0 + 640, 6, 30.0)], POLL)
    st = lv.learner.state
    assert 10 in st.bins and sum(v[0] for v in st.bins.values()) == 1.0    # 610 s: the 10-minute bin
    assert st.requests == 1.0 and lv.anchor == T0 + 640


def test_a_burst_counts_every_request_and_a_busy_step_is_no_idle_time() -> None:
    lv = live()
    L.observe_counts(lv, [(T0, 0, 0.0), (T0 + 5, 1, 1.0)], POLL)
    # 40 requests of 3 s complete 45 s later (within two polls of the last one: busy, no idle time)
    assert not L.observe_counts(lv, [(T0 + 50, 41, 121.0)], POLL)
    assert lv.learner.state.requests == pytest.approx(40.0, rel=1e-3) and not lv.learner.state.bins
    # 30 minutes later a burst of 12: one idle time, 12 requests
    assert L.observe_counts(lv, [(T0 + 1850, 53, 157.0)], POLL)
    assert lv.learner.state.requests == pytest.approx(52.0, rel=1e-2)
    assert len(lv.learner.state.bins) == 1 and sum(v[0] for v in lv.learner.state.bins.values()) > 0.99


def test_a_counter_that_went_back_makes_its_step_unknown() -> None:
    lv = live()
    L.observe_counts(lv, [(T0, 10, 10.0), (T0 + 5, 11, 11.0)], POLL)
    assert not L.observe_counts(lv, [(T0 + 900, 2, 2.0)], POLL)       # the interceptor restarted
    assert lv.learner.state.first is None and lv.seen == (T0 + 900, 2, 2.0)
    assert L.observe_counts(lv, [(T0 + 1800, 3, 3.0)], POLL)          # from the new reference on
    assert lv.learner.state.requests == 1.0


def test_old_samples_are_not_read_twice() -> None:
    lv = live()
    samples = [(T0, 0, 0.0), (T0 + 5, 1, 1.0), (T0 + 900, 2, 2.0)]
    assert L.observe_counts(lv, samples, POLL)
    assert not L.observe_counts(lv, samples, POLL)
    assert lv.learner.state.requests == 1.0


def test_requests_counted_while_busy_cause_no_write_of_the_state() -> None:
    so, lv = scaled_object(), live()
    L.observe_counts(lv, [(T0, 0, 0.0), (T0 + 5, 1, 1.0), (T0 + 900, 2, 2.0)], POLL)
    first = L.plan(so, lv, T0 + 901, POLL).scaled_object["metadata"]["annotations"][C.ANN_LEARNED_STATE]
    L.observe_counts(lv, [(T0 + 905, 9, 9.0), (T0 + 910, 20, 20.0)], POLL)      # busy: no idle time
    again = L.plan(so, lv, T0 + 911, POLL).scaled_object["metadata"]["annotations"][C.ANN_LEARNED_STATE]
    assert again == first and lv.learner.state.requests == pytest.approx(19.0, rel=1e-3)
    L.observe_counts(lv, [(T0 + 2000, 21, 21.0)], POLL)                       # an idle time ended
    later = L.plan(so, lv, T0 + 2001, POLL).scaled_object["metadata"]["annotations"][C.ANN_LEARNED_STATE]
    assert later != first


def test_following_keda_without_teaching_keeps_the_reference_for_a_fallback() -> None:
    lv = live()
    assert not L.observe(lv, T0, POLL, teach=False)
    assert not L.observe(lv, T0 + 900, POLL, teach=False)
    assert lv.prev == T0 + 900 and lv.learner.state.first is None
    assert L.observe(lv, T0 + 1800, POLL)                 # KEDA's status read again: from where it was left


# -- the poller against Prometheus' HTTP API (its real answers are read in the live test)

def test_poller_reads_all_routes_at_once_and_says_when_it_cannot() -> None:
    async def scenario() -> None:
        seen: list[dict] = []
        answers = {"count": matrix({("ai", "chat"): [(100, 1), (105, 2)], ("ml", "x"): [(100, 7)]}),
                   "duration": matrix({("ai", "chat"): [(100, 0.5), (105, 1.5)], ("ml", "x"): [(100, 3)]})}
        fail = {"on": False}

        async def query_range(request: web.Request) -> web.Response:
            seen.append(dict(request.query))
            if fail["on"]:
                return web.Response(status=503, text="overloaded")
            key = "count" if "count" in request.query["query"] else "duration"
            return web.Response(body=answers[key], content_type="application/json")

        app = web.Application()
        app.router.add_get("/api/v1/query_range", query_range)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]          # type: ignore[union-attr]
        policy = Policy.model_validate({"prometheus": {"serverAddress": f"http://127.0.0.1:{port}"},
                                        "learnFrom": {"step": 5}})
        changed: list[tuple[str, str]] = []
        rc = RequestCounts(lambda: policy, changed.append, clock=lambda: 110.0)
        try:
            async with aiohttp.ClientSession() as session:
                assert rc.since(("ai", "chat"), None) is None            # not read yet
                assert await rc.poll_once(session)
                assert len(seen) == 2 and seen[0]["step"] == "5" and float(seen[0]["end"]) == 110.0
                assert rc.since(("ai", "chat"), None) == [(100.0, 1.0, 0.5), (105.0, 2.0, 1.5)]
                assert rc.since(("ai", "chat"), 100.0) == [(105.0, 2.0, 1.5)]
                assert rc.since(("ai", "other"), None) is None           # never counted: not to be trusted
                assert changed == [("ai", "chat")]                       # its count moved; ml/x's did not
                fail["on"] = True
                assert not await rc.poll_once(session)
                assert rc.up is False and "503" in (rc.error or "")
                assert rc.since(("ai", "chat"), None) is None            # KEDA's status until it answers
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_poller_bounds_its_read_and_survives_nothing_listening() -> None:
    async def scenario() -> None:
        policy = Policy.model_validate({"prometheus": {"serverAddress": "http://127.0.0.1:9"},
                                        "learnFrom": {"timeout": 1}})
        rc = RequestCounts(lambda: policy, lambda r: None, clock=lambda: 10_000.0)
        async with aiohttp.ClientSession() as session:
            assert not await rc.poll_once(session)
        assert rc.up is False and "cannot read" in (rc.error or "")

    asyncio.run(scenario())


def test_policy_learn_from_is_validated() -> None:
    from pydantic import ValidationError
    assert Policy().learnFrom.source == "requests"
    for bad in ({"source": "magic"}, {"interval": 0}, {"countQuery": ""}, {"nope": 1}):
        with pytest.raises(ValidationError):
            Policy.model_validate({"learnFrom": bad})


# -- a Prometheus that asks for credentials (learnFrom.auth)

def _tls_prometheus(tmp_path: Path, token: str):
    """An https Prometheus stand-in on loopback with a certificate of its own CA, answering only a bearer
    ``token``; returns (start coroutine, requests seen, CA path)."""
    ca = generate_ca("test prometheus CA", dt.timedelta(days=1))
    leaf = issue_serving_cert(ca, [], ["127.0.0.1"])
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(leaf.key_pem)
    seen: list[str] = []
    body = matrix({("ai", "chat"): [(100, 1)]})

    async def query_range(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        if auth != f"Bearer {token}":
            return web.Response(status=401, text="Unauthorized")
        return web.Response(body=body, content_type="application/json")

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append("redirect:" + request.headers.get("Authorization", ""))
        raise web.HTTPFound("https://127.0.0.2:1/api/v1/query_range")

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/api/v1/query_range", query_range)
        app.router.add_get("/moved/api/v1/query_range", elsewhere)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]          # type: ignore[union-attr]

    return start, seen, tmp_path / "ca.crt"


def test_poller_reads_a_prometheus_that_asks_for_a_token_over_verified_tls(tmp_path: Path) -> None:
    start, seen, ca = _tls_prometheus(tmp_path, "s3cret")
    token = tmp_path / "token"
    token.write_text("s3cret\n")

    async def scenario() -> None:
        runner, port = await start()
        address = f"https://127.0.0.1:{port}"

        def poller(auth: dict, path: str = "") -> RequestCounts:
            policy = Policy.model_validate({"prometheus": {"serverAddress": address + path},
                                            "learnFrom": {"auth": auth, "timeout": 2}})
            return RequestCounts(lambda: policy, lambda r: None, clock=lambda: 110.0)
        try:
            async with aiohttp.ClientSession() as session:
                rc = poller({"bearerTokenFile": str(token), "caFile": str(ca)})
                assert await rc.poll_once(session), rc.error
                assert seen[-1] == "Bearer s3cret" and rc.since(("ai", "chat"), None) == [(100.0, 1.0, 1.0)]
                token.write_text("rotated")                  # read again at each poll: the new one is sent
                assert not await rc.poll_once(session)
                assert seen[-1] == "Bearer rotated" and "HTTP 401" in (rc.error or "")
                assert "check the token in learnFrom.auth.bearerTokenFile" in (rc.error or "")
                token.write_text("s3cret")
                assert await rc.poll_once(session)

                rc = poller({"caFile": str(ca)})             # no token: told what to set
                assert not await rc.poll_once(session)
                assert "it asks for credentials: set learnFrom.auth.bearerTokenFile" in (rc.error or "")

                n = len(seen)                                # the system CAs do not know this one: no request
                rc = poller({"bearerTokenFile": str(token)})
                assert not await rc.poll_once(session)
                assert "certificate" in (rc.error or "").lower() and len(seen) == n

                rc = poller({"bearerTokenFile": str(tmp_path / "absent"), "caFile": str(ca)})
                assert not await rc.poll_once(session)
                assert rc.error == f"cannot read learnFrom.auth.bearerTokenFile {tmp_path / 'absent'} " \
                                   "(No such file or directory)" and len(seen) == n

                (tmp_path / "two").write_text("two words")
                rc = poller({"bearerTokenFile": str(tmp_path / "two"), "caFile": str(ca)})
                assert not await rc.poll_once(session)
                assert "one token of printable ASCII" in (rc.error or "") and len(seen) == n

                (tmp_path / "bad.crt").write_text("not a certificate")
                rc = poller({"bearerTokenFile": str(token), "caFile": str(tmp_path / "bad.crt")})
                assert not await rc.poll_once(session)
                assert "holds no PEM certificate" in (rc.error or "") and len(seen) == n

                rc = poller({"bearerTokenFile": str(token), "caFile": str(ca)}, "/moved")
                assert not await rc.poll_once(session)          # a redirect is not followed: the token stays
                assert "a redirect, not followed" in (rc.error or "") and seen[-1] == "redirect:Bearer s3cret"
                assert len(seen) == n + 1
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_policy_learn_from_auth_is_validated() -> None:
    from pydantic import ValidationError
    https = {"serverAddress": "https://prometheus.monitoring.svc:9091"}
    files = {"bearerTokenFile": "/etc/llmaz-serverless/prometheus/token",
             "caFile": "/etc/llmaz-serverless/prometheus/ca.crt"}
    ok = Policy.model_validate({"prometheus": https, "learnFrom": {"auth": files}})
    assert ok.learnFrom.auth.bearerTokenFile == "/etc/llmaz-serverless/prometheus/token"
    with pytest.raises(ValidationError, match="a token is sent only over https"):
        Policy.model_validate({"learnFrom": {"auth": {"bearerTokenFile": "/var/run/secrets/token"}}})
    for bad in ("token", "/etc/../var/run/secrets/kubernetes.io/serviceaccount/token", "/a/..", "/a\x00b",
                "/" + "a" * 300):
        with pytest.raises(ValidationError):
            Policy.model_validate({"prometheus": https, "learnFrom": {"auth": {"bearerTokenFile": bad}}})
    with pytest.raises(ValidationError):
        Policy.model_validate({"learnFrom": {"auth": {"password": "x"}}})
