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

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

BatchHandler = Callable[[list[Any]], Awaitable[None]]

FETCH_MAX_WAIT_MS = 50
"""How long the broker may hold a fetch of partitions without new data (bounds the stall above;
an idle worker sends ~20 empty fetches a second)."""


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with a batch path for the app's :attr:`~MonitorApp.batch_topics`."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in the worker
        app = self.app
        handler: BatchHandler | None = getattr(app, "batch_handler", None)
        batch_topics: frozenset[str] = getattr(app, "batch_topics", frozenset())
        if handler is None or not batch_topics:
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if not self.should_stop:
                    await self._drain_fetch(handler, batch_topics)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _drain_fetch(self, handler: BatchHandler, batch_topics: frozenset[str]) -> None:
        """One fetch: the batch topics' records per partition to the handler in one call, every
        other record through faust's per-message path (as ``Consumer.getmany`` +
        ``_drain_messages`` do, with the per-record checks done once per partition)."""
        records, active = await self._wait_next_records(1.0)
        if not records or self.should_stop:
            return
        if not self.flow_active:  # a rebalance began while fetching: faust seeks back, so do we
            try:
                await self.perform_seek()
            except Exception as exc:  # noqa: BLE001 - as faust's getmany
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        app = self.app
        generation_id = app.consumer_generation_id
        read_offset = self._read_offset
        acks_enabled_for = app.topics.acks_enabled_for
        to_message = self._to_message
        buffered = self._buffered_partitions
        pending: list[Message] = []
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
                        await self._add_gap(tp, r_offset + 1, offset)
                    pending.append(record)
                    r_offset = offset
                read_offset[tp] = r_offset
                continue
            for record in recs:
                offset = record.offset
                if r_offset is not None and offset < r_offset:
                    continue  # already read (faust drops these too)
                if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                message = to_message(tp, record)
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
                read_offset[tp] = r_offset = offset
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        if pending:
            await handler(pending)

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> int:
        """Acknowledge records of ``tp`` that went to the batch handler, as :meth:`ack` does for
        one message (same bookkeeping, under faust's ``ack_lock``); the next commit includes them.
        Returns how many were not acknowledged before."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return 0
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            if fresh:
                index.update(fresh)
                self._acked[tp].extend(fresh)
                self._n_acked += len(fresh)
            notify(self._waiting_for_ack)
        return len(fresh)


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread with ``fetch_max_wait_ms`` = :data:`FETCH_MAX_WAIT_MS`."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust passes a fixed 1500; AIOKafkaConsumer.start() builds its Fetcher from this attribute
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class DurableProducer(faust_aiokafka.Producer):
    """faust's aiokafka producer, always with ``acks=all`` and the idempotent producer.

    faust asks for idempotence only inside transactions; without it, a retry after a lost
    acknowledgement writes an output twice. ``acks=all`` with the topics' ``min.insync.replicas``
    (min(2, replication factor), :mod:`monitor.kafka.admin`) makes an acknowledged output survive
    the loss of a broker."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class BatchTransport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`BatchConsumer` and :class:`DurableProducer`."""

    Consumer = BatchConsumer
    Producer = DurableProducer


class MonitorApp(faust.App):
    """A faust app whose consumer hands whole fetches of ``batch_topics`` to ``batch_handler``.

    Set both before the worker starts; the topics must also be registered with the conductor
    (``app.topics.add(topic)``) so that the consumer group subscribes to them.
    """

    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


__all__ = ["FETCH_MAX_WAIT_MS", "BatchConsumer", "BatchConsumerThread", "BatchHandler", "BatchTransport",
           "DurableProducer", "MonitorApp"]
