"""The fast decoder of native contract documents: bytes -> the outcome of the full decoder, fast.

:func:`fast_decode` is the one entry point for a native message (a readings-topic message, a carer
activity, a care link, a patient, or an NDJSON line of any of them). Its contract:

* **Same outcome as the full path.** The full path is :func:`full_decode`: the pydantic decoder
  (:func:`monitor.intake.native.decode`), the event-time check of the document
  (:func:`monitor.intake.native.event_time_rejection`) and, for readings, conversion and validation
  of each reading (:func:`monitor.intake.canonical.canonical_items`). ``fast_decode`` returns
  exactly what ``full_decode`` returns: the same :class:`~monitor.intake.native.Rejection` reason
  code, or an equal :class:`Decoded` (equal canonical readings with ``tzinfo is UTC``; an equal
  pydantic document with the same set fields).
* **How.** A clean, common document is parsed by ``msgspec`` into a typed Struct and checked by
  hand against the rules of :mod:`monitor.intake.rules` (a strict subset of what pydantic accepts:
  exact field set, JSON numbers, identifiers and strings without surrounding whitespace, timestamps
  ``YYYY-MM-DDTHH:MM:SS`` with ``Z`` or ``+HH:MM``, every reading plausible and inside the
  horizons). Anything else - malformed, unusual, rejected - goes to :func:`full_decode`, which
  decides and gives the reason code. Hypothesis tests check the equality on arbitrary input.
* **Types.** ``expected`` is the document type a topic implies (``"reading"`` also takes a gateway
  batch; ``"carer_activity"``, ``"care_link"``, ``"patient"``) or ``None`` for NDJSON lines, whose
  ``"type"`` field decides. ``received_at`` is aware UTC (the Kafka record's timestamp, the
  intake's clock, or for a replay the event time); ``limits`` the event-time limits.
* Never raises on input (an unexpected exception becomes ``invalid_value`` naming only its type);
  never logs (payloads carry patient identifiers).

:func:`fast_canonical` is the readings-topic form kept for the per-message path of the pipeline and
the columnar scan's tests: ``(type name, canonical readings)`` of a clean message, else ``None``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from monitor.contract.models import (
    ActivityKind,
    CareLink,
    CarerActivity,
    GatewayBatch,
    LinkAction,
    Patient,
    Reading,
    ReadingKind,
    Relationship,
    _Document,
)
from monitor.contract.units import ALLOWED_UNITS, CANONICAL_UNIT, to_canonical
from monitor.intake.canonical import CanonicalReading, canonical_items, checked_reading
from monitor.intake.native import Rejection, decode, event_time_rejection, threshold_rejection
from monitor.intake.rules import DEFAULT_LIMITS, PLAUSIBLE_RANGES, Limits

# --- the outcome ------------------------------------------------------------------------------

_NAMES = {"reading": "Reading", "gateway_batch": "GatewayBatch", "carer_activity": "CarerActivity",
          "care_link": "CareLink", "patient": "Patient"}


@dataclass(frozen=True, slots=True)
class Decoded:
    """An accepted native document.

    ``type`` is its contract type (``"reading"``, ``"gateway_batch"``, ``"carer_activity"``,
    ``"care_link"``, ``"patient"``). ``document`` is the pydantic document for an activity, a link
    or a patient; for a reading or a batch it is the pydantic document only when the full decoder
    decided (``None`` from the fast path: no pydantic object is built). ``readings`` are the
    accepted canonical readings in document order; ``rejected`` the readings of the document that
    failed conversion or validation, with their rejection (their dead letters).
    """

    type: str
    document: _Document | None = None
    readings: list[CanonicalReading] = field(default_factory=list)
    rejected: list[tuple[Reading, Rejection]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The model's class name (``"Reading"``, ``"GatewayBatch"``, ...), as counted by the pipeline."""
        return _NAMES[self.type]


Outcome = Decoded | Rejection


# --- msgspec shapes of the native documents -----------------------------------------------------

_UNSET: Any = msgspec.UNSET


class _BatchReading(msgspec.Struct, forbid_unknown_fields=True):
    reading_id: str
    patient_id: str
    device_id: str
    kind: str
    unit: str
    measured_at: str
    gateway_id: str | None = None
    value: float | None = None
    systolic: float | None = None
    diastolic: float | None = None


class _Reading(_BatchReading, tag="reading", tag_field="type"):
    pass


