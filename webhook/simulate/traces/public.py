"""Readers of public traces in their published layouts: Azure Functions 2019 (per-minute counts; the dataset's
own layout and the invitro sample's), Azure Functions 2021 (per invocation), ServeGen (per-client 600 s windows
with a fitted inter-arrival law) and Azure LLM inference (timestamps and token counts)."""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import random
import re

from ..model import Batch
from .base import MAX_GENERATED, MAX_SPAN_S, ServiceModel, Trace, TraceError, _empty, _finite
from .generic import read_timestamps_csv

SERVEGEN_WINDOW_S = 600.0


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
