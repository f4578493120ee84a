"""What one workload's learner remembers: a fixed-size idle-time histogram and a time-of-day profile.

The shape follows the hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020):
idle times (end of the last activity -> the next request) in 1-minute bins over a 4-hour range, plus a count
of idle times beyond the range ("out of bounds"). We add, per bin, the requests that arrived within one pod
start after the idle time ended (the ones a cold start there would have held) and their idle seconds, so the
choice in ``decide`` can weigh GPU time against requests that wait, and a 48-slot time-of-day profile of
wake-ups after long idle times (the paper predicts those with ARIMA; a time-of-day profile is our simpler
stand-in, enough for daily patterns).

Old history fades: every observation is weighted ``2 ** ((t - t0) / half_life)``; the weights grow instead of
the past being multiplied down on every observation (that would cost the whole histogram each time), and are
brought back to 1 when they get large. Only ratios of weights are ever used, plus "how many observations are
left after fading" (``effective``).

Everything here is pure: times are passed in (seconds on the workload's own clock), nothing reads a clock or
a file. The state is bounded (at most ``BINS`` + 1 bins and ``SLOTS`` slots) and encodes to a compact JSON
string for an annotation or a ConfigMap (``encode`` / ``decode``; ``MAX_ENCODED`` bytes at most).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

BIN_S = 60.0            # the paper's 1-minute bins
BINS = 240              # over 4 hours
SLOT_S = 1800.0         # time-of-day profile: half hours
SLOTS = 48
# An idle time past the histogram adds its idle seconds up to a day (``decide``'s last-resort keep-alive;
# states written before counted them up to 4 hours, which fades out with the rest of the history).
LONG_S = 86400.0
MAX_ENCODED = 8192      # bytes; the encoded state never exceeds this (see ``encode``)
VERSION = 1
# The largest faded sum a stored state may carry. Sums are re-based to the time of writing, so a real one
# stays far below it (a year of a million requests a second is 3e13); a larger one is not ours, and sums of
# such numbers could overflow into inf and NaN in ``decide``.
MAX_SUM = 1e15


@dataclass(frozen=True)
class Params:
    """Hyperparameters. Values chosen on the tuning traces named in docs/scaling-report.md (ServeGen
    ``reason/deepseek-r1`` and ``multimodal/mm-image`` clients; the price bounds, budget span, trust and the
    unseen idle time's tail on the tuning half of the Azure Functions day, split by function; the settled
    history's minimum price on ServeGen ``language/m-mid``, the one multi-day tuning trace), never on the
    traces reported as held out."""

    half_life_s: float = 3 * 86400.0    # old history fades with this half-life
    min_idle_times: float = 3.0         # fewer (after fading): not enough history, the policy's settings apply
    trust_idle_times: float = 10.0      # fewer: the policy's keep-alive may be lengthened, not shortened
    min_keep_alive_s: float = 60.0      # the shortest keep-alive the learner sets (one bin)
    max_keep_alive_s: float = BINS * BIN_S
    prior_unseen: float = 2.0          # pseudo-count of an idle time longer than any seen (see ``decide``)
    tail_factor: float = 2.0            # ... spread up to this multiple of the longest seen (<= 1: beyond reach)
    min_price_s: float = 300.0          # GPU-seconds always worth spending to spare one request a cold start
    settled_days: float = 2.0           # a history this long (faded days; 0: never) has seen its daily cycle ...
    settled_min_price_s: float = 5.0    # ... and spends only what the objective asks: this minimum instead
    price_s: float = 1500.0             # ... and the most ever spent on that to meet the objective
    min_prewarm_hit: float = 0.5       # a pre-warm window must catch at least this share of the idle times reaching it
    long_idle_s: float = BINS * BIN_S   # idle times past the histogram count as wake-ups for the daily profile
    daily_min_share: float = 0.6        # a half hour with a wake-up on at least this share of days is pre-warmed
    daily_min_days: float = 2.0
    long_keep_alive_s: float = 43200.0  # the last-resort keep-alive through idle times past the histogram
    budget_span: float = 2.0            # the realized cold-start share moves the target by at most this factor


@dataclass
class State:
    """Faded sums. ``bins[i] = [idle times, requests held by a cold start there, idle seconds]``; index
    ``BINS`` is out of bounds. ``slots[s]`` = wake-ups after long idle in half hour ``s`` of the day (UTC)."""

    t0: float = 0.0                       # the time at which a weight is 1
    first: float | None = None            # the first observation (how long the history is)
    last_idle_end: float | None = None
    head_bin: int = -1                    # bin of the last idle time, while its head requests are counted
    head_until: float = -math.inf
    requests: float = 0.0                 # faded request count (the denominator of the cold-start share)
    bins: dict[int, list[float]] = field(default_factory=dict)
    slots: dict[int, float] = field(default_factory=dict)
    changes: int = 0                      # observations since the last decision (callers may skip deciding)
    waited: float = 0.0                   # faded requests that met a cold start under the learner's decisions
    judged: float = 0.0                   # faded requests whose cold or warm start is known (``waited``'s base)
    head_cold: bool | None = None         # whether the last idle time ended in a cold start (None: unknown)
    anchor: float | None = None           # a caller's reference for its last relative pre-warm (the
                                          # reconciler's anchor); kept with the state, not used by the learner

    def weight(self, t: float, p: Params) -> float:
        w = 2.0 ** ((t - self.t0) / p.half_life_s)
        if w > 1e12:                       # re-base: bring every weight back near 1
            self._scale(1.0 / w)
            self.t0 = t
            w = 1.0
        return w

    def _scale(self, k: float) -> None:
        self.requests *= k
        self.waited *= k
        self.judged *= k
        for v in self.bins.values():
            v[0] *= k
            v[1] *= k
            v[2] *= k
        for s in self.slots:
            self.slots[s] *= k

    def effective(self, t: float, p: Params) -> float:
        """Idle times left after fading, at time ``t`` (each counts 1 when fresh)."""
        return sum(v[0] for v in self.bins.values()) / 2.0 ** ((t - self.t0) / p.half_life_s)

    def days(self, t: float, p: Params) -> float:
        """Days of history after fading (the denominator of the daily profile)."""
        if self.first is None:
            return 0.0
        span = max(0.0, t - self.first)
        h = p.half_life_s
        return h / math.log(2) * (1 - 2.0 ** (-span / h)) / 86400.0


def observe_idle(s: State, p: Params, t: float, idle_s: float, head_s: float, day_offset_s: float = 0.0,
                 cold: bool | None = None) -> None:
    """The workload was idle for ``idle_s`` seconds and a request came at ``t``. Requests in the next
    ``head_s`` seconds (one pod start) are the ones a cold start would hold; count them with ``observe_requests``.
    ``cold``: whether this idle time did end in a cold start (None: not known; the budget then stays as it is)."""
    if s.first is None:
        s.first = t - idle_s
        s.t0 = t
    w = s.weight(t, p)
    i = min(int(max(idle_s, 0.0) // BIN_S), BINS)
    v = s.bins.setdefault(i, [0.0, 0.0, 0.0])
    v[0] += w
    v[2] += w * min(idle_s, LONG_S if i == BINS else BINS * BIN_S)
    if idle_s >= p.long_idle_s:
        slot = int(((t + day_offset_s) % 86400.0) // SLOT_S)
        s.slots[slot] = s.slots.get(slot, 0.0) + w
    s.head_bin = i
    s.head_until = t + head_s
    s.head_cold = cold
    s.last_idle_end = t
    s.changes += 1


def observe_requests(s: State, p: Params, t: float, n: int) -> None:
    """``n`` requests arrived at ``t`` (after ``observe_idle`` when they end an idle time)."""
    if s.first is None:
        s.first = t
        s.t0 = t
    w = s.weight(t, p) * n
    s.requests += w
    if s.head_cold is not None:
        s.judged += w
    if t < s.head_until and s.head_bin in s.bins:
        s.bins[s.head_bin][1] += w
        if s.head_cold:
            s.waited += w


# ---------------------------------------------------------------------------------------------- encoding

def _num(x: float) -> float | int:
    r = float(f"{x:.3g}")
    return int(r) if r.is_integer() and abs(r) < 1e15 else r


def encode(s: State, t: float, p: Params) -> str:
    """Compact JSON, weights re-based to ``t`` (so a fresh observation counts 1), 3 significant digits;
    bins and slots that faded below 0.001 are dropped. At most ``MAX_ENCODED`` bytes: 241 bins x 3 numbers and
    48 slots fit with room to spare; the weakest bins go first if they ever would not."""
    k = 2.0 ** (-(t - s.t0) / p.half_life_s)
    bins = {str(i): [_num(v[0] * k), _num(v[1] * k), _num(v[2] * k)]
            for i, v in sorted(s.bins.items()) if v[0] * k >= 1e-3}
    slots = {str(i): _num(v * k) for i, v in sorted(s.slots.items()) if v * k >= 1e-3}
    doc = {"v": VERSION, "t": round(t), "first": None if s.first is None else round(s.first),
           "r": _num(s.requests * k), "b": bins, "s": slots}
    if s.judged * k >= 1e-3:                # the budget, when known (absent in states written before it)
        doc["w"] = [_num(s.waited * k), _num(s.judged * k)]
    if s.anchor is not None:
        doc["x"] = round(s.anchor)
    out = json.dumps(doc, separators=(",", ":"))
    while len(out) > MAX_ENCODED and bins:
        del bins[min(bins, key=lambda key: bins[key][0])]
        out = json.dumps(doc, separators=(",", ":"))
    return out


class StateError(ValueError):
    """The stored state cannot be read; the caller starts afresh (learning again costs only time)."""


def _time(value: object, what: str) -> float:
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x):
        raise StateError(f"learned state: {what} is not a time")
    return x


def _sum(value: object, what: str) -> float:
    x = float(value)  # type: ignore[arg-type]
    if not 0.0 <= x <= MAX_SUM:         # NaN fails this too
        raise StateError(f"learned state: {what} is {value!r}, not a count between 0 and {MAX_SUM:g}")
    return x


def decode(text: str) -> State:
    """The state ``encode`` wrote. It is read back from the cluster, where others may have edited it: every
    number must be finite, every count and sum between 0 and ``MAX_SUM``, the first observation no later than
    the time of writing; anything else raises ``StateError`` (the caller starts afresh and says why)."""
    if len(text) > MAX_ENCODED:
        raise StateError(f"learned state is {len(text)} bytes, more than {MAX_ENCODED}")
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise StateError("learned state is not a JSON object")
        if doc.get("v") != VERSION:
            raise StateError(f"learned state version {doc.get('v')!r} is not {VERSION}")
        s = State(t0=_time(doc["t"], "its time"),
                  first=None if doc.get("first") is None else _time(doc["first"], "its first observation"),
                  requests=_sum(doc.get("r", 0.0), "the request count"))
        if s.first is not None and s.first > s.t0:
            raise StateError("learned state: its first observation is later than its time")
        if doc.get("x") is not None:
            s.anchor = _time(doc["x"], "the anchor")
        if "w" in doc:
            s.waited, s.judged = _sum(doc["w"][0], "the waited count"), _sum(doc["w"][1], "the judged count")
            if not s.waited <= s.judged:
                raise StateError("learned state: more requests waited than were counted")
        for key, v in doc.get("b", {}).items():
            i = int(key)
            if not 0 <= i <= BINS or len(v) != 3:
                raise StateError(f"learned state: bin {key!r} out of range")
            s.bins[i] = [_sum(v[0], f"bin {key}"), _sum(v[1], f"bin {key}"), _sum(v[2], f"bin {key}")]
        for key, v in doc.get("s", {}).items():
            i = int(key)
            if not 0 <= i < SLOTS:
                raise StateError(f"learned state: slot {key!r} out of range")
            s.slots[i] = _sum(v, f"slot {key}")
    except StateError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise StateError(f"learned state is not readable: {exc}") from None
    return s
