"""Durations: one parser and one set of accepted forms for annotations, trigger parameters and the policy.

Accepted everywhere:

- a plain number of seconds: ``300`` (a YAML integer or a string);
- a Go ``time.ParseDuration`` string, the form the KEDA HTTP add-on reads its timeouts in: a sequence of
  numbers with units ``ns``, ``us``, ``µs``, ``ms``, ``s``, ``m``, ``h``, e.g. ``90s``, ``5m``, ``1h30m``,
  ``1.5h``, ``0s``.

Where a consumer needs whole seconds (KEDA's ``cooldownPeriod``, ``pollingInterval``) a value that is not a
whole number of seconds is refused with a message saying so; where it needs a Go duration (the add-on's
timeouts) ``go_duration`` writes the canonical string, so ``300`` reaches the add-on as ``300s``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

FORMS = "seconds (300) or a duration such as 90s, 5m, 1h30m"

_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_WHOLE = re.compile(r"^(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Longest text and value read: a duration is a setting, not data.
MAX_TEXT = 64
MAX_SECONDS = 10 * 365 * 86400


class DurationError(ValueError):
    """A value that is not a duration; the message says what is wrong and which forms are accepted."""


def parse_duration(value: Any) -> float:
    """Seconds of ``value`` (int, float or string in one of the accepted forms). Raises ``DurationError``."""
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration; write {FORMS}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TEXT:
            raise DurationError(f"a duration of {len(text)} characters is not plausible; write {FORMS}")
        seconds = _text_seconds(text)
    else:
        raise DurationError(f"a {type(value).__name__} is not a duration; write {FORMS}")
    if not math.isfinite(seconds):
        raise DurationError(f"{text} is not a finite duration; write {FORMS}")
    if seconds < 0:
        raise DurationError(f"{text} is negative; a duration is 0 or more ({FORMS})")
    if seconds > MAX_SECONDS:
        raise DurationError(f"{text} is more than 10 years; write {FORMS}")
    return seconds


@functools.lru_cache(maxsize=1024)
def _text_seconds(text: str) -> float:
    # Cached: admission reads the same few values ("10m", "300") over and over; texts are at most MAX_TEXT long.
    if text.startswith("-"):
        raise DurationError(f"{text!r} is negative; a duration is 0 or more ({FORMS})")
    if _NUMBER.match(text):
        return float(text)
    if _WHOLE.match(text):
        return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    raise DurationError(f"{text!r} is not a duration; write {FORMS}")


def whole_seconds(value: Any) -> int:
    """``parse_duration`` for settings KEDA takes in whole seconds (cooldownPeriod, pollingInterval ...)."""
    seconds = parse_duration(value)
    if seconds != int(seconds):
        raise DurationError(f"{value!r} is {seconds:g} seconds; this setting takes whole seconds")
    return int(seconds)


def is_duration(value: Any) -> bool:
    try:
        parse_duration(value)
    except DurationError:
        return False
    return True


def duration_seconds(value: Any) -> float | None:
    """Seconds of ``value``, or None when it is not a duration."""
    try:
        return parse_duration(value)
    except DurationError:
        return None


def go_duration(value: Any) -> str:
    """``value`` as Go ``time.ParseDuration`` accepts it: unit strings are kept as written (``1h30m``), plain
    numbers of seconds get the unit (``300`` -> ``300s``). Raises ``DurationError`` on anything else."""
    parse_duration(value)
    if isinstance(value, str) and not _NUMBER.match(value.strip()):
        return value.strip()
    seconds = float(value)
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


def human(seconds: float) -> str:
    """A number of seconds in an accepted form, short: 90 -> "90s", 600 -> "10m", 604800 -> "168h"."""
    s = int(seconds)
    if s != seconds or s < 60 or s % 60:
        return f"{seconds:g}s"
    if s % 3600 == 0:
        return f"{s // 3600}h"
    return f"{s // 60}m"
