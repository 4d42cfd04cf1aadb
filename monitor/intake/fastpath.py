"""The fast path for clean native readings: bytes -> canonical readings without a pydantic object.

Most messages on the readings topic are well-formed native :class:`~monitor.contract.models.Reading`
documents or :class:`~monitor.contract.models.GatewayBatch` uploads whose readings are all accepted.
For those, :func:`fast_canonical` gives exactly what the full decoder
(:func:`monitor.intake.native.decode` followed by :func:`monitor.intake.canonical.canonical_items`)
gives, at a fraction of the cost: it parses with ``orjson`` and checks the fields by hand.

It accepts only a strict subset of what the full decoder accepts (exact field set, JSON numbers
for values, identifiers without surrounding whitespace, timestamps ``YYYY-MM-DDTHH:MM:SS`` with
``Z`` or a ``+HH:MM`` offset, every reading plausible and inside the event-time horizons). Anything
else - a malformed, unusual or rejected input - returns ``None`` and the caller runs the full
decoder, which decides and gives the reason code. So the fast path can never accept what the full
path rejects, nor produce a different canonical reading (a hypothesis test compares the two).

Time: ``received_at`` must be timezone-aware (UTC); timestamps are normalised to UTC.
Never raises on input; never logs (payloads carry patient identifiers).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from monitor.contract.units import ALLOWED_UNITS, CANONICAL_UNIT, to_canonical
from monitor.intake.canonical import PLAUSIBLE_RANGES, CanonicalReading, native_reading

_ID = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)", re.ASCII)
_BATCH_FIELDS = frozenset({"gateway_id", "sent_at", "readings"})
_MAX_FUTURE = timedelta(minutes=10)
_LATE_AFTER = timedelta(hours=1)
_MAX_BATCH = 10_000


def _ident(x: Any) -> bool:
    return type(x) is str and _ID.fullmatch(x) is not None


_SEEN_IDS: set[str] = set()  # patient/device ids already checked (they repeat; reading ids do not)


def _known_ident(x: Any) -> bool:
    if type(x) is str and x in _SEEN_IDS:
        return True
    if not _ident(x):
        return False
    if len(_SEEN_IDS) >= 200_000:
        _SEEN_IDS.clear()
    _SEEN_IDS.add(x)
    return True


def _number(x: Any) -> float | None:
    """A finite JSON number as float (bool and anything else: None)."""
    t = type(x)
    if t is float:
        return x if math.isfinite(x) else None
    if t is int:
        try:
            return float(x)
        except OverflowError:
            return None
    return None


def _timestamp(x: Any) -> datetime | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` or ``...+HH:MM``/``-HH:MM`` -> aware UTC datetime; else None."""
    if type(x) is not str or _TS.fullmatch(x) is None:
        return None
    try:
        ts = datetime.fromisoformat(x)
        return ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _plausible(name: str, x: float) -> bool:
    low, high = PLAUSIBLE_RANGES[name]
    return low <= x <= high


def _reading(obj: Any, received_at: datetime, oldest: timedelta, *, in_batch: bool,
             max_future: timedelta = _MAX_FUTURE,
             late_after: timedelta = _LATE_AFTER) -> CanonicalReading | None:
    if type(obj) is not dict or not 6 <= len(obj) <= 11:
        return None
    try:
        reading_id, patient_id, device_id = obj["reading_id"], obj["patient_id"], obj["device_id"]
        kind, unit, stamp = obj["kind"], obj["unit"], obj["measured_at"]
    except KeyError:
        return None
    optional = ("gateway_id" in obj) + ("value" in obj) + ("systolic" in obj) + ("diastolic" in obj)
    declared = "type" in obj
    if len(obj) != 6 + optional + declared:
        return None  # a field outside the contract
    if declared and (in_batch or obj["type"] != "reading"):
        return None
    if not (_ident(reading_id) and _known_ident(patient_id) and _known_ident(device_id)):
        return None
    gateway = obj.get("gateway_id")
    if gateway is not None and not _ident(gateway):
        return None
    if type(kind) is not str or kind not in ALLOWED_UNITS or type(unit) is not str \
            or unit not in ALLOWED_UNITS[kind]:
        return None
    raw_value, raw_sys, raw_dia = obj.get("value"), obj.get("systolic"), obj.get("diastolic")
    value = systolic = diastolic = None
    if kind == "blood_pressure":
        if raw_value is not None:
            return None
        systolic, diastolic = _number(raw_sys), _number(raw_dia)
        if systolic is None or diastolic is None or not _plausible("systolic", systolic) \
                or not _plausible("diastolic", diastolic) or systolic <= diastolic:
            return None
    else:
        if raw_sys is not None or raw_dia is not None:
            return None
        number = _number(raw_value)
        if number is None:
            return None
        value = to_canonical(kind, number, unit)
        if not (math.isfinite(value) and _plausible(kind, value)):
            return None
    measured_at = _timestamp(stamp)
    if measured_at is None:
        return None
    age = received_at - measured_at
    if -age > max_future or age > oldest:
        return None
    return native_reading(reading_id, patient_id, device_id, gateway, kind, value,
                          systolic, diastolic, CANONICAL_UNIT[kind], unit, measured_at, age > late_after)


def fast_canonical(
    raw: bytes, *, received_at: datetime, oldest: timedelta = timedelta(days=30),
    max_future: timedelta = _MAX_FUTURE, late_after: timedelta = _LATE_AFTER,
) -> tuple[str, list[CanonicalReading]] | None:
    """A clean native reading or gateway batch from the readings topic -> ``(document type name,
    canonical readings)``; ``None`` when the full decoder must decide (see the module docstring).

    The type name is ``"Reading"`` or ``"GatewayBatch"`` (as counted by the pipeline). ``oldest``
    is the event-time horizon, ``max_future`` the clock-skew tolerance and ``late_after`` the late
    window (as in :func:`monitor.intake.canonical.validate`). ``received_at`` is aware UTC.
    """
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, RecursionError):  # the full decoder gives the reason
        return None
    if type(obj) is not dict:
        return None
    if "readings" not in obj:
        one = _reading(obj, received_at, oldest, in_batch=False, max_future=max_future,
                       late_after=late_after)
        return None if one is None else ("Reading", [one])
    declared = obj.pop("type", None)
    if declared is not None and declared != "gateway_batch":
        return None
    if obj.keys() != _BATCH_FIELDS or not _ident(obj["gateway_id"]) or _timestamp(obj["sent_at"]) is None:
        return None
    items = obj["readings"]
    if type(items) is not list or not 1 <= len(items) <= _MAX_BATCH:
        return None
    out = []
    for item in items:
        c = _reading(item, received_at, oldest, in_batch=True, max_future=max_future,
                     late_after=late_after)
        if c is None:
            return None
        out.append(c)
    return "GatewayBatch", out


__all__ = ["fast_canonical"]
