"""Durations, sizes and timestamps, as the CLI reads and the protos carry them."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Optional, Union

from google.protobuf import duration_pb2, timestamp_pb2

from .errors import InvalidArgument

#: What a ttl (or an exec timeout) may be given as: ``"10m"``, ``"1h30m"``,
#: ``"2h 15m"``, a number of seconds, or a ``timedelta``.
TTL = Union[str, int, float, timedelta]

#: A byte size: a number of bytes, or ``"512MiB"``, ``"1GiB"``, ``"64M"``.
Size = Union[int, str]

# humantime's units, as the CLI's `--ttl` takes them.
_UNITS = {
    "nsec": 1e-9, "ns": 1e-9,
    "usec": 1e-6, "us": 1e-6, "\u00b5s": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1, "second": 1, "secs": 1, "sec": 1, "s": 1,
    "minutes": 60, "minute": 60, "mins": 60, "min": 60, "m": 60,
    "hours": 3600, "hour": 3600, "hrs": 3600, "hr": 3600, "h": 3600,
    "days": 86400, "day": 86400, "d": 86400,
    "weeks": 604800, "week": 604800, "w": 604800,
    "months": 2_630_016, "month": 2_630_016, "M": 2_630_016,
    "years": 31_557_600, "year": 31_557_600, "y": 31_557_600,
}  # fmt: skip
_PART = re.compile(r"\s*(\d+)\s*([A-Za-z\u00b5]+)")


def parse_duration(value: TTL, what: str = "ttl") -> timedelta:
    """A duration from ``"10m"``, ``"1h30m"``, ``"2h 15m"``, seconds (int or float) or a ``timedelta``.

    Raises :class:`~sandpit.InvalidArgument` naming ``what`` for anything else,
    including negative durations.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: {value!r} is not a duration like 10m or 1h30m")
    if isinstance(value, timedelta):
        d = value
    elif isinstance(value, (int, float)):
        d = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        while pos < len(text):
            m = _PART.match(text, pos)
            if not m or m.group(2) not in _UNITS:
                raise InvalidArgument(f"{what}: {value!r} is not a duration like 10m or 1h30m")
            seconds += int(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not text:
            raise InvalidArgument(f"{what}: an empty string is not a duration like 10m or 1h30m")
        d = timedelta(seconds=seconds)
    else:
        raise InvalidArgument(f"{what}: {value!r} is not a duration like 10m or 1h30m")
    if d < timedelta(0):
        raise InvalidArgument(f"{what}: {value!r} is negative")
    return d


def duration_proto(value: TTL, what: str = "ttl") -> duration_pb2.Duration:
    d = parse_duration(value, what)
    micros = (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds
    return duration_pb2.Duration(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def parse_size(value: Size, what: str = "memory") -> int:
    """Bytes from an int or ``"512MiB"``, ``"1GiB"``, ``"64M"``, ``"1048576"`` (the CLI's units)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"{what}: {value!r} is not a size like 512MiB")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{what}: {value} is negative")
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
    units = {"": 1, "B": 1, "K": 1 << 10, "KiB": 1 << 10, "k": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
             "m": 1 << 20, "G": 1 << 30, "GiB": 1 << 30, "g": 1 << 30, "KB": 1000, "MB": 10**6, "GB": 10**9}  # fmt: skip
    if not m:
        raise InvalidArgument(f"{what}: {value!r} is not a size like 512MiB")
    if m.group(2) not in units:
        raise InvalidArgument(f"{what}: {value!r}: unknown unit {m.group(2)!r} (use B, KiB, MiB, GiB)")
    return int(m.group(1)) * units[m.group(2)]


def to_datetime(msg: object, field: str) -> Optional[datetime]:
    """A message's Timestamp field as an aware UTC datetime; None when unset."""
    if not msg.HasField(field):  # type: ignore[attr-defined]
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, field)
    return datetime.fromtimestamp(ts.seconds, tz=timezone.utc) + timedelta(microseconds=ts.nanos // 1000)


def to_timedelta(msg: object, field: str) -> Optional[timedelta]:
    """A message's Duration field as a timedelta; None when unset."""
    if not msg.HasField(field):  # type: ignore[attr-defined]
        return None
    d: duration_pb2.Duration = getattr(msg, field)
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def timestamp_proto(value: Union[datetime, date, str]) -> timestamp_pb2.Timestamp:
    """A Timestamp from a datetime (naive means UTC), a date, or ``YYYY-MM-DD`` / RFC 3339 text."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                value = datetime.fromisoformat(text + "T00:00:00+00:00")
            else:
                value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidArgument(f"{text!r} is not YYYY-MM-DD or RFC 3339") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if not isinstance(value, datetime):
        raise InvalidArgument(f"{value!r} is not a datetime")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)
