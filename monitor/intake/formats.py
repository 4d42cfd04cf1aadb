"""Format detection and one entry point for every intake format.

``decode_items`` turns raw bytes into one result per item: a JSON array counts as its items, a FHIR
Bundle as its Observation entries, a native gateway batch as its readings. Formats: ``native`` (the
contract of :mod:`monitor.contract.models`), ``fhir``, ``nightscout``, ``openmhealth``, or ``auto``
(detected per item by :func:`detect_format`). Every result is a :class:`CanonicalReading` (canonical
units, UTC) or a :class:`Rejection` whose reason is in :data:`monitor.intake.canonical.ALL_REASONS`.
Nothing raises on bad input; only a programming error (an unknown ``fmt``, a naive ``received_at``)
raises ``ValueError``. Payloads are never logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.contract.models import GatewayBatch, Reading
from monitor.intake import fhir, nightscout, openmhealth
from monitor.intake.canonical import CanonicalReading, canonicalize, load_json
from monitor.intake.native import Rejection, validate_document

FORMATS = ("auto", "native", "fhir", "nightscout", "openmhealth")
"""The values ``fmt`` accepts."""

_NIGHTSCOUT_TYPES = frozenset({"sgv", "mbg", "cal", "meter", "sensor", "etc"})
_NATIVE_TYPES = frozenset({"reading", "gateway_batch"})

Result = CanonicalReading | Rejection


def detect_format(obj: Any) -> str:
    """The format of a parsed JSON item: ``native``, ``fhir``, ``nightscout``, ``openmhealth`` or
    ``unknown``. For an array, the format of its first object (``unknown`` when empty)."""
    if isinstance(obj, list):
        first = next((x for x in obj if isinstance(x, dict)), None)
        return "unknown" if first is None else detect_format(first)
    if not isinstance(obj, dict):
        return "unknown"
    if obj.get("resourceType") in ("Observation", "Bundle"):
        return "fhir"
    if isinstance(obj.get("body"), dict) and ("header" in obj or "effective_time_frame" in obj["body"]):
        return "openmhealth"
    if "effective_time_frame" in obj and any(fields[0] in obj for _, fields in openmhealth.SCHEMAS.values()):
        return "openmhealth"  # a bare body, as the Open mHealth schemas' own samples are
    declared = obj.get("type")
    declared = declared if isinstance(declared, str) else None  # lists are unhashable
    if declared in _NATIVE_TYPES or "reading_id" in obj or "readings" in obj:
        return "native"
    if declared in _NIGHTSCOUT_TYPES or "sgv" in obj:
        return "nightscout"
    return "unknown"


def _native(obj: Any, received_at: datetime) -> list[Result]:
    if not isinstance(obj, dict):
        return [Rejection("not_an_object", f"got a JSON {type(obj).__name__}")]
    doc = validate_document(obj, expected="reading")
    if isinstance(doc, Rejection):
        return [doc]
    if isinstance(doc, GatewayBatch):
        return [
            canonicalize(
                r if r.gateway_id else r.model_copy(update={"gateway_id": doc.gateway_id}),
                received_at=received_at,
            )
            for r in doc.readings
        ]
    if not isinstance(doc, Reading):  # not expected from validate_document(expected="reading")
        return [Rejection("unknown_type", f"{type(doc).__name__} is not a reading")]
    return [canonicalize(doc, received_at=received_at)]


def _decode_one(obj: Any, fmt: str, patient_id: str | None, received_at: datetime) -> list[Result]:
    """One top-level item (not an array) in a known format, or detected when ``fmt`` is auto."""
    if fmt == "auto":
        fmt = detect_format(obj) if isinstance(obj, dict) else "unknown"
        if fmt == "unknown":
            if not isinstance(obj, dict):
                return [Rejection("not_an_object", f"got a JSON {type(obj).__name__}")]
            return [Rejection("unsupported_format", "not native, FHIR, Nightscout or Open mHealth")]
    if fmt == "native":
        return _native(obj, received_at)
    if fmt == "fhir":
        return fhir.decode(obj, received_at=received_at, patient_id=patient_id)
    if fmt == "nightscout":
        return nightscout.decode(obj, patient_id=patient_id, received_at=received_at)
    return openmhealth.decode(obj, received_at=received_at, patient_id=patient_id)


def decode_value(
    obj: Any, *, fmt: str = "auto", patient_id: str | None = None, received_at: datetime
) -> list[Result]:
    """A parsed JSON value -> one result per item (see :func:`decode_items`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError("received_at must be a timezone-aware datetime")
    items = obj if isinstance(obj, list) else [obj]
    results: list[Result] = []
    for item in items:
        if isinstance(item, list):  # arrays of arrays are not a format anyone sends
            results.append(Rejection("not_an_object", "got a JSON list inside a list"))
        else:
            results.extend(_decode_one(item, fmt, patient_id, received_at))
    return results


def decode_items(
    raw: bytes, *, fmt: str = "auto", patient_id: str | None = None, received_at: datetime
) -> list[Result]:
    """Raw bytes of one JSON document -> one result per item, in order.

    ``patient_id`` is the patient for sources whose items carry none (Nightscout always; FHIR
    without ``subject``; Open mHealth without ``user_id``). ``received_at`` (timezone-aware) is
    when the bytes arrived: it anchors the future/too-old/late checks. Undecodable bytes give a single
    ``not_utf8`` or ``malformed_json`` rejection; an empty array gives no result.
    """
    obj = load_json(raw)
    if isinstance(obj, Rejection):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
        return [obj]
    return decode_value(obj, fmt=fmt, patient_id=patient_id, received_at=received_at)


def result_to_json(result: Result) -> dict[str, Any]:
    """``{"ok": true, "reading": {...}}`` or ``{"ok": false, "reason": ..., "detail": ...}``."""
    if isinstance(result, Rejection):
        return {"ok": False, "reason": result.reason, "detail": result.detail}
    return {"ok": True, "reading": result.to_json()}


def decode_file_lines(
    path: str | Path,
    fmt: str,
    received_at: datetime,
    *,
    patient_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Decode a file and yield :func:`result_to_json` per item (for ``coproduction-monitor decode``).

    The file is either one JSON document (an object, an array, a FHIR Bundle, pretty-printed or
    not) or NDJSON (one JSON document per line; blank lines are skipped, each line may itself be an
    array). ``received_at`` must be timezone-aware (the caller owns the clock). ``patient_id`` is
    the patient of sources that carry none (Nightscout). Bad content never raises; an unknown ``fmt``
    raises ``ValueError`` and an unreadable file ``OSError``, both before anything is yielded.
    A file that is neither (an empty file, a truncated document: its first line is not JSON on its
    own) gives one ``malformed_json`` rejection for the document, not one per line and never the
    items of a fragment.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    raw = Path(path).read_bytes()
    if not raw.strip():
        yield result_to_json(Rejection("malformed_json", "empty document"))
        return
    whole = load_json(raw)
    if not isinstance(whole, Rejection):
        chunks: list[bytes | Any] = [whole]
        parsed = True
    else:
        chunks = [line for line in raw.splitlines() if line.strip()]
        parsed = False
        if isinstance(load_json(chunks[0]), Rejection):  # not NDJSON: one broken document
            yield result_to_json(whole)
            return
    for chunk in chunks:
        if parsed:
            results = decode_value(chunk, fmt=fmt, patient_id=patient_id, received_at=received_at)
        else:
            results = decode_items(chunk, fmt=fmt, patient_id=patient_id, received_at=received_at)
        for result in results:
            yield result_to_json(result)
