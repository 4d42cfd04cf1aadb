"""Time conventions of the monitor: epoch integers in UTC, UTC calendar days (no I/O, no numpy).

Every instant inside the core is an integer count since the Unix epoch 1970-01-01T00:00:00Z:
whole seconds (``*_s``, the support state's resolution) or microseconds (``*_us``, datetime's own
resolution, used where an exact round trip to a ``datetime`` is needed). A *day* is a UTC
calendar day, ``day = t_s // 86400`` (floor, so days before 1970 are negative); leap seconds do
not exist in POSIX time, so every day has 86,400 seconds. Functions taking a ``datetime`` require
a timezone-aware one and raise ``ValueError`` for a naive one (the contract never produces one;
guessing a zone would shift days), except :func:`to_us` (``TypeError``, see there).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

__all__ = [
    "EPOCH",
    "MS_PER_MINUTE",
    "SECONDS_PER_DAY",
    "US_PER_S",
    "day_of",
    "epoch_seconds",
    "from_us",
    "iso_utc_s",
    "to_us",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The Unix epoch as an aware UTC datetime."""
SECONDS_PER_DAY = 86_400
"""Seconds per UTC day (POSIX time has no leap seconds)."""
MS_PER_MINUTE = 60_000
"""Milliseconds per minute: care minutes are summed as integer ms so sums are exact."""
US_PER_S = 1_000_000
"""Microseconds per second."""

_US = timedelta(microseconds=1)


def _aware(t: datetime) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("naive datetime: a timezone-aware (UTC) datetime is required")


def epoch_seconds(t: datetime) -> int:
    """Whole seconds since the Unix epoch (floor) of a timezone-aware datetime.

    Raises ``ValueError`` for a naive datetime.
    """
    _aware(t)
    return math.floor(t.timestamp())


def day_of(t_s: int) -> int:
    """The UTC calendar day number of epoch seconds ``t_s`` (``t_s // 86400``, floor)."""
    return t_s // SECONDS_PER_DAY


def to_us(t: datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware datetime (exact, integer
    arithmetic: no float rounding for any datetime). A naive datetime raises ``TypeError`` (from
    the subtraction; no extra check, as this runs once per held event)."""
    return (t - EPOCH) // _US


def from_us(us: int) -> datetime:
    """The aware UTC datetime of epoch microseconds (inverse of :func:`to_us`)."""
    return EPOCH + timedelta(microseconds=us)


def iso_utc_s(t_s: int) -> str:
    """Epoch seconds -> ISO 8601 UTC with ``Z``, second precision (``2025-01-12T12:00:00Z``).

    Takes integer seconds; :func:`monitor.intake.canonical.iso_utc` formats a ``datetime``.
    """
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
