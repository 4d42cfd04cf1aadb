"""Nightscout entries (``/api/v1/entries`` JSON: one object or an array) -> canonical glucose readings.

An entry looks like ``{"_id", "type": "sgv", "sgv": 123, "date": <epoch ms>, "dateString",
"direction", "device", "utcOffset"}``. ``sgv`` (CGM) and ``mbg`` (meter) are in mg/dL, as numbers or,
from older uploaders, strings; they are converted to mmol/L (factor 18.016). ``date`` is milliseconds
since the epoch (UTC); without it ``dateString`` (ISO 8601 with offset) is used. ``identifier``
(API v3) or ``_id`` -> ``reading_id``; ``device`` -> ``device_id`` (dropped if it is not a usable
identifier, e.g. ``"xDrip-DexcomG6 share2"`` with a space). Entries carry no patient: the caller
passes the ``patient_id`` the Nightscout site belongs to.

Dexcom-style special values:

* ``sgv`` below 39 is a sensor error code (0 none, 1 sensor not active, 5 not calibrated, 9 absolute
  deviation, 10 power deviation, 12 bad RF, ...), also sent with direction ``NOT COMPUTABLE``:
  rejected with ``sensor_error``;
* ``sgv`` 39 or 40 is LOW: kept with ``bounded="low"`` and the limit :data:`LOW_LIMIT_MG_DL` as value;
* ``sgv`` above the sensor's range is HIGH: kept with ``bounded="high"`` and the limit as value,
  :data:`DEXCOM_HIGH_LIMIT_MG_DL` (400) when ``device`` names a Dexcom, else
  :data:`HIGH_LIMIT_MG_DL` (500: FreeStyle Libre's 401-500 are real values).

``cal`` entries (calibration slopes) and other types are rejected with ``unsupported_format``.
Never raises on bad input, never logs payloads.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from monitor.contract.units import GLUCOSE_MG_PER_DL_PER_MMOL_PER_L
from monitor.intake.canonical import (
    Bounded,
    CanonicalReading,
    as_number,
    check_identifier,
    from_epoch_ms,
    load_json,
    parse_timestamp,
    validate,
)
from monitor.intake.native import Rejection

LOW_LIMIT_MG_DL = 40.0
"""Lowest value a Dexcom-style CGM reports; 39 and 40 mean "LOW" (at most this)."""
HIGH_LIMIT_MG_DL = 500.0
"""Highest value a CGM reports (FreeStyle Libre: 500); above means "HIGH" (at least this)."""
DEXCOM_HIGH_LIMIT_MG_DL = 400.0
"""A Dexcom sensor (``device`` naming Dexcom, e.g. ``xDrip-DexcomG6``) stops at 400: above is HIGH."""
SENSOR_ERROR_BELOW_MG_DL = 39.0
"""``sgv`` values below this are sensor error codes, not glucose."""

_NUMERIC = re.compile(r"\s*-?\d+(\.\d+)?\s*")


def _mg_dl(x: Any, field: str) -> float | Rejection:
    """A glucose in mg/dL from a number or a numeric string."""
    if isinstance(x, str):
        if not _NUMERIC.fullmatch(x):
            return Rejection("invalid_value", f"{field}: not a number")
        x = float(x)
    return as_number(x, field)


def _time(entry: dict[str, Any]) -> datetime | Rejection:
    if entry.get("date") is not None:
        return from_epoch_ms(entry["date"], "date")
    if entry.get("dateString") is not None:
        return parse_timestamp(entry["dateString"], "dateString")
    if entry.get("mills") is not None:
        return from_epoch_ms(entry["mills"], "mills")
    return Rejection("missing_field", "date: missing")


def decode_entry(
    entry: Any, *, patient_id: str | None, received_at: datetime
) -> CanonicalReading | Rejection:
    """One Nightscout entry -> a canonical glucose reading (mmol/L, UTC) or a rejection."""
    if not isinstance(entry, dict):
        return Rejection("not_an_object", f"entry: got a JSON {type(entry).__name__}")
    if patient_id is None:
        return Rejection("missing_patient", "Nightscout entries carry no patient; none configured")
    patient = check_identifier(patient_id, "patient_id")
    if isinstance(patient, Rejection):
        return patient

    etype = entry.get("type", "sgv" if "sgv" in entry else None)
    if etype not in ("sgv", "mbg"):
        return Rejection("unsupported_format", f"type {str(etype)[:20]!r} is not sgv or mbg")
    mg_dl = _mg_dl(entry.get(etype), etype)
    if isinstance(mg_dl, Rejection):
        return mg_dl

    bounded: Bounded | None = None
    if etype == "sgv":
        direction = entry.get("direction")
        if mg_dl < SENSOR_ERROR_BELOW_MG_DL:
            return Rejection("sensor_error", f"sgv {mg_dl:g} is a sensor error code ({direction})"[:120])
        if mg_dl <= LOW_LIMIT_MG_DL:
            bounded, mg_dl = "low", LOW_LIMIT_MG_DL
        else:
            device = entry.get("device")
            limit = (DEXCOM_HIGH_LIMIT_MG_DL if isinstance(device, str) and "dexcom" in device.lower()
                     else HIGH_LIMIT_MG_DL)
            if mg_dl > limit:
                bounded, mg_dl = "high", limit

    measured_at = _time(entry)
    if isinstance(measured_at, Rejection):
        return measured_at

    reading_id = None
    raw_id = entry.get("identifier", entry.get("_id"))
    if raw_id is not None:
        checked = check_identifier(raw_id, "_id")
        if isinstance(checked, Rejection):
            return checked
        reading_id = checked
    device = None
    if entry.get("device") is not None:
        checked = check_identifier(entry["device"], "device")
        device = None if isinstance(checked, Rejection) else checked

    reading = CanonicalReading(
        reading_id=reading_id,
        patient_id=patient,
        device_id=device,
        gateway_id=None,
        kind="glucose",
        value=mg_dl / GLUCOSE_MG_PER_DL_PER_MMOL_PER_L,
        systolic=None,
        diastolic=None,
        unit="mmol/L",
        original_unit="mg/dL",
        original_code=None,
        measured_at=measured_at,
        source="nightscout",
        bounded=bounded,
    )
    return validate(reading, received_at=received_at)


def decode(obj: Any, *, patient_id: str | None, received_at: datetime) -> list[CanonicalReading | Rejection]:
    """A parsed entry or array of entries -> one result per entry (in order)."""
    items = obj if isinstance(obj, list) else [obj]
    return [decode_entry(e, patient_id=patient_id, received_at=received_at) for e in items]


def decode_bytes(
    raw: bytes, *, patient_id: str | None, received_at: datetime
) -> list[CanonicalReading | Rejection]:
    """Raw UTF-8 JSON bytes -> :func:`decode`; undecodable bytes give one rejection. Never raises."""
    obj = load_json(raw)
    if isinstance(obj, Rejection):
        return [obj]
    return decode(obj, patient_id=patient_id, received_at=received_at)
