"""The driver-agnostic pipeline: raw records in, state updates, dead letters and flag events out.

Both drivers - the faust worker (``monitor.stream``) and offline tools - feed this class batches of
raw records. It never touches Kafka or the network; it returns what must be published. Every input
record ends in exactly one place: applied to the support state (``counts.processed``) or a
:class:`~monitor.contract.models.DeadLetter` with a reason code (``counts.dead_letters``).

State is kept **per input partition** (all input topics are co-partitioned by patient id): one
:class:`PartitionState` per partition number, each with its own numba support state
(:class:`monitor.core.state.SupportState`), the offsets it has applied and the flags it has
published. A partition's state is what moves between workers on a rebalance and what is
checkpointed, so the answer never depends on how many workers share the partitions.

Time: ``clock`` returns the current timezone-aware UTC time and is used only for the receive time of
dead letters. Flags are evaluated as of each partition's event-time watermark (the latest event time
seen in that partition; UTC-day resolution, see :mod:`monitor.core.state`), so the same input gives
the same flags whenever and wherever it is processed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitor.contract.models import (
    DeadLetter,
    FlagEvent,
    GatewayBatch,
    Patient,
    Reading,
    _Document,
)
from monitor.core.state import (
    FLAG_NAMES,
    PartialSummary,
    SupportConfig,
    SupportState,
    batch_from_documents,
)
from monitor.intake.native import Rejection, decode

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: timezone-aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input message: its bytes and where it came from (partition -1: not from Kafka)."""

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

    def to_dict(self) -> dict[str, Any]:
        return {"processed": dict(self.processed), "readings": self.readings,
                "dead_letters": dict(self.dead_letters), "flags_published": dict(self.flags_published)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        return cls(Counter(d["processed"]), int(d["readings"]), Counter(d["dead_letters"]),
                   Counter(d["flags_published"]))


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


_FLAG_BITS = [(np.uint8(bit), name) for bit, name in FLAG_NAMES]


class PartitionState:
    """Everything one input partition contributes: support state, applied offsets, counts, flags.

    ``offsets[topic]`` is the highest offset of ``topic`` (this partition) applied to the state.
    ``published`` holds, per patient slot, the flag bits last published to the flags topic.
    """

    MAGIC = b"CMPART1\n"

    def __init__(self, partition: int, config: SupportConfig | None = None) -> None:
        self.partition = partition
        self.support = SupportState(config)
        self.offsets: dict[str, int] = {}
        self.counts = Counts()
        self.published = np.zeros(0, dtype=np.uint8)
        self.patients: dict[str, Patient] = {}

    def snapshot(self) -> bytes:
        """Self-contained bytes (restore with :meth:`restore`)."""
        header = {
            "partition": self.partition,
            "offsets": self.offsets,
            "counts": self.counts.to_dict(),
            "published": base64.b64encode(self.published.tobytes()).decode(),
            "patients": [p.model_dump_json() for p in self.patients.values()],
        }
        head = json.dumps(header).encode()
        return self.MAGIC + len(head).to_bytes(8, "little") + head + self.support.snapshot()

    @classmethod
    def restore(cls, data: bytes) -> PartitionState:
        if not data.startswith(cls.MAGIC):
            raise ValueError("not a partition-state snapshot")
        m = len(cls.MAGIC)
        n = int.from_bytes(data[m:m + 8], "little")
        header = json.loads(data[m + 8:m + 8 + n])
        st = cls(int(header["partition"]))
        st.support = SupportState.restore(data[m + 8 + n:])
        st.offsets = {k: int(v) for k, v in header["offsets"].items()}
        st.counts = Counts.from_dict(header["counts"])
        st.published = np.frombuffer(base64.b64decode(header["published"]), dtype=np.uint8).copy()
        st.patients = {p.patient_id: p for p in (Patient.model_validate_json(s) for s in header["patients"])}
        return st

    def registered_mask(self) -> np.ndarray:
        n = self.support.n_patients
        return np.asarray(self.support._arrays["registered"][:n], dtype=bool)


class Pipeline:
    """Decode, validate and apply batches of raw records; emit flag transitions.

    ``reported_flags`` restricts which support flags are published as coordinator notifications
    (default: all of ``no_support_network``, ``single_carer``, ``support_lapsed``).
    """

    def __init__(self, *, clock: Clock = utc_now, config: SupportConfig | None = None,
                 reported_flags: Iterable[str] = ("no_support_network",)) -> None:
        self.clock = clock
        self.config = config
        self.partitions: dict[int, PartitionState] = {}
        self.reported_bits = np.uint8(sum(int(b) for b, n in _FLAG_BITS if n in set(reported_flags)))

    # -- partitions --------------------------------------------------------------------------

    def partition(self, p: int) -> PartitionState:
        st = self.partitions.get(p)
        if st is None:
            st = self.partitions[p] = PartitionState(p, self.config)
        return st

    def adopt(self, state: PartitionState) -> None:
        """Take over a restored partition state (after a rebalance or a restart)."""
        self.partitions[state.partition] = state

    def release(self, p: int) -> PartitionState | None:
        """Drop a partition's state (it was revoked; its new owner restores it)."""
        return self.partitions.pop(p, None)

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, records: Sequence[RawRecord], expected: dict[str, str]) -> BatchResult:
        """Apply a batch. ``expected`` maps each topic to the document type it carries.

        Records at or below a partition's applied offset are skipped (already in the state after
        a restore). Returns the dead letters to publish. Never raises on bad input.
        """
        received_at = self.clock()
        dead: list[DeadLetter] = []
        by_partition: dict[int, list[_Document]] = {}
        docs = 0
        for rec in records:
            st = self.partition(max(rec.partition, 0))
            if rec.offset >= 0 and rec.partition >= 0 and rec.offset <= st.offsets.get(rec.topic, -1):
                continue
            if rec.offset >= 0 and rec.partition >= 0:
                st.offsets[rec.topic] = rec.offset
            exp = expected.get(rec.topic)
            if rec.value is None:
                result: _Document | Rejection = Rejection("empty_message", "the message has no value")
            else:
                result = decode(rec.value, exp)
            if isinstance(result, Rejection):
                st.counts.dead_letters[result.reason] += 1
                dead.append(dead_letter(rec.value, result.reason, result.detail, topic=rec.topic,
                                        partition=rec.partition, offset=rec.offset,
                                        received_at=received_at))
                continue
            st.counts.processed[type(result).__name__] += 1
            if isinstance(result, Reading):
                st.counts.readings += 1
            elif isinstance(result, GatewayBatch):
                st.counts.readings += len(result.readings)
            elif isinstance(result, Patient):
                st.patients[result.patient_id] = result
            by_partition.setdefault(st.partition, []).append(result)
            docs += 1
        for p, items in by_partition.items():
            st = self.partitions[p]
            st.support.apply(batch_from_documents(st.support, items))
        return BatchResult(dead_letters=dead, documents=docs)

    # -- flags -------------------------------------------------------------------------------

    def flag_transitions(self) -> list[FlagEvent]:
        """Flags raised or cleared since the last call, per partition as of its watermark.

        Only registered patients are flagged. Nothing is evaluated in a partition before its first
        timed event (a registry alone says nothing about carers). A flag raised on partial input
        is cleared by a later call once the evidence arrives.
        """
        events: list[FlagEvent] = []
        for p in sorted(self.partitions):
            events.extend(self._partition_transitions(self.partitions[p]))
        return events

    def _partition_transitions(self, st: PartitionState) -> list[FlagEvent]:
        sup = st.support
        if sup.watermark_s is None:
            return []
        ev = sup.evaluate()
        n = sup.n_patients
        current = (ev.flags[:n].astype(np.uint8) & self.reported_bits) * st.registered_mask()
        if st.published.shape[0] < n:
            st.published = np.concatenate([st.published, np.zeros(n - st.published.shape[0], np.uint8)])
        changed = np.nonzero(current != st.published[:n])[0]
        as_of = datetime.fromtimestamp(ev.as_of_s, UTC)
        events: list[FlagEvent] = []
        for slot in changed.tolist():
            pid = sup.patient_ids[slot]
            now, before = int(current[slot]), int(st.published[slot])
            patient = st.patients.get(pid)
            for bit, name in _FLAG_BITS:
                b = int(bit)
                if (now & b) == (before & b):
                    continue
                status = "raised" if now & b else "cleared"
                events.append(FlagEvent(
                    flag_id=flag_id(pid, name, status, ev.as_of_day), patient_id=pid, flag=name,
                    status=status, as_of=as_of,  # type: ignore[arg-type]
                    region=patient.region if patient else None,
                    deprivation_quintile=patient.deprivation_quintile if patient else None,
                ))
                st.counts.flags_published[f"{name}:{status}"] += 1
            st.published[slot] = current[slot]
        return events

    # -- reads (aggregates; no identifiers) ---------------------------------------------------

    @property
    def counts(self) -> Counts:
        total = Counts()
        for st in self.partitions.values():
            total.processed.update(st.counts.processed)
            total.readings += st.counts.readings
            total.dead_letters.update(st.counts.dead_letters)
            total.flags_published.update(st.counts.flags_published)
        return total

    @property
    def watermark(self) -> datetime | None:
        marks = [st.support.watermark_s for st in self.partitions.values() if st.support.watermark_s]
        return datetime.fromtimestamp(max(marks), UTC) if marks else None

    def patients_by_quintile(self) -> dict[int, int]:
        """Registered patients per deprivation quintile."""
        out = {q: 0 for q in range(1, 6)}
        for st in self.partitions.values():
            for p in st.patients.values():
                out[p.deprivation_quintile] += 1
        return out

    def unsupported_by_quintile(self) -> dict[int, int]:
        """Registered patients whose published flags include no_support_network, per quintile."""
        out = {q: 0 for q in range(1, 6)}
        bit = next(int(b) for b, n in _FLAG_BITS if n == "no_support_network")
        for st in self.partitions.values():
            ids = st.support.patient_ids
            for slot in np.nonzero(st.published & bit)[0].tolist():
                p = st.patients.get(ids[slot])
                if p is not None:
                    out[p.deprivation_quintile] += 1
        return out

    def flagged_patients(self) -> list[dict[str, Any]]:
        """Patient-level list of published flags (for the token-protected endpoint only)."""
        rows = []
        for st in self.partitions.values():
            ids = st.support.patient_ids
            for slot in np.nonzero(st.published)[0].tolist():
                pid = ids[slot]
                p = st.patients.get(pid)
                rows.append({
                    "patient_id": pid,
                    "flags": [n for b, n in _FLAG_BITS if int(st.published[slot]) & int(b)],
                    "region": p.region if p else None,
                    "deprivation_quintile": p.deprivation_quintile if p else None,
                })
        return sorted(rows, key=lambda r: r["patient_id"])

    def partial_summary(self) -> PartialSummary | None:
        """Merged sufficient statistics of every partition held here (exactly mergeable)."""
        out: PartialSummary | None = None
        for p in sorted(self.partitions):
            sup = self.partitions[p].support
            if sup.watermark_s is None:
                continue
            s = sup.partial_summary()
            out = s if out is None else PartialSummary.merge(out, s)
        return out

    def patient_report(self) -> dict[str, dict[str, Any]]:
        """Replay-shaped per-patient metrics of every partition (patient-level; tests and API)."""
        out: dict[str, dict[str, Any]] = {}
        for st in self.partitions.values():
            if st.support.watermark_s is None:
                continue
            out.update(st.support.evaluate().patients())
        return dict(sorted(out.items()))


def flag_id(patient_id: str, flag: str, status: str, as_of_day: int) -> str:
    """Deterministic id of a flag transition (a hash: it carries no readable patient id).

    Built from the patient, the flag, the new status and the UTC day of the evaluation: the same
    transition evaluated again on the same day (a restart, a re-delivery) has the same id.
    """
    h = hashlib.sha256(f"{patient_id}|{flag}|{status}|{as_of_day}".encode()).hexdigest()
    return h[:32]


def iter_records(values: Iterable[bytes], topic: str) -> list[RawRecord]:
    """Wrap plain byte strings as records of one topic (tests and offline tools)."""
    return [RawRecord(v, topic, -1, -1) for v in values]


__all__ = ["BatchResult", "Counts", "PartitionState", "Pipeline", "RawRecord", "dead_letter",
           "flag_id", "iter_records", "utc_now"]
