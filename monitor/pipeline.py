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
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from monitor.alerts.engine import AlertConfig, AlertEngine, AlertEvent
from monitor.carers.state import CarersState
from monitor.contract.models import (
    DEAD_LETTER_PREFIX_BYTES,
    DeadLetter,
    FlagEvent,
    GatewayBatch,
    Patient,
    Reading,
    type_of,
)
from monitor.core.batch import batch_from_documents
from monitor.core.state import SupportConfig, SupportState
from monitor.core.summary import FLAG_NAMES, PartialSummary
from monitor.core.timeutil import day_of
from monitor.intake.canonical import CanonicalReading, canonical_items
from monitor.intake.columnar import ReadingSlice, scan_readings
from monitor.intake.fastpath import fast_canonical
from monitor.intake.native import MAX_FUTURE, Rejection, decode, event_time_rejection
from monitor.latency import ALERT_DELAY_BUCKETS_S, LatencyHistogram
from monitor.pending import Held, PendingEvents, detail_for, to_us

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: timezone-aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input message: its bytes and where it came from (partition -1: not from Kafka).

    ``timestamp`` is the Kafka record's timestamp (integer milliseconds since the epoch, UTC;
    ``None``: unknown, the pipeline's clock is the receive time)."""

    value: bytes | None
    topic: str
    partition: int = -1
    offset: int = -1
    timestamp: int | None = None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def receive_time(rec: Any, now: datetime) -> datetime:
    """When a record was received: its Kafka timestamp, but never later than ``now``.

    The topics the project creates stamp records with the broker's clock (``LogAppendTime``), so
    this is when the broker accepted the record, whatever the device's clock says, and it stays the
    same when the record is processed again (a restart, a rebuild, a worker catching up after an
    outage: late data is judged by when it arrived, not by when the worker got to it). A topic with
    producer timestamps (``CreateTime``) could carry any time: a timestamp after ``now`` is cut to
    ``now``, so no record can widen the clock-skew tolerance for itself."""
    ts = getattr(rec, "timestamp", None)
    if type(ts) is not int or ts <= 0:
        return now
    at = _EPOCH + timedelta(milliseconds=ts)
    return at if at < now else now


