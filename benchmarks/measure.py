"""Memory and timing plumbing shared by the benchmarks: RSS from ``/proc``, an RSS sampler, latency summaries.

Standard library only, so a child process of a benchmark can import it from this tree while it runs the
webhook code of another one (``--baseline``; see ``cache_memory.py``).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    return proc_status(pid).get("VmRSS", 0)


def mib(kib: float) -> float:
    """KiB -> MiB, one decimal, as the results files report it."""
    return round(kib / 1024, 1)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


class Sampler(threading.Thread):
    """RSS of a process every ``period`` seconds, in a thread (the caller's loop is busy)."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            rss = rss_kib(self.pid)
            if rss:
                self.samples.append((time.monotonic() - t0, rss))
            time.sleep(self.period)


def elapsed_ms(t0: float) -> float:
    """Milliseconds since ``t0`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank, no interpolation), one decimal."""
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def latency_summary(lat_ms: list[float]) -> dict[str, Any]:
    """Count, p50, p99, max and mean of latencies in milliseconds."""
    return {"n": len(lat_ms), "p50_ms": pct(lat_ms, 0.5), "p99_ms": pct(lat_ms, 0.99),
            "max_ms": round(max(lat_ms), 1), "mean_ms": round(statistics.fmean(lat_ms), 1)}
