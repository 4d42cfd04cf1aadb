"""The rules every native reading parser applies: units, plausibility, event-time limits.

One table, three parsers. The pydantic path (:mod:`monitor.intake.native` then
:func:`monitor.intake.canonical.validate`), the msgspec fast path (:mod:`monitor.intake.fastpath`)
and the numba scanner of a whole fetch (:mod:`monitor.intake.scan_kernel`, driven by
:mod:`monitor.intake.columnar`) all read their limits here:

* units and their conversions: :data:`monitor.contract.units.CONVERSIONS` (the contract's table,
  re-read here as the scanner's lookup tables :data:`KINDS`, :data:`UNITS`, :data:`ALLOWED`);
* plausibility: :data:`PLAUSIBLE_RANGES` (as arrays :data:`LOW`/:data:`HIGH` per kind code);
* event time: :class:`Limits` with the defaults :data:`MAX_FUTURE` (clock-skew tolerance),
  :data:`OLDEST` (oldest horizon) and :data:`LATE_AFTER` (late window).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from monitor.contract.units import ALLOWED_UNITS, CONVERSIONS

PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    # Inclusive limits in canonical units. Wide on purpose: they catch unit mix-ups (a glucose in
    # mg/dL labelled mmol/L), swapped fields and device garbage, not clinically alarming values,
    # which must reach the alert rules. Sources: meter/CGM reporting ranges (~1.1-33.3 mmol/L),
    # extremes of survived physiology, and home-device measuring ranges.
    "glucose": (0.5, 60.0),  # mmol/L (9-1081 mg/dL)
    "systolic": (40.0, 300.0),  # mm[Hg]
    "diastolic": (20.0, 200.0),  # mm[Hg]
    "heart_rate": (20.0, 300.0),  # /min
    "spo2": (50.0, 100.0),  # %; pulse oximeters are unreliable below ~70 and clip at 100
    "respiratory_rate": (2.0, 80.0),  # /min
    "body_temperature": (25.0, 45.0),  # Cel (77-113 [degF])
    "body_weight": (1.0, 400.0),  # kg
}
"""Plausibility limits per kind (and per BP component), inclusive, in canonical units."""

MAX_FUTURE = timedelta(minutes=10)
"""Default clock-skew tolerance: how far an event time may lie after its receive time.

Ten minutes covers the drift of consumer devices between NTP syncs and a gateway's batching delay;
a larger offset is a wrong clock or a time zone applied twice, and such an event would move a
partition's event-time watermark into the future (every patient would look lapsed)."""

OLDEST = timedelta(days=30)
"""Default oldest horizon: a reading measured longer before its receipt is rejected (``too_old``)."""

LATE_AFTER = timedelta(hours=1)
"""Default late window: a reading received longer after it was measured is kept, marked ``late``."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The event-time limits of intake, relative to a message's receive time."""

    oldest: timedelta = OLDEST
    max_future: timedelta = MAX_FUTURE
    late_after: timedelta = LATE_AFTER

    def admits(self, age: timedelta) -> bool:
        """Whether a reading of ``age`` (receive time minus event time) is inside the horizons."""
        return -age <= self.max_future and age <= self.oldest

    def is_late(self, age: timedelta) -> bool:
        return age > self.late_after


DEFAULT_LIMITS = Limits()

# --- the same table as lookup tables for the columnar scan ------------------------------------

KINDS: tuple[str, ...] = tuple(ALLOWED_UNITS)
"""Reading kinds by kind code (the scanner's index)."""
UNITS: tuple[str, ...] = tuple(sorted({u for units in ALLOWED_UNITS.values() for u in units}))
"""UCUM units by unit code (the scanner's index)."""
BLOOD_PRESSURE = KINDS.index("blood_pressure")
ALLOWED = np.array([[u in ALLOWED_UNITS[k] for u in UNITS] for k in KINDS], dtype=np.bool_)
"""``ALLOWED[kind code, unit code]``: the unit is allowed for the kind."""
LOW = np.array([PLAUSIBLE_RANGES[k][0] if k != "blood_pressure" else -np.inf for k in KINDS])
HIGH = np.array([PLAUSIBLE_RANGES[k][1] if k != "blood_pressure" else np.inf for k in KINDS])
"""Plausibility limits by kind code (blood pressure: see ``systolic``/``diastolic``)."""


def convert_column(value: np.ndarray, kind: np.ndarray, unit: np.ndarray) -> None:
    """Values of ``kind`` in ``unit`` (kind and unit codes) -> canonical units, in place, with the
    maps of :data:`~monitor.contract.units.CONVERSIONS` (bit for bit what ``to_canonical`` gives)."""
    for (kind_name, unit_name), convert in CONVERSIONS.items():
        rows = (unit == UNITS.index(unit_name)) & (kind == KINDS.index(kind_name))
        if rows.any():
            value[rows] = convert(value[rows])


__all__ = ["ALLOWED", "BLOOD_PRESSURE", "DEFAULT_LIMITS", "HIGH", "KINDS", "LATE_AFTER", "LOW",
           "MAX_FUTURE", "OLDEST", "PLAUSIBLE_RANGES", "UNITS", "Limits", "convert_column"]
