"""The event contract: pydantic v2 models of every document that crosses a topic or a file.

All documents are JSON objects encoded as UTF-8. Timestamps are ISO 8601 strings **with** an offset
(``Z`` or ``+01:00``); naive timestamps are rejected (reason ``naive_timestamp``). Every timestamp is
normalised to timezone-aware UTC on validation, so nothing downstream ever sees a local time.

Unknown fields are rejected (``extra="forbid"``) so that a misspelt field is an error, not silently
ignored data. In NDJSON files (replay, fixtures) each line carries a ``"type"`` discriminator:
``reading``, ``gateway_batch``, ``carer_activity``, ``care_link`` or ``patient``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from monitor.contract.units import ALLOWED_UNITS


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware datetime (naive input is rejected), converted to UTC."""

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
"""Opaque identifiers: 1-128 characters of letters, digits and ``_ . : @ -``."""


class ReadingKind(StrEnum):
    glucose = "glucose"
    blood_pressure = "blood_pressure"
    heart_rate = "heart_rate"
    spo2 = "spo2"
    respiratory_rate = "respiratory_rate"
    body_temperature = "body_temperature"
    body_weight = "body_weight"


class ActivityKind(StrEnum):
    visit = "visit"
    phone_call = "phone_call"
    video_call = "video_call"
    medication_support = "medication_support"
    meal = "meal"
    personal_care = "personal_care"
    transport = "transport"
    shopping = "shopping"
    household = "household"
    reading_support = "reading_support"
    other = "other"


class Relationship(StrEnum):
    partner = "partner"
    child = "child"
    other_family = "other_family"
    friend = "friend"
    neighbour = "neighbour"
    volunteer = "volunteer"


class LinkAction(StrEnum):
    join = "join"
    leave = "leave"


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Reading(_Document):
    """One self-monitoring measurement taken by a patient (or a carer) at home.

    ``value`` holds the measurement in ``unit`` for every kind except ``blood_pressure``, which
    carries ``systolic`` and ``diastolic`` (both mm[Hg]) instead. Units are UCUM codes; the allowed
    ones per kind are in :data:`monitor.contract.units.ALLOWED_UNITS`. ``measured_at`` is when the
    measurement was taken (event time), not when it was uploaded.
    """

    reading_id: Identifier
    patient_id: Identifier
    device_id: Identifier
    gateway_id: Identifier | None = None
    kind: ReadingKind
    value: float | None = Field(default=None, allow_inf_nan=False)
    systolic: float | None = Field(default=None, allow_inf_nan=False)
    diastolic: float | None = Field(default=None, allow_inf_nan=False)
    unit: str
    measured_at: UtcDatetime

    @model_validator(mode="after")
    def _check_shape(self) -> Reading:
        if self.kind is ReadingKind.blood_pressure:
            if self.systolic is None or self.diastolic is None:
                raise ValueError("blood_pressure needs both systolic and diastolic")
            if self.value is not None:
                raise ValueError("blood_pressure carries systolic/diastolic, not value")
        else:
            if self.value is None:
                raise ValueError(f"{self.kind.value} needs a value")
            if self.systolic is not None or self.diastolic is not None:
                raise ValueError("systolic/diastolic are only for blood_pressure")
        allowed = ALLOWED_UNITS[self.kind.value]
        if self.unit not in allowed:
            raise ValueError(
                f"unit {self.unit!r} is not allowed for {self.kind.value}; use one of {sorted(allowed)}"
            )
        return self


class GatewayBatch(_Document):
    """Readings uploaded together by one device gateway (a hub, a phone app)."""

    gateway_id: Identifier
    sent_at: UtcDatetime
    readings: list[Reading] = Field(min_length=1, max_length=10_000)


class CarerActivity(_Document):
    """Something an informal carer did for a patient: it started at ``started_at`` (UTC) and lasted
    ``duration_minutes`` (0 < minutes <= 1440)."""

    activity_id: Identifier
    patient_id: Identifier
    carer_id: Identifier
    kind: ActivityKind
    started_at: UtcDatetime
    duration_minutes: float = Field(gt=0, le=1440, allow_inf_nan=False)


