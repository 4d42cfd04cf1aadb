"""The canonical reading every intake decoder produces, and the checks every reading passes.

Whatever a gateway or carer's app sends (the native contract, HL7 FHIR R4, Nightscout, Open mHealth),
each item ends as exactly one of:

* a :class:`CanonicalReading`: values in the canonical unit of the kind (glucose ``mmol/L``, blood
  pressure ``mm[Hg]``, rates ``/min``, SpO2 ``%``, temperature ``Cel``, weight ``kg``; see
  :mod:`monitor.contract.units`), ``measured_at`` a timezone-aware UTC datetime (event time); or
* a :class:`~monitor.intake.native.Rejection` with a reason code from :data:`REASONS` (codes new to
  this module) or :data:`monitor.intake.native.REASONS` (shared with the native decoder).

Nothing in the intake decoders raises on bad input, and nothing logs payloads: they carry patient
identifiers. A ``ValueError`` is raised only for programming errors such as a naive ``received_at``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from monitor.contract.models import Reading, ReadingKind
from monitor.contract.units import CANONICAL_UNIT, to_canonical
from monitor.intake.native import REASONS as NATIVE_REASONS
from monitor.intake.native import Rejection
from monitor.intake.rules import LATE_AFTER, MAX_FUTURE, OLDEST, PLAUSIBLE_RANGES

REASONS: dict[str, str] = {
    "implausible_value": "the value is outside the physiologically plausible range of its kind",
    "too_old": "measured_at is older than the oldest horizon accepted at intake",
    "unsupported_code": "the observation code is not a supported vital sign (LOINC or IEEE 11073 MDC)",
    "ambiguous_code": "the observation carries codes that map to different kinds of reading",
    "aggregate_not_spot": "the data point is a statistic over a period (mean, min, ...), not a spot reading",
    "sensor_error": "the device reported an error code in place of a measurement",
    "unsupported_format": "the document or entry type is not a format or type the intake decodes",
    "withdrawn_status": "the source marked the observation entered-in-error or cancelled",
    "missing_patient": "no patient identifier in the document and none configured for the source",
    "invalid_identifier": "an identifier is not 1-128 characters of letters, digits and _ . : @ -",
    "unpaired_component": "a systolic or diastolic pressure sent alone, without its other half "
                          "(same subject, device and time) in the same document",
}
"""Reason codes added by the canonical intake (decoders also use the native codes)."""

ALL_REASONS: dict[str, str] = {**NATIVE_REASONS, **REASONS}
"""Every reason code an intake decoder can produce: the native ones and :data:`REASONS`."""

Source = Literal["native", "fhir", "nightscout", "openmhealth"]
Bounded = Literal["low", "high"]
_SOURCES = frozenset({"native", "fhir", "nightscout", "openmhealth"})
_KINDS = frozenset(k.value for k in ReadingKind)


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")


@dataclass(frozen=True, slots=True)
class CanonicalReading:
    """One reading in canonical form, whatever format it arrived in.

    ``value`` is in ``unit`` (the canonical UCUM unit of ``kind``) for every kind except
    ``blood_pressure``, which carries ``systolic`` and ``diastolic`` in ``mm[Hg]`` and no value.
    ``original_unit`` is the unit as the source spelt it; ``original_code`` the recognised code as
    ``"system|code"`` (FHIR), the Open mHealth schema (``"omh:blood-glucose"``), or ``None`` when the
    source has none (native readings, Nightscout).
    ``measured_at`` is the event time as a timezone-aware datetime, normalised to UTC (naive raises
    ``ValueError``). ``bounded`` marks a CGM reading at the edge of the sensor's range (``"low"``:
    the true value is at most ``value``; ``"high"``: at least ``value``). ``late`` is set by
    :func:`validate` when the reading arrived long after it was taken.
    """

    reading_id: str | None
    patient_id: str
    device_id: str | None
    gateway_id: str | None
    kind: str
    value: float | None
    systolic: float | None
    diastolic: float | None
    unit: str
    original_unit: str
    original_code: str | None
    measured_at: datetime
    source: str
    bounded: Bounded | None = None
    late: bool = False

    def __post_init__(self) -> None:
        if self.measured_at.tzinfo is None or self.measured_at.utcoffset() is None:
            raise ValueError("measured_at must be timezone-aware")
        if self.measured_at.tzinfo is not UTC:
            object.__setattr__(self, "measured_at", self.measured_at.astimezone(UTC))
        if self.kind not in _KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.source not in _SOURCES:
            raise ValueError(f"unknown source {self.source!r}")
        if self.bounded not in (None, "low", "high"):
            raise ValueError(f"bounded must be None, 'low' or 'high', not {self.bounded!r}")

    @property
    def dedup_key(self) -> tuple[Any, ...]:
        """``("id", reading_id)`` when the source gave an id, else the content key.

        The content key is ``("content", patient_id, kind, measured_at, value, systolic,
        diastolic)`` with values rounded to 6 decimals, so the same reading converted from the same
        unit twice compares equal despite floating-point noise.
        """
        if self.reading_id is not None:
            return ("id", self.reading_id)
        return self.content_key

    @property
    def content_key(self) -> tuple[Any, ...]:
        """The key of what was measured: patient, kind, event time and value(s)."""
        return (
            "content",
            self.patient_id,
            self.kind,
            self.measured_at,
            _round(self.value),
            _round(self.systolic),
            _round(self.diastolic),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field; ``measured_at`` as ISO 8601 UTC ending in ``Z``."""
        return {
            "reading_id": self.reading_id,
            "patient_id": self.patient_id,
            "device_id": self.device_id,
            "gateway_id": self.gateway_id,
            "kind": self.kind,
            "value": self.value,
            "systolic": self.systolic,
            "diastolic": self.diastolic,
            "unit": self.unit,
            "original_unit": self.original_unit,
            "original_code": self.original_code,
            "measured_at": iso_utc(self.measured_at),
            "bounded": self.bounded,
            "late": self.late,
            "source": self.source,
        }


