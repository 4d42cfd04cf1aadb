"""Open mHealth data points (``{"header": ..., "body": ...}``) -> canonical readings.

Supported schemas (``header.schema_id.name``, any version; a bare body is recognised by its measure
field): blood-glucose, blood-pressure, heart-rate, oxygen-saturation, body-temperature, body-weight,
respiratory-rate. Open mHealth units are not UCUM: ``mg/dL``/``mmol/L``, ``mmHg``, ``beats/min``,
``breaths/min``, ``%``, ``C``/``F``/``K``, ``kg``/``g``/``lb``; they are mapped to UCUM and converted to
the canonical unit (Kelvin is converted to Celsius first; ``original_unit`` keeps the OMH spelling).

Mapping: ``header.id`` (IEEE 1752: ``header.uuid``) -> ``reading_id``; ``header.user_id`` (or a ``user_id`` in
``header.acquisition_provenance``) -> ``patient_id``, else the ``patient_id`` parameter;
``body.effective_time_frame.date_time`` or ``.time_interval.start_date_time`` -> ``measured_at`` (UTC;
naive -> ``naive_timestamp``). A body with ``descriptive_statistic`` (an average, a minimum, ...) is
not a spot reading: ``aggregate_not_spot``. Never raises on bad input, never logs payloads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitor.contract.units import CANONICAL_UNIT, to_canonical
from monitor.intake.canonical import (
    CanonicalReading,
    as_number,
    check_identifier,
    load_json,
    parse_timestamp,
    validate,
)
from monitor.intake.native import Rejection

SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "blood-glucose": ("glucose", ("blood_glucose",)),
    "blood-pressure": ("blood_pressure", ("systolic_blood_pressure", "diastolic_blood_pressure")),
    "heart-rate": ("heart_rate", ("heart_rate",)),
    "oxygen-saturation": ("spo2", ("oxygen_saturation",)),
    "body-temperature": ("body_temperature", ("body_temperature",)),
    "body-weight": ("body_weight", ("body_weight",)),
    "respiratory-rate": ("respiratory_rate", ("respiratory_rate",)),
}
"""Open mHealth schema name -> (reading kind, the body fields holding ``{value, unit}``)."""

OMH_UNITS: dict[str, dict[str, str]] = {
    # "MGDL": the spelling Android health platforms upload
    "glucose": {"mg/dL": "mg/dL", "mmol/L": "mmol/L", "MGDL": "mg/dL"},
    "blood_pressure": {"mmHg": "mm[Hg]"},
    "heart_rate": {"beats/min": "/min"},
    "spo2": {"%": "%"},
    "body_temperature": {"C": "Cel", "F": "[degF]", "K": "K"},
    "body_weight": {"kg": "kg", "g": "g", "lb": "[lb_av]"},
    "respiratory_rate": {"breaths/min": "/min"},
}
"""Open mHealth unit -> UCUM, per kind (``K`` is handled here: the contract has no Kelvin)."""


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _schema_name(header: dict[str, Any], body: dict[str, Any]) -> str | Rejection:
    schema = header.get("schema_id")
    name: Any = None
    if isinstance(schema, dict):
        name = schema.get("name")
    elif isinstance(schema, str):  # "omh:blood-glucose:3.0"
        parts = schema.split(":")
        name = parts[1] if len(parts) >= 2 else parts[0]
    elif schema is None:
        for candidate, (_, fields) in SCHEMAS.items():
            if fields[0] in body:
                return candidate
        return Rejection("unsupported_format", "header.schema_id: missing and body not recognised")
    if not isinstance(name, str) or name not in SCHEMAS:
        return Rejection("unsupported_format", f"schema {str(name)[:40]!r} is not supported")
    return name


def _measure(kind: str, body: dict[str, Any], field: str) -> tuple[float, str] | Rejection:
    """(value in the canonical unit, OMH unit) of a ``{value, unit}`` unit-value."""
    unit_value = body.get(field)
    if not isinstance(unit_value, dict):
        return Rejection("missing_field", f"body.{field}: missing")
    value = as_number(unit_value.get("value"), f"body.{field}.value")
    if isinstance(value, Rejection):
        return value
    unit = unit_value.get("unit")
    if not isinstance(unit, str) or unit not in OMH_UNITS[kind]:
        return Rejection("invalid_unit", f"body.{field}.unit {str(unit)[:20]!r} not allowed for {kind}")
    ucum = OMH_UNITS[kind][unit]
    if kind == "blood_pressure":
        return value, unit
    if ucum == "K":
        return value - 273.15, unit
    return to_canonical(kind, value, ucum), unit


def _time(body: dict[str, Any]) -> datetime | Rejection:
    frame = body.get("effective_time_frame")
    if not isinstance(frame, dict):
        return Rejection("missing_field", "body.effective_time_frame: missing")
    if "date_time" in frame:
        return parse_timestamp(frame["date_time"], "effective_time_frame.date_time")
    interval = _dict(frame.get("time_interval"))
    return parse_timestamp(
        interval.get("start_date_time"), "effective_time_frame.time_interval.start_date_time"
    )


def decode_data_point(
    point: Any, *, received_at: datetime, patient_id: str | None = None
) -> CanonicalReading | Rejection:
    """One Open mHealth data point (parsed JSON) -> a canonical reading or a rejection."""
    if not isinstance(point, dict):
        return Rejection("not_an_object", f"data point: got a JSON {type(point).__name__}")
    if "header" not in point and "body" not in point:
        header, body = {}, point  # a bare body (the schemas' own samples are bodies alone)
    else:
        header, body = point.get("header", {}), point.get("body")
    if not isinstance(header, dict) or not isinstance(body, dict):
        return Rejection("unsupported_format", "not an Open mHealth data point {header, body}")
    name = _schema_name(header, body)
    if isinstance(name, Rejection):
        return name
    kind, fields = SCHEMAS[name]
    if body.get("descriptive_statistic") is not None:
        stat = str(body.get("descriptive_statistic"))[:30]
        return Rejection("aggregate_not_spot", f"body.descriptive_statistic: {stat}")

    reading_id = None
    id_field = "id" if header.get("id") is not None else "uuid"  # IEEE 1752 names it uuid
    if header.get(id_field) is not None:
        checked = check_identifier(header[id_field], f"header.{id_field}")
        if isinstance(checked, Rejection):
            return checked
        reading_id = checked
    user = header.get("user_id", _dict(header.get("acquisition_provenance")).get("user_id"))
    user = user if user is not None else patient_id
    if user is None:
        return Rejection("missing_patient", "header.user_id: missing and no patient configured")
    patient = check_identifier(user, "header.user_id")
    if isinstance(patient, Rejection):
        return patient

    measures = [_measure(kind, body, field) for field in fields]
    for m in measures:
        if isinstance(m, Rejection):
            return m
    measured_at = _time(body)
    if isinstance(measured_at, Rejection):
        return measured_at

    values = [m for m in measures if not isinstance(m, Rejection)]
    is_bp = kind == "blood_pressure"
    reading = CanonicalReading(
        reading_id=reading_id,
        patient_id=patient,
        device_id=None,
        gateway_id=None,
        kind=kind,
        value=None if is_bp else values[0][0],
        systolic=values[0][0] if is_bp else None,
        diastolic=values[1][0] if is_bp else None,
        unit=CANONICAL_UNIT[kind],
        original_unit=values[0][1],
        original_code=f"omh:{name}",
        measured_at=measured_at,
        source="openmhealth",
    )
    return validate(reading, received_at=received_at)


def decode(
    obj: Any, *, received_at: datetime, patient_id: str | None = None
) -> list[CanonicalReading | Rejection]:
    """A parsed data point or array of data points -> one result per data point."""
    items = obj if isinstance(obj, list) else [obj]
    return [decode_data_point(p, received_at=received_at, patient_id=patient_id) for p in items]


def decode_bytes(
    raw: bytes, *, received_at: datetime, patient_id: str | None = None
) -> list[CanonicalReading | Rejection]:
    """Raw UTF-8 JSON bytes -> :func:`decode`; undecodable bytes give one rejection. Never raises."""
    obj = load_json(raw)
    if isinstance(obj, Rejection):
        return [obj]
    return decode(obj, received_at=received_at, patient_id=patient_id)
