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

FORMATS = ("auto", "timestamps-csv", "jsonl", "counts-csv", "rates-csv", "azure-functions", "azure-functions-2021",
           "servegen", "servegen-clients", "azure-llm")
SERVEGEN_WINDOW_S = 600.0
TIME_UNITS = ("auto", "s", "ms", "us", "ns")
_UNIT_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
MAX_SPAN_S = 400 * 86400.0          # a replay longer than this is a unit mistake, not a trace
MAX_GENERATED = 20_000_000          # arrivals drawn from counts or rates, per file
MAX_REQUESTS_PER_ROW = 1e12         # a count or a rate x window above this is not a workload


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


def _finite(path: str, line: int | None, what: str, value: float, low: float = 0.0) -> float:
    """Refuse nan, inf and values below ``low`` with one line."""
    if not math.isfinite(value) or value < low:
        raise TraceError(path, line, f"{what} {value!r} is not a finite number >= {low:g}",
                         "fix or drop that row")
    return value


def _epoch_unit(smallest: float) -> str:
    """Epoch timestamps give away their unit by magnitude: 2001-2286 is 1e9-1e10 s, 1e12-1e13 ms, ..."""
    if smallest >= 1e17:
        return "ns"
    if smallest >= 1e14:
        return "us"
    if smallest >= 1e11:
        return "ms"
    return "s"


def _empty(path: str, trace: Trace) -> Trace:
    if not trace.arrivals:
        raise TraceError(path, None, "the trace has no requests", "give a trace with at least one request")
    return trace


# ------------------------------------------------------------------------------------------ generic formats

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(raw: str) -> float | dt.datetime:
    """A number (seconds unless the unit says otherwise) or an ISO-8601 date-time (fractions beyond
    microseconds are cut). nan and inf are refused."""
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"timestamp {raw!r} is not a finite number")
        return value
    value = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", raw.replace("Z", "+00:00")))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _rebase(path: str, rows: list[tuple[int, float | dt.datetime, float]], name: str, source: str,
            unit: str = "auto", unit_hint: tuple[str, str] | None = None) -> Trace:
    """Arrivals relative to the first one. Numeric timestamps are read in ``unit``; ``auto`` takes the unit
    the data states (``unit_hint``: unit and why) or, for epoch timestamps, the one their magnitude gives."""
    if not rows:
        raise TraceError(path, None, "the trace has no requests", "give a trace with at least one request")
    kinds = {isinstance(r[1], dt.datetime) for r in rows}
    if len(kinds) > 1:
        raise TraceError(path, rows[0][0], "timestamps mix numbers and date-times", "use one kind throughout")
    origin = None
    notes = []
    if isinstance(rows[0][1], dt.datetime):
        first = min(r[1] for r in rows)  # type: ignore[type-var]
        origin = first  # type: ignore[assignment]
        secs = [((r[1] - first).total_seconds(), r[2]) for r in rows]  # type: ignore[operator]
    else:
        first_s = min(float(r[1]) for r in rows)  # type: ignore[arg-type]
        if unit == "auto":
            if unit_hint is not None:
                unit, why = unit_hint
            else:
                unit, why = _epoch_unit(first_s), "their epoch magnitude"
            if first_s >= 1e9 or unit_hint is not None:
                notes.append(f"numeric timestamps read in {unit} ({why}; --time-unit overrides)")
            else:
                unit = "s"
        scale = _UNIT_S[unit]
        if first_s >= 1e9 and first_s * scale >= 1e9:
            origin = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=first_s * scale)
        secs = [((float(r[1]) - first_s) * scale, r[2]) for r in rows]  # type: ignore[arg-type]
    secs.sort()
    span = secs[-1][0]
    if span > MAX_SPAN_S:
        last = max(rows, key=lambda r: r[1] if isinstance(r[1], float) else 0.0)[0] if origin is None else None
        raise TraceError(path, last, f"the timestamps span {span / 86400:,.0f} days, more than the "
                         f"{MAX_SPAN_S / 86400:.0f} a replay covers", "check for a stray value or the unit "
                         "(--time-unit ms, us or ns)")
    arrivals = [(t, 1, s) for t, s in secs]
    return Trace(name, arrivals, arrivals[-1][0] + 1.0, origin, source, notes)  # type: ignore[arg-type]


