"""One batch of canonical events as columns, and its construction from contract documents.

:class:`EventBatch` is what :meth:`monitor.core.state.SupportState.apply` takes: one numpy array
per field (times in int64 epoch seconds UTC, slots in int32, id hashes in uint64), validated in
one kernel pass (:meth:`EventBatch.check`, ``ValueError`` before any state changes).
:func:`batch_from_documents` builds one from validated contract documents (duck-typed: ``core``
does not import the pydantic models) and assigns patient and carer slots through any
:class:`SlotAssigner` (a :class:`~monitor.core.state.SupportState`). Registry upserts travel as
:class:`PatientRecord` objects. Ids are hashed by :func:`monitor.core.idhash.id_hash`; never
logged.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from monitor.core import support as _k
from monitor.core.idhash import id_hash
from monitor.core.timeutil import MS_PER_MINUTE, SECONDS_PER_DAY, day_of, epoch_seconds

__all__ = [
    "DIMENSIONS",
    "MICRO",
    "READING_KINDS",
    "EventBatch",
    "PatientRecord",
    "SlotAssigner",
    "batch_from_documents",
    "minutes_to_ms",
    "patient_record",
]

DIMENSIONS: tuple[str, ...] = ("region", "deprivation_quintile", "age_band")
"""The equity dimensions a patient registry entry carries."""

READING_KINDS: tuple[str, ...] = (
    "glucose",
    "blood_pressure",
    "heart_rate",
    "spo2",
    "respiratory_rate",
    "body_temperature",
    "body_weight",
)
"""Reading kind codes: the index in this tuple (mirrors ``monitor.contract.models.ReadingKind``)."""
_KIND_CODE = {k: i for i, k in enumerate(READING_KINDS)}

MICRO = 1_000_000
"""Micro-readings per reading: expected readings are kept as integers x 10**6 so that plans of
e.g. 1/3 reading per day sum exactly."""


def minutes_to_ms(minutes: float) -> int:
    """Care minutes -> integer milliseconds, rounded half to even (as the kernels do)."""
    return round(minutes * MS_PER_MINUTE)


class SlotAssigner(Protocol):
    """Assigns dense slots to patient and carer ids on first sight (the support state does)."""

    def patient_slot(self, patient_id: str) -> int: ...

    def carer_slot(self, carer_id: str) -> int: ...


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """A registry upsert. ``expected_micro_per_day``: planned readings per day, all kinds, in
    micro-readings (``round(sum(plan) * 10**6)``); ``version``: ``(registered_at seconds or
    NO_TIME, content hash)`` - the larger version wins whatever the arrival order."""

    patient_slot: int
    region: str
    deprivation_quintile: int
    age_band: str
    expected_micro_per_day: int
    version: tuple[int, int]

    def group(self, dimension: str) -> str:
        return str(getattr(self, dimension))


def _arr(values: Any, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=dtype))


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Columnar canonical events of one batch (one numpy array per field, equal lengths per kind).

    Activities: ``activity_patient`` / ``activity_carer`` (int32 slots), ``activity_start_s``
    (int64 epoch seconds UTC), ``activity_minutes`` (float64, 0 < m <= 1440),
    ``activity_id_hash`` (uint64, non-zero, ``id_hash("a", activity_id)``; duplicates are the
    same (patient, id), see :func:`monitor.core.support.dedup_key`). Care links: ``link_patient``,
    ``link_carer``, ``link_t`` (effective_at, epoch seconds), ``link_action`` (int8 +1 join,
    -1 leave). Readings: ``reading_patient``, ``reading_kind`` (int8 code in
    :data:`READING_KINDS`, -1 unknown), ``reading_t`` (measured_at), ``reading_id_hash``
    (``id_hash("r", reading_id)``; duplicates are the same (patient, kind, id)). ``patients``:
    registry upserts. ``skipped_after_until``: events left out by :func:`batch_from_documents`
    because they fall after its ``until`` day.
    """

    activity_patient: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    activity_carer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    activity_start_s: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    activity_minutes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    activity_id_hash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    link_patient: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    link_carer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    link_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    link_action: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    reading_patient: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    reading_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    reading_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reading_id_hash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    patients: tuple[PatientRecord, ...] = ()
    skipped_after_until: int = 0

    _DTYPES = {
        "activity_patient": np.int32, "activity_carer": np.int32, "activity_start_s": np.int64,
        "activity_minutes": np.float64, "activity_id_hash": np.uint64,
        "link_patient": np.int32, "link_carer": np.int32, "link_t": np.int64,
        "link_action": np.int8,
        "reading_patient": np.int32, "reading_kind": np.int8, "reading_t": np.int64,
        "reading_id_hash": np.uint64,
    }

    @classmethod
    def from_columns(cls, **columns: Any) -> EventBatch:
        """Build a batch from any array-likes, converting each to its dtype (missing -> empty)."""
        conv = {name: _arr(columns.pop(name, ()), dt) for name, dt in cls._DTYPES.items()}
        return cls(**conv, **columns)

    @property
    def n_activities(self) -> int:
        return int(self.activity_patient.shape[0])

    @property
    def n_links(self) -> int:
        return int(self.link_patient.shape[0])

    @property
    def n_readings(self) -> int:
        return int(self.reading_patient.shape[0])

    def __len__(self) -> int:
        return self.n_activities + self.n_links + self.n_readings + len(self.patients)

    def check(self, n_patients: int, n_carers: int) -> int | None:
        """Raise ``ValueError`` if dtypes, lengths or values are invalid (before any kernel runs);
        returns the latest event time (epoch seconds), None for a batch without events."""
        for name, dt in self._DTYPES.items():
            a = getattr(self, name)
            if a.dtype != dt or a.ndim != 1 or not a.flags.c_contiguous:
                raise ValueError(f"EventBatch.{name} must be a contiguous 1-d {np.dtype(dt)} array")
        for prefix, cols in (
            ("activity", ("patient", "carer", "start_s", "minutes", "id_hash")),
            ("link", ("patient", "carer", "t", "action")),
            ("reading", ("patient", "kind", "t", "id_hash")),
        ):
            lengths = {getattr(self, f"{prefix}_{c}").shape[0] for c in cols}
            if len(lengths) != 1:
                raise ValueError(f"EventBatch {prefix} columns have different lengths")
        t_max = self._scan(n_patients, n_carers)
        for rec in self.patients:
            if not 0 <= rec.patient_slot < n_patients:
                raise ValueError("EventBatch.patients has a slot outside the state")
        return t_max

    def _scan(self, n_patients: int, n_carers: int) -> int | None:
        """Range checks of every column in one kernel pass (after the dtype and length checks);
        returns the latest event time (None without events), raises ``ValueError``."""
        code, t_max = _k.scan_batch(
            self.activity_patient, self.activity_carer, self.activity_start_s,
            self.activity_minutes, self.activity_id_hash, self.link_patient, self.link_carer,
            self.link_t, self.link_action, self.reading_patient, self.reading_t,
            self.reading_id_hash, np.int64(n_patients), np.int64(n_carers))
        if code:
            name = _k.BATCH_ERRORS[code]
            if name.endswith("_patient"):
                raise ValueError(f"EventBatch.{name} has a slot outside 0..{n_patients - 1}")
            if name.endswith("_carer"):
                raise ValueError(f"EventBatch.{name} has a slot outside 0..{n_carers - 1}")
            if name == "activity_minutes":
                raise ValueError("EventBatch.activity_minutes must be in (0, 1440]")
            if name == "link_action":
                raise ValueError("EventBatch.link_action must be +1 (join) or -1 (leave)")
            if name == "link_t":
                raise ValueError("EventBatch.link_t must be within +-2**62 seconds")
            raise ValueError(f"EventBatch.{name} must be non-zero")
        n = self.activity_start_s.shape[0] + self.link_t.shape[0] + self.reading_t.shape[0]
        return int(t_max) if n else None

    def times(self) -> np.ndarray:
        """Every event time of the batch (epoch seconds), for the watermark."""
        return np.concatenate((self.activity_start_s, self.link_t, self.reading_t))


