"""The driver-agnostic pipeline: raw records in, state updates, dead letters and flag events out.

Both drivers - the faust worker (``monitor.stream``) and offline tools - feed this class batches of
raw records. It never touches Kafka or the network; it returns what must be published. Every input
record ends in exactly one place: applied to the support state (``counts.processed``) or a
:class:`~monitor.contract.models.DeadLetter` with a reason code (``counts.dead_letters``).

Time: ``clock`` returns the current timezone-aware UTC time and is used only for the receive time of
dead letters. Flags are evaluated as of the event-time watermark (the latest event time seen), so the
same input gives the same flags whenever it is processed.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.contract.models import (
    CareLink,
    CarerActivity,
    DeadLetter,
    FlagEvent,
    GatewayBatch,
    LinkAction,
    Patient,
    Reading,
    _Document,
)
from monitor.intake.native import Rejection, decode

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: timezone-aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input message: its bytes and where it came from."""

    value: bytes | None
    topic: str
    partition: int = -1
    offset: int = -1


@dataclass
class Counts:
    """Running totals: documents processed by type, readings, dead letters by reason."""

    processed: Counter[str] = field(default_factory=Counter)
    readings: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    flags_published: Counter[str] = field(default_factory=Counter)

    @property
    def inputs(self) -> int:
        return sum(self.processed.values()) + sum(self.dead_letters.values())


@dataclass
class BatchResult:
    dead_letters: list[DeadLetter]
    documents: int


def dead_letter(raw: bytes | None, reason: str, detail: str, *, topic: str, partition: int,
                offset: int, received_at: datetime) -> DeadLetter:
    """A dead-letter record keeping the original bytes (UTF-8 text, or base64 when not UTF-8)."""
    data = raw or b""
    try:
        original, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return DeadLetter(
        reason=reason, detail=detail, source="kafka", topic=topic, partition=partition,
        offset=offset, received_at=received_at, encoding=encoding, original=original,  # type: ignore[arg-type]
    )


class SkeletonSupport:
    """Plain-Python per-patient support state (the foundation's stand-in for the numba core).

    Keeps, per patient: the registry entry, registered carers (care links applied in
    ``effective_at`` order) and the latest activity time per carer. ``no_support_network`` holds
    when a registered patient has no registered carer and no carer active in the last 28 days
    (activity start in ``(as_of - 28 d, as_of]``).
    """

    ACTIVE_WINDOW = timedelta(days=28)

    def __init__(self) -> None:
        self.patients: dict[str, Patient] = {}
        self.links: dict[str, dict[str, tuple[datetime, LinkAction]]] = {}
        self.last_activity: dict[str, dict[str, datetime]] = {}
        self.seen_activities: set[str] = set()
        self.watermark: datetime | None = None

    def _advance(self, t: datetime) -> None:
        if self.watermark is None or t > self.watermark:
            self.watermark = t

    def apply(self, doc: _Document) -> None:
        if isinstance(doc, Patient):
            self.patients[doc.patient_id] = doc
        elif isinstance(doc, CareLink):
            per = self.links.setdefault(doc.patient_id, {})
            prev = per.get(doc.carer_id)
            if prev is None or doc.effective_at >= prev[0]:
                per[doc.carer_id] = (doc.effective_at, doc.action)
            self._advance(doc.effective_at)
        elif isinstance(doc, CarerActivity):
            if doc.activity_id in self.seen_activities:
                return
            self.seen_activities.add(doc.activity_id)
            per_a = self.last_activity.setdefault(doc.patient_id, {})
            prev_t = per_a.get(doc.carer_id)
            if prev_t is None or doc.started_at > prev_t:
                per_a[doc.carer_id] = doc.started_at
            self._advance(doc.started_at)
        elif isinstance(doc, Reading):
            self._advance(doc.measured_at)
        elif isinstance(doc, GatewayBatch):
            for r in doc.readings:
                self._advance(r.measured_at)

    def registered_carers(self, patient_id: str) -> int:
        return sum(1 for _, a in self.links.get(patient_id, {}).values() if a is LinkAction.join)

    def active_carers(self, patient_id: str, as_of: datetime) -> int:
        lo = as_of - self.ACTIVE_WINDOW
        return sum(1 for t in self.last_activity.get(patient_id, {}).values() if lo < t <= as_of)

    def flags(self, as_of: datetime | None = None) -> dict[str, set[str]]:
        """patient_id -> set of flags, for every registered patient."""
        as_of = as_of or self.watermark
        out: dict[str, set[str]] = {}
        for pid in self.patients:
            f: set[str] = set()
            if as_of is not None and self.registered_carers(pid) == 0 and self.active_carers(pid, as_of) == 0:
                f.add("no_support_network")
            out[pid] = f
        return out


