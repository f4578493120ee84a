"""The hold trigger's PromQL (webhook/drain.py ``hold_query``) on Prometheus' own engine.

KEDA keeps a workload above zero while this query is above 0, so every clause of it decides whether GPUs are
held or released. Here each scenario is a few synthetic series (one sample a second, as the live stack
scrapes) and the query as the reconciler writes it, evaluated by ``promtool test rules`` (built from the same
Prometheus module as the live stack's server): a loading pod holds, one that never comes up stops holding after
``loadTimeout``, an exiting pod does not hold within ``exitWindow`` (and does past it: why the window must
outlast Prometheus' discovery lag), busy gauges hold only while tokens move, and pods of another workload or
namespace never count.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from webhook import drain as D

from .controlplane import cache_dir

DRAIN = D.Drain(timeout=30, pre_stop=2, hold=True, stuck_after=10, load_timeout=60, exit_window=15)
NS, NAME = "ai", "chat"


def _series(metric: str, pod: str, values: str, *, ip: str = "10.0.0.5", ns: str = NS,
            uid: str | None = None) -> dict[str, str]:
    extra = f',uid="{uid}"' if uid else ""
    return {"series": f'{metric}{{namespace="{ns}",pod="{pod}",instance="{ip}:8080",job="pods"{extra}}}',
            "values": values}


# (scenario, input series, [(eval time in s, expected query value)]); one sample a second from t = 0.
SCENARIOS = [
    ("a pod loading its model holds until it answers",
     [_series("up", "chat-0", "0x30 1x10")],
     [(20, 1), (30, 1), (35, 0)]),
    ("a pod that never answers holds for loadTimeout, then no longer",
     [_series("up", "chat-0", "0x100")],
     [(50, 1), (70, 0), (100, 0)]),
    ("an exiting pod still scraped does not hold within exitWindow of its last answer",
     [_series("up", "chat-0", "1x30 0x30")],
     [(35, 0), (44, 0)]),
    ("a gone pod still scraped past exitWindow counts as loading (the window must outlast discovery)",
     [_series("up", "chat-0", "1x30 0x30")],
     [(50, 1)]),
    ("a pod dropped by discovery (stale series) holds nothing",
     [_series("up", "chat-0", "1x30 stale")],
     [(40, 0)]),
    ("the next pod of the same name on a new address is judged on its own series",
     [_series("up", "chat-0", "1x20 stale", ip="10.0.0.5"),
      _series("up", "chat-0", "_x25 0x20", ip="10.0.0.9")],
     [(30, 1)]),
    ("the next pod with the same name and address within exitWindow is not held (the documented price)",
     [_series("up", "chat-0", "1x20 _x4 0x20")],
     [(30, 0)]),
    ("with the pod's UID as a label, the next pod with the same name and address is judged on its own",
     [_series("up", "chat-0", "1x20 stale", uid="6f1c"),
      _series("up", "chat-0", "_x24 0x20", uid="9b2e")],
     [(30, 1)]),
    ("a LeaderWorkerSet worker that loads holds too",
     [_series("up", "chat-0", "1x40"), _series("up", "chat-0-1", "0x40", ip="10.0.0.6")],
     [(20, 1)]),
    ("busy: running + waiting requests hold while tokens move",
     [_series("up", "chat-0", "1x40"),
      _series("vllm:num_requests_running", "chat-0", "2x40"),
      _series("vllm:num_requests_waiting", "chat-0", "1x40"),
      _series("vllm:generation_tokens_total", "chat-0", "0+10x40")],
     [(20, 3), (40, 3)]),
    ("a stuck busy gauge stops holding stuckAfter after the last token",
     [_series("up", "chat-0", "1x60"),
      _series("vllm:num_requests_running", "chat-0", "1x60"),
      _series("vllm:num_requests_waiting", "chat-0", "0x60"),
      _series("vllm:generation_tokens_total", "chat-0", "0+10x10 100x50")],
     [(15, 1), (25, 0), (60, 0)]),
    ("a server that exports one of the two gauges still holds while busy",
     [_series("up", "chat-0", "1x40"),
      _series("vllm:num_requests_running", "chat-0", "4x40"),
      _series("vllm:generation_tokens_total", "chat-0", "0+10x40")],
     [(20, 4)]),
    ("pods of another workload or namespace never count",
     [_series("up", "chat-assistant-0", "0x40", ip="10.0.0.7"),
      _series("up", "chat-0", "0x40", ip="10.0.0.8", ns="other"),
      _series("vllm:num_requests_running", "chat-assistant-0", "5x40", ip="10.0.0.7"),
      _series("vllm:generation_tokens_total", "chat-assistant-0", "0+10x40", ip="10.0.0.7")],
     [(20, 0)]),
    ("no series at all holds nothing",
     [_series("up", "someone-else-0", "1x10", ns="elsewhere")],
     [(5, 0)]),
]


def promtool() -> str:
    path = os.environ.get("PROMTOOL") or str(cache_dir() / "bin" / "promtool")
    if not os.access(path, os.X_OK):
        pytest.fail(f"promtool not found at {path}: run `bash tests/integration/tools/provide.sh stack` (it is "
                    "built from the Prometheus module of the live stack), or point $PROMTOOL at one", pytrace=False)
    return path


@pytest.mark.parametrize("scenario,series,evals", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_hold_query_on_prometheus_engine(tmp_path: Path, scenario: str, series: list, evals: list):
    query = D.hold_query(NAME, NS, "vllm", DRAIN, "namespace", "pod")
    doc = {"rule_files": [], "evaluation_interval": "1s",
           "tests": [{"name": scenario, "interval": "1s", "input_series": series,
                      "promql_expr_test": [{"expr": query, "eval_time": f"{t}s",
                                            "exp_samples": [{"labels": "{}", "value": v}]} for t, v in evals]}]}
    f = tmp_path / "hold_test.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = subprocess.run([promtool(), "test", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{scenario}:\n{res.stdout}\n{res.stderr}"