def patient_record(slot: int, doc: Any) -> PatientRecord:
    """A :class:`PatientRecord` from a contract ``Patient`` (duck-typed: attributes only)."""
    plan = {str(getattr(k, "value", k)): float(v) for k, v in dict(doc.monitoring_plan).items()}
    expected = round(sum(plan[k] for k in sorted(plan)) * MICRO)
    content = json.dumps(
        [doc.region, int(doc.deprivation_quintile), doc.age_band, sorted(plan.items())],
        separators=(",", ":"),
    )
    reg = doc.registered_at
    version = (epoch_seconds(reg) if reg is not None else int(_k.NO_TIME), id_hash("p", content))
    return PatientRecord(slot, str(doc.region), int(doc.deprivation_quintile), str(doc.age_band),
                         int(expected), version)


class ReadingColumnsView(ABC):
    """Rows of readings held as columns (intake's :class:`monitor.intake.columnar.ReadingSlice`
    subclasses this): event times in epoch seconds (UTC), patient ids, kind names and reading-id
    hashes (``id_hash("r", reading_id)``), row for row."""

    __slots__ = ()

    @abstractmethod
    def event_seconds(self) -> np.ndarray: ...

    @abstractmethod
    def patient_ids(self) -> list[str]: ...

    @abstractmethod
    def kind_names(self) -> list[str]: ...

    @abstractmethod
    def reading_hashes(self) -> np.ndarray: ...


