"""Batch consumption inside faust: whole fetches of the input topics go to one handler call.

Why: faust's consumer runs, for **every** message, ``await wait_first(callback(message),
suspend_flow.wait())`` (two tasks and an ``asyncio.wait``), and the conductor then decodes the
message into an event that travels through a stream's queue. Measured here, that per-message path
caps an agent at about 5k events/s while a raw aiokafka ``getmany`` loop drains ~100-250k/s (see the
README's performance section).

What stays faust's: the consumer group and partition assignment, the fetch itself
(``Consumer._wait_next_records``; the generation, flow and active-partition checks of
``Consumer.getmany`` are repeated once per partition instead of once per record), the read
offsets and gap tracking, the acknowledgement bookkeeping and offset commits. What changes: for the
topics in :attr:`MonitorApp.batch_topics` the records of one fetch (aiokafka ``ConsumerRecord``:
``topic``, ``partition``, ``offset``, ``key``, ``value``) are handed to
:attr:`MonitorApp.batch_handler` in one call, without a faust ``Message`` per record and without
faust's per-message sensors (its ``Monitor`` counts them no more; the monitor's own metrics do);
messages of every other topic take faust's usual per-message path (agents work as before). The
handler owns the records it is given: a record is committed only after the handler (or whoever it
hands them on to) calls :meth:`BatchConsumer.ack_offsets` for it (in bulk, per partition).

Every private attribute of faust, mode or aiokafka this needs is reached through
:mod:`monitor.stream.faust_adapter` (hooks and named accessors, pinned by
``tests/unit/test_faust_contract.py``); this module only uses their public names.

Failure behaviour: an exception from the handler propagates like one from faust's own callback
(the fetcher crashes and the worker stops); the handler is expected to never raise on input.

Fetch wait (latency): faust hard-codes ``fetch_max_wait_ms=1500`` for the worker's aiokafka
consumer. aiokafka keeps at most one fetch request in flight per broker and leaves partitions with
unconsumed records out of the next request; so whenever the handler was busy for more than
aiokafka's 100 ms prefetch backoff, the next request held only the idle partitions (the idle input
topics, ``equity-partials``), the broker parked it for the full 1.5 s, and no busy partition could
be fetched meanwhile. Measured at 5k readings/s: fetches returning nothing for 1 s, then ~8k
records 2 s old in one fetch, whose 0.6 s apply started the next stall (alert p99 2.3 s).
:class:`BatchConsumerThread` caps the wait at :data:`FETCH_MAX_WAIT_MS`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP

from monitor.stream import faust_adapter as fa
from monitor.stream.faust_adapter import HookedApp, HookedConsumer, HookedConsumerThread, HookedProducer

BatchHandler = Callable[[list[Any]], Awaitable[None]]

FETCH_MAX_WAIT_MS = 50
"""How long the broker may hold a fetch of partitions without new data (bounds the stall above;
an idle worker sends ~20 empty fetches a second)."""


class BatchConsumerThread(HookedConsumerThread):
    """faust's aiokafka consumer thread with ``fetch_max_wait_ms`` = :data:`FETCH_MAX_WAIT_MS`
    (faust's 1500 ms stalls busy partitions behind idle ones, see the module docstring)."""

    fetch_max_wait_ms: ClassVar[int | None] = FETCH_MAX_WAIT_MS


class BatchConsumer(HookedConsumer):
    """faust's aiokafka consumer with a batch path for the app's :attr:`~MonitorApp.batch_topics`.

    Batch mode is on when the app has both a :attr:`~MonitorApp.batch_handler` and batch topics;
    otherwise this is faust's consumer (per-message delivery) with the shorter fetch wait."""

    consumer_thread = BatchConsumerThread

    def batch_enabled(self) -> bool:
        """The app set a batch handler and batch topics (checked when the fetcher starts)."""
        app = self.app
        return getattr(app, "batch_handler", None) is not None and bool(getattr(app, "batch_topics", ()))

    async def drain_fetch(self) -> None:
        """One fetch: the batch topics' records per partition to the handler in one call, every
        other record through faust's per-message path (as ``Consumer.getmany`` +
        ``_drain_messages`` do, with the per-record checks done once per partition)."""
        app = self.app
        handler: BatchHandler = app.batch_handler
        batch_topics: frozenset[str] = app.batch_topics
        records, active = await fa.wait_next_records(self, 1.0)
        if not records or self.should_stop:
            return
        if not self.flow_active:  # a rebalance began while fetching: faust seeks back, so do we
            try:
                await self.perform_seek()
            except Exception as exc:  # noqa: BLE001 - as faust's getmany
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        generation_id = app.consumer_generation_id
        read_offset = fa.read_offsets(self)
        acks_enabled_for = app.topics.acks_enabled_for
        buffered = fa.buffered_partitions(self)
        pending: list[Any] = []
        for tp, recs in records.items():
            if not recs or (active is not None and tp not in active and tp not in buffered):
                continue
            if app.consumer_generation_id != generation_id:
                return  # rebalanced meanwhile: faust abandons the fetch too
            app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            r_offset = read_offset[tp]
            if tp.topic in batch_topics:  # the records themselves: no message object, no sensors
                gaps = acks_enabled_for(tp.topic)
                for record in recs:
                    offset = record.offset
                    if r_offset is not None and offset < r_offset:
                        continue  # already read (faust drops these too)
                    if gaps and r_offset and offset - r_offset > 1:
                        await fa.add_gap(self, tp, r_offset + 1, offset)
                    pending.append(record)
                    r_offset = offset
                read_offset[tp] = r_offset
                continue
            for record in recs:
                offset = record.offset
                if r_offset is not None and offset < r_offset:
                    continue  # already read (faust drops these too)
                if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                    await fa.add_gap(self, tp, r_offset + 1, offset)
                await fa.commit_if_due(self)
                await fa.deliver_message(self, tp, record)
                read_offset[tp] = r_offset = offset
        await fa.commit_if_due(self)
        if pending:
            await handler(pending)

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> int:
        """Acknowledge records of ``tp`` that went to the batch handler, as :meth:`ack` does for
        one message (same bookkeeping, under faust's ``ack_lock``); the next commit includes them.
        Returns how many were not acknowledged before."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return 0
        return fa.record_acks(self, tp, offsets)


class DurableProducer(HookedProducer):
    """faust's aiokafka producer, always with ``acks=all`` and the idempotent producer.

    faust asks for idempotence only inside transactions; without it, a retry after a lost
    acknowledgement writes an output twice. ``acks=all`` with the topics' ``min.insync.replicas``
    (min(2, replication factor), :mod:`monitor.kafka.admin`) makes an acknowledged output survive
    the loss of a broker."""

    extra_settings: ClassVar[Mapping[str, Any]] = {"acks": "all", "enable_idempotence": True}


class BatchTransport(AIOKafkaTransport):
    """The aiokafka transport with :class:`BatchConsumer` and :class:`DurableProducer`."""

    Consumer = BatchConsumer
    Producer = DurableProducer


class MonitorApp(HookedApp):
    """A faust app whose consumer hands whole fetches of ``batch_topics`` to ``batch_handler``.

    Set both before the worker starts; the topics must also be registered with the conductor
    (``app.topics.add(topic)``) so that the consumer group subscribes to them.
    """

    monitor_transport = BatchTransport
    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None


__all__ = ["FETCH_MAX_WAIT_MS", "BatchConsumer", "BatchConsumerThread", "BatchHandler", "BatchTransport",
           "DurableProducer", "MonitorApp"]
