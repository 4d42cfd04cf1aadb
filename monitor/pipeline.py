"""The driver-agnostic pipeline: raw records in, state updates, dead letters, flags and alerts out.

Both drivers - the faust worker (:mod:`monitor.stream`) and the offline replay
(:mod:`monitor.replay`) - feed this class batches of raw records and ticks. It never touches Kafka
or the network; it returns what must be published. Every input record ends in exactly one place:
applied (``counts.processed``) or a :class:`~monitor.contract.models.DeadLetter` with a reason
code (``counts.dead_letters``).

A batch travels one way: :func:`monitor.intake.fetch.decode_fetch` turns the records into one
typed :class:`~monitor.intake.fetch.DecodedBatch`; per partition, events of unregistered patients
are held (:mod:`monitor.pending`); the rest runs through the partition's operators
(:mod:`monitor.operators`: support core, carers, alert engine) in arrival order, cut into runs
at **event-time ticks**: whenever a partition's events cross a multiple of ``tick_every`` (UTC,
epoch-aligned), the operators evaluate as of that instant (flags, missed readings, escalation)
before the next event is applied. The ticks depend on the events only, never on how they were
batched, so a replay and a live worker that read the same events give the same answer.

State is kept **per input partition** (all input topics are co-partitioned by patient id): one
:class:`PartitionState` per partition number, what moves between workers on a rebalance and what
is checkpointed, so the answer never depends on how many workers share the partitions.

Time: ``clock`` returns the current timezone-aware UTC time: the receive time of records without
a Kafka timestamp, the expiry of held events, and the wall-clock timer's idle advance
(:meth:`Pipeline.effective_time`). Everything else runs on event time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from monitor.alerts.engine import AlertConfig, AlertEvent
from monitor.contract.models import CareLink, CarerActivity, DeadLetter, FlagEvent, Patient, type_of
from monitor.core.state import SupportConfig, SupportState
from monitor.core.summary import PartialSummary
from monitor.core.timeutil import day_of, epoch_seconds, from_us, to_us
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import ReadingSlice
from monitor.intake.fetch import (
    DecodedBatch,
    Document,
    RawRecord,
    Record,
    dead_letter,
    decode_fetch,
    receive_time,
)
from monitor.intake.rules import LATE_AFTER, MAX_FUTURE, Limits
from monitor.latency import ALERT_DELAY_BUCKETS_S, LatencyHistogram
from monitor.operators import (
    FLAG_BITS,
    NAMES_OF_BITS,
    AlertOperator,
    CarersOperator,
    Context,
    Documents,
    Operator,
    SupportOperator,
    flag_names,
)
from monitor.pending import Held, PendingEvents, detail_for

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: timezone-aware UTC now."""
    return datetime.now(UTC)


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
    """What one ingested batch asks the driver to publish: dead letters, alerts, and the flag
    transitions of the event-time ticks the batch crossed."""

    dead_letters: list[DeadLetter]
    documents: int
    alerts: list[AlertEvent] = field(default_factory=list)
    flags: list[FlagEvent] = field(default_factory=list)


@dataclass
class TickResult:
    """What one timer evaluation asks the driver to publish."""

    flags: list[FlagEvent]
    alerts: list[AlertEvent]
    dead_letters: list[DeadLetter] = field(default_factory=list)


class FlagView(Mapping[str, tuple[str, ...]]):
    """Patient id -> flag names of the latest evaluation (patients with any flag): a read-only view
    of a partition's flag bits, so a batch that raises no alert never builds a dict of flags."""

    def __init__(self, bits: np.ndarray, index: Mapping[str, int], ids: Sequence[str]) -> None:
        self._bits, self._index, self._ids = bits, index, ids

    def __getitem__(self, patient_id: str) -> tuple[str, ...]:
        slot = self._index.get(patient_id)
        if slot is None or slot >= self._bits.shape[0]:
            raise KeyError(patient_id)
        bits = int(self._bits[slot])
        if not bits:
            raise KeyError(patient_id)
        return NAMES_OF_BITS[bits]

    def __iter__(self) -> Iterator[str]:
        return (self._ids[s] for s in np.flatnonzero(self._bits).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self._bits))


