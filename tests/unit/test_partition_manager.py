"""The partition manager without faust or Kafka: a broker stand-in (topic logs whose sends are
acknowledged when the test says so), a checkpoint store in memory, a clock the test moves.

What is checked is the durability contract of :mod:`monitor.stream.partitions`: input is
acknowledged only after its outputs and then its checkpoint are acknowledged; a revoked partition's
state, held input and pending outputs are dropped; a restored partition's state is adopted and the
outputs written after its checkpoint are not written again; input of a partition being restored
waits for it; an unreadable checkpoint is rebuilt from the input up to the committed offsets;
checkpoint rounds are spaced and bounded as documented.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, NamedTuple

from monitor.kafka.checkpoints import CheckpointUnreadable
from monitor.pipeline import PartitionState, Pipeline, RawRecord
from monitor.stream.outputs import OutputLedger
from monitor.stream.partitions import MAX_CHECKPOINT_INTERVAL_S, PartitionManager
from monitor.stream.publish import OUTPUTS, Outputs

EXPECTED = {"r": "reading", "a": "carer_activity", "n": "care_link", "p": "patient"}
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


class TP(NamedTuple):  # faust's TP has these two fields
    topic: str
    partition: int


def every_topic(*partitions: int) -> list[TP]:
    return [TP(t, p) for p in partitions for t in EXPECTED] + [TP("equity-partials", 0)]


def patient(pid: str) -> bytes:
    return json.dumps({"patient_id": pid, "region": "north", "deprivation_quintile": 2,
                       "age_band": "65-74"}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """Topic logs. While :attr:`holding`, sends are acknowledged only at :meth:`release`."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[RawRecord]] = defaultdict(list)
        self.holding = False
        self.waiting: list[tuple[asyncio.Future[int], str, bytes, int]] = []
        self.committed_offsets: dict[tuple[str, int], int] = {}
        self.events: list[tuple[Any, ...]] = []  # outputs written, checkpoints saved, acks, in order

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.holding:
            self.waiting.append((fut, topic, value, partition))
        else:
            self._write(fut, topic, value, partition)
        return fut

    def _write(self, fut: asyncio.Future[int], topic: str, value: bytes, partition: int) -> None:
        log = self.logs[(topic, partition)]
        log.append(RawRecord(value, topic, partition, len(log)))
        self.events.append(("output", topic, partition))
        fut.set_result(len(log) - 1)

    def release(self) -> None:
        self.holding = False
        for fut, topic, value, partition in self.waiting:
            self._write(fut, topic, value, partition)
        self.waiting.clear()

    def append(self, topic: str, partition: int, value: bytes) -> RawRecord:
        """Write an input record (as a producer would)."""
        log = self.logs[(topic, partition)]
        log.append(RawRecord(value, topic, partition, len(log)))
        return log[-1]

    # monitor.stream.partitions.Logs
    async def read(self, topic: str, partition: int, start: int | None = None,
                   stop: int | None = None) -> list[RawRecord]:
        return [r for r in self.logs[(topic, partition)]
                if r.offset >= (start or 0) and (stop is None or r.offset < stop)]

    async def committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.committed_offsets.get(tp, 0) for tp in tps}

    def ack(self, topic: str, partition: int, offsets: list[int]) -> None:
        self.events.append(("ack", topic, partition, list(offsets)))
        self.committed_offsets[(topic, partition)] = max(offsets) + 1

    def dead_letters(self, partition: int = 0) -> list[dict[str, Any]]:
        return [json.loads(r.value or b"") for r in self.logs[("dead_letters", partition)]]


