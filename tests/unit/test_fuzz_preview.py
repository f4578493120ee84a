"""Property-based fuzzing of ``preview`` and ``keda.desired_objects`` on arbitrary object shapes (hypothesis).

Bounded: ~200 examples per property, no deadline, derandomized (fixed seed) when ``CI=true``.

- ``preview_object`` and ``desired_objects`` on anything shaped roughly like a Kubernetes object (right or wrong
  apiVersion/kind, metadata that is a mapping or not, name or generateName or neither, garbage in annotations
  and spec): a report or ``Denied``, never another exception.
- ``cli.main(["preview", "-f", FILE])`` on arbitrary YAML text and on dumps of arbitrary values: exit 0, 1 or
  2, never a traceback, never an "internal error".
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.helpers import catalog, playground, service
from webhook import cli
from webhook import constants as C
from webhook.errors import Denied
from webhook.keda import desired_objects
from webhook.policy import Policy
from webhook.preview import preview_object

FUZZ = settings(max_examples=200, deadline=None, derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["", "0", "-1", "true", "abc", "x" * 70, "Qwen"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
ann_keys = st.sampled_from(list(C.USER_ANNOTATIONS) + list(C.WRITTEN_ANNOTATIONS) + ["other"])
annotations = st.one_of(values, st.dictionaries(ann_keys, st.one_of(st.text(max_size=30), values), max_size=4))
metadata = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.sampled_from(["chat", "x" * 70, "Bad_Name", ""]), values),
        "generateName": st.one_of(st.sampled_from(["chat-", "gen-"]), values),
        "namespace": st.one_of(st.sampled_from(["ai", ""]), values),
        "uid": st.one_of(st.just("u-1"), values),
        "annotations": annotations,
        "labels": values,
        "ownerReferences": values,
    }),
)


@st.composite
def objects(draw: Any) -> Any:
    base = draw(st.sampled_from([playground(), service(), playground(replicas=0), {}]))
    obj = copy.deepcopy(base)
    obj["apiVersion"] = draw(st.one_of(st.just(C.LLMAZ_API_VERSION), st.just("v1"), values))
    obj["kind"] = draw(st.one_of(st.sampled_from(["Playground", "Service", "Pod"]), values))
    if draw(st.booleans()):
        obj["metadata"] = draw(metadata)
    if draw(st.booleans()):
        obj["spec"] = draw(values) if draw(st.booleans()) else {**(obj.get("spec") or {}), "x": draw(values)}
    for key in draw(st.lists(st.sampled_from(["apiVersion", "kind", "metadata", "spec"]), max_size=2)):
        obj.pop(key, None)
    return obj


@FUZZ
@given(objects())
def test_preview_object_never_raises_but_denied(obj: Any) -> None:
    try:
        report = preview_object(obj, Policy.default(), catalog(), namespace="ai")
    except Denied:
        return
    assert isinstance(report["allowed"], bool)
    assert report["allowed"] or report["message"]


@FUZZ
@given(objects())
def test_desired_objects_never_raises_but_denied(obj: Any) -> None:
    try:
        desired = desired_objects(obj, Policy.default(), catalog())
    except Denied:
        return
    for o in desired.objects():
        assert o["metadata"]["name"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-preview")


def _run(path: Path, capsys: Any) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["preview", "-f", str(path)])
    err = capsys.readouterr().err
    return code, err


@FUZZ
@given(text=st.one_of(st.text(max_size=200),
                 st.lists(st.one_of(objects(), values), max_size=3).map(
                     lambda docs: yaml.safe_dump_all(docs, sort_keys=False))))
def test_preview_cli_never_tracebacks(text: str, workdir: Path, capsys: Any) -> None:
    path = workdir / "in.yaml"
    path.write_text(text, encoding="utf-8")
    code, err = _run(path, capsys)
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "internal error" not in err, err


def test_generate_name_preview_shows_placeholder_and_note() -> None:
    pg = playground()
    pg["metadata"].pop("name")
    pg["metadata"]["generateName"] = "chat-"
    report = preview_object(pg, Policy.default(), catalog(), namespace="ai")
    assert report["allowed"], report.get("message")
    assert report["name"] == "chat-xxxxx"
    assert any("generateName" in n for n in report["notes"])
    so = [o for o in report["keda"] if o["kind"] == "ScaledObject"][0]
    assert so["metadata"]["name"] == "chat-xxxxx"
    assert so["metadata"]["ownerReferences"][0]["name"] == "chat-xxxxx"
    assert so["spec"]["scaleTargetRef"]["name"] == "chat-xxxxx"


@pytest.mark.parametrize("text,code", [
    ("a: [", 2), ("- 1\n- 2\n", 2), ("42\n", 2), ("---\nkind: Playground\n---\n[1, 2\n", 2),
    ("kind: Playground\napiVersion: inference.llmaz.io/v1alpha1\nmetadata: [1]\n", 1),
    ("apiVersion: v1\nmetadata: {name: a}\n", 0),
    ("kind: List\nitems: [1]\n", 2),
])
def test_preview_cli_bad_inputs(text: str, code: int, tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(text, encoding="utf-8")
    got, err = _run(path, capsys)
    assert got == code, err
    assert "Traceback" not in err
    if code:
        assert err.startswith("llmaz-serverless:") or "denied" in err, err


@pytest.mark.parametrize("meta", [
    {"name": "chat", "ownerReferences": True},        # once a TypeError deep in the Playground-owner rule
    {"name": "chat", "labels": ["a"]},
    {"name": "chat", "annotations": {1: "x"}},
    {"name": 5},
])
def test_impossible_metadata_is_a_clear_denial(meta: dict[str, Any]) -> None:
    obj = service()
    obj["metadata"] = meta
    with pytest.raises(Denied) as exc:
        desired_objects(obj, Policy.default(), catalog())
    assert "metadata" in exc.value.message
    report = preview_object(obj, Policy.default(), catalog(), namespace="ai")
    assert not report["allowed"] and "metadata" in report["message"]