class Record(Protocol):
    """What :meth:`Pipeline.ingest` reads of an input message: a :class:`RawRecord` or a faust
    message (same attribute names)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass
class Counts:
    """Running totals: documents processed by type, readings, dead letters by reason."""

    processed: Counter[str] = field(default_factory=Counter)
    readings: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    flags_published: Counter[str] = field(default_factory=Counter)
    alerts_published: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    messages: int = 0
    rejected_messages: int = 0

    @property
    def inputs(self) -> int:
        """Input messages accounted for: each was applied (``processed``) or dead-lettered whole
        (``rejected_messages``). Readings rejected inside an applied gateway batch are dead-lettered
        individually and counted in ``dead_letters`` too."""
        return self.messages

    def to_dict(self) -> dict[str, Any]:
        return {"processed": dict(self.processed), "readings": self.readings,
                "dead_letters": dict(self.dead_letters), "flags_published": dict(self.flags_published),
                "alerts_published": dict(self.alerts_published), "duplicates": self.duplicates,
                "messages": self.messages, "rejected_messages": self.rejected_messages}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        return cls(Counter(d["processed"]), int(d["readings"]), Counter(d["dead_letters"]),
                   Counter(d["flags_published"]), Counter(d.get("alerts_published", {})),
                   int(d.get("duplicates", 0)), int(d.get("messages", 0)),
                   int(d.get("rejected_messages", 0)))

    def add(self, other: Counts) -> None:
        self.processed.update(other.processed)
        self.readings += other.readings
        self.dead_letters.update(other.dead_letters)
        self.flags_published.update(other.flags_published)
        self.alerts_published.update(other.alerts_published)
        self.duplicates += other.duplicates
        self.messages += other.messages
        self.rejected_messages += other.rejected_messages


@dataclass
class BatchResult:
    """What one ingested batch asks the driver to publish."""

    dead_letters: list[DeadLetter]
    documents: int
    alerts: list[AlertEvent] = field(default_factory=list)


@dataclass
class TickResult:
    """What one timer evaluation asks the driver to publish."""

    flags: list[FlagEvent]
    alerts: list[AlertEvent]
    dead_letters: list[DeadLetter] = field(default_factory=list)


def dead_letter(raw: bytes | None, reason: str, detail: str, *, topic: str, partition: int,
                offset: int, received_at: datetime) -> DeadLetter:
    """A dead-letter record keeping a prefix of the original bytes (UTF-8 text, or base64 when the
    prefix is not UTF-8), the original's length and its SHA-256: at most
    :data:`~monitor.contract.models.DEAD_LETTER_PREFIX_BYTES` bytes of it, whatever its size."""
    data = raw or b""
    prefix = data[:DEAD_LETTER_PREFIX_BYTES]
    try:
        original, encoding = prefix.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if len(prefix) < len(data) and exc.start >= len(prefix) - 3:  # a character cut at the end
            prefix = prefix[:exc.start]
            original, encoding = prefix.decode("utf-8", errors="replace"), "utf-8"
        else:
            original, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
    return DeadLetter(
        reason=reason, detail=detail[:500], source="kafka", topic=topic, partition=partition,
        offset=offset, received_at=received_at, encoding=encoding, original=original,  # type: ignore[arg-type]
        original_bytes=len(data), original_sha256=hashlib.sha256(data).hexdigest(),
    )


CARER_FLAG_BITS = {"network_lost": 8, "single_point_of_failure": 16}
"""Flag bits from the carers' view (monitor.carers), above the support core's bits."""
_FLAG_BITS = sorted([(np.uint8(bit), name) for bit, name in FLAG_NAMES]
                    + [(np.uint8(bit), name) for name, bit in CARER_FLAG_BITS.items()],
                    key=lambda b: b[1])


class PartitionState:
    """Everything one input partition contributes: support state, applied offsets, counts, flags.

    ``offsets[topic]`` is the highest offset of ``topic`` (this partition) applied to the state.
    ``published`` holds, per patient slot, the flag bits last published to the flags topic.
    """

    MAGIC = b"CMPART1\n"

    def __init__(self, partition: int, config: SupportConfig | None = None,
                 alert_config: AlertConfig | None = None) -> None:
        self.partition = partition
        self.support = SupportState(config)
        self.alerts = AlertEngine(alert_config)
        self.carers = CarersState()
        self.offsets: dict[str, int] = {}
        self.counts = Counts()
        self.published = np.zeros(0, dtype=np.uint8)
        self.current = np.zeros(0, dtype=np.uint8)  # every flag bit of the latest evaluation
        self.patients: dict[str, Patient] = {}
        self.last_arrival: datetime | None = None  # wall clock of the latest applied event
        self.checkpoint_seq = 0
        self.output_offsets: dict[str, int] = {}  # output topic -> next offset at checkpoint time
        # ids of outputs already written that re-processing after a restore will produce again;
        # kept across checkpoints until matched (re-processing may span several checkpoints)
        self.suppress: set[str] = set()
        # events of patients not registered yet (monitor.pending): bounded, checkpointed
        self.pending = PendingEvents()

    def refresh_flags(self, t: int) -> None:
        """Evaluate every flag as of ``t`` (epoch s) into ``current``: the support core's bits and
        the carers' view, registered patients only."""
        sup = self.support
        n = sup.n_patients
        flags = sup.evaluate(t).flags[:n].astype(np.uint8)
        if self.carers.latest_event is not None:
            index = sup._patient_index
            for pid, names in self.carers.patient_flags(datetime.fromtimestamp(t, UTC)).items():
                slot = index.get(pid)
                if slot is not None and slot < n:
                    for name in names:
                        flags[slot] |= np.uint8(CARER_FLAG_BITS[name])
        self.current = flags * self.registered_mask()

    def support_flags(self) -> dict[str, list[str]]:
        """Patient id -> current support flags (latest evaluation) of patients with any flag."""
        ids = self.support.patient_ids
        return {ids[slot]: [n for b, n in _FLAG_BITS if int(self.current[slot]) & int(b)]
                for slot in np.nonzero(self.current)[0].tolist()}

    def snapshot(self) -> bytes:
        """Self-contained bytes (restore with :meth:`restore`)."""
        header = {
            "partition": self.partition,
            "offsets": self.offsets,
            "counts": self.counts.to_dict(),
            "published": base64.b64encode(self.published.tobytes()).decode(),
            "current": base64.b64encode(self.current.tobytes()).decode(),
            "patients": [p.model_dump_json() for p in self.patients.values()],
            "alerts": base64.b64encode(self.alerts.snapshot()).decode(),
            "carers": base64.b64encode(self.carers.snapshot()).decode(),
            "last_arrival": self.last_arrival.isoformat() if self.last_arrival else None,
            "checkpoint_seq": self.checkpoint_seq,
            "output_offsets": self.output_offsets,
            "suppress": sorted(self.suppress),
            "pending": self.pending.snapshot(),
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
        st.current = np.frombuffer(base64.b64decode(header["current"]), dtype=np.uint8).copy()
        st.patients = {p.patient_id: p for p in (Patient.model_validate_json(s) for s in header["patients"])}
        st.alerts.restore(base64.b64decode(header["alerts"]))
        st.carers = CarersState.restore(base64.b64decode(header["carers"]))
        if header["last_arrival"]:
            st.last_arrival = datetime.fromisoformat(header["last_arrival"])
        st.checkpoint_seq = int(header["checkpoint_seq"])
        st.output_offsets = {k: int(v) for k, v in header["output_offsets"].items()}
        st.suppress = set(header.get("suppress", []))
        st.pending = PendingEvents.restore(header.get("pending", []))
        return st

    def registered_mask(self) -> np.ndarray:
        n = self.support.n_patients
        return np.asarray(self.support._arrays["registered"][:n], dtype=bool)


class Pipeline:
    """Decode, validate and apply batches of raw records; emit flag transitions.

    ``reported_flags`` are the support flags published as coordinator notifications.
    ``oldest_reading`` is the oldest-accepted horizon of readings (relative to the receive time).
    ``idle_after``: when a partition has received no event for this long (wall clock), its
    evaluation time advances with the clock (event-time watermark + idle time), so time-based
    conditions (missed readings, lapsed support) fire with no new input; while data flows, only
    event time counts, so a replay and a live run of the same events agree.
    ``columnar``: clean readings of a batch are scanned together into columns
    (:mod:`monitor.intake.columnar`) rather than decoded message by message; the results are the
    same (``False`` keeps the per-message path, the tests' oracle).
    ``max_future`` is the clock-skew tolerance: an event time (``measured_at``, ``started_at``,
    ``effective_at``, ``registered_at``, ``sent_at``) more than this after its record's receive time
    (:func:`receive_time`) is dead-lettered ``future_timestamp``, so no event moves a watermark
    beyond receive time + tolerance. ``late_after`` is the late window: a reading received more than
    this after it was measured is backfill (recorded, never paged: :mod:`monitor.alerts.engine`).
    ``unknown_grace`` and ``unknown_cap``: an event of a patient not registered in its partition is
    held (:mod:`monitor.pending`) until the registration arrives, at most ``unknown_grace`` (then,
    at a tick, it is dead-lettered ``unknown_patient``) and at most ``unknown_cap`` events per
    partition (beyond, the patients held longest are dead-lettered at once).
    """

    def __init__(self, *, clock: Clock = utc_now, config: SupportConfig | None = None,
                 alert_config: AlertConfig | None = None,
                 reported_flags: Iterable[str] = ("no_support_network", "support_lapsed", "single_carer",
                                                  "network_lost", "single_point_of_failure"),
                 oldest_reading: timedelta = timedelta(days=30),
                 idle_after: timedelta = timedelta(seconds=60), columnar: bool = True,
                 max_future: timedelta = MAX_FUTURE, late_after: timedelta = timedelta(hours=1),
                 unknown_grace: timedelta = timedelta(days=1), unknown_cap: int = 10_000) -> None:
        if unknown_grace < timedelta(0) or unknown_cap < 0:
            raise ValueError("unknown_grace and unknown_cap must not be negative")
        self.clock = clock
        self.unknown_grace = unknown_grace
        self.unknown_cap = unknown_cap
        self.max_future = max_future
        self.late_after = late_after
        self.columnar = columnar
        self.config = config
        self.alert_config = alert_config
        self.oldest_reading = oldest_reading
        self.idle_after = idle_after
        self.partitions: dict[int, PartitionState] = {}
        self.batch_seconds = LatencyHistogram()
        self.alert_delay_seconds = LatencyHistogram(ALERT_DELAY_BUCKETS_S)
        self.reported_bits = np.uint8(sum(int(b) for b, n in _FLAG_BITS if n in set(reported_flags)))

    # -- partitions --------------------------------------------------------------------------

    def partition(self, p: int) -> PartitionState:
        st = self.partitions.get(p)
        if st is None:
            st = self.partitions[p] = PartitionState(p, self.config, self.alert_config)
        return st

    def adopt(self, state: PartitionState) -> None:
        """Take over a restored partition state (after a rebalance or a restart)."""
        self.partitions[state.partition] = state

    def release(self, p: int) -> PartitionState | None:
        """Drop a partition's state (it was revoked; its new owner restores it)."""
        return self.partitions.pop(p, None)

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, records: Sequence[Record], expected: dict[str, str]) -> BatchResult:
        """Apply a batch. ``expected`` maps each topic to the document type it carries.

        Records at or below a partition's applied offset are skipped (already in the state after
        a restore). Returns the dead letters to publish. Never raises on bad input.
        """
        t0 = time.perf_counter()
        received_at = self.clock()
        dead: list[DeadLetter] = []
        by_partition: dict[int, list[Any]] = {}
        docs = 0
        spans: list[tuple[str, int, int] | None] = []
        cols = None
        if self.columnar and all(rec.partition >= 0 and rec.offset >= 0 for rec in records):
            # every clean reading of the fetch in one scan (the others: message by message)
            values = [rec.value if expected.get(rec.topic) == "reading" else None for rec in records]
            if any(v is not None for v in values):
                spans, cols = self._scan(records, values, received_at)
            docs = self._ingest_runs(records, expected, spans, cols, received_at, dead, by_partition)
        else:
            for rec in records:
                st = self.partition(max(rec.partition, 0))
                if rec.offset >= 0 and rec.partition >= 0 and rec.offset <= st.offsets.get(rec.topic, -1):
                    continue
                if rec.offset >= 0 and rec.partition >= 0:
                    st.offsets[rec.topic] = rec.offset
                st.counts.messages += 1
                docs += self._decode_one(rec, st, expected.get(rec.topic), received_at, dead, by_partition)
        alerts: list[AlertEvent] = []
        topic_of = {v: k for k, v in expected.items()}
        for p in sorted(set(by_partition) | {q for q, s in self.partitions.items() if s.pending.count}):
            st = self.partitions[p]
            items, readings = self._admit(st, by_partition.get(p, []), topic_of, received_at, dead)
            if not items:
                continue
            outcome = st.support.apply(batch_from_documents(st.support, items))
            st.carers.apply(d for d in items if not isinstance(d, CanonicalReading | ReadingSlice))
            st.counts.duplicates += int(outcome.get("duplicates", 0))
            st.last_arrival = received_at
            st.counts.readings += sum(len(r) if type(r) is ReadingSlice else 1 for r in readings)
            if readings:
                # compound risk from the flags of the latest timer evaluation, not re-evaluated for
                # this batch: a batch's alerts must not depend on which later events share the batch
                events = st.alerts.on_readings(readings, LazyFlags(st.support_flags))
                for e in events:
                    st.counts.alerts_published[f"{e.rule}:{e.severity}:{e.notification}"] += 1
                alerts.extend(events)
        self.alert_delay_seconds.observe_many((received_at - e.event_at).total_seconds()
                                              for e in alerts if e.notification == "firing")
        self.batch_seconds.observe(time.perf_counter() - t0)
        return BatchResult(dead_letters=dead, documents=docs, alerts=alerts)

    def _admit(self, st: PartitionState, items: list[Any], topic_of: dict[str, str], now: datetime,
               dead: list[DeadLetter]) -> tuple[list[Any], list[Any]]:
        """``(documents, readings)`` of a partition's batch to apply: the held events whose patient
        is now registered first (they arrived earlier), then the batch's documents of registered
        patients in order; the others are held (:mod:`monitor.pending`), and the events beyond the
        cap dead-lettered ``unknown_patient``. ``readings`` are the canonical readings and reading
        slices among the documents, in order."""
        known = st.patients
        admitted: list[Any] = [h.doc for h in st.pending.release(known)]
        received_us = to_us(now)
        held = 0
        for d in items:
            if type(d) is ReadingSlice:
                pids = d.patient_ids()
                if all(pid in known for pid in pids):
                    admitted.append(d)
                    continue
                for r in d.readings():
                    if r.patient_id in known:
                        admitted.append(r)
                    else:
                        st.pending.hold(r.patient_id, Held(r, received_us, topic_of.get("reading", ""), -1))
                        held += 1
                continue
            if isinstance(d, Patient) or d.patient_id in known:
                admitted.append(d)
                continue
            name = "reading" if type(d) is CanonicalReading else type_of(d)
            st.pending.hold(d.patient_id, Held(d, received_us, topic_of.get(name, ""), -1))
            held += 1
        if held and st.pending.count > self.unknown_cap:
            self._dead_letter_held(st, st.pending.evict(self.unknown_cap),
                                   f"more than {self.unknown_cap} events of unregistered patients", dead)
        readings = [d for d in admitted if type(d) is CanonicalReading or type(d) is ReadingSlice]
        return admitted, readings

    def _dead_letter_held(self, st: PartitionState, held: list[Held], why: str,
                          dead: list[DeadLetter]) -> None:
        """Dead letters ``unknown_patient`` for held events (their record offset is not kept: -1)."""
        for h in held:
            st.counts.dead_letters["unknown_patient"] += 1
            dead.append(dead_letter(h.original(), "unknown_patient", detail_for(h, why), topic=h.topic,
                                    partition=st.partition, offset=h.offset,
                                    received_at=_EPOCH + timedelta(microseconds=h.received_us)))

    def _ingest_runs(self, records: Sequence[Record], expected: dict[str, str],
                     spans: list[tuple[str, int, int] | None], cols: Any, received_at: datetime,
                     dead: list[DeadLetter], by_partition: dict[int, list[Any]]) -> int:
        """The loop of :meth:`ingest` for Kafka records (partition and offset known), run by run
        of one topic and partition (a fetch comes that way): the messages the columnar scan
        accepted become one :class:`ReadingSlice` per stretch of consecutive messages; the others
        are decoded in place (:meth:`_decode_one`), so the order of documents is kept."""
        docs = 0
        n = len(records)
        k = 0
        while k < n:
            first = records[k]
            topic, part = first.topic, first.partition
            j = k + 1
            while j < n and records[j].partition == part and records[j].topic == topic:
                j += 1
            st = self.partition(part)
            applied = st.offsets.get(topic, -1)
            exp = expected.get(topic)
            counts = st.counts
            processed = counts.processed
            current: ReadingSlice | None = None  # the slice the next accepted message extends
            for i in range(k, j):
                rec = records[i]
                if rec.offset <= applied:
                    continue  # already in the state (re-delivered after a restore)
                applied = rec.offset
                counts.messages += 1
                span = spans[i] if cols is not None else None
                if span is not None:
                    processed[span[0]] += 1
                    docs += 1
                    if current is not None and current.stop == span[1]:
                        current.stop = span[2]
                    else:
                        current = ReadingSlice(cols, span[1], span[2])
                        by_partition.setdefault(part, []).append(current)
                    continue
                current = None
                docs += self._decode_one(rec, st, exp, received_at, dead, by_partition)
            st.offsets[topic] = applied
            k = j
        return docs

    def _scan(self, records: Sequence[Record], values: list[bytes | None],
              now: datetime) -> tuple[list[tuple[str, int, int] | None], Any]:
        """The columnar scan of a fetch's readings, each judged against its own receive time. A
        failure of the scan itself (never seen; a guard for a kernel bug) leaves every message to
        the per-message decoders, which never raise."""
        now_ms = int((now - _EPOCH) / timedelta(milliseconds=1))
        stamps = np.fromiter((ts if type(ts := getattr(r, "timestamp", None)) is int and ts > 0 else now_ms
                              for r in records), dtype=np.int64, count=len(records))
        received_us = np.minimum(stamps, now_ms) * 1000
        try:
            return scan_readings(values, received_at=now, oldest=self.oldest_reading,
                                 max_future=self.max_future, late_after=self.late_after,
                                 received_us=received_us)
        except Exception:  # noqa: BLE001 - bad input must never stop the pipeline
            log.exception("the columnar scan failed; decoding the fetch message by message")
            return [None] * len(records), None

    def _decode_one(self, rec: Record, st: PartitionState, exp: str | None, now: datetime,
                    dead: list[DeadLetter], by_partition: dict[int, list[Any]]) -> int:
        """Decode one message into the partition's documents (or a dead letter); 1 if a document
        was accepted. Never raises: whatever the bytes, the message is accepted or dead-lettered
        (an exception of a decoder is a dead letter ``invalid_value`` naming only its type)."""
        received_at = receive_time(rec, now)
        limits = {"oldest": self.oldest_reading, "max_future": self.max_future, "late_after": self.late_after}
        try:
            result, items = self._decode_pure(rec, exp, received_at, limits)
        except Exception as exc:  # noqa: BLE001 - no input may stop the pipeline
            result, items = Rejection("invalid_value", f"undecodable input ({type(exc).__name__})"), []

        if isinstance(result, Rejection):
            st.counts.dead_letters[result.reason] += 1
            st.counts.rejected_messages += 1
            dead.append(dead_letter(rec.value, result.reason, result.detail, topic=rec.topic,
                                    partition=rec.partition, offset=rec.offset, received_at=received_at))
            return 0
        if isinstance(result, str):  # the fast path: a clean native reading or batch
            st.counts.processed[result] += 1
            by_partition.setdefault(st.partition, []).extend(items)
            return 1
        st.counts.processed[type(result).__name__] += 1
        if isinstance(result, Reading | GatewayBatch):
            accepted = by_partition.setdefault(st.partition, [])
            for r, c in items:
                if isinstance(c, Rejection):
                    st.counts.dead_letters[c.reason] += 1
                    dead.append(dead_letter(r.model_dump_json().encode(), c.reason, c.detail,
                                            topic=rec.topic, partition=rec.partition,
                                            offset=rec.offset, received_at=received_at))
                    continue
                accepted.append(c)
            return 1
        if isinstance(result, Patient):
            st.patients[result.patient_id] = result
            st.alerts.on_patient(result)
        by_partition.setdefault(st.partition, []).append(result)
        return 1

    @staticmethod
    def _decode_pure(rec: Record, exp: str | None, received_at: datetime,
                     limits: dict[str, timedelta]) -> tuple[Any, list[Any]]:
        """``(outcome, items)`` of one message, touching no state: ``(type name, canonical
        readings)`` from the fast path, ``(Rejection, [])``, ``(Reading or GatewayBatch, [(reading,
        canonical or Rejection)])`` or ``(other document, [])``."""
        if rec.value is None:
            return Rejection("empty_message", "the message has no value"), []
        if exp == "reading":
            fast = fast_canonical(rec.value, received_at=received_at, **limits)
            if fast is not None:  # a clean native reading or batch: same result, no pydantic
                return fast
        result = decode(rec.value, exp)
        if isinstance(result, Rejection):
            return result, []
        future = event_time_rejection(result, received_at, limits["max_future"])
        if future is not None:
            return future, []
        if isinstance(result, Reading | GatewayBatch):
            return result, canonical_items(result, received_at=received_at, **limits)
        return result, []

    def effective_time(self, st: PartitionState) -> int | None:
        """Evaluation time of a partition (epoch s): its watermark, advanced by idle wall time."""
        wm = st.support.watermark_s
        if wm is None:
            return None
        if st.last_arrival is not None:
            idle = self.clock() - st.last_arrival
            if idle > self.idle_after:
                return wm + int(idle.total_seconds())
        return wm

    def _current_flags(self, st: PartitionState) -> dict[str, list[str]]:
        t = self.effective_time(st)
        if t is not None:
            st.refresh_flags(t)
        return st.support_flags()

    def tick(self) -> TickResult:
        """The timer: flag transitions and alert timers (missed readings, re-notify) per partition."""
        out = TickResult([], [], [])
        for p in sorted(self.partitions):
            one = self.tick_partition(self.partitions[p])
            out.flags.extend(one.flags)
            out.alerts.extend(one.alerts)
            out.dead_letters.extend(one.dead_letters)
        return out

    def tick_partition(self, st: PartitionState) -> TickResult:
        """:meth:`tick` for one partition (the worker ticks partitions one at a time)."""
        dead: list[DeadLetter] = []
        if st.pending.count:
            expired = st.pending.expire(to_us(self.clock() - self.unknown_grace))
            self._dead_letter_held(st, expired, f"patient not registered within {self.unknown_grace}", dead)
        flags = self._partition_transitions(st)
        t = self.effective_time(st)
        if t is None:
            return TickResult(flags, [], dead)
        events = st.alerts.tick(datetime.fromtimestamp(t, UTC), st.support_flags())
        for e in events:
            st.counts.alerts_published[f"{e.rule}:{e.severity}:{e.notification}"] += 1
        return TickResult(flags, events, dead)

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
        t = self.effective_time(st)
        if t is None:
            return []
        st.refresh_flags(t)
        n = sup.n_patients
        as_of_day = day_of(t)
        current = st.current & self.reported_bits
        if st.published.shape[0] < n:
            st.published = np.concatenate([st.published, np.zeros(n - st.published.shape[0], np.uint8)])
        changed = np.nonzero(current != st.published[:n])[0]
        as_of = datetime.fromtimestamp(t, UTC)
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
                    flag_id=flag_id(pid, name, status, as_of_day), patient_id=pid, flag=name,
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
            total.add(st.counts)
        return total

    def open_alerts(self) -> list[dict[str, Any]]:
        """Every firing episode (patient-level; for the token-protected endpoint only)."""
        out = []
        for st in self.partitions.values():
            out.extend(e for e in st.alerts.episodes() if e["status"] == "firing")
        return sorted(out, key=lambda e: (e["patient_id"], e["rule"]))

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


