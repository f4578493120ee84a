"""Trace readers: files -> ``Trace`` (sorted arrival batches), the I/O edge of the simulator.

Formats: per-request timestamps (CSV with a timestamp column, JSON lines), per-interval counts, per-window
rates, and three public traces read in place: Azure Functions 2019 (per-minute counts per function), ServeGen
(per-client 600 s windows with a fitted inter-arrival distribution) and Azure LLM inference 2023 (timestamps
and token counts). Whatever is generated from a distribution comes from ``random.Random`` seeded with the
given seed and the file's own name, so a replay is reproducible. Bad input raises ``TraceError`` naming the
file, the line and the fix.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from .model import Batch

FORMATS = ("auto", "timestamps-csv", "jsonl", "counts-csv", "rates-csv", "azure-functions", "servegen",
           "servegen-clients", "azure-llm")
SERVEGEN_WINDOW_S = 600.0


class TraceError(Exception):
    """One line of text: file, line, what is wrong, how to fix it."""

    def __init__(self, path: str, line: int | None, problem: str, fix: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}; {fix}")


@dataclass(frozen=True)
class ServiceModel:
    """Service time of one request. With token counts: prefill at ``prefill_tokens_per_s`` plus one decode
    step per generated token; without: ``default_s``. All three are parameters chosen by us."""

    default_s: float = 5.0
    prefill_tokens_per_s: float = 4000.0
    decode_s_per_token: float = 0.03

    def of(self, context_tokens: float | None, generated_tokens: float | None) -> float:
        if context_tokens is None and generated_tokens is None:
            return self.default_s
        return (context_tokens or 0) / self.prefill_tokens_per_s + (generated_tokens or 0) * self.decode_s_per_token


@dataclass
class Trace:
    """Arrivals of one workload. ``origin`` is the UTC time of t = 0 (None: t = 0 is a midnight, UTC)."""

    name: str
    arrivals: list[Batch]
    horizon: float
    origin: dt.datetime | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(b[1] for b in self.arrivals)

    def day_offset(self) -> float:
        """Seconds from the UTC midnight before t = 0 to t = 0 (for cron windows)."""
        if self.origin is None:
            return 0.0
        o = self.origin
        return o.hour * 3600 + o.minute * 60 + o.second + o.microsecond / 1e6

    def window(self, start: float, end: float) -> "Trace":
        """The part of the trace in [start, end), re-based so that it starts at 0."""
        arr = [(t - start, n, s) for t, n, s in self.arrivals if start <= t < end]
        origin = self.origin + dt.timedelta(seconds=start) if self.origin else None
        if origin is None and start % 86400:
            origin = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=start)
        return Trace(self.name, arr, end - start, origin, self.source, list(self.notes))


def _empty(path: str, trace: Trace) -> Trace:
    if not trace.arrivals:
        raise TraceError(path, None, "the trace has no requests", "give a trace with at least one request")
    return trace


# ------------------------------------------------------------------------------------------ generic formats

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(raw: str) -> float | dt.datetime:
    """Seconds (a number) or an ISO-8601 date-time (fractions beyond microseconds are cut)."""
    raw = raw.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    value = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", raw.replace("Z", "+00:00")))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _rebase(path: str, rows: list[tuple[int, float | dt.datetime, float]], name: str, source: str) -> Trace:
    if not rows:
        raise TraceError(path, None, "the trace has no requests", "give a trace with at least one request")
    kinds = {isinstance(r[1], dt.datetime) for r in rows}
    if len(kinds) > 1:
        raise TraceError(path, rows[0][0], "timestamps mix numbers and date-times", "use one kind throughout")
    origin = None
    if isinstance(rows[0][1], dt.datetime):
        first = min(r[1] for r in rows)  # type: ignore[type-var]
        origin = first  # type: ignore[assignment]
        secs = [((r[1] - first).total_seconds(), r[2]) for r in rows]  # type: ignore[operator]
    else:
        first_s = min(float(r[1]) for r in rows)  # type: ignore[arg-type]
        secs = [(float(r[1]) - first_s, r[2]) for r in rows]  # type: ignore[arg-type]
    secs.sort()
    arrivals = [(t, 1, s) for t, s in secs]
    return Trace(name, arrivals, arrivals[-1][0] + 1.0, origin, source)  # type: ignore[arg-type]


_TS_NAMES = ("timestamp", "time", "ts", "arrival", "arrival_time")
_CTX_NAMES = ("contexttokens", "context_tokens", "input_tokens", "prompt_tokens")
_GEN_NAMES = ("generatedtokens", "generated_tokens", "output_tokens", "completion_tokens")


def _pick(header: list[str], names: Iterable[str]) -> int | None:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def read_timestamps_csv(path: str, service: ServiceModel, column: str | None = None) -> Trace:
    """One request per row; a timestamp column (seconds or date-time), optional token or service columns."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise TraceError(path, 1, "the file is empty", "give a CSV with a header row and one row per request")
        ts = _pick(header, [column.lower()] if column else _TS_NAMES)
        if ts is None:
            want = repr(column) if column else "one of " + ", ".join(_TS_NAMES)
            raise TraceError(path, 1, f"no timestamp column ({want}) in header {header}",
                             "name the column of arrival times 'timestamp' or pass --time-column")
        ctx, gen = _pick(header, _CTX_NAMES), _pick(header, _GEN_NAMES)
        svc = _pick(header, ("service_s", "duration_s"))
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                t = parse_time(row[ts])
                c = float(row[ctx]) if ctx is not None else None
                g = float(row[gen]) if gen is not None else None
                s = float(row[svc]) if svc is not None else service.of(c, g)
            except IndexError:
                raise TraceError(path, lineno, f"row has {len(row)} fields, the header {len(header)}",
                                 "give every row the header's columns") from None
            except ValueError as exc:
                raise TraceError(path, lineno, f"cannot read {row!r}: {exc}",
                                 "write seconds (12.5) or ISO date-times (2023-11-16 18:15:46.68)") from None
            rows.append((lineno, t, s))
    return _rebase(path, rows, os.path.basename(path), "per-request timestamps")


