"""The preview command on the shipped examples, through the real CLI entry point."""

from __future__ import annotations

import subprocess
import sys

import yaml

from webhook.cli import main


def run_cli(args, capsys):
    code = main(["preview", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_gpu_example_admitted_with_keda_objects(capsys):
    code, out, err = run_cli(["-f", "examples/gpu-chat-http.yaml"], capsys)
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Playground", "InterceptorRoute", "ScaledObject"]
    assert docs[0]["spec"]["replicas"] == 0
    assert docs[2]["spec"]["minReplicaCount"] == 0


def test_batch_and_cpu_examples(capsys):
    code, out, _ = run_cli(["-f", "examples/batch-redis-queue.yaml", "-f", "examples/cpu-model.yaml",
                            "--policy", "examples/policy.yaml"], capsys)
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    so = [d for d in docs if d["kind"] == "ScaledObject"]
    assert so[0]["spec"]["triggers"][0]["type"] == "redis"
    assert so[0]["spec"]["triggers"][0]["authenticationRef"]["name"] == "redis-auth"
    cpu = [d for d in docs if d.get("metadata", {}).get("name") == "tiny-chat" and d["kind"] == "Playground"][0]
    assert cpu["spec"]["replicas"] == 1
    assert "left unchanged" in out   # the TriggerAuthentication passes through untouched


def test_bad_example_denied_with_all_problems(capsys):
    code, out, err = run_cli(["-f", "examples/bad.yaml"], capsys)
    assert code == 1
    assert "DENIED" in out
    for needle in ("listNmae", "did you mean listName", "password", "hour value 25", "above max-replicas"):
        assert needle in err


def test_input_errors_exit_2(tmp_path, capsys):
    assert run_cli(["-f", str(tmp_path / "missing.yaml")], capsys)[0] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    code, _, err = run_cli(["-f", str(bad)], capsys)
    assert code == 2 and "not valid YAML" in err
    pol = tmp_path / "policy.yaml"
    pol.write_text("maxReplicaCap: 3")
    code, _, err = run_cli(["-f", "examples/gpu-chat-http.yaml", "--policy", str(pol)], capsys)
    assert code == 2 and "unknown field" in err


def test_stdin_and_console_script():
    text = open("examples/gpu-chat-http.yaml").read()
    proc = subprocess.run([sys.executable, "-m", "webhook", "preview", "-f", "-", "--patch"], input=text,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "JSON Patch" in proc.stdout and "/spec/replicas" in proc.stdout


def test_standalone_service_note_names_the_llmaz_version_it_needs():
    from tests.unit.helpers import catalog, service
    from webhook.policy import Policy
    from webhook.preview import preview_object

    report = preview_object(service(), Policy.default(), catalog(), namespace="ai")
    assert report["allowed"] and any("v0.1.1" in n and "spec.replicas" in n for n in report["notes"])
    owned = preview_object(service(owner=True), Policy.default(), catalog(), namespace="ai")
    assert not any("v0.1.1" in n for n in owned["notes"])   # scaled through its Playground
