"""Columnar intake of a whole fetch of readings-topic messages: clean native readings and gateway
batches -> one :class:`ReadingColumns`, without a Python object per reading.

:func:`scan_readings` scans every message of the fetch in one call of the numba kernel
(:mod:`monitor.intake.scan_kernel`) and checks units, plausibility and event-time horizons of all
readings at once with numpy, from the lookup tables of :mod:`monitor.intake.rules`. It accepts
exactly what :func:`monitor.intake.fastpath.fast_canonical` accepts, with the same canonical
readings; a message the kernel declines, or with any reading the fast path would not accept, is
left to the caller (``None`` span), which runs the per-message path and, for a bad message, the
full decoder with its reason code. A hypothesis test compares the two.

Time: ``received_at`` must be timezone-aware (UTC); event times are whole epoch seconds (UTC).
Never raises on input; never logs (payloads carry patient identifiers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from monitor.contract.units import CANONICAL_UNIT
from monitor.core.batch import ReadingColumnsView
from monitor.core.idhash import id_hashes
from monitor.core.timeutil import EPOCH
from monitor.intake.canonical import CanonicalReading, checked_reading
from monitor.intake.rules import (
    ALLOWED,
    BLOOD_PRESSURE,
    DEFAULT_LIMITS,
    HIGH,
    KINDS,
    LOW,
    PLAUSIBLE_RANGES,
    UNITS,
    convert_column,
)
from monitor.intake.scan_kernel import STATUS_DECLINED, Rows, same_as_previous, scan, tables

_TABLES = tables(KINDS, UNITS, ALLOWED)
_SYS, _DIA = PLAUSIBLE_RANGES["systolic"], PLAUSIBLE_RANGES["diastolic"]
_US = timedelta(microseconds=1)
_MIN_READING_BYTES = 70  # no reading object is shorter: bounds the rows of a fetch
READING_ID, PATIENT_ID, DEVICE_ID, GATEWAY_ID = range(4)


@dataclass(slots=True, eq=False)
class ReadingColumns:
    """The readings of a fetch, one row per reading, in message order.

    ``buf`` holds the messages; ``ids[row, 2 * f : 2 * f + 2]`` are the offsets in ``buf`` of
    field ``f`` (:data:`READING_ID`, :data:`PATIENT_ID`, :data:`DEVICE_ID`, :data:`GATEWAY_ID`;
    ``-1``: none). ``kind`` and ``unit`` index :data:`KINDS` / :data:`UNITS` (unit as sent);
    ``value``, ``systolic``, ``diastolic`` are in canonical units (``nan``: none); ``t_s`` the event
    time in whole epoch seconds (UTC); ``late``: received more than an hour after the event. Rows of
    declined messages may be present but are never referenced (see :func:`scan_readings`).
    """

    buf: bytes
    ids: np.ndarray
    kind: np.ndarray
    unit: np.ndarray
    value: np.ndarray
    systolic: np.ndarray
    diastolic: np.ndarray
    t_s: np.ndarray
    late: np.ndarray
    cache: dict[Any, Any] = field(default_factory=dict)

    def text(self, j: int, field: int) -> str | None:
        s, e = self.ids[j, 2 * field], self.ids[j, 2 * field + 1]
        return None if s < 0 else self.buf[s:e].decode("ascii")

    def texts(self, field: int, start: int, stop: int) -> list[str]:
        """Field ``field`` of rows ``start:stop`` (never :data:`GATEWAY_ID`, which may be none).

        Decoded once per fetch and field; consecutive equal patient ids share one string."""
        column = self.cache.get(field)
        if column is None:
            text = self.cache.get("text")
            if text is None:  # every accepted id is ASCII: latin-1 slices are the same strings
                text = self.cache["text"] = self.buf.decode("latin-1")
            s, e = self.ids[:, 2 * field], self.ids[:, 2 * field + 1]
            if field == PATIENT_ID and s.size:
                first = np.flatnonzero(~same_as_previous(np.frombuffer(self.buf, dtype=np.uint8), s, e))
                names = [text[a:b] for a, b in zip(s[first].tolist(), e[first].tolist(), strict=True)]
                runs = np.diff(np.append(first, s.size))
                column = np.repeat(np.array(names, dtype=object), runs).tolist()
            else:
                column = [text[a:b] for a, b in zip(s.tolist(), e.tolist(), strict=True)]
            self.cache[field] = column
        return column[start:stop]

    def reading_hashes(self, start: int, stop: int) -> np.ndarray:
        """``id_hash("r", reading_id)`` of rows ``start:stop`` (uint64; numba BLAKE2b)."""
        hashes = self.cache.get("hashes")
        if hashes is None:
            hashes = self.cache["hashes"] = id_hashes(np.frombuffer(self.buf, dtype=np.uint8), self.ids[:, 0],
                                                      self.ids[:, 1], "r")
        return hashes[start:stop]

    def reading(self, j: int) -> CanonicalReading:
        """Row ``j`` as the :class:`CanonicalReading` the fast path gives for it."""
        kind = KINDS[self.kind[j]]
        bp = kind == "blood_pressure"
        return checked_reading(self.text(j, READING_ID), self.text(j, PATIENT_ID), self.text(j, DEVICE_ID),  # type: ignore[arg-type]
                              self.text(j, GATEWAY_ID), kind, None if bp else float(self.value[j]),
                              float(self.systolic[j]) if bp else None,
                              float(self.diastolic[j]) if bp else None,
                              CANONICAL_UNIT[kind], UNITS[self.unit[j]], datetime_from_s(int(self.t_s[j])),
                              bool(self.late[j]))


@dataclass(slots=True)
class ReadingSlice(ReadingColumnsView):
    """Rows ``start:stop`` of ``columns``: the readings of consecutive accepted messages."""

    columns: ReadingColumns
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def readings(self) -> list[CanonicalReading]:
        """Every row as a reading object (what the fast path gives for these messages)."""
        return [self.columns.reading(j) for j in range(self.start, self.stop)]

    def patient_ids(self) -> list[str]:
        return self.columns.texts(PATIENT_ID, self.start, self.stop)

    def reading_ids(self) -> list[str]:
        return self.columns.texts(READING_ID, self.start, self.stop)

    def kind_names(self) -> list[str]:
        cache = self.columns.cache
        column = cache.get("kinds")
        if column is None:  # once per fetch (the support core and the alert engine both read it)
            names = KINDS
            column = cache["kinds"] = [names[k] for k in self.columns.kind.tolist()]
        return column[self.start : self.stop]

    def reading_hashes(self) -> np.ndarray:
        return self.columns.reading_hashes(self.start, self.stop)

    def event_seconds(self) -> np.ndarray:
        """Event times, whole epoch seconds (UTC)."""
        return self.columns.t_s[self.start : self.stop]


_DT_CACHE: dict[int, datetime] = {}


def datetime_from_s(t: int) -> datetime:
    """Epoch seconds -> aware UTC datetime (cached: readings of a fetch share event times)."""
    dt = _DT_CACHE.get(t)
    if dt is None:
        if len(_DT_CACHE) >= 100_000:
            _DT_CACHE.clear()
        dt = _DT_CACHE[t] = EPOCH + timedelta(seconds=t)
    return dt


def scan_readings(
    values: Sequence[bytes | None], *, received_at: datetime, oldest: timedelta = DEFAULT_LIMITS.oldest,
    max_future: timedelta = DEFAULT_LIMITS.max_future, late_after: timedelta = DEFAULT_LIMITS.late_after,
    received_us: np.ndarray | None = None,
) -> tuple[list[tuple[str, int, int] | None], ReadingColumns]:
    """Messages of the readings topic -> per message ``(document type name, first row, end row)``
    in the returned columns, or ``None`` when the caller must decode that message itself.

    The type name is ``"Reading"`` or ``"GatewayBatch"``. ``oldest`` is the event-time horizon,
    ``max_future`` the clock-skew tolerance, ``late_after`` the late window and ``received_at``
    (aware UTC) the arrival time, as for :func:`~monitor.intake.fastpath.fast_canonical`, whose
    results these are, row for row. ``received_us``, if given, is each message's own arrival time
    (int64 microseconds since the epoch, UTC) and takes the place of ``received_at``.
    """
    m = len(values)
    lengths = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=m)
    buf = b"".join(v for v in values if v is not None)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    cap = len(buf) // _MIN_READING_BYTES + 1
    status = np.zeros(m, dtype=np.int64)
    row_start = np.zeros(m, dtype=np.int64)
    row_end = np.zeros(m, dtype=np.int64)
    ids = np.empty((cap, 8), dtype=np.int64)
    kind = np.empty(cap, dtype=np.int64)
    unit = np.empty(cap, dtype=np.int64)
    nums = np.empty((cap, 3), dtype=np.float64)
    t_s = np.empty(cap, dtype=np.int64)
    n = scan(np.frombuffer(buf, dtype=np.uint8), starts, ends, _TABLES, status, row_start, row_end,
             Rows(ids, kind, unit, nums, t_s))
    ids, kind, unit, t_s = ids[:n], kind[:n], unit[:n], t_s[:n]
    value, systolic, diastolic = nums[:n, 0].copy(), nums[:n, 1].copy(), nums[:n, 2].copy()
    convert_column(value, kind, unit)
    bp = kind == BLOOD_PRESSURE
    with np.errstate(invalid="ignore"):
        ok = np.where(bp, (_SYS[0] <= systolic) & (systolic <= _SYS[1]) & (_DIA[0] <= diastolic)
                      & (diastolic <= _DIA[1]) & (systolic > diastolic),
                      np.isfinite(value) & (LOW[kind] <= value) & (value <= HIGH[kind]))
    counts = row_end - row_start
    if received_us is None:
        received = (received_at - EPOCH) // _US
    else:
        received = np.repeat(np.asarray(received_us, dtype=np.int64), counts)
    age_us = received - t_s * 1_000_000
    ok &= (-age_us <= max_future // _US) & (age_us <= oldest // _US)
    late = age_us > late_after // _US
    if not ok.all():
        owner = np.repeat(np.arange(m), counts)
        status[np.unique(owner[~ok])] = STATUS_DECLINED
    names = (None, "Reading", "GatewayBatch")
    spans: list[tuple[str, int, int] | None] = [
        None if s == STATUS_DECLINED else (names[s], a, b)  # type: ignore[misc]
        for s, a, b in zip(status.tolist(), row_start.tolist(), row_end.tolist(), strict=True)]
    return spans, ReadingColumns(buf, ids, kind, unit, value, systolic, diastolic, t_s, late)


__all__ = ["KINDS", "UNITS", "ReadingColumns", "ReadingSlice", "datetime_from_s", "scan_readings"]
