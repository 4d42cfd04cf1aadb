"""Durable partition state: ownership, restore, rebuild, revocation and checkpoint rounds.

State is kept per input partition (:class:`monitor.pipeline.PartitionState`) and checkpointed to the
compacted ``checkpoints`` topic (partition ``p`` -> partition ``p``). A checkpoint holds the state,
the input offsets it includes and the end offsets of the partition's outputs at that moment. Input
messages are **acknowledged only after the checkpoint that includes them is durable**, and a
checkpoint is taken only once every output of its partition is acknowledged by the broker, so the
consumer group never commits an offset past the last checkpoint and no output is lost. After a
crash or a rebalance the new owner restores the checkpoint, skips records at or below its offsets,
re-processes the rest (state updates are idempotent) and suppresses the outputs written after the
checkpoint (read back from the output topics), so re-processing never emits an output id twice. A
checkpoint that cannot be used is not fatal: the partition is rebuilt from its input topics.

:class:`PartitionManager` does not know faust or Kafka: what acknowledges input offsets (an
:data:`Acker`), the checkpoint store (:class:`Checkpoints`, in the worker
:class:`monitor.kafka.checkpoints.CheckpointStore`), the logs it reads back (:class:`Logs`, in the
worker :class:`KafkaLogs`), the delivery ledger of outputs and the clock are handed to it
(:func:`kafka_partition_manager` wires the worker's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from monitor.kafka.admin import committed_offsets
from monitor.kafka.checkpoints import CheckpointStore, CheckpointUnreadable, read_partition
from monitor.pipeline import PartitionState, Pipeline
from monitor.settings import Settings
from monitor.stream.outputs import OutputLedger
from monitor.stream.publish import OUTPUTS, output_key

log = logging.getLogger(__name__)

MAX_CHECKPOINT_INTERVAL_S = 30.0
"""Longest pause between checkpoint rounds whatever the last round took (seconds)."""

REBUILD_BATCH = 10_000
"""Records per pipeline batch when a partition is rebuilt from its input."""

_REBUILD_ORDER = {"patient": 0, "care_link": 1, "carer_activity": 2, "reading": 3}

Acker = Callable[[str, int, list[int]], Any]
"""``(topic, partition, offsets)``: the input messages at ``offsets`` are done (may be committed)."""


class Checkpoints(Protocol):
    """Where checkpoints are kept (:class:`monitor.kafka.checkpoints.CheckpointStore`)."""

    async def ensure_started(self, topics: Sequence[str] = ()) -> None: ...

    async def end_offsets_of(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    async def save(self, partition: int, seq: int, data: bytes) -> None: ...

    async def load(self, partition: int) -> tuple[int, bytes] | None: ...


class Logs(Protocol):
    """Reading the topics back: outputs after a checkpoint, input for a rebuild."""

    async def read(self, topic: str, partition: int, start: int | None = None,
                   stop: int | None = None) -> list[Any]:
        """The records (``.value``, ``.topic``, ``.partition``, ``.offset``) of one topic
        partition from ``start`` (default: the beginning) to its end or to ``stop`` (exclusive)."""
        ...

    async def committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The consumer group's committed offsets (0 where nothing is committed)."""
        ...


