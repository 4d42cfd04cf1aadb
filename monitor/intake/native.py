"""Decoding of the native JSON contract from raw bytes, with a reason code for every rejection.

Every input ends in exactly one place: a validated contract document, or a :class:`Rejection` with a
machine-readable ``reason`` (see :data:`REASONS`) and a human-readable ``detail``. Nothing here raises
on bad input; the functions never log payloads (they may contain patient identifiers).

Two shapes are accepted:

* on a Kafka topic the document type is implied by the topic (``expected``), and a ``"type"`` field
  is optional (when present it must match);
* in NDJSON files every line carries ``"type"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from monitor.contract.models import (
    DOCUMENT_TYPES,
    CareLink,
    CarerActivity,
    Patient,
    Reading,
    _Document,
)
from monitor.intake.rules import MAX_FUTURE

REASONS: dict[str, str] = {
    "empty_message": "the Kafka message has no value (a tombstone on a non-compacted topic)",
    "not_utf8": "the bytes are not valid UTF-8",
    "malformed_json": "the bytes are not a JSON document",
    "not_an_object": "the JSON document is not an object",
    "unknown_type": "the 'type' field is missing, unknown or not expected on this topic",
    "naive_timestamp": "a timestamp has no UTC offset",
    "invalid_timestamp": "a timestamp is not ISO 8601",
    "unknown_kind": "the reading or activity kind is not in the contract",
    "invalid_duration": "duration_minutes is not in (0, 1440]",
    "invalid_unit": "the unit is not allowed for the kind",
    "missing_field": "a required field is missing",
    "unexpected_field": "a field is not in the contract",
    "invalid_value": "a field has an invalid value",
    "future_timestamp": "an event time is later than its receive time plus the clock-skew tolerance",
    "implausible_threshold": "a per-patient alert threshold is outside the plausible range of its kind",
    "unknown_patient": "the event's patient was not registered in time (grace period) or too many "
                       "events of unregistered patients were held (cap per partition)",
}
"""Every reason code a native decode can produce, with its meaning."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input was rejected: a reason code from :data:`REASONS` and a detail text."""

    reason: str
    detail: str


def _reason_from_validation(err: ValidationError) -> Rejection:
    first = err.errors(include_url=False, include_input=False)[0]
    etype = first["type"]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    field = str(first["loc"][-1]) if first["loc"] else ""
    if etype == "timezone_aware":
        reason = "naive_timestamp"
    elif etype in {"datetime_from_date_parsing", "datetime_parsing", "datetime_type"}:
        reason = "invalid_timestamp"
    elif etype == "enum" and field == "kind":
        reason = "unknown_kind"
    elif field == "duration_minutes":
        reason = "invalid_duration"
    elif etype == "missing":
        reason = "missing_field"
    elif etype == "extra_forbidden":
        reason = "unexpected_field"
    elif etype == "value_error" and "unit" in msg:
        reason = "invalid_unit"
    else:
        reason = "invalid_value"
    return Rejection(reason, f"{loc}: {msg}" if loc else msg)