_TS_NAMES = ("timestamp", "time", "ts", "arrival", "arrival_time")
_CTX_NAMES = ("contexttokens", "context_tokens", "input_tokens", "prompt_tokens", "input_length")
_GEN_NAMES = ("generatedtokens", "generated_tokens", "output_tokens", "completion_tokens", "output_length")
_SVC_NAMES = ("service_s", "duration_s")


def _service_note(tr: Trace, tokens: bool, given: bool, service: ServiceModel) -> Trace:
    if given:
        tr.notes.append("service time per request from the trace's service_s/duration_s column")
    elif tokens:
        tr.notes.append(f"service time from token counts: context / {service.prefill_tokens_per_s:g} tokens/s "
                        f"+ {service.decode_s_per_token:g} s per generated token")
    else:
        tr.notes.append(f"no token counts or durations in the trace: every request takes --service-time "
                        f"({service.default_s:g} s)")
    return tr


def _pick(header: list[str], names: Iterable[str]) -> int | None:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def read_timestamps_csv(path: str, service: ServiceModel, column: str | None = None, unit: str = "auto") -> Trace:
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
        svc = _pick(header, _SVC_NAMES)
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                t = parse_time(row[ts])
                c = _finite(path, lineno, "token count", float(row[ctx])) if ctx is not None else None
                g = _finite(path, lineno, "token count", float(row[gen])) if gen is not None else None
                s = (_finite(path, lineno, "service time", float(row[svc])) if svc is not None
                     else service.of(c, g))
            except IndexError:
                raise TraceError(path, lineno, f"row has {len(row)} fields, the header {len(header)}",
                                 "give every row the header's columns") from None
            except ValueError as exc:
                raise TraceError(path, lineno, f"cannot read {row!r}: {exc}",
                                 "write seconds (12.5) or ISO date-times (2023-11-16 18:15:46.68)") from None
            rows.append((lineno, t, s))
    tr = _rebase(path, rows, os.path.basename(path), "per-request timestamps", unit)
    return _service_note(tr, ctx is not None or gen is not None, svc is not None, service)


def read_jsonl(path: str, service: ServiceModel, unit: str = "auto") -> Trace:
    """One JSON object per line with ``timestamp`` and optional token counts or ``service_s``.

    Mooncake's public traces (kvcache-ai/Mooncake, ``{"timestamp", "input_length", "output_length",
    "hash_ids"}``) give the arrival in milliseconds since the first request: a line with ``hash_ids`` or with
    both length fields is read as Mooncake's."""
    rows = []
    mooncake = False
    tokens = given = False
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
            mooncake = mooncake or "hash_ids" in doc or ("input_length" in doc and "output_length" in doc)
            try:
                t = parse_time(str(doc[key]))
                c = next((_finite(path, lineno, "token count", float(doc[k])) for k in _CTX_NAMES if k in doc), None)
                g = next((_finite(path, lineno, "token count", float(doc[k])) for k in _GEN_NAMES if k in doc), None)
                tokens = tokens or c is not None or g is not None
                given = given or "service_s" in doc
                s = (_finite(path, lineno, "service time", float(doc["service_s"])) if "service_s" in doc
                     else service.of(c, g))
            except (ValueError, TypeError) as exc:
                raise TraceError(path, lineno, f"cannot read {line.strip()!r}: {exc}",
                                 "write seconds (12.5) or ISO date-times, and numbers for token counts") from None
            rows.append((lineno, t, s))
    hint = ("ms", "Mooncake trace: timestamp is milliseconds since the first request") if mooncake else None
    tr = _rebase(path, rows, os.path.basename(path), "Mooncake trace" if mooncake else "per-request JSON lines",
                 unit, hint)
    return _service_note(tr, tokens, given, service)


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
                values = {h: float(v) for h, v in zip(header, row, strict=True)}
            except ValueError as exc:
                raise TraceError(path, lineno, f"cannot read {row!r}: {exc}",
                                 "every field must be a number (seconds, counts, requests/s)") from None
            for h, v in values.items():
                _finite(path, lineno, h, v)
                if h == "start" and abs(v) > MAX_SPAN_S:
                    raise TraceError(path, lineno, f"start {v:g} s is more than {MAX_SPAN_S / 86400:.0f} days "
                                     "from 0", "give window starts in seconds from the trace start")
            out.append((lineno, values))
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
    expected = 0.0
    for lineno, r in rows:
        problem = check(r[column])
        if problem:
            raise TraceError(path, lineno, *problem)
        width = r.get("duration", default_width)
        if width <= 0:
            raise TraceError(path, lineno, f"duration {width:g} is not > 0", "give each window a length in seconds")
        expected += r[column] * (width if column == "rate" else 1)
        if expected > MAX_GENERATED:
            raise TraceError(path, lineno, f"the rows up to here ask for about {expected:,.0f} requests, more than "
                             f"the {MAX_GENERATED:,} the simulator generates from one file",
                             "lower the rate or count, or replay a shorter part of the trace")
        arrivals.extend((t, 1, service.default_s) for t in times(rng, r["start"], width, r[column]))
        end = max(end, r["start"] + width)
    arrivals.sort()
    tr = Trace(os.path.basename(path), arrivals, end, None, source,
               [f"arrivals generated from {column}s (seeded); every request takes --service-time "
                f"({service.default_s:g} s)"])
    return _empty(path, tr)


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