class _Batch(msgspec.Struct, forbid_unknown_fields=True, tag="gateway_batch", tag_field="type"):
    gateway_id: str
    sent_at: str
    readings: list[_BatchReading]


class _Activity(msgspec.Struct, forbid_unknown_fields=True, tag="carer_activity", tag_field="type"):
    activity_id: str
    patient_id: str
    carer_id: str
    kind: str
    started_at: str
    duration_minutes: float


class _Link(msgspec.Struct, forbid_unknown_fields=True, tag="care_link", tag_field="type"):
    patient_id: str
    carer_id: str
    relationship: str
    action: str
    effective_at: str


class _Patient(msgspec.Struct, forbid_unknown_fields=True, tag="patient", tag_field="type"):
    patient_id: str
    region: str
    deprivation_quintile: int
    age_band: str
    conditions: list[str] | msgspec.UnsetType = msgspec.UNSET
    monitoring_plan: dict[str, float] | msgspec.UnsetType = msgspec.UNSET
    thresholds: dict[str, float] | None | msgspec.UnsetType = msgspec.UNSET
    registered_at: str | None | msgspec.UnsetType = msgspec.UNSET


_ANY = msgspec.json.Decoder(_Reading | _Batch | _Activity | _Link | _Patient)
_BY_TYPE = {"reading": msgspec.json.Decoder(_Reading), "gateway_batch": msgspec.json.Decoder(_Batch),
            "carer_activity": msgspec.json.Decoder(_Activity), "care_link": msgspec.json.Decoder(_Link),
            "patient": msgspec.json.Decoder(_Patient)}
_READINGS_KEY = b'"readings"'


# --- field checks (True: exactly what pydantic accepts unchanged) -------------------------------

_ID = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)", re.ASCII)
_MAX_BATCH = 10_000
_SEEN_IDS: set[str] = set()  # patient/device/carer ids already checked (they repeat; event ids do not)
_ACTIVITY_KINDS: dict[str, ActivityKind] = dict(ActivityKind._value2member_map_)  # type: ignore[arg-type]
_RELATIONSHIPS: dict[str, Relationship] = dict(Relationship._value2member_map_)  # type: ignore[arg-type]
_ACTIONS: dict[str, LinkAction] = dict(LinkAction._value2member_map_)  # type: ignore[arg-type]
_READING_KINDS: dict[str, ReadingKind] = dict(ReadingKind._value2member_map_)  # type: ignore[arg-type]
_new = object.__new__
_set = object.__setattr__


def _ident(x: str | None) -> bool:
    return x is not None and _ID.fullmatch(x) is not None


def _known_ident(x: str) -> bool:
    if x in _SEEN_IDS:
        return True
    if _ID.fullmatch(x) is None:
        return False
    if len(_SEEN_IDS) >= 200_000:
        _SEEN_IDS.clear()
    _SEEN_IDS.add(x)
    return True


def _text(x: str, most: int) -> bool:
    """A string pydantic keeps as it is (``str_strip_whitespace`` strips nothing) of 1..most chars."""
    return 0 < len(x) <= most and not x[0].isspace() and not x[-1].isspace()


def _unstripped(x: str) -> bool:
    return not x or (not x[0].isspace() and not x[-1].isspace())


