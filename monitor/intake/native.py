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
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from monitor.contract.models import DOCUMENT_TYPES, GatewayBatch, Reading, _Document

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
    except (json.JSONDecodeError, RecursionError) as exc:
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
        return DOCUMENT_TYPES[doc_type].model_validate(obj)
    except ValidationError as err:
        return _reason_from_validation(err)
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: never escape on input
        return Rejection("invalid_value", str(exc)[:200])


def decode(raw: bytes, expected: str | None = None) -> _Document | Rejection:
    """Raw bytes -> a validated contract document or a :class:`Rejection`. Never raises."""
    obj = parse_json(raw)
    if isinstance(obj, Rejection):
        return obj
    return validate_document(obj, expected)


def readings_of(doc: _Document) -> list[Reading]:
    """The readings a document carries (a reading itself or a batch's readings)."""
    if isinstance(doc, Reading):
        return [doc]
    if isinstance(doc, GatewayBatch):
        return list(doc.readings)
    return []
