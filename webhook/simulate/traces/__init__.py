"""Trace readers: files -> ``Trace`` (sorted arrival batches), the I/O edge of the simulator.

Formats: per-request timestamps (CSV with a timestamp column, JSON lines, Mooncake's JSON lines), per-interval
counts, per-window rates, and public traces read in place: Azure Functions 2019 (per-minute counts per
function, the dataset's layout and the invitro sample's), Azure Functions 2021 (per invocation), ServeGen
(per-client 600 s windows with a fitted inter-arrival distribution) and Azure LLM inference (timestamps and
token counts). Whatever is generated from a distribution comes from ``random.Random`` seeded with the given
seed and the file's own name, so a replay is reproducible. Bad input raises ``TraceError`` naming the file,
the line and the fix. ``base`` holds what the readers share, ``generic`` and ``public`` the readers.
"""

from __future__ import annotations

import os
import re

from .base import (MAX_GENERATED, MAX_SPAN_S, TIME_UNITS, ServiceModel, Trace, TraceError, _pick, _TS_NAMES,
                   parse_time)
from .generic import read_counts_csv, read_jsonl, read_rates_csv, read_timestamps_csv
from .public import (SERVEGEN_WINDOW_S, _AF_HASHES, read_azure_functions, read_azure_functions_2021, read_azure_llm,
                     read_servegen, read_servegen_clients)

FORMATS = ("auto", "timestamps-csv", "jsonl", "counts-csv", "rates-csv", "azure-functions", "azure-functions-2021",
           "servegen", "servegen-clients", "azure-llm")

__all__ = ["FORMATS", "MAX_GENERATED", "MAX_SPAN_S", "SERVEGEN_WINDOW_S", "TIME_UNITS", "ServiceModel", "Trace",
           "TraceError", "detect_format", "load", "parse_time", "read_azure_functions", "read_azure_functions_2021",
           "read_azure_llm", "read_counts_csv", "read_jsonl", "read_rates_csv", "read_servegen",
           "read_servegen_clients", "read_timestamps_csv"]


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