def _timestamp(x: str | None) -> datetime | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` or ``...+HH:MM``/``-HH:MM`` -> aware UTC datetime; else None."""
    if x is None or _TS.fullmatch(x) is None:
        return None
    try:
        ts = datetime.fromisoformat(x)
        return ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _plausible(name: str, x: float) -> bool:
    low, high = PLAUSIBLE_RANGES[name]
    return low <= x <= high


def _reading(r: _BatchReading, received_at: datetime, limits: Limits) -> CanonicalReading | None:
    if not (_ident(r.reading_id) and _known_ident(r.patient_id) and _known_ident(r.device_id)):
        return None
    gateway, kind, unit = r.gateway_id, r.kind, r.unit
    if gateway is not None and not _ident(gateway):
        return None
    allowed = ALLOWED_UNITS.get(kind)
    if allowed is None or unit not in allowed:
        return None
    value = systolic = diastolic = None
    if kind == "blood_pressure":
        systolic, diastolic = r.systolic, r.diastolic
        if r.value is not None or systolic is None or diastolic is None \
                or not _plausible("systolic", systolic) or not _plausible("diastolic", diastolic) \
                or systolic <= diastolic:
            return None
    else:
        if r.systolic is not None or r.diastolic is not None or r.value is None:
            return None
        value = to_canonical(kind, r.value, unit)
        if not (math.isfinite(value) and _plausible(kind, value)):
            return None
    measured_at = _timestamp(r.measured_at)
    if measured_at is None:
        return None
    age = received_at - measured_at
    if not limits.admits(age):
        return None
    return checked_reading(r.reading_id, r.patient_id, r.device_id, gateway, kind, value, systolic,
                           diastolic, CANONICAL_UNIT[kind], unit, measured_at, limits.is_late(age))


def _construct(cls: type[_Document], values: dict[str, Any], given: set[str] | None = None) -> Any:
    """The pydantic instance ``model_validate`` gives for values already checked (every field, in
    declaration order; ``given``: the fields the input set, default all), without validating again."""
    doc = _new(cls)
    _set(doc, "__dict__", values)
    _set(doc, "__pydantic_fields_set__", set(values) if given is None else given)
    _set(doc, "__pydantic_extra__", None)
    _set(doc, "__pydantic_private__", None)
    return doc


def _activity(a: _Activity, received_at: datetime, limits: Limits) -> CarerActivity | None:
    kind = _ACTIVITY_KINDS.get(a.kind)
    started_at = _timestamp(a.started_at)
    minutes = a.duration_minutes
    if kind is None or started_at is None or not 0.0 < minutes <= 1440.0 \
            or not (_ident(a.activity_id) and _known_ident(a.patient_id) and _known_ident(a.carer_id)) \
            or started_at - received_at > limits.max_future:
        return None
    return _construct(CarerActivity, {"activity_id": a.activity_id, "patient_id": a.patient_id,
                                      "carer_id": a.carer_id, "kind": kind, "started_at": started_at,
                                      "duration_minutes": minutes})


def _link(c: _Link, received_at: datetime, limits: Limits) -> CareLink | None:
    relationship, action = _RELATIONSHIPS.get(c.relationship), _ACTIONS.get(c.action)
    effective_at = _timestamp(c.effective_at)
    if relationship is None or action is None or effective_at is None \
            or not (_known_ident(c.patient_id) and _known_ident(c.carer_id)) \
            or effective_at - received_at > limits.max_future:
        return None
    return _construct(CareLink, {"patient_id": c.patient_id, "carer_id": c.carer_id,
                                 "relationship": relationship, "action": action,
                                 "effective_at": effective_at})


def _patient(p: _Patient, received_at: datetime, limits: Limits) -> Patient | None:
    if not (_ident(p.patient_id) and _text(p.region, 64) and _text(p.age_band, 16)
            and 1 <= p.deprivation_quintile <= 5):
        return None
    conditions, plan, thresholds, registered = p.conditions, p.monitoring_plan, p.thresholds, p.registered_at
    given = {"patient_id", "region", "deprivation_quintile", "age_band"}
    if conditions is _UNSET:
        conditions = []
    else:
        given.add("conditions")
        if len(conditions) > 32 or not all(_unstripped(c) for c in conditions):
            return None
    if plan is _UNSET:
        plan = {}
    else:
        given.add("monitoring_plan")
        by_kind = {}
        for kind, per_day in plan.items():
            member = _READING_KINDS.get(kind)
            if member is None or not 0.0 < per_day <= 1440.0:
                return None
            by_kind[member] = per_day
        plan = by_kind
    if thresholds is _UNSET:
        thresholds = None
    else:
        given.add("thresholds")
        if thresholds is not None and (
                not all(_unstripped(k) and math.isfinite(v) for k, v in thresholds.items())
                or threshold_rejection(thresholds) is not None):
            return None
    if registered is _UNSET:
        registered = None
    else:
        given.add("registered_at")
        if registered is not None:
            registered = _timestamp(registered)
            if registered is None or registered - received_at > limits.max_future:
                return None
    return _construct(Patient, {"patient_id": p.patient_id, "region": p.region,
                                "deprivation_quintile": p.deprivation_quintile, "age_band": p.age_band,
                                "conditions": conditions, "monitoring_plan": plan, "thresholds": thresholds,
                                "registered_at": registered}, given)


def _fast(raw: bytes, expected: str | None, received_at: datetime, limits: Limits) -> Decoded | None:
    """The msgspec path: the outcome of a clean document, ``None`` to let the full path decide."""
    try:
        if expected is None:
            doc = _ANY.decode(raw)
        elif expected == "reading":
            doc = (_BY_TYPE["gateway_batch"] if _READINGS_KEY in raw else _BY_TYPE["reading"]).decode(raw)
        else:
            decoder = _BY_TYPE.get(expected)
            if decoder is None:
                return None
            doc = decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None
    t = type(doc)
    if t is _Reading:
        one = _reading(doc, received_at, limits)
        return None if one is None else Decoded("reading", None, [one])
    if t is _Batch:
        items = doc.readings
        if not 1 <= len(items) <= _MAX_BATCH or not _ident(doc.gateway_id) or _timestamp(doc.sent_at) is None:
            return None
        out = []
        for item in items:
            c = _reading(item, received_at, limits)
            if c is None:
                return None
            out.append(c)
        return Decoded("gateway_batch", None, out)
    if t is _Activity:
        activity = _activity(doc, received_at, limits)
        return None if activity is None else Decoded("carer_activity", activity)
    if t is _Link:
        link = _link(doc, received_at, limits)
        return None if link is None else Decoded("care_link", link)
    patient = _patient(doc, received_at, limits)
    return None if patient is None else Decoded("patient", patient)


def full_decode(raw: bytes, expected: str | None, received_at: datetime,
                limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """The reference path: pydantic, the document's event-time check and, for readings, the
    canonical conversion and validation of each. Never raises on input."""
    result = decode(raw, expected)
    if isinstance(result, Rejection):
        return result
    future = event_time_rejection(result, received_at, limits.max_future)
    if future is not None:
        return future
    if isinstance(result, Reading | GatewayBatch):
        accepted: list[CanonicalReading] = []
        rejected: list[tuple[Reading, Rejection]] = []
        for r, c in canonical_items(result, received_at=received_at, oldest=limits.oldest,
                                    max_future=limits.max_future, late_after=limits.late_after):
            if isinstance(c, Rejection):
                rejected.append((r, c))
            else:
                accepted.append(c)
        doc_type = "reading" if isinstance(result, Reading) else "gateway_batch"
        return Decoded(doc_type, result, accepted, rejected)
    return Decoded({CarerActivity: "carer_activity", CareLink: "care_link", Patient: "patient"}[type(result)],
                   result)


def fast_decode(raw: bytes | None, expected: str | None, received_at: datetime,
                limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """A native message -> :class:`Decoded` or :class:`~monitor.intake.native.Rejection`, exactly
    as :func:`full_decode` (see the module docstring); ``None`` (a tombstone) -> ``empty_message``."""
    if raw is None:
        return Rejection("empty_message", "the message has no value")
    try:
        fast = _fast(raw, expected, received_at, limits)
        return fast if fast is not None else full_decode(raw, expected, received_at, limits)
    except Exception as exc:  # noqa: BLE001 - no input may escape as an exception
        return Rejection("invalid_value", f"undecodable input ({type(exc).__name__})")


def fast_canonical(
    raw: bytes, *, received_at: datetime, oldest: timedelta = DEFAULT_LIMITS.oldest,
    max_future: timedelta = DEFAULT_LIMITS.max_future,
    late_after: timedelta = DEFAULT_LIMITS.late_after,
) -> tuple[str, list[CanonicalReading]] | None:
    """A clean native reading or gateway batch from the readings topic -> ``(document type name,
    canonical readings)``; ``None`` when the full decoder must decide.

    The type name is ``"Reading"`` or ``"GatewayBatch"`` (as counted by the pipeline). ``oldest``
    is the event-time horizon, ``max_future`` the clock-skew tolerance and ``late_after`` the late
    window (see :class:`monitor.intake.rules.Limits`). ``received_at`` is aware UTC.
    """
    limits = DEFAULT_LIMITS if (oldest, max_future, late_after) == _DEFAULT_TUPLE \
        else Limits(oldest=oldest, max_future=max_future, late_after=late_after)
    try:
        fast = _fast(raw, "reading", received_at, limits)
    except Exception:  # noqa: BLE001 - the full decoder decides, and gives the reason
        return None
    return None if fast is None else (fast.name, fast.readings)


_DEFAULT_TUPLE = (DEFAULT_LIMITS.oldest, DEFAULT_LIMITS.max_future, DEFAULT_LIMITS.late_after)

__all__ = ["Decoded", "Outcome", "fast_canonical", "fast_decode", "full_decode"]