class Store:
    """Checkpoints in memory (monitor.stream.partitions.Checkpoints)."""

    def __init__(self, broker: Broker, clock: Clock | None = None, save_takes_s: float = 0.0) -> None:
        self.broker = broker
        self.clock = clock
        self.save_takes_s = save_takes_s
        self.saved: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.unreadable: dict[int, int] = {}  # partition -> highest seq among its unusable records
        self.gate: asyncio.Event | None = None  # load waits for it when set

    async def ensure_started(self, topics: Any = ()) -> None:
        pass

    async def end_offsets_of(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {(t, p): len(self.broker.logs[(t, p)]) for t, p in tps}

    async def save(self, partition: int, seq: int, data: bytes) -> None:
        if self.clock is not None:
            self.clock.now += self.save_takes_s
        self.saved[partition].append((seq, data))
        self.broker.events.append(("checkpoint", partition, seq))

    async def load(self, partition: int) -> tuple[int, bytes] | None:
        if self.gate is not None:
            await self.gate.wait()
        if partition in self.unreadable:
            raise CheckpointUnreadable("corrupt", self.unreadable[partition])
        return self.saved[partition][-1] if self.saved[partition] else None


def worker(broker: Broker, store: Store,
           clock: Clock | None = None) -> tuple[Pipeline, PartitionManager, Any]:
    """A pipeline, its manager and the ``apply`` the worker hands to :meth:`PartitionManager.ingest`."""
    pipe = Pipeline(clock=lambda: NOW)
    ledger = OutputLedger(broker.send, retry_s=0.01)
    mgr = PartitionManager(pipe, inputs=EXPECTED, outputs={kind: kind for kind in OUTPUTS}, store=store,
                           logs=broker, ack=broker.ack, ledger=ledger, clock=clock or Clock())
    outputs = Outputs(ledger, mgr.output_topics, mgr.is_new)

    async def apply(records: list[Any]) -> None:
        await outputs.publish_batch(pipe.ingest(records, mgr.expected), pipe)

    return pipe, mgr, apply


def of(events: list[tuple[Any, ...]], kind: str) -> list[tuple[Any, ...]]:
    return [e for e in events if e[0] == kind]


def test_the_manager_does_not_import_faust() -> None:
    code = ("import sys, monitor.stream.partitions, monitor.stream.publish, monitor.stream.merge; "
            "assert not {'faust', 'mode'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_input_is_acknowledged_after_its_outputs_and_its_checkpoint() -> None:
    async def main() -> None:
        broker = Broker()
        store = Store(broker)
        pipe, mgr, apply = worker(broker, store)
        await mgr.on_assigned(every_topic(0))
        await mgr.wait_restored()
        assert mgr.owned == {0}
        broker.holding = True  # the broker does not acknowledge outputs yet
        batch = [broker.append("p", 0, patient("P1")), broker.append("r", 0, b"{oops")]
        await mgr.ingest(batch, apply)
        assert len(broker.waiting) == 1  # the dead letter of the malformed reading, in flight

        await mgr.checkpoint(confirm_s=0.05)
        assert broker.events == []  # no checkpoint, no acknowledgement
        assert 0 in mgr.dirty and mgr.held[0] == {"p": [0], "r": [0]}

        broker.release()
        await mgr.checkpoint()
        assert [e[0] for e in broker.events] == ["output", "checkpoint", "ack", "ack"]
        assert sorted(of(broker.events, "ack")) == [("ack", "p", 0, [0]), ("ack", "r", 0, [0])]
        assert mgr.dirty == set() and mgr.held == {} and mgr.checkpoints_written == 1
        seq, data = store.saved[0][-1]
        saved = PartitionState.restore(data)
        assert seq == saved.checkpoint_seq == 1
        assert saved.output_offsets == {"dead_letters": 1, "flags": 0, "alerts": 0}
        assert set(saved.patients) == {"P1"}

        await mgr.checkpoint()  # nothing new: nothing written, nothing acknowledged again
        assert len(of(broker.events, "checkpoint")) == 1 and len(of(broker.events, "ack")) == 2

    asyncio.run(main())


def test_a_revoked_partition_is_dropped_with_its_held_input_and_pending_outputs() -> None:
    async def main() -> None:
        broker = Broker()
        flushed: list[int] = []
        pipe, mgr, apply = worker(broker, Store(broker))

        async def flush() -> None:
            flushed.append(len(mgr.owned))

        mgr.flush = flush
        await mgr.on_assigned(every_topic(0, 1))
        await mgr.wait_restored()
        broker.holding = True
        await mgr.ingest([broker.append("p", 0, patient("P1")), broker.append("r", 0, b"{oops"),
                          broker.append("p", 1, patient("P2")), broker.append("r", 1, b"{oops")], apply)
        assert set(pipe.partitions) == {0, 1} and set(mgr.held) == {0, 1}
        assert mgr.ledger is not None and mgr.ledger.unconfirmed(1) == 1

        await mgr.on_revoked([TP(t, 1) for t in EXPECTED])
        assert flushed == [2]  # outputs flushed before the partition was dropped
        assert set(pipe.partitions) == {0} and set(mgr.held) == {0} and mgr.dirty == {0}
        assert mgr.owned == mgr.assigned == {0} and mgr.ledger.unconfirmed(1) == 0

        await mgr.ingest([broker.append("p", 1, patient("P3"))], apply)  # late input of partition 1
        assert set(pipe.partitions) == {0} and 1 not in mgr.held

        broker.release()
        await mgr.checkpoint()
        assert {e[1] for e in of(broker.events, "checkpoint")} == {0}
        assert {e[2] for e in of(broker.events, "ack")} == {0}

    asyncio.run(main())


def test_a_restored_partition_is_adopted_and_its_outputs_are_not_written_twice() -> None:
    async def main() -> None:
        broker = Broker()
        store = Store(broker)
        first, mgr, apply = worker(broker, store)
        await mgr.on_assigned(every_topic(0))
        await mgr.wait_restored()
        await mgr.ingest([broker.append("p", 0, patient("P1")), broker.append("r", 0, b"{oops")], apply)
        await mgr.checkpoint()
        at_checkpoint = dict(first.partitions[0].offsets)
        after = [broker.append("p", 0, patient("P2")), broker.append("r", 0, b"[1,")]
        await mgr.ingest(after, apply)  # applied and published, never checkpointed: then a crash
        assert len(broker.dead_letters()) == 2

        pipe, mgr2, apply2 = worker(broker, store)
        await mgr2.on_assigned(every_topic(0))
        await mgr2.wait_restored()
        assert mgr2.owned == {0} and mgr2.restored == 1 and mgr2.rebuilt == 0
        st = pipe.partitions[0]
        assert st.offsets == at_checkpoint and set(st.patients) == {"P1"} and st.checkpoint_seq == 1

        await mgr2.ingest(after, apply2)  # re-delivered: the input after the checkpoint was not acked
        assert set(st.patients) == {"P1", "P2"}
        assert len(broker.dead_letters()) == 2  # its dead letter was written before: suppressed
        await mgr2.ingest([broker.append("r", 0, b"nope")], apply2)
        assert len(broker.dead_letters()) == 3  # a new one is written

    asyncio.run(main())


def test_input_of_a_partition_being_restored_waits_for_its_state() -> None:
    async def main() -> None:
        broker = Broker()
        store = Store(broker)
        seed, mgr, apply = worker(broker, store)
        await mgr.on_assigned(every_topic(0))
        await mgr.wait_restored()
        await mgr.ingest([broker.append("p", 0, patient("P1"))], apply)
        await mgr.checkpoint()

        pipe, mgr2, apply2 = worker(broker, store)
        await mgr2.on_assigned(every_topic(0))  # restores in the background
        await mgr2.ingest([broker.append("p", 0, patient("P2"))], apply2)  # right away: waits
        assert set(pipe.partitions[0].patients) == {"P1", "P2"} and mgr2.held == {0: {"p": [1]}}

        store.gate = asyncio.Event()
        pipe, mgr2, apply2 = worker(broker, store)
        await mgr2.on_assigned(every_topic(0))
        assert mgr2.assigned == {0} and mgr2.owned == set()
        waiting = asyncio.ensure_future(mgr2.ingest([broker.logs[("p", 0)][1]], apply2))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done() and pipe.partitions == {}  # nothing applied to a missing state
        store.gate.set()
        await waiting
        assert mgr2.owned == {0} and set(pipe.partitions[0].patients) == {"P1", "P2"}

    asyncio.run(main())


def test_an_unreadable_checkpoint_is_rebuilt_from_the_committed_input() -> None:
    async def main() -> None:
        broker = Broker()
        store = Store(broker)
        broker.append("p", 0, patient("P1"))
        broker.append("r", 0, b"{oops")  # processed before: its dead letter is not written again
        broker.append("p", 0, patient("P2"))  # not committed: the consumer group delivers it
        broker.committed_offsets = {("p", 0): 1, ("r", 0): 1}
        store.unreadable[0] = 7
        pipe, mgr, apply = worker(broker, store)
        await mgr.on_assigned(every_topic(0))
        await mgr.wait_restored()
        st = pipe.partitions[0]
        assert mgr.rebuilt == 1 and mgr.restored == 0
        assert set(st.patients) == {"P1"} and broker.dead_letters() == []
        assert st.checkpoint_seq == 7 and mgr.dirty == {0}

        store.unreadable.clear()
        await mgr.checkpoint()
        assert [seq for seq, _ in store.saved[0]] == [8]  # above the unusable one: restored next time

    asyncio.run(main())


def test_after_a_rebuild_the_next_flag_transition_gets_an_id_never_written() -> None:
    """The flags topic already holds three transitions of P1's no_support_network (raised,
    cleared, raised: ordinals 1-3, e.g. from wall-clock timer evaluations the input does not
    reproduce). The rebuild recounts from the input, which raised it once. Before, the next
    clear got ordinal 2 - an id already on the topic - and was suppressed: the coordinators never
    heard that P1 had support again. Now the counters start from the topic: the raise is not
    repeated and the clear gets ordinal 4."""
    from monitor.pipeline import flag_id

    async def main() -> None:
        broker = Broker()
        store = Store(broker)
        broker.append("p", 0, patient("P1"))
        broker.committed_offsets = {("p", 0): 1}
        for k, status in enumerate(("raised", "cleared", "raised"), start=1):
            broker.append("flags", 0, json.dumps({
                "flag_id": flag_id("P1", "no_support_network", k), "patient_id": "P1",
                "flag": "no_support_network", "status": status, "as_of": "2026-10-01T00:00:00Z"}).encode())
        store.unreadable[0] = 3
        pipe, mgr, _apply = worker(broker, store)
        await mgr.on_assigned(every_topic(0))
        await mgr.wait_restored()
        st = pipe.partitions[0]
        tick = pipe.tick_partition(st, at=int(NOW.timestamp()))
        assert not [f for f in tick.flags if f.flag == "no_support_network"]  # raised already, on the topic
        slot = st.support.patient_index["P1"]
        st.current[slot] = 0  # the patient gets support: the flag clears at the next evaluation
        (clear,) = [f for f in pipe._transitions(st, int(NOW.timestamp())) if f.flag == "no_support_network"]
        assert clear.status == "cleared" and clear.flag_id == flag_id("P1", "no_support_network", 4)
        assert mgr.is_new(0, "flag:" + clear.flag_id)  # published, not suppressed

    asyncio.run(main())


def test_checkpoint_rounds_are_spaced_by_their_duration_up_to_a_cap() -> None:
    async def main() -> None:
        broker, clock = Broker(), Clock()
        store = Store(broker, clock, save_takes_s=10.0)
        pipe, mgr, apply = worker(broker, store, clock)
        mgr.checkpoint_interval_s = 5.0
        await mgr.on_assigned(every_topic(0))
        await mgr.wait_restored()
        assert not mgr.checkpoint_due()
        clock.now += 5.0
        assert mgr.checkpoint_due()
        await mgr.ingest([broker.append("p", 0, patient("P1"))], apply)
        await mgr.checkpoint()
        assert mgr.checkpoint_seconds == 10.0
        clock.now += 39.0  # 4 x 10 s would be 40 s: capped
        assert mgr.checkpoint_due() and MAX_CHECKPOINT_INTERVAL_S < 39.0
        store.save_takes_s = 2.0
        await mgr.ingest([broker.append("p", 0, patient("P2"))], apply)
        await mgr.checkpoint()
        clock.now += 7.5
        assert not mgr.checkpoint_due()  # 4 x 2 s
        clock.now += 0.5
        assert mgr.checkpoint_due()

    asyncio.run(main())


def test_a_round_stops_at_its_budget_and_the_least_recently_saved_go_first() -> None:
    async def main() -> None:
        broker, clock = Broker(), Clock()
        store = Store(broker, clock, save_takes_s=1.5)
        pipe, mgr, apply = worker(broker, store, clock)
        await mgr.on_assigned(every_topic(0, 1, 2))
        await mgr.wait_restored()

        async def touch_all(n: int) -> None:
            await mgr.ingest([broker.append("p", p, patient(f"P{p}-{n}")) for p in (0, 1, 2)], apply)

        await touch_all(1)
        await mgr.checkpoint(budget_s=2.0)
        assert [e[1] for e in of(broker.events, "checkpoint")] == [0, 1] and mgr.dirty == {2}
        assert {e[2] for e in of(broker.events, "ack")} == {0, 1}  # partition 2 stays unacknowledged
        await touch_all(2)
        await mgr.checkpoint(budget_s=2.0)
        assert [e[1] for e in of(broker.events, "checkpoint")] == [0, 1, 2, 0]
        assert mgr.held.keys() == {1}

    asyncio.run(main())
