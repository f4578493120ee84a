"""Property-based fuzzing (hypothesis), bounded: ~200 examples per property, no deadline, the file in < 60 s.

1. The HTTPS server (the real aiohttp app on a real TLS socket, one per module) gets arbitrary JSON, arbitrary
   bytes and valid AdmissionReviews with fields dropped or replaced (wrong types, huge strings, unicode, nested
   garbage in object/spec/metadata/annotations). Always: an answer, never a 5xx; HTTP 200 exactly when the body
   holds a usable review (a JSON object, kind AdmissionReview, a request object with a non-empty string uid),
   else HTTP 400; a 200 is a well-formed AdmissionReview with the uid echoed, never an internal error (status
   code 500) and, when it carries a patch, one that applies to the request object.
2. ``mutate`` with random values for every ``serverless.llmaz.io/*`` annotation (and a random
   ``spec.elasticConfig``): either ``Denied`` naming an annotation that was set, or an object such that the
   patch from the raw object applies with jsonpatch, a second pass yields an empty patch (idempotent), the
   validating rules accept it, and the raw object was not modified.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from certs.reload import ReloadingSSLContext
from tests.unit.helpers import catalog, playground, service
from webhook import constants as C
from webhook.admission import Brain, make_patch
from webhook.errors import Denied
from webhook.metrics import Metrics
from webhook.mutation import mutate
from webhook.policy import Policy
from webhook.server import Health, WebhookServer
from webhook.validation import validate

P = Policy.default()
MODELS = catalog()
# In CI the examples are derived from a fixed seed, so a run is reproducible and cannot turn red by chance;
# locally each run explores new inputs (and replays failures from the .hypothesis database).
FUZZ = settings(max_examples=200, deadline=None, derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")

# ------------------------------------------------------------------------------------------ strategies

# Text with the awkward parts of unicode: astral-plane characters, combining marks, RTL, NUL and a lone
# surrogate (legal in a JSON string as an escape, not encodable as UTF-8).
AWKWARD = st.sampled_from(["\x00", "\ud800", "\U0001f600", "e\u0301", "\u202e", "\ufeff", "\\", '"', "\n", "/",
                           "~1", "~0", "%", "ÿ"])
TEXT = st.one_of(st.text(max_size=40),
                 st.lists(st.one_of(st.text(max_size=5), AWKWARD), max_size=8).map("".join))
HUGE = st.integers(min_value=10_000, max_value=200_000).map(lambda n: "x" * n)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                     st.dictionaries(TEXT, inner, max_size=5)), max_leaves=25)
GARBAGE = st.one_of(JSON, HUGE, st.lists(JSON, min_size=1, max_size=3), st.dictionaries(TEXT, JSON, max_size=6))


def base_review(obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None,
                uid: str = "0d8a6e5c-1f0b-4a53-9d4e-6c2f4b1d2e3f") -> dict[str, Any]:
    kind = obj.get("kind", "Playground")
    req: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": C.LLMAZ_GROUP, "version": C.LLMAZ_VERSION, "kind": kind},
        "resource": {"group": C.LLMAZ_GROUP, "version": C.LLMAZ_VERSION, "resource": C.PLURALS.get(kind, "x")},
        "name": obj["metadata"].get("name", ""), "namespace": obj["metadata"].get("namespace", ""),
        "operation": operation, "object": obj, "userInfo": {"username": "fuzz"}, "dryRun": False,
    }
    if old is not None:
        req["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


@st.composite
def valid_reviews(draw: st.DrawFn) -> dict[str, Any]:
    ann = draw(st.sampled_from([None, {}, {C.ANN_TRIGGERS: "http, queue-depth", C.ANN_MAX_REPLICAS: "4"},
                                {C.ANN_ENABLED: "false"}, {C.ANN_PROFILE: "batch"}]))
    obj = draw(st.sampled_from([
        lambda: playground(annotations=ann),
        lambda: playground(model="tiny", annotations=ann, elasticConfig={"minReplicas": 2, "maxReplicas": 3}),
        lambda: service(annotations=ann),
        lambda: service(owner=True),
    ]))()
    operation = draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]))
    old = copy.deepcopy(obj) if operation == "UPDATE" else None
    return base_review(obj, operation, old)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into ``doc``, containers included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def broken_reviews(draw: st.DrawFn) -> dict[str, Any]:
    """A valid review with 1-4 edits: a field dropped, or replaced by garbage of any type."""
    doc = draw(valid_reviews())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        candidates = [p for p in paths(doc) if p]
        if not candidates:
            break
        # Bias towards the parts the rules read.
        hot = [p for p in candidates if p[:2] in (("request", "object"), ("request", "oldObject"))]
        path = draw(st.sampled_from(hot if hot and draw(st.booleans()) else candidates))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["drop", "replace", "replace", "add"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(GARBAGE)
        elif isinstance(parent, dict):
            parent[draw(st.one_of(TEXT, st.sampled_from(C.USER_ANNOTATIONS + C.WRITTEN_ANNOTATIONS)))] = draw(
                GARBAGE)
    return doc


def usable(body: Any) -> bool:
    """A review the server can answer: what it must answer with HTTP 200."""
    if not (isinstance(body, dict) and body.get("kind") == "AdmissionReview"):
        return False
    req = body.get("request")
    return isinstance(req, dict) and isinstance(req.get("uid"), str) and bool(req["uid"])


# ------------------------------------------------------------------------------------------ live server


class Live:
    """One real HTTPS server and one keep-alive client for the whole module, on a private event loop (hypothesis
    drives synchronous test functions)."""

    def __init__(self, tls_dir: Path, client_ssl: ssl.SSLContext) -> None:
        self.loop = asyncio.new_event_loop()
        self.tls = ReloadingSSLContext(tls_dir / "tls.crt", tls_dir / "tls.key")
        self.server = WebhookServer(Brain(models=catalog()), Health(), metrics=Metrics())
        self.loop.run_until_complete(self.server.start("127.0.0.1", 0, self.tls))
        self.session = self.loop.run_until_complete(self._session(client_ssl))
        self.base = f"https://127.0.0.1:{self.server.port}"

    @staticmethod
    async def _session(client_ssl: ssl.SSLContext) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl, limit=4))

    def post(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        async def go() -> tuple[int, bytes, str]:
            async with self.session.post(self.base + path, data=body,
                                         headers={"Content-Type": "application/json"}) as resp:
                return resp.status, await resp.read(), resp.content_type
        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.run_until_complete(self.server.stop(grace=1))
        self.loop.close()


@pytest.fixture(scope="module")
def live(tls_dir: Path, client_ssl: ssl.SSLContext):
    server = Live(tls_dir, client_ssl)
    yield server
    server.close()


def check_answer(body: Any, status: int, payload: bytes, content_type: str) -> dict[str, Any] | None:
    """The server-side invariants for any body; returns the decoded review of a 200."""
    assert status < 500, payload[:500]
    assert content_type == "application/json"
    out = json.loads(payload)
    if not usable(body):
        event("HTTP 400 (no usable review)")
        assert status == 400, (status, payload[:500])
        assert isinstance(out.get("error"), str) and out["error"]
        return None
    assert status == 200, (status, payload[:500])
    assert out["kind"] == "AdmissionReview"
    api_version = body.get("apiVersion")
    assert out["apiVersion"] == (api_version if api_version in REVIEW_VERSIONS else "admission.k8s.io/v1")
    resp = out["response"]
    assert resp["uid"] == body["request"]["uid"]
    assert isinstance(resp["allowed"], bool)
    if not resp["allowed"]:
        assert resp["status"]["code"] in (400, 422), resp["status"]   # never an internal error (500)
        assert isinstance(resp["status"]["message"], str) and resp["status"]["message"]
    for w in resp.get("warnings", []):
        assert isinstance(w, str) and len(w) <= 256
    event("HTTP 200: " + ("patched" if "patch" in resp else "allowed" if resp["allowed"]
                          else f"denied {resp['status']['code']}"))
    if "patch" in resp:
        assert resp["allowed"] and resp["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(resp["patch"]))
        assert isinstance(ops, list) and ops
        patched = jsonpatch.apply_patch(body["request"]["object"], ops)
        assert patched["metadata"]["annotations"][C.ANN_MANAGED] == "true"
    return out


def send(live: Live, endpoint: str, doc: Any) -> tuple[int, bytes, str]:
    return live.post(endpoint, json.dumps(doc).encode())


# ------------------------------------------------------------------------------------------ 1. server


@FUZZ
@given(doc=JSON, endpoint=st.sampled_from(["/mutate", "/validate"]))
def test_arbitrary_json(live: Live, doc: Any, endpoint: str) -> None:
    check_answer(doc, *send(live, endpoint, doc))


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["apiVersion", "kind", "request", "response", "x"]),
                           st.one_of(JSON, st.just("AdmissionReview"),
                                     st.fixed_dictionaries({"uid": st.one_of(JSON, st.just("u-1"))},
                                                           optional={"object": JSON, "kind": JSON}))),
       endpoint=st.sampled_from(["/mutate", "/validate"]))
def test_review_shaped_json(live: Live, doc: Any, endpoint: str) -> None:
    check_answer(doc, *send(live, endpoint, doc))


@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes(live: Live, data: bytes) -> None:
    try:
        doc = json.loads(data)
    except ValueError:
        status, payload, ctype = live.post("/mutate", data)
        assert status == 400 and ctype == "application/json", (status, payload[:300])
        return
    check_answer(doc, *live.post("/mutate", data))


@FUZZ
@given(doc=broken_reviews(), endpoint=st.sampled_from(["/mutate", "/validate"]))
def test_broken_reviews(live: Live, doc: dict[str, Any], endpoint: str) -> None:
    check_answer(doc, *send(live, endpoint, doc))


@settings(max_examples=50, deadline=None, derandomize=os.environ.get("CI") == "true")
@given(doc=valid_reviews(), endpoint=st.sampled_from(["/mutate", "/validate"]))
def test_valid_reviews_are_allowed(live: Live, doc: dict[str, Any], endpoint: str) -> None:
    out = check_answer(doc, *send(live, endpoint, doc))
    assert out is not None
    req = doc["request"]
    if endpoint == "/validate" and "elasticConfig" in req["object"]["spec"] and req["operation"] in (
            "CREATE", "UPDATE") and not (req["object"]["metadata"].get("annotations") or {}).get(C.ANN_ENABLED):
        # What reaches validation still carrying elasticConfig was not mutated: denied by design.
        assert out["response"]["allowed"] is False and "elasticConfig" in out["response"]["status"]["message"]
    else:
        assert out["response"]["allowed"] is True, out


# ------------------------------------------------------------------------------------------ 2. annotations

DURATION = st.from_regex(r"\A[0-9]{1,8}(s|m|h)?\Z")
NUMBER = st.one_of(st.integers(min_value=-5, max_value=10**6).map(str), st.sampled_from(["0", "1", "4", "08",
                                                                                         " 3 ", "1e3", "2.5"]))
BOOL = st.sampled_from(["true", "false", "True", " FALSE ", "yes", "no", "on", "off", "1", "0", "maybe", ""])
PRESET_NAMES = st.sampled_from(["http", "queue-depth", "cpu", "memory", "redis", "kafka", "cron", "raw", "nope",
                                " http ", ""])
TRIGGERS = st.one_of(
    st.lists(PRESET_NAMES, min_size=1, max_size=3).map(", ".join),
    st.sampled_from(["[]", "{}", "[http, http]", "[{type: http, requestRate: 5}]", "{type: queue-depth}",
                     "[{type: redis, address: 'r:6379', listName: q}]", "[{type: redis, password: x}]",
                     "[{type: cron, timezone: Mars/Olympus, start: '0 8 * * *', end: '0 18 * * *'}]",
                     "[{type: raw, trigger: {type: prometheus, metadata: {}}}]", "{1: 2}", "[[1]]", "- - -",
                     "[{type: http, name: a}, {type: queue-depth, name: a}]", ": :", "[{type: null}]",
                     "[{type: kafka, bootstrapServers: 'k:9092', consumerGroup: g, topic: t}]"]),
    st.lists(st.one_of(PRESET_NAMES, st.dictionaries(st.sampled_from(["type", "name", "requestRate", "metric",
                                                                      "address", "authRef", 1]), JSON,
                                                     max_size=4)), max_size=3).map(json.dumps),
)
BEHAVIOR = st.one_of(
    st.dictionaries(st.sampled_from(["scaleUp", "scaleDown", "other"]),
                    st.one_of(JSON, st.fixed_dictionaries({}, optional={
                        "stabilizationWindowSeconds": st.one_of(st.integers(-10, 5000), JSON),
                        "selectPolicy": st.sampled_from(["Max", "Min", "Disabled", "x"]),
                        "policies": st.lists(st.fixed_dictionaries({}, optional={
                            "type": st.sampled_from(["Pods", "Percent", "x"]), "value": st.integers(-1, 10),
                            "periodSeconds": st.integers(-1, 2000)}), max_size=2)})), max_size=3).map(json.dumps),
    st.sampled_from(["{", "[]", "null", "scaleDown: {stabilizationWindowSeconds: 60}", "- a", "!!python/name:os"]),
)
PER_ANNOTATION = {
    C.ANN_ENABLED: BOOL, C.ANN_START_AT_ZERO: BOOL,
    C.ANN_PROFILE: st.sampled_from(["interactive", "always-warm", "batch", "nope", "", " batch "]),
    C.ANN_MIN_REPLICAS: NUMBER, C.ANN_MAX_REPLICAS: NUMBER,
    C.ANN_COOLDOWN: st.one_of(DURATION, NUMBER), C.ANN_POLLING: st.one_of(DURATION, NUMBER),
    C.ANN_INITIAL_COOLDOWN: st.one_of(DURATION, NUMBER),
    C.ANN_TRIGGERS: TRIGGERS, C.ANN_BEHAVIOR: BEHAVIOR,
    C.ANN_KEEP_ALIVE: st.sampled_from(["learned", "fixed", "Learned", "auto", ""]),
    C.ANN_COLD_START_OBJECTIVE: st.sampled_from(["1%", "0.5%", "0%", "60%", "1", "x%", " 2% "]),
    C.ANN_STARTUP_TIME: st.one_of(DURATION, NUMBER),
    C.ANN_DRAIN_TIMEOUT: st.one_of(DURATION, NUMBER), C.ANN_MAX_REQUEST: st.one_of(DURATION, NUMBER),
    C.ANN_MANAGED: st.one_of(BOOL, TEXT), C.ANN_RESOLVED: st.one_of(TEXT, st.just("{}")),
    C.ANN_LEARNED: TEXT,
}
ALL_ANNOTATIONS = C.USER_ANNOTATIONS + C.WRITTEN_ANNOTATIONS


@st.composite
def annotated_objects(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(ALL_ANNOTATIONS), unique=True, max_size=len(ALL_ANNOTATIONS)))
    ann = {}
    for key in keys:
        # Mostly plausible values for that annotation, sometimes anything at all.
        ann[key] = draw(st.one_of(PER_ANNOTATION[key], PER_ANNOTATION[key], PER_ANNOTATION[key], TEXT,
                                  HUGE.map(lambda s: s[:20_000])))
    if draw(st.booleans()):
        ann["example.com/other"] = draw(TEXT)
    kind = draw(st.sampled_from(["gpu", "cpu", "service", "owned-service"]))
    if kind == "gpu":
        obj = playground(annotations=ann, replicas=draw(st.one_of(st.none(), st.integers(0, 20))))
    elif kind == "cpu":
        obj = playground(model="tiny", annotations=ann, replicas=draw(st.one_of(st.none(), st.integers(0, 20))))
    else:
        obj = service(annotations=ann, owner=kind == "owned-service")
    if kind in ("gpu", "cpu") and draw(st.booleans()):
        obj["spec"]["elasticConfig"] = draw(st.one_of(
            st.fixed_dictionaries({}, optional={"minReplicas": st.one_of(st.integers(0, 5), JSON),
                                                "maxReplicas": st.one_of(st.integers(0, 9), JSON),
                                                "scaleTrigger": st.one_of(JSON, st.just({"hpa": {
                                                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
                                                    "metrics": [{"type": "Resource"}]}}))}),
            JSON))
    return obj


@FUZZ
@given(obj=annotated_objects(), operation=st.sampled_from(["CREATE", "UPDATE"]))
def test_random_annotation_values(obj: dict[str, Any], operation: str) -> None:
    raw_before = copy.deepcopy(obj)
    old = copy.deepcopy(obj) if operation == "UPDATE" else None
    try:
        m = mutate(obj, old, operation, P, MODELS)
    except Denied as d:
        event(f"Denied ({len(d.problems)} problem(s))" if len(d.problems) < 3 else "Denied (3+ problems)")
        assert obj == raw_before, "mutate modified its input"
        set_keys = [k for k in (obj["metadata"].get("annotations") or {}) if k.startswith(C.PREFIX)]
        if "elasticConfig" in obj["spec"]:   # carried over into these annotations before the rules run,
            # and a denial they cause also names spec.elasticConfig, the field the user wrote
            set_keys += [C.ANN_MIN_REPLICAS, C.ANN_MAX_REPLICAS, C.ANN_BEHAVIOR, "spec.elasticConfig"]
        assert d.problems
        for problem in d.problems:
            assert any(problem.where.startswith(k) for k in set_keys), (problem, set_keys)
        assert any(k in d.message for k in set_keys)
        return
    assert obj == raw_before, "mutate modified its input"
    event("mutated (managed)" if m.analysis.managed else "left alone (not managed)")
    patch = make_patch(obj, m.obj)
    assert jsonpatch.apply_patch(obj, patch) == m.obj
    # The same patch as the library's own full diff would give (make_patch only skips shared sub-trees).
    assert jsonpatch.apply_patch(obj, list(jsonpatch.make_patch(obj, m.obj))) == m.obj
    assert sorted(map(json.dumps, patch)) == sorted(map(json.dumps, jsonpatch.make_patch(obj, m.obj)))
    # Idempotent: the mutated object passes through unchanged, as CREATE and as a re-applied UPDATE.
    if operation == "CREATE":
        again = mutate(m.obj, None, "CREATE", P, MODELS)
    else:
        again = mutate(m.obj, m.obj, "UPDATE", P, MODELS)
    assert make_patch(m.obj, again.obj) == []
    assert not again.changed
    verdict = validate(m.obj, old, operation, P, MODELS)
    assert verdict.allowed, verdict.problems
    if m.analysis.managed:
        assert m.obj["metadata"]["annotations"][C.ANN_MANAGED] == "true"
        assert "elasticConfig" not in m.obj["spec"]
    else:
        assert not set(C.WRITTEN_ANNOTATIONS) & set(m.obj["metadata"].get("annotations") or {})


@FUZZ
@given(obj=annotated_objects())
def test_brain_patch_applies(obj: dict[str, Any]) -> None:
    """The same through ``Brain`` and the AdmissionReview encoding: a patch, when any, turns the raw object into
    one the validating webhook allows."""
    from webhook.review import AdmissionRequest

    brain = Brain(models=MODELS)
    review = base_review(obj)
    req = AdmissionRequest.from_review(json.loads(json.dumps(review)))
    result = brain.mutate(req)
    encoded = result.to_review(req.uid)
    assert encoded["response"]["uid"] == req.uid
    if not result.allowed:
        assert result.code == 422 and "serverless.llmaz.io/" in result.message
        return
    patched = jsonpatch.apply_patch(req.object, result.patch) if result.patch else req.object
    req2 = AdmissionRequest.from_review(json.loads(json.dumps(base_review(patched))))
    assert brain.validate(req2).allowed