def parse_json(raw: bytes) -> dict[str, Any] | Rejection:
    """Bytes -> a JSON object, or a rejection (not_utf8, malformed_json, not_an_object)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError also covers an integer of more than 4,300 digits (CPython's int/str limit),
        # which json.loads raises outside JSONDecodeError; the message holds no payload, only
        # positions and limits.
        return Rejection("malformed_json", str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"got a JSON {type(obj).__name__}")
    return obj


def validate_document(obj: dict[str, Any], expected: str | None = None) -> _Document | Rejection:
    """Validate a JSON object as a contract document.

    ``expected`` is the document type a topic carries (``None`` for NDJSON files, where ``"type"``
    is required). For the readings topic pass ``"reading"``: a gateway batch is accepted there too.
    """
    obj = dict(obj)
    declared = obj.pop("type", None)
    if declared is not None and not isinstance(declared, str):
        return Rejection("unknown_type", f"'type' must be a string, got {type(declared).__name__}")
    if expected is None:
        if declared not in DOCUMENT_TYPES:
            return Rejection("unknown_type", f"type {declared!r} is not one of {sorted(DOCUMENT_TYPES)}")
        doc_type = str(declared)
    else:
        allowed = {expected, "gateway_batch"} if expected == "reading" else {expected}
        if declared is None:
            doc_type = "gateway_batch" if expected == "reading" and "readings" in obj else expected
        elif declared in allowed:
            doc_type = str(declared)
        else:
            return Rejection("unknown_type", f"type {declared!r} is not expected here ({sorted(allowed)})")
    try:
        doc = DOCUMENT_TYPES[doc_type].model_validate(obj)
    except ValidationError as err:
        return _reason_from_validation(err)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # never escape on input
        return Rejection("invalid_value", type(exc).__name__)
    if isinstance(doc, Patient) and doc.thresholds:
        bad = threshold_rejection(doc.thresholds)
        if bad is not None:
            return bad
    return doc


def decode(raw: bytes, expected: str | None = None) -> _Document | Rejection:
    """Raw bytes -> a validated contract document or a :class:`Rejection`. Never raises."""
    obj = parse_json(raw)
    if isinstance(obj, Rejection):
        return obj
    return validate_document(obj, expected)


def event_times(doc: _Document) -> list[tuple[str, datetime]]:
    """Every event time a document carries, by field name (readings' ``measured_at`` included)."""
    if isinstance(doc, CarerActivity):
        return [("started_at", doc.started_at)]
    if isinstance(doc, CareLink):
        return [("effective_at", doc.effective_at)]
    if isinstance(doc, Patient):
        return [] if doc.registered_at is None else [("registered_at", doc.registered_at)]
    if isinstance(doc, Reading):
        return [("measured_at", doc.measured_at)]
    return []  # a gateway batch: its readings are judged one by one; ``sent_at`` drives nothing


def event_time_rejection(doc: _Document, received_at: datetime,
                         max_future: timedelta = MAX_FUTURE) -> Rejection | None:
    """``future_timestamp`` when an event time of ``doc`` is more than ``max_future`` after
    ``received_at`` (aware UTC: the Kafka record's timestamp or the intake's clock), else ``None``.

    A gateway batch's readings are judged one by one by :func:`monitor.intake.canonical.validate`
    (its ``sent_at`` drives no window). The detail names the field and the offset only.
    """
    for name, at in event_times(doc):
        ahead = at - received_at
        if ahead > max_future:
            return Rejection("future_timestamp", f"{name} is {ahead} after receipt (max {max_future})")
    return None


# The plausible range of each rule's threshold, in the rule's unit: a value outside it is almost
# surely a unit mix-up or a typo, and it silently disables an alert (a hypoglycaemia threshold of
# 54 meant in mg/dL is 54 mmol/L, above every reading). Narrower than the readings' plausibility
# limits (monitor.intake.rules.PLAUSIBLE_RANGES), which must let extreme values through: the
# glucose range is a meter's reporting range (1.1-33.3 mmol/L), so no mg/dL number above 33 passes;
# the others bracket every published alerting band (NEWS2, glucose consensus) with room to spare.
_THRESHOLD_RANGE_BY_PREFIX: tuple[tuple[str, tuple[float, float]], ...] = (
    ("glucose", (1.1, 33.3)),  # mmol/L
    ("systolic", (60.0, 250.0)),  # mm[Hg]
    ("diastolic", (30.0, 150.0)),  # mm[Hg]
    ("heart_rate", (25.0, 250.0)),  # /min
    ("spo2", (70.0, 100.0)),  # %
    ("respiratory_rate", (4.0, 60.0)),  # /min
    ("body_temperature", (30.0, 43.0)),  # Cel
    ("weight_gain", (0.1, 20.0)),  # kg within the rule's window
    ("missed_readings", (1.0, 30.0)),  # factor of the plan's interval
)


def threshold_range(rule_id: str) -> tuple[float, float] | None:
    """The plausible range of a rule's threshold (``None``: no known range, e.g. an unknown rule)."""
    try:
        from monitor.alerts.rules import RULES_BY_ID  # lazy: the rule table imports the contract
    except ImportError:  # pragma: no cover - the package is always installed whole
        RULES_BY_ID = {}
    rule = RULES_BY_ID.get(rule_id)
    if rule is None:
        return None  # an unknown rule id is ignored (and reported) by effective_thresholds
    for name in (rule.component, rule.kind or "", rule_id):
        for prefix, limits in _THRESHOLD_RANGE_BY_PREFIX:
            if name.startswith(prefix):
                return limits
    return None


def threshold_rejection(thresholds: dict[str, float]) -> Rejection | None:
    """``implausible_threshold`` for the first per-patient threshold that is not finite or outside
    the plausible range of its rule (see :func:`threshold_range`), else ``None``."""
    for rule_id, value in thresholds.items():
        limits = threshold_range(rule_id)
        if not math.isfinite(value):
            return Rejection("implausible_threshold", f"thresholds.{rule_id[:64]}: not a finite number")
        if limits is not None and not limits[0] <= value <= limits[1]:
            return Rejection("implausible_threshold",
                             f"thresholds.{rule_id[:64]}: {value:g} is outside "
                             f"[{limits[0]:g}, {limits[1]:g}]")
    return None