class PartitionState:
    """Everything one input partition contributes: its operators, applied offsets, counts, flags.

    ``offsets[topic]`` is the highest offset of ``topic`` (this partition) applied to the state.
    ``current`` holds, per patient slot of the support core, every flag bit of the latest
    evaluation; ``published`` the bits last published to the flags topic. ``next_tick`` is the
    next event-time tick (epoch s; ``None`` before the first event).
    """

    MAGIC = b"CMPART3\n"
    """The checkpoint envelope, version 3: a JSON header, the flag transition counts and one
    section per operator. Older versions are refused (version 1: nested base64 in JSON; version
    2: no transition counts), so an old checkpoint rebuilds its partition from input."""

    def __init__(self, partition: int, config: SupportConfig | None = None,
                 alert_config: AlertConfig | None = None) -> None:
        self.partition = partition
        self.support_op = SupportOperator(config)
        self.carers_op = CarersOperator(self.support_op)
        self.alerts_op = AlertOperator(alert_config)
        self.operators: tuple[Operator, ...] = (self.support_op, self.carers_op, self.alerts_op)
        self.offsets: dict[str, int] = {}
        self.counts = Counts()
        self.published = np.zeros(0, dtype=np.uint8)
        self.current = np.zeros(0, dtype=np.uint8)
        # per patient slot and flag (FLAG_BITS order): transitions published so far; the ordinal
        # of a transition names it (flag_id), so two transitions never share an id
        self.transitions = np.zeros((0, len(FLAG_BITS)), dtype=np.uint32)
        self.next_tick: int | None = None
        self.patients: dict[str, Patient] = {}
        self.last_arrival: datetime | None = None  # wall clock of the latest applied event
        self.checkpoint_seq = 0
        self.output_offsets: dict[str, int] = {}  # output topic -> next offset at checkpoint time
        # ids of outputs already written that re-processing after a restore will produce again;
        # kept across checkpoints until matched (re-processing may span several checkpoints)
        self.suppress: set[str] = set()
        # events of patients not registered yet (monitor.pending): bounded, checkpointed
        self.pending = PendingEvents()

    # the operators' states, for the read side (metrics, views, merge)
    @property
    def support(self) -> SupportState:
        return self.support_op.state

    @property
    def carers(self) -> Any:
        return self.carers_op.state

    @property
    def alerts(self) -> Any:
        return self.alerts_op.engine

    def register(self, patient: Patient) -> None:
        """A registry entry of this partition (before the batch's events are admitted)."""
        self.patients[patient.patient_id] = patient
        self.alerts_op.register(patient)

    def context(self) -> Context:
        """The operators' context, holding the flags of the latest evaluation."""
        sup = self.support
        return Context(self.current, FlagView(self.current, sup.patient_index, sup.patient_ids))

    def support_flags(self) -> dict[str, tuple[str, ...]]:
        """Patient id -> flags of the latest evaluation, patients with any flag."""
        return dict(self.context().flags)

    def seed_flags(self, history: dict[tuple[str, str], tuple[int, str]]) -> None:
        """Take the flags already published for this partition (patient and flag -> number of
        transitions on the flags topic, last status) after a rebuild from input: the rebuilt
        history may differ from the published one (the live worker also evaluates on its wall-clock
        timer), so its recounted ordinals could name a new transition with an id already written,
        and it would be suppressed - a lost notification. Each counter is raised to at least the
        published count (odd while raised, even while cleared) and the published state is the
        topic's, so the next transition gets a fresh id and states only what changed."""
        sup = self.support
        n = sup.n_patients
        if self.published.shape[0] < n:
            self.published = np.concatenate([self.published, np.zeros(n - self.published.shape[0], np.uint8)])
        if self.transitions.shape[0] < n:
            grow = np.zeros((n - self.transitions.shape[0], len(FLAG_BITS)), np.uint32)
            self.transitions = np.concatenate([self.transitions, grow])
        index = {name: (i, bit) for i, (bit, name) in enumerate(FLAG_BITS)}
        for (pid, flag), (count, status) in history.items():
            slot = sup.patient_index.get(pid)
            if slot is None or flag not in index:
                continue
            i, bit = index[flag]
            raised = status == "raised"
            ordinal = max(int(self.transitions[slot, i]), count)
            if ordinal % 2 != int(raised):  # odd ordinals raise, even ones clear
                ordinal += 1
            self.transitions[slot, i] = ordinal
            old = int(self.published[slot])
            self.published[slot] = (old | bit) if raised else (old & ~bit & 0xFF)

    def snapshot(self) -> bytes:
        """Self-contained bytes (restore with :meth:`restore`)."""
        header = {
            "partition": self.partition,
            "offsets": self.offsets,
            "counts": self.counts.to_dict(),
            "published": self.published.tobytes().hex(),
            "current": self.current.tobytes().hex(),
            "next_tick": self.next_tick,
            "patients": [p.model_dump(mode="json") for p in self.patients.values()],
            "last_arrival": self.last_arrival.isoformat() if self.last_arrival else None,
            "checkpoint_seq": self.checkpoint_seq,
            "output_offsets": self.output_offsets,
            "suppress": sorted(self.suppress),
            "pending": self.pending.snapshot(),
        }
        sections = [("header", json.dumps(header).encode()),
                    ("transitions", self.transitions.astype("<u4").tobytes())]
        sections += [(op.name, op.snapshot()) for op in self.operators]
        out = [self.MAGIC, len(sections).to_bytes(4, "little")]
        for name, data in sections:
            out += [len(name).to_bytes(2, "little"), name.encode(), len(data).to_bytes(8, "little"), data]
        return b"".join(out)

    @classmethod
    def restore(cls, data: bytes) -> PartitionState:
        """A partition state from :meth:`snapshot` bytes; ``ValueError`` for anything else (an
        older envelope, truncated or foreign bytes)."""
        sections = _sections(data, cls.MAGIC)
        header = json.loads(sections.pop("header"))
        st = cls(int(header["partition"]))
        for op in st.operators:
            op.restore(sections[op.name])
        st.offsets = {k: int(v) for k, v in header["offsets"].items()}
        st.counts = Counts.from_dict(header["counts"])
        st.published = np.frombuffer(bytes.fromhex(header["published"]), dtype=np.uint8).copy()
        st.current = np.frombuffer(bytes.fromhex(header["current"]), dtype=np.uint8).copy()
        st.transitions = np.frombuffer(sections["transitions"], dtype="<u4").astype(np.uint32) \
            .reshape(-1, len(FLAG_BITS))
        st.next_tick = header["next_tick"]
        for p in header["patients"]:
            st.patients[p["patient_id"]] = Patient.model_validate(p)
        if header["last_arrival"]:
            st.last_arrival = datetime.fromisoformat(header["last_arrival"])
        st.checkpoint_seq = int(header["checkpoint_seq"])
        st.output_offsets = {k: int(v) for k, v in header["output_offsets"].items()}
        st.suppress = set(header["suppress"])
        st.pending = PendingEvents.restore(header["pending"])
        return st

    def registered_mask(self) -> np.ndarray:
        return self.support_op.registered_mask().astype(bool)


