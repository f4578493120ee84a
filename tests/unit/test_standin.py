"""The model-server stand-in of the live stack behaves as vLLM does on SIGTERM, with and without
``--shutdown-timeout`` (vllm-project/vllm #34730 / #36666), and exposes the metrics the hold reads.

The stand-in runs as its own process on loopback, as the pod agent runs it; each test takes about 2 s."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def standin(request):
    procs = []

    def start(*extra: str) -> tuple[subprocess.Popen, int]:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.standin", "--host", "127.0.0.1", "--port",
                                 str(port), "--model", "m", "--pod", "m-0", "--token-interval", "0.1", *extra],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if _get(port, "/health")[0] == 200:
                    return proc, port
            except OSError:
                time.sleep(0.05)
        raise AssertionError("stand-in did not start")
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def _post(port: int, body: dict, timeout: float = 30) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, repr(e)
    finally:
        c.close()


def _stream_in_background(port: int, seconds: float) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(_post(port, {"stream": True, "x_service_seconds": seconds})))
    t.start()
    return t, out


def _wait_busy(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "vllm:num_requests_running{model_name=\"m\"} 1" in _get(port, "/metrics")[1]:
            return
        time.sleep(0.05)
    raise AssertionError("the stream never started")


def test_with_shutdown_timeout_in_flight_requests_finish_and_new_ones_are_refused(standin):
    proc, port = standin("--shutdown-timeout", "10")
    t, out = _stream_in_background(port, 1.5)
    _wait_busy(port)
    metrics = _get(port, "/metrics")[1]
    assert "vllm:num_requests_waiting{model_name=\"m\"} 0" in metrics
    assert "vllm:generation_tokens_total" in metrics and "vllm:request_success_total" in metrics
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    status, body = _post(port, {"messages": []})
    assert status == 503 and "shutting down" in body, "a request after SIGTERM is refused"
    assert _get(port, "/metrics")[0] == 200, "metrics still answer while draining"
    t.join(10)
    status, body = out[0]
    assert status == 200
    tokens = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in body.splitlines()
              if line.startswith("data: {") and "choices" in line]
    assert tokens == [f"t{i} " for i in range(len(tokens))] and len(tokens) >= 14, "every token arrived"
    assert body.rstrip().endswith("data: [DONE]")
    assert proc.wait(5) == 0, "exits once drained"


def test_without_the_flag_in_flight_requests_are_aborted(standin):
    proc, port = standin()
    t, out = _stream_in_background(port, 5)
    _wait_busy(port)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(5)
    assert time.monotonic() - t0 < 2, "exits at once"
    t.join(10)
    status, body = out[0]
    assert "[DONE]" not in body, "the stream was cut"


def test_drain_is_bounded_by_the_timeout(standin):
    proc, port = standin("--shutdown-timeout", "1")
    t, out = _stream_in_background(port, 30)
    _wait_busy(port)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert 0.9 <= time.monotonic() - t0 < 3
    t.join(10)
    assert "[DONE]" not in out[0][1]