class LazyFlags(Mapping[str, list[str]]):
    """Patient id -> support flags, computed by ``load`` on first access only.

    The alert engine needs a patient's flags only when a rule fires (compound risk), so a batch
    without alerts never pays for an evaluation.
    """

    def __init__(self, load: Callable[[], dict[str, list[str]]]) -> None:
        self._load_fn = load
        self._flags: dict[str, list[str]] | None = None

    def _load(self) -> dict[str, list[str]]:
        if self._flags is None:
            self._flags = self._load_fn()
        return self._flags

    def __getitem__(self, key: str) -> list[str]:
        return self._load()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._load().get(key, default)

    def __iter__(self) -> Any:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def warm_up() -> None:
    """Run a tiny synthetic batch through every kernel (ingest, tick, summary, snapshot).

    Numba compiles on first call (or loads its on-disk cache); doing it before the worker joins
    its consumer group keeps the first real batch from stalling the event loop.
    """
    t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    p = Pipeline(clock=lambda: t)
    docs = [
        ("patients", {"patient_id": "w", "region": "r", "deprivation_quintile": 1, "age_band": "a",
                      "monitoring_plan": {"glucose": 1}}),
        ("care-network", {"patient_id": "w", "carer_id": "c", "relationship": "friend", "action": "join",
                          "effective_at": "2026-01-01T08:00:00Z"}),
        ("carer-activity", {"activity_id": "a", "patient_id": "w", "carer_id": "c", "kind": "visit",
                            "started_at": "2026-01-01T09:00:00Z", "duration_minutes": 30}),
        ("readings", {"reading_id": "r", "patient_id": "w", "device_id": "d", "kind": "glucose",
                      "value": 2.5, "unit": "mmol/L", "measured_at": "2026-01-01T10:00:00Z"}),
    ]
    expected = {"patients": "patient", "care-network": "care_link", "carer-activity": "carer_activity",
                "readings": "reading"}
    p.ingest([RawRecord(json.dumps(d).encode(), topic, 0, i) for i, (topic, d) in enumerate(docs)], expected)
    p.tick()
    st = p.partitions[0]
    PartitionState.restore(st.snapshot())
    summary = p.partial_summary()
    if summary is not None:
        from monitor.equity import equity_from_summary

        equity_from_summary(summary)


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


__all__ = ["BatchResult", "Counts", "PartitionState", "Pipeline", "RawRecord", "TickResult",
           "LazyFlags", "dead_letter", "flag_id", "iter_records", "utc_now", "warm_up"]