class KafkaLogs:
    """:class:`Logs` on the broker of ``settings`` (the group is ``settings.app_id``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def read(self, topic: str, partition: int, start: int | None = None,
                   stop: int | None = None) -> list[Any]:
        return await read_partition(self.settings, topic, partition, start, stop)

    async def committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return await asyncio.get_running_loop().run_in_executor(
            None, committed_offsets, self.settings, self.settings.app_id, tps)


class PartitionManager:
    """Ownership, held (un-acked) input, checkpoints and output suppression per partition.

    ``inputs`` maps each input topic to the document type it carries; ``outputs`` maps each output
    kind (:data:`~monitor.stream.publish.OUTPUTS`) to its topic. ``ledger`` holds the outputs not yet
    acknowledged by the broker and ``flush`` pushes out what the producer buffered (both optional).
    ``clock`` is monotonic seconds. Partitions are identified by number: partition ``p`` of every
    input topic is one unit of state.
    """

    def __init__(self, pipe: Pipeline, *, inputs: Mapping[str, str], outputs: Mapping[str, str],
                 store: Checkpoints, logs: Logs, ack: Acker, ledger: OutputLedger | None = None,
                 flush: Callable[[], Awaitable[None]] | None = None,
                 checkpoint_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipe = pipe
        self.expected = dict(inputs)  # input topic -> document type
        self.input_topics = set(inputs)
        self.output_topics = dict(outputs)
        self.store = store
        self.logs = logs
        self.ack = ack
        self.ledger = ledger
        self.flush = flush
        self.checkpoint_interval_s = checkpoint_interval_s
        self.clock = clock
        self.owned: set[int] = set()  # restored and ours
        self.assigned: set[int] = set()  # ours (restored or being restored)
        self.restoring: asyncio.Future[None] | None = None
        self.held: dict[int, dict[str, list[int]]] = {}  # partition -> topic -> un-acked offsets
        self.dirty: set[int] = set()
        self.lock = asyncio.Lock()  # the partition states: held while they are read or changed
        self.round_lock = asyncio.Lock()  # one checkpoint round at a time; rebalances wait for it
        self.last_checkpoint = clock()
        self.saved_at: dict[int, float] = {}  # partition -> clock time of its last checkpoint
        self.checkpoint_seconds = 0.0  # duration of the latest checkpoint round
        self.checkpoints_written = 0
        self.restored = 0
        self.rebuilt = 0  # partitions whose checkpoint was unreadable: rebuilt from their input

    # -- input -----------------------------------------------------------------------------------

    async def ingest(self, messages: Sequence[Any],
                     apply: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Hand the messages of partitions we own to ``apply`` (under :attr:`lock`), once none of
        the partitions they belong to is being restored; each is held until checkpointed."""
        while True:
            await self.wait_restored()
            async with self.lock:
                restoring = self.assigned - self.owned
                if not restoring or not any(m.partition in restoring for m in messages):
                    await apply(self.hold(messages))
                    return

    def hold(self, messages: Iterable[Any]) -> list[Any]:
        """The messages of owned partitions (a revoked one's new owner re-processes it), each
        recorded as held: it is acknowledged only once its partition is checkpointed. Caller
        holds :attr:`lock`."""
        records = []
        owned, held, dirty = self.owned, self.held, self.dirty
        run: tuple[str, int] | None = None
        offsets: list[int] = []
        for m in messages:  # aiokafka records (RawRecord fields), in runs of one topic-partition
            p = m.partition
            if p not in owned:
                continue
            if run != (m.topic, p):
                run = (m.topic, p)
                offsets = held.setdefault(p, {}).setdefault(m.topic, [])
                dirty.add(p)
            offsets.append(m.offset)
            records.append(m)
        return records

    async def each_owned(self, visit: Callable[[int, PartitionState], Awaitable[bool]]) -> None:
        """Call ``visit(p, state)`` for each owned partition in turn, under :attr:`lock` (input of
        the other partitions flows between them); a partition whose visit returns True (it
        produced outputs) is marked dirty."""
        for p in sorted(self.owned):
            async with self.lock:
                st = self.pipe.partitions.get(p)
                if st is None or p not in self.owned:
                    continue
                if await visit(p, st):
                    self.dirty.add(p)
            await asyncio.sleep(0)

    def is_new(self, partition: int, key: str) -> bool:
        """False when this output id was already written (re-processing after a restore)."""
        st = self.pipe.partitions.get(partition)
        if st is not None and key in st.suppress:
            st.suppress.discard(key)
            return False
        return True

    # -- ownership -------------------------------------------------------------------------------

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        """Drop partitions no longer ours; restore new ones in the background (``assigned``:
        topic partitions, ``.topic`` and ``.partition``).

        Restoring a large partition takes seconds; doing it inside faust's rebalance callback
        kept the group rebalancing (every partition restored up to three times at 1M patients).
        Input of a partition being restored waits for it (:meth:`wait_restored`).
        """
        parts = {tp.partition for tp in assigned if tp.topic in self.input_topics}
        async with self.round_lock, self.lock:
            for p in sorted(self.owned - parts):
                self._drop(p)
            self.assigned = parts
            self.owned &= parts
            new = sorted(parts - self.owned)
        if new:
            task = asyncio.ensure_future(self._restore_all(new))
            self.restoring = task

    async def _restore_all(self, parts: list[int]) -> None:
        for p in parts:
            async with self.lock:
                if p in self.assigned and p not in self.owned:
                    await self._restore(p)
                    self.owned.add(p)

    async def wait_restored(self) -> None:
        """Return once every assigned partition is restored (input must not reach the pipeline
        before its partition's state is back)."""
        while self.restoring is not None:
            task = self.restoring
            await asyncio.shield(task)
            if self.restoring is task:
                self.restoring = None

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        """Drop revoked partitions. A checkpoint being written finishes first, and the outputs
        sent so far are flushed: the next owner (maybe this worker again) restores the checkpoint
        and reads the outputs written after it back to suppress them, so they must be in the log
        before it can be assigned the partition (faust revokes before the group re-assigns).
        faust flushes its producer before this signal too, but a batch being applied (it holds
        :attr:`lock`) may publish after that flush."""
        parts = {tp.partition for tp in revoked if tp.topic in self.input_topics}
        async with self.round_lock, self.lock:
            if parts and self.flush is not None:
                await self.flush()
            for p in parts:
                self._drop(p)
            self.owned -= parts
            self.assigned -= parts

    def _drop(self, p: int) -> None:
        if self.ledger is not None:
            self.ledger.forget(p)
        self.pipe.release(p)
        self.held.pop(p, None)
        self.dirty.discard(p)

    # -- restore ---------------------------------------------------------------------------------

    async def _restore(self, p: int) -> None:
        """Restore partition ``p`` from its newest checkpoint. A checkpoint that cannot be used
        (no complete one among the partition's checkpoint records, or one that does not decode:
        corrupt, or written by an incompatible version) is not fatal: the partition is rebuilt
        from its input topics (everything retention kept, read directly up to the consumer
        group's committed offsets; the group then goes on from there). Outputs already written
        are suppressed as after any restore."""
        rebuilt = False
        try:
            state = await self._load(p)
        except CheckpointUnreadable as exc:
            log.error("the checkpoint of partition %d is unusable (%s); rebuilding the partition "
                      "from its input topics", p, exc)
            state = await self._rebuild(p, exc.max_seq)
            rebuilt = True
        if state is None:  # never checkpointed
            state = PartitionState(p, self.pipe.config, self.pipe.alert_config)
        self.pipe.adopt(state)
        flags: dict[tuple[str, str], tuple[int, str]] = {}  # published flag history (a rebuild's)
        for kind, topic in self.output_topics.items():
            for rec in await self.logs.read(topic, p, state.output_offsets.get(kind, 0)):
                try:
                    doc = json.loads(rec.value)
                    state.suppress.add(output_key(kind, doc))
                    if kind == "flags" and rebuilt:
                        key = (str(doc["patient_id"]), str(doc["flag"]))
                        flags[key] = (flags.get(key, (0, ""))[0] + 1, str(doc["status"]))
                except (TypeError, ValueError, KeyError):
                    continue
        if rebuilt:
            state.seed_flags(flags)

    async def _load(self, p: int) -> PartitionState | None:
        """The state in partition ``p``'s newest checkpoint (None: never checkpointed). Raises
        :class:`CheckpointUnreadable` when there is no complete checkpoint or it does not decode."""
        loaded = await self.store.load(p)
        if loaded is None:
            return None
        seq, data = loaded
        try:
            state = PartitionState.restore(data)
        except (ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
            # the exception's type only: its text may quote the state it failed on (pydantic's
            # errors quote their input, a patient id), and this goes to the log
            raise CheckpointUnreadable(f"checkpoint {seq} does not decode ({type(exc).__name__})",
                                       seq) from exc
        self.restored += 1
        return state

    async def _rebuild(self, p: int, after_seq: int) -> PartitionState:
        """Partition ``p`` from the beginning of its input topics (patients, care links, carer
        activity, readings, each in offset order) up to the consumer group's committed offsets,
        in batches. That input was processed before and its outputs published (an offset is
        committed only after a checkpoint, which flushes the outputs first), so the outputs of
        the rebuild are not published; the group goes on from its committed offsets as usual.
        The next checkpoint gets a sequence number above ``after_seq`` (the unusable
        checkpoint's), so that it, not the unusable one, is restored next time."""
        self.pipe.release(p)
        topics = sorted(self.expected, key=lambda t: _REBUILD_ORDER.get(self.expected[t], 9))
        committed = await self.logs.committed([(t, p) for t in topics])
        for topic in topics:
            records = await self.logs.read(topic, p, stop=committed[(topic, p)])
            for i in range(0, len(records), REBUILD_BATCH):
                self.pipe.ingest(records[i : i + REBUILD_BATCH], self.expected)
                await asyncio.sleep(0)
        state = self.pipe.release(p) or PartitionState(p, self.pipe.config, self.pipe.alert_config)
        state.checkpoint_seq = max(state.checkpoint_seq, after_seq)
        self.rebuilt += 1
        self.dirty.add(p)  # a readable checkpoint replaces the bad one at the next round
        return state

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        """Time for a checkpoint round: ``checkpoint_interval_s`` after the last one, and at least
        4x the last round's duration (checkpointing takes at most ~20 % of the time, however large
        the state grows), but never more than :data:`MAX_CHECKPOINT_INTERVAL_S`: a round slowed by
        a broker outage (31 s once) must not space the next ones out (it made 124 s, and no
        checkpoint followed for the rest of the run)."""
        interval = max(self.checkpoint_interval_s,
                       min(4 * self.checkpoint_seconds, MAX_CHECKPOINT_INTERVAL_S))
        return self.clock() - self.last_checkpoint >= interval

    async def checkpoint(self, budget_s: float = 2.0, confirm_s: float = 5.0) -> None:
        """One checkpoint round: dirty owned partitions, least recently saved first, until
        ``budget_s`` seconds of work are spent (the rest go first next round).

        Per partition, under :attr:`lock` (input waits): confirm its outputs (every one acknowledged
        by the broker, failed ones re-sent: :class:`~monitor.stream.outputs.OutputLedger`; if that
        takes more than ``confirm_s`` the partition stays dirty, its input unacknowledged, and the
        round ends: the broker is failing), record their end offsets and the applied input offsets
        in a snapshot, take the held input messages. Then, without the lock (input flows on): write
        the checkpoint, and acknowledge those messages once it is durable. A rebalance waits for the
        round (:attr:`round_lock`).
        """
        async with self.round_lock:
            t0 = self.clock()
            parts = sorted(self.dirty & self.owned, key=lambda p: (self.saved_at.get(p, 0.0), p))
            outputs = self.output_topics
            if parts:  # connect (first round) before taking the lock, not while input waits
                await self.store.ensure_started(list(outputs.values()))
            for p in parts:
                async with self.lock:
                    st = self.pipe.partitions.get(p)
                    if st is None or p not in self.dirty or p not in self.owned:
                        continue
                    if self.ledger is not None and not await self.ledger.confirm(p, confirm_s):
                        break  # outputs are refused: nothing of this partition is acknowledged
                    ends = await self.store.end_offsets_of([(topic, p) for topic in outputs.values()])
                    st.output_offsets = {kind: ends[(topic, p)] for kind, topic in outputs.items()}
                    st.checkpoint_seq += 1
                    seq, data = st.checkpoint_seq, st.snapshot()
                    messages = self.held.pop(p, {})
                    self.dirty.discard(p)
                await self.store.save(p, seq, data)
                for topic, offsets in messages.items():
                    self.ack(topic, p, offsets)
                self.checkpoints_written += 1
                self.saved_at[p] = self.clock()
                if self.clock() - t0 >= budget_s:
                    break
            self.last_checkpoint = self.clock()
            self.checkpoint_seconds = self.last_checkpoint - t0 if parts else 0.0


def kafka_partition_manager(settings: Settings, pipe: Pipeline, *, ack: Acker,
                            ledger: OutputLedger | None = None,
                            flush: Callable[[], Awaitable[None]] | None = None) -> PartitionManager:
    """The worker's manager: checkpoints on the ``checkpoints`` topic, logs read from the broker."""
    return PartitionManager(
        pipe, inputs=settings.topics.inputs,
        outputs={kind: settings.topics.name(kind) for kind in OUTPUTS},
        store=CheckpointStore(settings, settings.topics.name("checkpoints")), logs=KafkaLogs(settings),
        ack=ack, ledger=ledger, flush=flush, checkpoint_interval_s=settings.checkpoint_interval_s)