def _sections(data: bytes, magic: bytes) -> dict[str, bytes]:
    """The named sections of a checkpoint envelope (``ValueError`` when malformed)."""
    if not data.startswith(magic):
        raise ValueError("not a partition-state snapshot of this version")
    pos = len(magic)
    count = int.from_bytes(data[pos:pos + 4], "little")
    pos += 4
    out: dict[str, bytes] = {}
    for _ in range(count):
        n = int.from_bytes(data[pos:pos + 2], "little")
        name = data[pos + 2:pos + 2 + n].decode("ascii")
        pos += 2 + n
        size = int.from_bytes(data[pos:pos + 8], "little")
        out[name] = data[pos + 8:pos + 8 + size]
        pos += 8 + size
        if pos > len(data):
            raise ValueError("truncated partition-state snapshot")
    if pos != len(data) or "header" not in out:
        raise ValueError("malformed partition-state snapshot")
    return out


MAX_TICKS_PER_STEP = 24
"""At most this many event-time ticks between two consecutive events of a partition (a day of
hourly ticks); a longer silence evaluates the last 24 grid points only (each evaluation visits
every open episode, so a backlog of months must not cost thousands of them)."""


class Pipeline:
    """Decode, validate and apply batches of raw records; evaluate at event-time ticks and timers.

    ``reported_flags`` are the support flags published as coordinator notifications.
    ``oldest_reading`` is the oldest-accepted horizon of readings (relative to the receive time).
    ``tick_every`` is the event-time grid of evaluations (both drivers set it, the worker from
    ``MONITOR_TICK_EVERY_S``; ``None``: only :meth:`tick` evaluates).
    ``idle_after``: when a partition has received no event for this long (wall clock), the timer's
    evaluation time advances with the clock (event-time watermark + idle time), so time-based
    conditions (missed readings, lapsed support) fire with no new input.
    ``columnar``: clean readings of a batch are scanned together into columns
    (:mod:`monitor.intake.columnar`); the results are the same (``False``: the per-message path,
    the tests' oracle).
    ``max_future`` is the clock-skew tolerance: an event time more than this after its record's
    receive time (:func:`~monitor.intake.fetch.receive_time`) is dead-lettered
    ``future_timestamp``, so no event moves a watermark beyond receive time + tolerance.
    ``late_after`` is the late window: a reading received more than this after it was measured is
    backfill (recorded, never paged: :mod:`monitor.alerts.engine`).
    ``unknown_grace`` and ``unknown_cap``: an event of a patient not registered in its partition is
    held (:mod:`monitor.pending`) until the registration arrives, at most ``unknown_grace`` (then,
    at a timer tick, it is dead-lettered ``unknown_patient``) and at most ``unknown_cap`` events per
    partition (beyond, the patients held longest are dead-lettered at once).
    ``until`` (offline only): events on a UTC day after its day are counted but not applied.
    """

    def __init__(self, *, clock: Clock = utc_now, config: SupportConfig | None = None,
                 alert_config: AlertConfig | None = None,
                 reported_flags: Iterable[str] = ("no_support_network", "support_lapsed", "single_carer",
                                                  "network_lost", "single_point_of_failure"),
                 oldest_reading: timedelta = timedelta(days=30),
                 idle_after: timedelta = timedelta(seconds=60), columnar: bool = True,
                 max_future: timedelta = MAX_FUTURE, late_after: timedelta = LATE_AFTER,
                 unknown_grace: timedelta = timedelta(days=1), unknown_cap: int = 10_000,
                 tick_every: timedelta | None = None, until: datetime | None = None) -> None:
        if unknown_grace < timedelta(0) or unknown_cap < 0:
            raise ValueError("unknown_grace and unknown_cap must not be negative")
        if tick_every is not None and tick_every < timedelta(seconds=1):
            raise ValueError("tick_every must be at least one second")
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
        self.tick_s = None if tick_every is None else int(tick_every.total_seconds())
        self.until_day = None if until is None else day_of(epoch_seconds(until))
        self.partitions: dict[int, PartitionState] = {}
        self.batch_seconds = LatencyHistogram()
        self.alert_delay_seconds = LatencyHistogram(ALERT_DELAY_BUCKETS_S)
        self.reported_bits = np.uint8(sum(bit for bit, n in FLAG_BITS if n in set(reported_flags)))

    @property
    def limits(self) -> Limits:
        return Limits(self.oldest_reading, self.max_future, self.late_after)

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

    def ingest(self, records: Sequence[Record], expected: Mapping[str, str | None]) -> BatchResult:
        """Apply a batch. ``expected`` maps each topic to the document type it carries (``None``:
        any, named by each document's ``"type"``).

        Records at or below a partition's applied offset are skipped (already in the state after
        a restore). Returns what to publish. Never raises on bad input.
        """
        t0 = time.perf_counter()
        received_at = self.clock()
        batch = decode_fetch(self._fresh(records), dict(expected), now=received_at, limits=self.limits,
                             columnar=self.columnar)
        out = BatchResult([], batch.documents)
        topic_of = {v: k for k, v in expected.items() if v is not None}
        held = {q for q, s in self.partitions.items() if s.pending.count}
        for p in sorted(set(batch.partitions) | held):
            self._apply(self.partition(p), batch, topic_of, out)
        self.batch_seconds.observe(time.perf_counter() - t0)
        return out

    def _fresh(self, records: Sequence[Record]) -> list[Record]:
        """The records not applied yet; advances each partition's applied offsets over them."""
        fresh: list[Record] = []
        key: tuple[str, int] | None = None
        offsets: dict[str, int] = {}
        for rec in records:
            p, off = rec.partition, rec.offset
            if p >= 0 and off >= 0:
                if key != (rec.topic, p):
                    key, offsets = (rec.topic, p), self.partition(p).offsets
                if off <= offsets.get(rec.topic, -1):
                    continue  # already in the state (re-delivered after a restore)
                offsets[rec.topic] = off
            fresh.append(rec)
        return fresh

    def _apply(self, st: PartitionState, batch: DecodedBatch, topic_of: dict[str, str],
               out: BatchResult) -> None:
        """One partition's share of a batch: account for it, hold what must wait, apply the rest
        run by run with the event-time ticks between the runs."""
        pf = batch.partitions.get(st.partition)
        counts = st.counts
        items: list[Document] = []
        if pf is not None:
            counts.messages += pf.messages
            counts.rejected_messages += pf.rejected_messages
            counts.processed.update(pf.processed)
            for d in pf.dead:
                counts.dead_letters[d.reason] += 1
            out.dead_letters.extend(pf.dead)
            for d in pf.documents:
                if type(d) is Patient:
                    st.register(d)
            items = pf.documents
        admitted = self._admit(st, items, topic_of, batch.received_at, out.dead_letters)
        if self.until_day is not None:
            admitted = list(_until(admitted, self.until_day))
        if not admitted:
            return
        st.last_arrival = batch.received_at
        for run, ticks in self._runs(st, admitted):
            if run:
                docs = Documents(run)
                ctx = st.context()
                for op in st.operators:
                    op.on_batch(docs, ctx)
                counts.duplicates += ctx.duplicates
                counts.readings += docs.n_readings
                self._count_alerts(st, ctx.alerts)
                self.alert_delay_seconds.observe_many((batch.received_at - e.event_at).total_seconds()
                                                      for e in ctx.alerts if e.notification == "firing")
                out.alerts.extend(ctx.alerts)
            for t in ticks:
                flags, alerts = self._evaluate(st, t)
                out.flags.extend(flags)
                out.alerts.extend(alerts)

    def _runs(self, st: PartitionState, items: list[Document]) -> Iterator[tuple[list[Document], list[int]]]:
        """The partition's documents cut at event-time ticks: ``(run, ticks after it)`` pairs, in
        order. A tick at ``g`` (a multiple of ``tick_every``) falls before the first event at or
        after ``g``; a jump over several grid points ticks at each (at most
        :data:`MAX_TICKS_PER_STEP`). Registry entries carry no event time and never tick."""
        grid = self.tick_s
        if grid is None:
            yield items, []
            return
        run: list[Document] = []
        for d in items:
            if type(d) is ReadingSlice:
                ts = d.event_seconds()
                i, n = 0, len(ts)
                while i < n:
                    if st.next_tick is None:
                        st.next_tick = (int(ts[i]) // grid + 1) * grid
                    due = np.flatnonzero(ts[i:] >= st.next_tick)
                    j = n if due.size == 0 else i + int(due[0])
                    if j > i:
                        run.append(d if j - i == n else ReadingSlice(d.columns, d.start + i, d.start + j))
                    if j < n:
                        yield run, self._ticks_before(st, int(ts[j]))
                        run = []
                    i = j
                continue
            t = _event_s(d)
            if t is not None:
                if st.next_tick is None:
                    st.next_tick = (t // grid + 1) * grid
                elif t >= st.next_tick:
                    yield run, self._ticks_before(st, t)
                    run = []
            run.append(d)
        yield run, []

    def _ticks_before(self, st: PartitionState, t: int) -> list[int]:
        """The grid points due before an event at ``t`` (>= ``st.next_tick``); advances it."""
        grid = self.tick_s
        assert grid is not None and st.next_tick is not None
        last = t // grid * grid
        first = max(st.next_tick, last - (MAX_TICKS_PER_STEP - 1) * grid)
        st.next_tick = last + grid
        return list(range(first, last + 1, grid))

    def _admit(self, st: PartitionState, items: list[Document], topic_of: dict[str, str], now: datetime,
               dead: list[DeadLetter]) -> list[Document]:
        """The partition's documents to apply: the held events whose patient is now registered
        first (they arrived earlier), then the batch's documents of registered patients in order;
        the others are held (:mod:`monitor.pending`), and the events beyond the cap dead-lettered
        ``unknown_patient``."""
        known = st.patients
        admitted: list[Document] = [h.doc for h in st.pending.release(known)]
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
            if type(d) is Patient or d.patient_id in known:
                admitted.append(d)
                continue
            name = "reading" if type(d) is CanonicalReading else type_of(d)
            st.pending.hold(d.patient_id, Held(d, received_us, topic_of.get(name, ""), -1))
            held += 1
        if held and st.pending.count > self.unknown_cap:
            self._dead_letter_held(st, st.pending.evict(self.unknown_cap),
                                   f"more than {self.unknown_cap} events of unregistered patients", dead)
        return admitted

    def _dead_letter_held(self, st: PartitionState, held: list[Held], why: str,
                          dead: list[DeadLetter]) -> None:
        """Dead letters ``unknown_patient`` for held events (their record offset is not kept: -1)."""
        for h in held:
            st.counts.dead_letters["unknown_patient"] += 1
            dead.append(dead_letter(h.original(), "unknown_patient", detail_for(h, why), topic=h.topic,
                                    partition=st.partition, offset=h.offset,
                                    received_at=from_us(h.received_us)))

    def expire_held(self, st: PartitionState, before: datetime | None = None) -> list[DeadLetter]:
        """Dead-letter the held events of ``st`` received before ``before`` (all: ``None``)."""
        dead: list[DeadLetter] = []
        if st.pending.count:
            cutoff = to_us(before) if before is not None else 2**63 - 1
            self._dead_letter_held(st, st.pending.expire(cutoff),
                                   f"patient not registered within {self.unknown_grace}", dead)
        return dead

    # -- evaluation --------------------------------------------------------------------------

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

    def _refresh(self, st: PartitionState, t: int) -> Context:
        """Evaluate the flag operators as of ``t`` into ``st.current``."""
        ctx = st.context()
        st.support_op.on_tick(t, ctx)
        st.carers_op.on_tick(t, ctx)
        st.current = ctx.bits
        return st.context()

    def _evaluate(self, st: PartitionState, t: int) -> tuple[list[FlagEvent], list[AlertEvent]]:
        """One evaluation of a partition as of ``t`` (epoch s): flag transitions, then the alert
        timers with the new flags."""
        ctx = self._refresh(st, t)
        flags = self._transitions(st, t)
        st.alerts_op.on_tick(t, ctx)
        self._count_alerts(st, ctx.alerts)
        return flags, ctx.alerts

    @staticmethod
    def _count_alerts(st: PartitionState, events: list[AlertEvent]) -> None:
        for e in events:
            st.counts.alerts_published[f"{e.rule}:{e.severity}:{e.notification}"] += 1

    def tick(self) -> TickResult:
        """The timer: held events expired, flag transitions and alert timers, per partition."""
        out = TickResult([], [], [])
        for p in sorted(self.partitions):
            one = self.tick_partition(self.partitions[p])
            out.flags.extend(one.flags)
            out.alerts.extend(one.alerts)
            out.dead_letters.extend(one.dead_letters)
        return out

    def tick_partition(self, st: PartitionState, at: int | None = None) -> TickResult:
        """:meth:`tick` for one partition (the worker ticks partitions one at a time), as of its
        :meth:`effective_time`, or of ``at`` (epoch s; offline: the end of a replay)."""
        dead = self.expire_held(st, self.clock() - self.unknown_grace)
        t = self.effective_time(st) if at is None else at
        if t is None:
            return TickResult([], [], dead)
        flags, alerts = self._evaluate(st, t)
        return TickResult(flags, alerts, dead)

    # -- flags -------------------------------------------------------------------------------

    def flag_transitions(self) -> list[FlagEvent]:
        """Flags raised or cleared since the last call, per partition as of its effective time.

        Only registered patients are flagged. Nothing is evaluated in a partition before its first
        timed event (a registry alone says nothing about carers). A flag raised on partial input
        is cleared by a later call once the evidence arrives.
        """
        events: list[FlagEvent] = []
        for p in sorted(self.partitions):
            st = self.partitions[p]
            t = self.effective_time(st)
            if t is not None:
                self._refresh(st, t)
                events.extend(self._transitions(st, t))
        return events

    def _transitions(self, st: PartitionState, t: int) -> list[FlagEvent]:
        sup = st.support
        n = sup.n_patients
        current = st.current & self.reported_bits
        if st.published.shape[0] < n:
            st.published = np.concatenate([st.published, np.zeros(n - st.published.shape[0], np.uint8)])
        if st.transitions.shape[0] < n:
            grow = np.zeros((n - st.transitions.shape[0], len(FLAG_BITS)), np.uint32)
            st.transitions = np.concatenate([st.transitions, grow])
        changed = np.nonzero(current != st.published[:n])[0]
        as_of = datetime.fromtimestamp(t, UTC)
        events: list[FlagEvent] = []
        for slot in changed.tolist():
            pid = sup.patient_ids[slot]
            now, before = int(current[slot]), int(st.published[slot])
            patient = st.patients.get(pid)
            for i, (bit, name) in enumerate(FLAG_BITS):
                if (now & bit) == (before & bit):
                    continue
                status = "raised" if now & bit else "cleared"
                st.transitions[slot, i] += 1
                events.append(FlagEvent(
                    flag_id=flag_id(pid, name, int(st.transitions[slot, i])), patient_id=pid, flag=name,
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
        bit = next(b for b, n in FLAG_BITS if n == "no_support_network")
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
                    "flags": flag_names(int(st.published[slot])),
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


def _event_s(d: Document) -> int | None:
    """The event time of a single document (epoch s, UTC); ``None`` for a registry entry."""
    tp = type(d)
    if tp is CanonicalReading:
        return epoch_seconds(d.measured_at)  # type: ignore[union-attr]
    if tp is CarerActivity:
        return epoch_seconds(d.started_at)  # type: ignore[union-attr]
    if tp is CareLink:
        return epoch_seconds(d.effective_at)  # type: ignore[union-attr]
    return None


def _until(items: list[Document], until_day: int) -> Iterator[Document]:
    """The documents on or before UTC day ``until_day`` (slices cut to their rows that are)."""
    for d in items:
        if type(d) is ReadingSlice:
            keep = np.concatenate([[False], d.event_seconds() // 86_400 <= until_day, [False]])
            edges = np.flatnonzero(np.diff(keep.astype(np.int8)))
            for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
                yield ReadingSlice(d.columns, d.start + a, d.start + b)
            continue
        t = _event_s(d)
        if t is None or day_of(t) <= until_day:
            yield d


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


def flag_id(patient_id: str, flag: str, ordinal: int) -> str:
    """Deterministic id of a flag transition (a hash: it carries no readable patient id).

    Built from the patient, the flag and the ordinal of the transition (1: the first raise, 2: its
    clear, 3: the next raise; odd ordinals raise, even ones clear). Re-processing after a restore
    produces the same transitions again with the same ordinals, so the worker recognises them as
    already written; two different transitions never share an id, even on the same day (an id
    from the day of the evaluation made a raise, clear and raise within one day repeat the first
    raise's id).
    """
    h = hashlib.sha256(f"{patient_id}|{flag}|{ordinal}".encode()).hexdigest()
    return h[:32]


def iter_records(values: Iterable[bytes], topic: str) -> list[RawRecord]:
    """Wrap plain byte strings as records of one topic (tests and offline tools)."""
    return [RawRecord(v, topic, -1, -1) for v in values]


__all__ = ["BatchResult", "Counts", "FlagView", "PartitionState", "Pipeline", "RawRecord", "Record",
           "TickResult", "dead_letter", "flag_id", "iter_records", "receive_time", "utc_now", "warm_up"]