_AF_HASHES = ("hashowner", "hashapp", "hashfunction")


def _af_durations(run: str) -> dict[tuple[str, str, str], float]:
    """Average duration (ms -> s) per (owner, app, function) from a ``*_run.csv`` /
    ``function_durations_percentiles.*.csv`` file, when it exists."""
    out: dict[tuple[str, str, str], float] = {}
    if not os.path.exists(run):
        return out
    with open(run, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                avg = float(row["Average"]) / 1000.0
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(avg) and avg >= 0:
                out[(row.get("HashOwner", ""), row.get("HashApp", ""), row.get("HashFunction", ""))] = avg
    return out


def _af_files(path: str) -> tuple[str, str]:
    """(invocations file, durations file) for a file or a directory holding either layout."""
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        inv = next((n for n in names if n.endswith("_inv.csv")), None) or next(
            (n for n in names if n.startswith("invocations_per_function_md")), None)
        if inv is None:
            raise TraceError(path, None, "no Azure Functions invocation file (*_inv.csv or "
                             "invocations_per_function_md.anon.dNN.csv)", "pass the file itself")
        path = os.path.join(path, inv)
    base = os.path.basename(path)
    if base.endswith("_inv.csv"):
        return path, path[: -len("_inv.csv")] + "_run.csv"
    m = re.match(r"invocations_per_function_md\.anon\.(d\d+)\.csv$", base)
    run = os.path.join(os.path.dirname(path), f"function_durations_percentiles.anon.{m.group(1)}.csv") if m else ""
    return path, run


def _spread(rng: random.Random, base: float, count: int, svc: float) -> list[Batch]:
    """``count`` invocations of one minute: uniform times when few; above 60, whole seconds each get their
    share (the remainder in random seconds), so a busy function costs at most 60 batches a minute."""
    if count <= 60:
        return sorted((base + rng.random() * 60.0, 1, svc) for _ in range(count))
    each, extra = divmod(count, 60)
    more = set(rng.sample(range(60), extra))
    return [(base + s, each + (s in more), svc) for s in range(60)]


def read_azure_functions(path: str, seed: int, limit: int | None = None) -> list[Trace]:
    """Azure Functions 2019 per-minute invocation counts: every function is one workload.

    Two layouts: the public dataset's own (``invocations_per_function_md.anon.dNN.csv``:
    ``HashOwner,HashApp,HashFunction,Trigger,1,...,1440``) and the invitro sample's (``1350_inv.csv``:
    ``HashFunction,HashOwner,HashApp,minute_1,...,minute_1440``). Columns are found by name, and any subset of minute columns
    is read (a minute's number is its column name; t = 0 is the first minute given, which keeps its time of
    day). Invocations are spread uniformly inside their minute (seeded); service time is the function's average
    duration from the matching durations file (joined on the three hashes), else 1 s."""
    inv, run = _af_files(path)
    durations = _af_durations(run)
    traces = []
    with open(inv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, None) or []]
        low = [h.lower() for h in header]
        if not all(h in low for h in _AF_HASHES):
            raise TraceError(inv, 1, "not an Azure Functions invocation file (no HashOwner, HashApp and "
                             "HashFunction columns)", "pass an invocations_per_function_md.anon.dNN.csv or "
                             "1350_inv.csv file, or another --format")
        iown, iapp, ifun = (low.index(h) for h in _AF_HASHES)
        minutes = [(i, int(m.group(1))) for i, h in enumerate(low) if (m := re.fullmatch(r"(?:minute_)?(\d+)", h))]
        if not minutes or any(not 1 <= m <= 1440 for _, m in minutes):
            raise TraceError(inv, 1, "the minute columns must be named 1 to 1440 (or minute_1 to minute_1440)",
                             "keep the dataset's header")
        first = min(m for _, m in minutes)
        span = (max(m for _, m in minutes) - first + 1) * 60.0
        origin = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=first - 1)
        total = 0
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if limit is not None and len(traces) >= limit:
                break
            try:
                key = (row[iown], row[iapp], row[ifun])
                counts = [(m, int(row[i])) for i, m in minutes]
            except IndexError:
                raise TraceError(inv, lineno, f"row has {len(row)} fields, the header {len(header)}",
                                 "give every row the header's columns") from None
            except ValueError as exc:
                raise TraceError(inv, lineno, f"cannot read a minute count: {exc}", "counts are whole numbers") from None
            if any(c < 0 for _, c in counts):
                raise TraceError(inv, lineno, "a negative minute count", "counts are whole numbers >= 0")
            total += sum(c for _, c in counts)
            if total > 50 * MAX_GENERATED:
                raise TraceError(inv, lineno, f"more than {50 * MAX_GENERATED:,} invocations up to here",
                                 "replay fewer functions with --limit")
            svc = durations.get(key, 1.0)
            rng = random.Random(f"{seed}:{key[2]}")
            arrivals: list[Batch] = []
            for m, c in sorted(counts):
                if c:
                    arrivals.extend(_spread(rng, (m - first) * 60.0, c, svc))
            traces.append(Trace(key[2][:12], arrivals, span, origin, "Azure Functions 2019 (per-minute counts)",
                                ["service time: each function's average duration from the durations file"
                                 if durations else "no durations file next to the invocations: 1 s per call"]))
    if not traces:
        raise TraceError(inv, None, "the trace has no functions", "pass the whole invocations file")
    return traces