def batch_from_documents(
    state: SlotAssigner, docs: Iterable[Any], *, until: datetime | None = None
) -> EventBatch:
    """Convert validated contract documents into an :class:`EventBatch`, assigning slots in ``state``
    (any :class:`SlotAssigner`, usually the :class:`~monitor.core.state.SupportState` to apply it to).

    Documents are recognised by their fields (``core`` does not import the pydantic models):
    ``Reading``, ``GatewayBatch`` (its readings), ``CarerActivity``, ``CareLink``, ``Patient``, and
    intake's canonical readings; and readings held as columns (a :class:`ReadingColumnsView`).
    Slots are assigned in document order.
    With ``until``, events on a UTC day after ``until``'s day are left out (counted in
    ``skipped_after_until``; no slot is assigned for them) - replay uses this for an as-of in the
    past. Raises ``TypeError`` for an object that is not a contract document. Never logs ids.
    """
    until_day = day_of(epoch_seconds(until)) if until is not None else None
    a_p: list[int] = []
    a_c: list[int] = []
    a_t: list[int] = []
    a_m: list[float] = []
    a_h: list[int] = []
    l_p: list[int] = []
    l_c: list[int] = []
    l_t: list[int] = []
    l_a: list[int] = []
    r_p: list[int] = []
    r_k: list[int] = []
    r_t: list[int] = []
    r_h: list[int] = []
    patients: list[PatientRecord] = []
    skipped = 0

    def add_reading(r: Any) -> None:
        nonlocal skipped
        t = epoch_seconds(r.measured_at)
        if until_day is not None and day_of(t) > until_day:
            skipped += 1
            return
        r_p.append(state.patient_slot(r.patient_id))
        r_k.append(_KIND_CODE.get(str(getattr(r.kind, "value", r.kind)), -1))
        r_t.append(t)
        r_h.append(id_hash("r", r.reading_id))

    def add_columns(sl: ReadingColumnsView) -> None:
        nonlocal skipped
        t = sl.event_seconds()
        patients, kinds = sl.patient_ids(), sl.kind_names()
        if until_day is not None:
            keep = (t // SECONDS_PER_DAY <= until_day).tolist()
            skipped += keep.count(False)
            patients = [x for x, k in zip(patients, keep, strict=True) if k]
            kinds = [x for x, k in zip(kinds, keep, strict=True) if k]
            hashes = [x for x, k in zip(sl.reading_hashes().tolist(), keep, strict=True) if k]
            t = t[np.array(keep, dtype=bool)]
        else:
            hashes = sl.reading_hashes().tolist()
        slot = state.patient_slot
        prev, s = None, -1
        for p in patients:
            if p != prev:
                prev, s = p, slot(p)
            r_p.append(s)
        code = _KIND_CODE
        r_k.extend([code.get(k, -1) for k in kinds])
        r_t.extend(t.tolist())
        r_h.extend(hashes)  # id_hash("r", reading_id), computed in numba

    for doc in docs:
        if isinstance(doc, ReadingColumnsView):
            add_columns(doc)
        elif hasattr(doc, "readings"):
            for r in doc.readings:
                add_reading(r)
        elif hasattr(doc, "reading_id"):
            add_reading(doc)
        elif hasattr(doc, "activity_id"):
            t = epoch_seconds(doc.started_at)
            if until_day is not None and day_of(t) > until_day:
                skipped += 1
                continue
            a_p.append(state.patient_slot(doc.patient_id))
            a_c.append(state.carer_slot(doc.carer_id))
            a_t.append(t)
            a_m.append(float(doc.duration_minutes))
            a_h.append(id_hash("a", doc.activity_id))
        elif hasattr(doc, "effective_at"):
            t = epoch_seconds(doc.effective_at)
            if until_day is not None and day_of(t) > until_day:
                skipped += 1
                continue
            l_p.append(state.patient_slot(doc.patient_id))
            l_c.append(state.carer_slot(doc.carer_id))
            l_t.append(t)
            l_a.append(1 if str(getattr(doc.action, "value", doc.action)) == "join" else -1)
        elif hasattr(doc, "deprivation_quintile"):
            patients.append(patient_record(state.patient_slot(doc.patient_id), doc))
        else:
            raise TypeError(f"not a contract document: {type(doc).__name__}")
    return EventBatch.from_columns(
        activity_patient=a_p, activity_carer=a_c, activity_start_s=a_t, activity_minutes=a_m,
        activity_id_hash=a_h, link_patient=l_p, link_carer=l_c, link_t=l_t, link_action=l_a,
        reading_patient=r_p, reading_kind=r_k, reading_t=r_t, reading_id_hash=r_h,
        patients=tuple(patients), skipped_after_until=skipped,
    )