_S = {name: getattr(CanonicalReading, name).__set__ for name in CanonicalReading.__slots__}  # type: ignore[attr-defined]
_S_ID, _S_PATIENT = _S["reading_id"], _S["patient_id"]
_S_DEVICE, _S_GATEWAY = _S["device_id"], _S["gateway_id"]
_S_KIND, _S_VALUE, _S_SYS, _S_DIA = _S["kind"], _S["value"], _S["systolic"], _S["diastolic"]
_S_UNIT, _S_OUNIT, _S_CODE, _S_AT = _S["unit"], _S["original_unit"], _S["original_code"], _S["measured_at"]
_S_SOURCE, _S_BOUNDED, _S_LATE = _S["source"], _S["bounded"], _S["late"]
_new = object.__new__


def checked_reading(reading_id: str, patient_id: str, device_id: str, gateway_id: str | None, kind: str,
                    value: float | None, systolic: float | None, diastolic: float | None, unit: str,
                    original_unit: str, measured_at: datetime, late: bool) -> CanonicalReading:
    """A native :class:`CanonicalReading` from values a decoder has already checked, without the
    constructor's checks (the hot path of :mod:`monitor.intake.fastpath`; about half the cost).

    The caller guarantees what ``__post_init__`` would check: ``measured_at`` aware with
    ``tzinfo is UTC``, ``kind`` a contract kind; ``source`` is ``"native"``, ``bounded`` None.
    """
    c = _new(CanonicalReading)
    _S_ID(c, reading_id)
    _S_PATIENT(c, patient_id)
    _S_DEVICE(c, device_id)
    _S_GATEWAY(c, gateway_id)
    _S_KIND(c, kind)
    _S_VALUE(c, value)
    _S_SYS(c, systolic)
    _S_DIA(c, diastolic)
    _S_UNIT(c, unit)
    _S_OUNIT(c, original_unit)
    _S_CODE(c, None)
    _S_AT(c, measured_at)
    _S_SOURCE(c, "native")
    _S_BOUNDED(c, None)
    _S_LATE(c, late)
    return c


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def iso_utc(ts: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix (``2024-03-05T08:30:00Z``)."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _require_aware(received_at: datetime) -> None:
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError("received_at must be a timezone-aware datetime")


# --- helpers shared by the decoders (pure, never raise on input) ------------------------------


def load_json(raw: bytes) -> Any | Rejection:
    """Bytes -> any JSON value, or a rejection (``not_utf8``, ``malformed_json``). Never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        return json.loads(text.removeprefix("\ufeff"))  # tolerate a byte-order mark
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        return Rejection("malformed_json", str(exc)[:200])


def as_number(x: Any, field: str) -> float | Rejection:
    """A finite JSON number (``bool`` excluded) as float, or ``invalid_value``/``missing_field``."""
    if x is None:
        return Rejection("missing_field", f"{field}: missing")
    if isinstance(x, bool) or not isinstance(x, int | float):
        return Rejection("invalid_value", f"{field}: not a number ({type(x).__name__})")
    try:
        value = float(x)
    except OverflowError:
        return Rejection("invalid_value", f"{field}: number out of range")
    if not math.isfinite(value):
        return Rejection("invalid_value", f"{field}: not a finite number")
    return value


def parse_timestamp(text: Any, field: str) -> datetime | Rejection:
    """An ISO 8601 date-time **with** offset -> aware UTC datetime.

    Rejections: ``missing_field`` (absent), ``invalid_timestamp`` (not a string, not ISO 8601, or a
    date without a time of day), ``naive_timestamp`` (no offset). Never raises.
    """
    if text is None:
        return Rejection("missing_field", f"{field}: missing")
    if not isinstance(text, str) or len(text) > 64:
        return Rejection("invalid_timestamp", f"{field}: not an ISO 8601 string")
    stripped = text.strip()
    if len(stripped) <= 10 or stripped[10] not in "Tt ":
        return Rejection("invalid_timestamp", f"{field}: a date-time with a time of day is required")
    try:
        ts = datetime.fromisoformat(stripped)
    except ValueError:
        return Rejection("invalid_timestamp", f"{field}: not ISO 8601")
    if ts.tzinfo is None or ts.utcoffset() is None:
        return Rejection("naive_timestamp", f"{field}: no UTC offset")
    try:
        return ts.astimezone(UTC)
    except (OverflowError, ValueError):
        return Rejection("invalid_timestamp", f"{field}: out of range")


def from_epoch_ms(ms: Any, field: str) -> datetime | Rejection:
    """Milliseconds since 1970-01-01T00:00Z (a number or a string of digits) -> aware UTC datetime."""
    if isinstance(ms, str) and re.fullmatch(r"-?\d{1,16}(\.\d+)?", ms.strip()):
        ms = float(ms)
    number = as_number(ms, field)
    if isinstance(number, Rejection):
        return Rejection(
            "missing_field" if number.reason == "missing_field" else "invalid_timestamp", number.detail
        )
    try:
        return datetime.fromtimestamp(number / 1000.0, UTC)
    except (OverflowError, OSError, ValueError):
        return Rejection("invalid_timestamp", f"{field}: epoch milliseconds out of range")


def check_identifier(value: Any, field: str) -> str | Rejection:
    """An opaque identifier of the contract's shape (1-128 of ``A-Za-z0-9_.:@-``) or a rejection."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Rejection("invalid_identifier", f"{field}: not a string")
    text = str(value).strip()
    if not _IDENTIFIER.fullmatch(text):
        return Rejection("invalid_identifier", f"{field}: not 1-128 of letters, digits, _ . : @ -")
    return text


# --- native readings and validation ------------------------------------------------------------


def canonicalize(
    reading: Reading, *, received_at: datetime, source: Source = "native", **limits: timedelta
) -> CanonicalReading | Rejection:
    """A validated native contract :class:`~monitor.contract.models.Reading` -> a canonical reading.

    Converts the value to the canonical unit of the kind, then applies :func:`validate` (plausibility
    and event-time horizons relative to ``received_at``, which must be timezone-aware); ``limits``
    (``max_future``, ``oldest``, ``late_after``) are passed on to it.
    """
    _require_aware(received_at)
    kind = reading.kind.value
    try:
        value = None if reading.value is None else to_canonical(kind, reading.value, reading.unit)
    except ValueError as exc:
        return Rejection("invalid_unit", str(exc))
    canonical = CanonicalReading(
        reading_id=reading.reading_id,
        patient_id=reading.patient_id,
        device_id=reading.device_id,
        gateway_id=reading.gateway_id,
        kind=kind,
        value=value,
        systolic=reading.systolic,
        diastolic=reading.diastolic,
        unit=CANONICAL_UNIT[kind],
        original_unit=reading.unit,
        original_code=None,
        measured_at=reading.measured_at,
        source=source,
        # decided here rather than by validate()'s dataclasses.replace: that copy cost as much as
        # the pydantic validation of the reading
        late=received_at - reading.measured_at > limits.get("late_after", LATE_AFTER),
    )
    return validate(canonical, received_at=received_at, **limits)


def canonical_items(
    doc: Reading | Any, *, received_at: datetime, **limits: timedelta
) -> list[tuple[Reading, CanonicalReading | Rejection]]:
    """Each native reading a document carries (a Reading, or a GatewayBatch's readings) with its
    canonical form or the reason it was rejected (see :func:`canonicalize`). Never raises on input."""
    items = doc.readings if hasattr(doc, "readings") else [doc]
    return [(r, canonicalize(r, received_at=received_at, **limits)) for r in items]


def _outside(name: str, x: float | None, bounded: Bounded | None = None) -> Rejection | None:
    low, high = PLAUSIBLE_RANGES[name]
    if x is None:
        return Rejection("missing_field", f"{name}: missing")
    if not math.isfinite(x):
        return Rejection("invalid_value", f"{name}: not a finite number")
    # A bounded CGM reading carries the sensor's limit: only the side it is bounded on is unknown.
    too_low = x < low and bounded != "low"
    too_high = x > high and bounded != "high"
    if too_low or too_high:
        return Rejection("implausible_value", f"{name} {x:g} is outside [{low:g}, {high:g}]")
    return None


def validate(
    c: CanonicalReading,
    *,
    received_at: datetime,
    max_future: timedelta = MAX_FUTURE,
    oldest: timedelta = OLDEST,
    late_after: timedelta = LATE_AFTER,
) -> CanonicalReading | Rejection:
    """Plausibility and event-time checks of a canonical reading.

    * Values outside :data:`~monitor.intake.rules.PLAUSIBLE_RANGES` -> ``implausible_value``
      (blood pressure also when systolic <= diastolic). A ``bounded`` reading skips the limit on
      its bounded side.
    * ``measured_at`` more than ``max_future`` after ``received_at`` (device clock wrong, time zone
      applied twice) -> ``future_timestamp``; more than ``oldest`` before it -> ``too_old``.
    * Older than ``late_after`` -> returned with ``late=True`` (kept, but alert rules can tell a
      backfilled value from a live one).

    ``received_at`` must be timezone-aware (``ValueError`` otherwise: a programming error).
    """
    _require_aware(received_at)
    if c.kind == "blood_pressure":
        for name, x in (("systolic", c.systolic), ("diastolic", c.diastolic)):
            problem = _outside(name, x)
            if problem is not None:
                return problem
        assert c.systolic is not None and c.diastolic is not None  # checked just above
        if c.systolic <= c.diastolic:
            return Rejection("implausible_value", f"systolic {c.systolic:g} <= diastolic {c.diastolic:g}")
    else:
        problem = _outside(c.kind, c.value, c.bounded)
        if problem is not None:
            return problem
    age = received_at - c.measured_at
    if -age > max_future:
        return Rejection("future_timestamp", f"measured_at is {-age} after receipt (max {max_future})")
    if age > oldest:
        return Rejection("too_old", f"measured_at is {age} before receipt (max {oldest})")
    late = age > late_after
    return replace(c, late=True) if late and not c.late else c