def read_azure_functions_2021(path: str, limit: int | None = None) -> list[Trace]:
    """Azure Functions 2021 per-invocation trace (``app,func,end_timestamp,duration``, seconds from the trace
    start; AzurePublicDataset ``AzureFunctionsInvocationTraceForTwoWeeksJan2021``): every function (app +
    func) is one workload, each invocation arrives at ``end_timestamp - duration`` and takes ``duration``."""
    per: dict[tuple[str, str], list[Batch]] = {}
    end = 0.0
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, None) or []]
        need = ("app", "func", "end_timestamp", "duration")
        if not all(n in header for n in need):
            raise TraceError(path, 1, f"header {header} is not app,func,end_timestamp,duration",
                             "pass the 2021 invocation trace, or another --format")
        ia, ifn, ie, idur = (header.index(n) for n in need)
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                e, d = float(row[ie]), float(row[idur])
            except (IndexError, ValueError):
                raise TraceError(path, lineno, f"cannot read {row!r}", "end_timestamp and duration are seconds") from None
            _finite(path, lineno, "end_timestamp", e)
            _finite(path, lineno, "duration", d)
            if e > MAX_SPAN_S:
                raise TraceError(path, lineno, f"end_timestamp {e:g} s is more than {MAX_SPAN_S / 86400:.0f} days",
                                 "end_timestamp is seconds from the trace start")
            key = (row[ia], row[ifn])
            if key not in per:
                if limit is not None and len(per) >= limit:
                    continue
                per[key] = []
            per[key].append((max(0.0, e - d), 1, d))
            end = max(end, e)
    traces = [Trace(f[:12], sorted(a), end, None, "Azure Functions 2021 (per invocation)",
                    ["service time: each invocation's own duration"]) for (_, f), a in per.items()]
    if not traces:
        raise TraceError(path, None, "the trace has no invocations", "pass the whole trace file")
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


