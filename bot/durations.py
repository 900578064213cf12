"""Durations as people type them: `90s`, `30m`, `1h30m`, `2d`, `1w`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")
# Nothing opsloop times (silences, windows, charts, expiries) spans more; past it dates leave what
# datetime, Prometheus and matplotlib can represent, and timedelta itself overflows.
MAX_DURATION = timedelta(days=3660)


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m` style text; raise ValueError with a readable message otherwise."""
    t = text.strip().lower()
    if not _WHOLE.match(t):
        raise ValueError(f"`{text}` is not a duration: write it like 90s, 30m, 2h, 1h30m or 3d")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(t))
    if seconds <= 0:
        raise ValueError(f"`{text}` is not a positive duration")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"`{text}` is longer than {MAX_DURATION.days // 366} years")
    return timedelta(seconds=seconds)


def format_seconds(seconds: float) -> str:
    """`format_duration` of a number of seconds (a difference of two clock readings)."""
    return format_duration(timedelta(seconds=int(seconds)))


def format_left(seconds: float) -> str:
    """Time left, as people read a countdown: to the minute from two minutes up (`30m`, not `29m58s`, for a
    request a moment old), to the second below."""
    if seconds >= 120:
        return format_seconds(round(seconds / 60) * 60)
    return format_seconds(seconds)


def format_duration(delta: timedelta) -> str:
    """The short form of a duration: `1h30m`, `45s`."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