def read_jsonl(path: str, service: ServiceModel) -> Trace:
    """One JSON object per line with ``timestamp`` and optional token counts or ``service_s``."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(path, lineno, f"not JSON: {exc.msg}", "write one JSON object per line") from None
            if not isinstance(doc, dict):
                raise TraceError(path, lineno, "not a JSON object", 'write {"timestamp": 12.5} per line')
            key = next((k for k in _TS_NAMES if k in doc), None)
            if key is None:
                unknown = ", ".join(sorted(doc)) or "none"
                raise TraceError(path, lineno, f"no timestamp field (fields: {unknown})",
                                 'add "timestamp": seconds or an ISO date-time')
            try:
                t = parse_time(str(doc[key]))
                c = next((float(doc[k]) for k in _CTX_NAMES if k in doc), None)
                g = next((float(doc[k]) for k in _GEN_NAMES if k in doc), None)
                s = float(doc["service_s"]) if "service_s" in doc else service.of(c, g)
            except (ValueError, TypeError) as exc:
                raise TraceError(path, lineno, f"cannot read {line.strip()!r}: {exc}",
                                 "write seconds (12.5) or ISO date-times, and numbers for token counts") from None
            rows.append((lineno, t, s))
    return _rebase(path, rows, os.path.basename(path), "per-request JSON lines")


def _numeric_rows(path: str, need: tuple[str, ...], optional: tuple[str, ...]) -> list[tuple[int, dict[str, float]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, None) or []]
        if not header:
            raise TraceError(path, 1, "the file is empty", f"give a CSV with the header {','.join(need)}")
        missing = [n for n in need if n not in header]
        unknown = [h for h in header if h not in need + optional]
        if missing or unknown:
            raise TraceError(path, 1, f"header {header}: " + ("missing " + ", ".join(missing) if missing else
                             "unknown column " + ", ".join(unknown)),
                             f"columns are {', '.join(need)} (and optionally {', '.join(optional)})")
        out = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                out.append((lineno, {h: float(v) for h, v in zip(header, row, strict=True)}))
            except ValueError as exc:
                raise TraceError(path, lineno, f"cannot read {row!r}: {exc}",
                                 "every field must be a number (seconds, counts, requests/s)") from None
        return out


def _per_window(path: str, service: ServiceModel, seed: int, column: str, default_width: float, source: str,
                check: Callable[[float], tuple[str, str] | None],
                times: Callable[[random.Random, float, float, float], Iterable[float]]) -> Trace:
    """``start,<column>`` rows with an optional ``duration``: ``times`` draws each window's arrivals, seeded by
    the file name so a trace replays the same way every time."""
    rows = _numeric_rows(path, ("start", column), ("duration",))
    rng = random.Random(f"{seed}:{os.path.basename(path)}")
    arrivals: list[Batch] = []
    end = 0.0
    for lineno, r in rows:
        problem = check(r[column])
        if problem:
            raise TraceError(path, lineno, *problem)
        width = r.get("duration", default_width)
        arrivals.extend((t, 1, service.default_s) for t in times(rng, r["start"], width, r[column]))
        end = max(end, r["start"] + width)
    arrivals.sort()
    return _empty(path, Trace(os.path.basename(path), arrivals, end, None, source))


def read_counts_csv(path: str, service: ServiceModel, seed: int, interval_s: float = 60.0) -> Trace:
    """``start,count`` rows (start in seconds, optional ``duration``): requests spread uniformly, seeded."""
    def check(n: float) -> tuple[str, str] | None:
        return (f"count {n} is not a whole number >= 0", "write counts") if n < 0 or n != int(n) else None

    def uniform(rng: random.Random, start: float, width: float, n: float) -> list[float]:
        return [start + rng.random() * width for _ in range(int(n))]

    return _per_window(path, service, seed, "count", interval_s, "per-interval counts", check, uniform)


def read_rates_csv(path: str, service: ServiceModel, seed: int, window_s: float = 600.0) -> Trace:
    """``start,rate`` rows (requests/s, optional ``duration``): Poisson arrivals inside each window, seeded."""
    def check(rate: float) -> tuple[str, str] | None:
        return (f"rate {rate} is negative", "write requests per second >= 0") if rate < 0 else None

    def poisson(rng: random.Random, start: float, width: float, rate: float) -> Iterator[float]:
        if rate <= 0:
            return
        t = start + rng.expovariate(rate)
        while t < start + width:
            yield t
            t += rng.expovariate(rate)

    return _per_window(path, service, seed, "rate", window_s, "per-window rates (Poisson)", check, poisson)


# ------------------------------------------------------------------------------------------ public traces

def read_azure_functions(path: str, seed: int, limit: int | None = None) -> list[Trace]:
    """Azure Functions 2019 sample: every function of ``*_inv.csv`` is one workload; invocations are spread
    uniformly inside their minute (seeded); service time is the function's average duration from the
    matching ``*_run.csv`` (joined on the hash columns)."""
    inv = path if path.endswith(".csv") else os.path.join(path, "1350_inv.csv")
    run = inv.replace("_inv.csv", "_run.csv")
    durations: dict[str, float] = {}
    if os.path.exists(run):
        with open(run, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                try:
                    durations[row["HashFunction"]] = float(row["Average"]) / 1000.0
                except (KeyError, ValueError):
                    continue
    traces = []
    with open(inv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None) or []
        if not header or header[0] != "HashFunction":
            raise TraceError(inv, 1, "not an Azure Functions invocation file (first column is not HashFunction)",
                             "pass the 1350_inv.csv of the Azure Functions 2019 trace, or another --format")
        minutes = len(header) - 3
        for lineno, row in enumerate(reader, start=2):
            if limit is not None and len(traces) >= limit:
                break
            name = row[0]
            svc = durations.get(name, 1.0)
            rng = random.Random(f"{seed}:{name}")
            arrivals: list[Batch] = []
            try:
                counts = [int(c) for c in row[3:]]
            except ValueError as exc:
                raise TraceError(inv, lineno, f"cannot read a minute count: {exc}", "counts must be integers") from None
            for m, c in enumerate(counts):
                if c:
                    base = m * 60.0
                    arrivals.extend(sorted((base + rng.random() * 60.0, 1, svc) for _ in range(c)))
            traces.append(Trace(name[:12], arrivals, minutes * 60.0, None, "Azure Functions 2019 (invitro sample)"))
    if not traces:
        raise TraceError(inv, None, "the trace has no functions", "pass the full 1350_inv.csv")
    return traces


def _gamma_shape_scale(dist: str, p1: float, cv: float, mean: float) -> tuple[float, float]:
    """Gamma with the window's mean and burstiness: Gamma keeps its fitted shape; Weibull (or a missing fit)
    is matched by its coefficient of variation."""
    if dist == "Gamma" and p1 > 0:
        return p1, mean / p1
    cv = cv if cv > 0 else 1.0
    shape = 1.0 / (cv * cv)
    return shape, mean / shape


def _servegen_files(path: str) -> list[str]:
    if os.path.isfile(path) and re.fullmatch(r"chunk-\d+-trace\.csv", os.path.basename(path)):
        return [path]   # one client's file: that client alone
    files = sorted((f for f in os.listdir(path) if re.fullmatch(r"chunk-\d+-trace\.csv", f)),
                   key=lambda f: int(re.findall(r"\d+", f)[0])) if os.path.isdir(path) else []
    if not files:
        raise TraceError(path, None, "no chunk-N-trace.csv files", "pass a ServeGen model directory, e.g. "
                         "servegen/language/m-mid, or one client's chunk-N-trace.csv")
    return [os.path.join(path, f) for f in files]


def _servegen_client(fp: str, seed: int, bins: dict[int, int], resolution_s: float, exact_per_window: int) -> float:
    """Add one client's arrivals to ``bins`` (count per ``resolution_s``); returns the end of its last window."""
    rng = random.Random(f"{seed}:{os.path.basename(fp)}")
    end = 0.0
    with open(fp, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            try:
                start, rate, cv = float(row[0]), float(row[1]), float(row[2] or 0)
                dist, p1 = row[3], float(row[4] or 0)
            except (IndexError, ValueError):
                raise TraceError(fp, lineno, f"cannot read {row!r}", "ServeGen rows are window_start_s, "
                                 "rate, iat_cv, iat_distribution, param1, param2") from None
            stop = start + SERVEGEN_WINDOW_S
            end = max(end, stop)
            if rate <= 0:
                continue
            expected = rate * SERVEGEN_WINDOW_S
            k = max(1, math.ceil(expected / exact_per_window))
            shape, scale = _gamma_shape_scale(dist, p1, cv, 1.0 / rate)
            weibull = dist == "Weibull" and p1 > 0 and k == 1
            wscale = (1.0 / rate) / math.gamma(1 + 1 / p1) if weibull else 0.0
            t = start
            while True:
                t += rng.weibullvariate(wscale, p1) if weibull else rng.gammavariate(shape * k, scale)
                if t >= stop:
                    break
                b = int(t / resolution_s)
                bins[b] = bins.get(b, 0) + k
    return end


def _binned(bins: dict[int, int], resolution_s: float, service: ServiceModel) -> list[Batch]:
    return [(b * resolution_s, n, service.default_s) for b, n in sorted(bins.items())]


def read_servegen(path: str, seed: int, service: ServiceModel, resolution_s: float = 1.0,
                  exact_per_window: int = 60) -> Trace:
    """ServeGen: a model directory of per-client ``chunk-N-trace.csv`` files; the model's traffic is the sum
    of its clients, at ``resolution_s`` resolution.

    Inside a 600 s window with rate r the arrivals follow the fitted inter-arrival law, with its shape (Gamma
    shape, or Weibull shape) and a scale set so the mean gap is 1/r (the rate column is the ground truth).
    Windows with more than ``exact_per_window`` expected requests are generated in groups (the sum of k Gamma
    gaps is a Gamma gap of k times the shape), which keeps a 14-day, 2-billion-request model tractable.
    """
    bins: dict[int, int] = {}
    end = 0.0
    for fp in _servegen_files(path):
        end = max(end, _servegen_client(fp, seed, bins, resolution_s, exact_per_window))
    return _empty(path, Trace(os.path.basename(path.rstrip("/")), _binned(bins, resolution_s, service), end, None,
                              "ServeGen (Alibaba Bailian)"))


def read_servegen_clients(path: str, seed: int, service: ServiceModel, limit: int | None = None,
                          resolution_s: float = 1.0, exact_per_window: int = 60) -> list[Trace]:
    """ServeGen as a fleet: each API client of a model directory is one workload (a tenant's own deployment),
    with the arrivals ``read_servegen`` generates for it. Clients that never sent anything are left out."""
    traces = []
    for fp in _servegen_files(path)[:limit]:
        bins: dict[int, int] = {}
        end = _servegen_client(fp, seed, bins, resolution_s, exact_per_window)
        if bins:
            traces.append(Trace(os.path.basename(fp), _binned(bins, resolution_s, service), end, None,
                                "ServeGen (Alibaba Bailian), one client per workload"))
    if not traces:
        raise TraceError(path, None, "no client sent any request", "pass a ServeGen model directory with traffic")
    return traces


def read_azure_llm(path: str, service: ServiceModel) -> Trace:
    tr = read_timestamps_csv(path, service, column="TIMESTAMP")
    tr.source = "Azure LLM inference 2023 (conversation)"
    return tr


def detect_format(path: str) -> str:
    if os.path.isdir(path):
        if any(re.fullmatch(r"chunk-\d+-trace\.csv", f) for f in os.listdir(path)):
            return "servegen"
        if os.path.exists(os.path.join(path, "1350_inv.csv")):
            return "azure-functions"
        raise TraceError(path, None, "a directory that is neither a ServeGen model nor the Azure Functions trace",
                         "pass a file, or --format")
    if re.fullmatch(r"chunk-\d+-trace\.csv", os.path.basename(path)):
        return "servegen"
    if path.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().strip().lower()
    cols = [c.strip() for c in first.split(",")]
    if cols and cols[0] == "hashfunction":
        return "azure-functions"
    if "contexttokens" in cols and "timestamp" in cols:
        return "azure-llm"
    if "count" in cols:
        return "counts-csv"
    if "rate" in cols:
        return "rates-csv"
    if _pick(cols, _TS_NAMES) is not None:
        return "timestamps-csv"
    raise TraceError(path, 1, f"cannot tell the format from the header {first!r}",
                     f"pass --format (one of {', '.join(FORMATS[1:])})")


def load(path: str, fmt: str = "auto", seed: int = 1, service: ServiceModel = ServiceModel(),
         time_column: str | None = None, limit: int | None = None) -> list[Trace]:
    """Read ``path`` in ``fmt``; a list because one file may hold many workloads (Azure Functions)."""
    if not os.path.exists(path):
        raise TraceError(path, None, "no such file or directory", "check the --trace path")
    try:
        if fmt == "auto":
            fmt = detect_format(path)
        if fmt == "azure-functions":
            return read_azure_functions(path, seed, limit)
        if fmt == "servegen":
            return [read_servegen(path, seed, service)]
        if fmt == "servegen-clients":
            return read_servegen_clients(path, seed, service, limit)
        if fmt == "azure-llm":
            return [read_azure_llm(path, service)]
        if fmt == "timestamps-csv":
            return [read_timestamps_csv(path, service, time_column)]
        if fmt == "jsonl":
            return [read_jsonl(path, service)]
        if fmt == "counts-csv":
            return [read_counts_csv(path, service, seed)]
        if fmt == "rates-csv":
            return [read_rates_csv(path, service, seed)]
    except UnicodeDecodeError:
        raise TraceError(path, None, "not a text file", "give a CSV or JSON-lines trace") from None
    except IsADirectoryError:
        raise TraceError(path, None, "is a directory", "pass a file, or --format servegen") from None
    raise TraceError(path, None, f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