_SERVEGEN_NOTE = ("ServeGen windows carry rates, not token counts: every request takes --service-time ({:g} s); "
                  "arrivals generated from each window's fitted law (seeded)")


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
                              "ServeGen (Alibaba Bailian)", [_SERVEGEN_NOTE.format(service.default_s)]))


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
                                "ServeGen (Alibaba Bailian), one client per workload",
                                [_SERVEGEN_NOTE.format(service.default_s)]))
    if not traces:
        raise TraceError(path, None, "no client sent any request", "pass a ServeGen model directory with traffic")
    return traces


def read_azure_llm(path: str, service: ServiceModel) -> Trace:
    """Azure LLM inference traces (2023: ``AzureLLMInferenceTrace_{conv,code}.csv``; 2024 has the same
    columns): the service is named from the file, never assumed."""
    tr = read_timestamps_csv(path, service, column="TIMESTAMP")
    base = os.path.basename(path).lower()
    kind = " (code)" if "code" in base else " (conversation)" if "conv" in base else ""
    year = next((y for y in ("2023", "2024") if y in base), "")
    tr.source = f"Azure LLM inference{' ' + year if year else ''}{kind}"
    return tr


def detect_format(path: str) -> str:
    if os.path.isdir(path):
        if any(re.fullmatch(r"chunk-\d+-trace\.csv", f) for f in os.listdir(path)):
            return "servegen"
        if any(f.endswith("_inv.csv") or f.startswith("invocations_per_function_md") for f in os.listdir(path)):
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
    if all(h in cols for h in _AF_HASHES):
        return "azure-functions"
    if all(h in cols for h in ("app", "func", "end_timestamp", "duration")):
        return "azure-functions-2021"
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
         time_column: str | None = None, limit: int | None = None, time_unit: str = "auto") -> list[Trace]:
    """Read ``path`` in ``fmt``; a list because one file may hold many workloads (Azure Functions)."""
    if not os.path.exists(path):
        raise TraceError(path, None, "no such file or directory", "check the --trace path")
    if time_unit not in TIME_UNITS:
        raise TraceError(path, None, f"unknown time unit {time_unit!r}", f"use one of {', '.join(TIME_UNITS)}")
    if limit is not None and limit < 1:
        raise TraceError(path, None, f"--limit {limit} is not >= 1", "give the number of workloads to replay")
    try:
        if fmt == "auto":
            fmt = detect_format(path)
        if fmt == "azure-functions":
            return read_azure_functions(path, seed, limit)
        if fmt == "azure-functions-2021":
            return read_azure_functions_2021(path, limit)
        if fmt == "servegen":
            return [read_servegen(path, seed, service)]
        if fmt == "servegen-clients":
            return read_servegen_clients(path, seed, service, limit)
        if fmt == "azure-llm":
            return [read_azure_llm(path, service)]
        if fmt == "timestamps-csv":
            return [read_timestamps_csv(path, service, time_column, time_unit)]
        if fmt == "jsonl":
            return [read_jsonl(path, service, time_unit)]
        if fmt == "counts-csv":
            return [read_counts_csv(path, service, seed)]
        if fmt == "rates-csv":
            return [read_rates_csv(path, service, seed)]
    except UnicodeDecodeError:
        raise TraceError(path, None, "not a text file", "give a CSV or JSON-lines trace") from None
    except IsADirectoryError:
        raise TraceError(path, None, "is a directory", "pass a file, or --format servegen") from None
    raise TraceError(path, None, f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
