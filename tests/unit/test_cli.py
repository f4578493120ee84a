"""What a new user meets first: --version, usage, help texts, one-line errors with exit 2, never a traceback."""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import threading

import pytest

from webhook import __version__, cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"llmaz-serverless {__version__}"


@pytest.mark.parametrize("argv", [[], ["certs"]])
def test_no_subcommand_prints_usage_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: llmaz-serverless") and "required" not in err


def test_help_texts_speak_to_users():
    parsers = subparsers()
    for name, parser in parsers.items():
        text = parser.format_help()
        assert "``" not in text and "mutation.mutate" not in text and "webhook." not in text, (name, text)
    assert parsers["recommend"].description != parsers["simulate"].description
    assert "objective" in parsers["recommend"].description
    for name in ("serve", "check"):   # every command that reads a kubeconfig takes a context too
        flags = {o for a in parsers[name]._actions for o in a.option_strings}
        assert {"--kubeconfig", "--context"} <= flags, name


def test_unexpected_error_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    import webhook.preview

    def boom(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(webhook.preview, "render", boom)
    manifest = os.path.join(ROOT, "examples", "gpu-chat-http.yaml")
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["preview", "-f", manifest]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected error: RuntimeError: boom" in err and "--debug" in err
    assert cli.main(["--debug", "preview", "-f", manifest]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_binary_manifest_and_policy_exit_2(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 3)
    assert cli.main(["preview", "-f", str(binary)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    manifest = os.path.join(ROOT, "examples", "gpu-chat-http.yaml")
    assert cli.main(["preview", "-f", manifest, "--policy", str(binary)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_certs_dev_refuses_what_it_would_silently_break(tmp_path, capsys):
    out = tmp_path / "certs"
    assert cli.main(["certs", "dev", "--out", str(out)]) == 0
    ca = (out / "ca.crt").read_bytes()
    capsys.readouterr()
    assert cli.main(["certs", "dev", "--out", str(out)]) == 2          # re-run: the CA is kept
    assert "already holds a CA" in capsys.readouterr().err and (out / "ca.crt").read_bytes() == ca
    assert cli.main(["certs", "dev", "--out", str(out), "--force"]) == 0
    assert (out / "ca.crt").read_bytes() != ca
    capsys.readouterr()
    assert cli.main(["certs", "dev", "--out", str(tmp_path / "x"), "--days", "500", "--ca-days", "10"]) == 2
    assert "cannot outlive its CA" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert cli.main(["certs", "dev", "--out", str(out / "ca.crt")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["certs", "dev", "--out", str(out / "ca.crt" / "sub")]) == 2   # below a file
    assert "cannot write into" in capsys.readouterr().err


def _cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    full_env.update(PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "webhook", *argv], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def test_serve_without_a_cluster_says_how_and_never_announces_listening(tmp_path):
    assert cli.main(["certs", "dev", "--out", str(tmp_path / "c")]) == 0
    done = _cli("serve", "--cert-dir", str(tmp_path / "c"), "--port", "0", "--metrics-port", "0",
                env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")})
    assert done.returncode == 2, done.stderr
    assert "cannot load Kubernetes credentials" in done.stderr and "--no-reconcile" in done.stderr
    assert "listening" not in done.stderr + done.stdout and "Traceback" not in done.stderr


class _NotKubernetes(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_check_against_a_server_that_is_not_kubernetes(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotKubernetes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        kubeconfig = tmp_path / "config"
        kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{server.server_address[1]}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
        done = _cli("check", "--kubeconfig", str(kubeconfig), "--context", "x", "--timeout", "5")
    finally:
        server.shutdown()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "a Kubernetes API server?" in done.stdout + done.stderr