class Pipeline:
    """Decode, validate and apply batches of raw records; emit flag transitions."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self.clock = clock
        self.state = SkeletonSupport()
        self.counts = Counts()
        self._raised: dict[str, set[str]] = {}

    def ingest(self, records: Sequence[RawRecord], expected: dict[str, str]) -> BatchResult:
        """Apply a batch. ``expected`` maps each topic to the document type it carries.

        Returns the dead letters to publish. Never raises on bad input.
        """
        received_at = self.clock()
        dead: list[DeadLetter] = []
        docs = 0
        for rec in records:
            exp = expected.get(rec.topic)
            if rec.value is None:
                result: _Document | Rejection = Rejection("empty_message", "the message has no value")
            else:
                result = decode(rec.value, exp)
            if isinstance(result, Rejection):
                self.counts.dead_letters[result.reason] += 1
                dead.append(dead_letter(rec.value, result.reason, result.detail, topic=rec.topic,
                                        partition=rec.partition, offset=rec.offset,
                                        received_at=received_at))
                continue
            self.state.apply(result)
            kind = type(result).__name__
            self.counts.processed[kind] += 1
            if isinstance(result, Reading):
                self.counts.readings += 1
            elif isinstance(result, GatewayBatch):
                self.counts.readings += len(result.readings)
            docs += 1
        return BatchResult(dead_letters=dead, documents=docs)

    def flag_transitions(self, as_of: datetime | None = None) -> list[FlagEvent]:
        """Flags raised or cleared since the last call, as of the watermark (or ``as_of``).

        Nothing is evaluated before the first timed event (a registry alone says nothing about
        carers). A flag raised on partial input is cleared by a later call once the evidence arrives.
        """
        at = as_of or self.state.watermark
        if at is None:
            return []
        current = self.state.flags(at)
        events: list[FlagEvent] = []
        for pid in sorted(set(current) | set(self._raised)):
            now, before = current.get(pid, set()), self._raised.get(pid, set())
            for flag, status in [(f, "raised") for f in sorted(now - before)] + [
                (f, "cleared") for f in sorted(before - now)
            ]:
                patient = self.state.patients.get(pid)
                events.append(FlagEvent(
                    flag_id=flag_id(pid, flag, status, at), patient_id=pid, flag=flag,
                    status=status, as_of=at,  # type: ignore[arg-type]
                    region=patient.region if patient else None,
                    deprivation_quintile=patient.deprivation_quintile if patient else None,
                ))
                self.counts.flags_published[f"{flag}:{status}"] += 1
            self._raised[pid] = set(now)
        return events

    def unsupported_by_quintile(self) -> dict[int, int]:
        """Registered patients currently flagged no_support_network, per deprivation quintile."""
        out = {q: 0 for q in range(1, 6)}
        for pid, flags in self._raised.items():
            p = self.state.patients.get(pid)
            if p is not None and "no_support_network" in flags:
                out[p.deprivation_quintile] += 1
        return out

    def patients_by_quintile(self) -> dict[int, int]:
        out = {q: 0 for q in range(1, 6)}
        for p in self.state.patients.values():
            out[p.deprivation_quintile] += 1
        return out


def flag_id(patient_id: str, flag: str, status: str, as_of: datetime) -> str:
    """Deterministic id of a flag transition (a hash: it carries no readable patient id)."""
    h = hashlib.sha256(f"{patient_id}|{flag}|{status}|{as_of.isoformat()}".encode()).hexdigest()
    return h[:32]


def iter_records(values: Iterable[bytes], topic: str) -> list[RawRecord]:
    """Wrap plain byte strings as records of one topic (tests and offline tools)."""
    return [RawRecord(v, topic, -1, i) for i, v in enumerate(values)]
