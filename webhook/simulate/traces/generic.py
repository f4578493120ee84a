"""Readers of the generic layouts: per-request timestamps (CSV, JSON lines; Mooncake's traces are JSON lines),
per-interval counts and per-window rates (arrivals generated from them, seeded by the file name)."""

from __future__ import annotations

import csv
import json
import os
import random
from typing import Callable, Iterator

from ..model import Batch
from .base import (MAX_GENERATED, MAX_SPAN_S, _CTX_NAMES, _GEN_NAMES, _SVC_NAMES, _TS_NAMES, ServiceModel, Trace,
                   TraceError, _empty, _finite, _pick, _rebase, _service_note, parse_time)


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