class CareLink(_Document):
    """A carer joins or leaves a patient's registered support network at ``effective_at``."""

    patient_id: Identifier
    carer_id: Identifier
    relationship: Relationship
    action: LinkAction
    effective_at: UtcDatetime


class Patient(_Document):
    """A registered patient: the equity dimensions and the self-monitoring plan.

    ``monitoring_plan`` maps a reading kind to the number of readings expected per day (> 0).
    ``thresholds`` optionally overrides alert thresholds per rule id, in canonical units.
    """

    patient_id: Identifier
    region: Annotated[str, Field(min_length=1, max_length=64)]
    deprivation_quintile: int = Field(ge=1, le=5)
    age_band: Annotated[str, Field(min_length=1, max_length=16)]
    conditions: list[str] = Field(default_factory=list, max_length=32)
    monitoring_plan: dict[ReadingKind, Annotated[float, Field(gt=0, le=1440)]] = Field(
        default_factory=dict
    )
    thresholds: dict[str, float] | None = None
    registered_at: UtcDatetime | None = None


DOCUMENT_TYPES: dict[str, type[_Document]] = {
    "reading": Reading,
    "gateway_batch": GatewayBatch,
    "carer_activity": CarerActivity,
    "care_link": CareLink,
    "patient": Patient,
}
"""The NDJSON ``"type"`` discriminator -> model."""

Document = Reading | GatewayBatch | CarerActivity | CareLink | Patient


def type_of(doc: _Document) -> str:
    """The NDJSON ``"type"`` of a model instance."""
    for name, cls in DOCUMENT_TYPES.items():
        if type(doc) is cls:
            return name
    raise TypeError(f"not a contract document: {type(doc).__name__}")


def to_json_dict(doc: _Document, *, with_type: bool = False) -> dict[str, Any]:
    """The JSON-ready dict of a document (timestamps as ISO 8601 UTC with ``Z``)."""
    data = doc.model_dump(mode="json", exclude_none=True)
    if with_type:
        data = {"type": type_of(doc), **data}
    return data


class FlagEvent(BaseModel):
    """A coordinator notification: a support flag was raised or cleared for a patient.

    ``flag_id`` is deterministic (patient, flag and the ordinal of the transition for that patient
    and flag) so a consumer can drop duplicates after an at-least-once redelivery; two different
    transitions never share one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    flag_id: str
    patient_id: str
    flag: str
    status: Literal["raised", "cleared"]
    as_of: UtcDatetime
    region: str | None = None
    deprivation_quintile: int | None = None


DEAD_LETTER_PREFIX_BYTES = 4096
"""Most bytes of the original input a dead letter keeps (as JSON: at most ~24 KiB, 6 per byte)."""


class DeadLetter(BaseModel):
    """A rejected input, kept with its original bytes so it can be inspected and replayed.

    ``original`` is the UTF-8 text of the input, or base64 when it was not valid UTF-8
    (``encoding`` says which), cut to a prefix of at most :data:`DEAD_LETTER_PREFIX_BYTES` bytes of
    the input; ``original_bytes`` is the input's full length in bytes and ``original_sha256`` the
    SHA-256 (hex) of all of it, so a dead letter stays small whatever the input (a 1 MB message of
    control characters would otherwise escape to 6 MB of JSON, above Kafka's message limit) and the
    original can still be matched. ``source`` is ``kafka`` (with topic/partition/offset) or ``http``
    (with ``request_id``) or ``file`` (with ``line``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    detail: str
    source: Literal["kafka", "http", "file"]
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    request_id: str | None = None
    line: int | None = None
    received_at: UtcDatetime
    encoding: Literal["utf-8", "base64"]
    original: str
    original_bytes: int | None = None
    original_sha256: str | None = None
