"""What every trace reader shares: the ``Trace`` it returns, the one-line ``TraceError``, the service-time model,
timestamp parsing and units, and the bounds every input is checked against."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Iterable

from ..model import Batch

TIME_UNITS = ("auto", "s", "ms", "us", "ns")
_UNIT_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
MAX_SPAN_S = 400 * 86400.0          # a replay longer than this is a unit mistake, not a trace
MAX_GENERATED = 20_000_000          # arrivals drawn from counts or rates, per file


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
