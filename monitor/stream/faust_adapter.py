"""The one place where the monitor touches private internals of faust, mode and aiokafka.

Nothing else under ``monitor/`` reads, writes or overrides an underscored attribute of a faust,
mode or aiokafka object: :mod:`monitor.stream.consumer` (the batch path) and
:mod:`monitor.stream.health` (readiness) go through the named functions and hook classes below.
Each one says what it relies on and why no public API does the job; each reliance has an assertion
in ``tests/unit/test_faust_contract.py``, which also pins the versions this was written for
(:data:`WRITTEN_FOR`) and fails on any other, so an upgrade fails there and not in production.

Two kinds of coupling live here:

* **Hooks** (faust's private factory/loop methods overridden by subclassing): :class:`HookedApp`
  (``App._new_transport``), :class:`HookedConsumer` (``Consumer._new_consumer_thread``,
  ``Consumer._drain_messages``), :class:`HookedConsumerThread`
  (``AIOKafkaConsumerThread._create_worker_consumer``), :class:`HookedProducer`
  (``Producer._settings_extra``). Each forwards to a public-named class attribute or method that
  :mod:`monitor.stream.consumer` sets or overrides, so the monitor's own classes define no private
  name.
* **Accessors** (private state read or written): the module functions, each taking the faust object
  it works on. The per-message bookkeeping the batch path repeats once per partition (read
  offsets, gaps, acknowledgements, ``commit_every``) mirrors faust's ``Consumer._drain_messages``,
  ``Consumer.getmany`` and ``Consumer.ack`` of the pinned version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, ClassVar

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

WRITTEN_FOR = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
"""The distributions (and exact versions) whose internals this module was written and checked
against; ``tests/unit/test_faust_contract.py`` fails on any other."""

RecordMap = Mapping[TP, list[Any]]
"""One fetch: aiokafka ``ConsumerRecord`` lists by partition (faust's ``RecordMap``)."""


# --- hooks: faust's private factory and loop methods, overridden once -------------------------------


class HookedApp(faust.App):
    """``faust.App`` whose transport class is :attr:`monitor_transport` (default: faust's own)."""

    monitor_transport: ClassVar[type[faust_aiokafka.Transport]] = faust_aiokafka.Transport
    """The transport built for the broker URL (faust would pick it by URL scheme)."""

    def _new_transport(self) -> Any:
        # Overrides faust ``App._new_transport()``: the factory the ``App.transport`` property calls
        # once; the consumer and producer come from ``transport.Consumer``/``transport.Producer``
        # (``App._new_consumer``/``_new_producer`` -> ``transport.create_consumer/producer``).
        # No setting selects a custom transport class for a ``kafka://`` URL, hence the override.
        return self.monitor_transport(self.conf.broker_consumer, self)


class HookedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's thread that owns the ``AIOKafkaConsumer``, with a settable fetch wait."""

    fetch_max_wait_ms: ClassVar[int | None] = None
    """aiokafka's ``fetch_max_wait_ms`` for the worker's consumer; None: faust's (1500)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        # Overrides faust ``AIOKafkaConsumerThread._create_worker_consumer(transport)``, which builds
        # the worker's ``AIOKafkaConsumer`` (not started yet) with ``fetch_max_wait_ms=1500`` hard-
        # coded and no setting to change it. Rebuilding the consumer would copy faust's ~30 kwargs,
        # so the built one is adjusted before ``start()`` instead (:func:`set_fetch_max_wait`).
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            set_fetch_max_wait(consumer, self.fetch_max_wait_ms)
        return consumer


class HookedConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka ``Consumer`` with two hooks: the thread class, and the fetch-draining loop.

    With :meth:`batch_enabled` false (the default) it is faust's consumer unchanged; with it true,
    faust's ``_drain_messages`` loop runs with its body (``getmany`` + one callback per message)
    replaced by :meth:`drain_fetch`, one call per fetch."""

    consumer_thread: ClassVar[type[HookedConsumerThread]] = HookedConsumerThread
    """The consumer thread class (faust's aiokafka thread, or a subclass)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        # Overrides faust ``Consumer._new_consumer_thread()`` (abstract in ``ThreadDelegateConsumer``,
        # called once from ``__init__``): the only way to give the consumer another thread class.
        # Relies on the thread's constructor ``(consumer, *, loop, beacon)``.
        return self.consumer_thread(self, loop=self.loop, beacon=self.beacon)

    def batch_enabled(self) -> bool:
        """Whether the fetcher runs :meth:`drain_fetch` instead of faust's per-message loop."""
        return False

    async def drain_fetch(self) -> None:
        """One fetch, delivered (only called when :meth:`batch_enabled`)."""
        raise NotImplementedError

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in the worker
        # Overrides faust ``Consumer._drain_messages(fetcher)``: the coroutine faust's ``Fetcher``
        # service runs (``Fetcher._fetcher``) for the consumer's lifetime. This is faust's loop
        # (stop checks on the consumer and the fetcher, the ``CONSUMER_FETCHING`` flag, the same
        # handling of stop/cancel/errors) with one :meth:`drain_fetch` per iteration in place of
        # ``async for tp, message in self.getmany(...)``. Relies on mode's ``Service._stopped``
        # (:func:`stop_requested`), as faust's loop does.
        if not self.batch_enabled():
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = stop_requested(self)
        fetcher_should_stop = stop_requested(fetcher)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if not self.should_stop:
                    await self.drain_fetch()
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


class HookedProducer(faust_aiokafka.Producer):
    """faust's aiokafka ``Producer`` with :attr:`extra_settings` on top of faust's."""

    extra_settings: ClassVar[Mapping[str, Any]] = {}
    """``AIOKafkaProducer`` keyword arguments added to (and overriding) faust's."""

    def _settings_extra(self) -> Mapping[str, Any]:
        # Overrides faust ``Producer._settings_extra()``, merged last into the ``AIOKafkaProducer``
        # kwargs by ``Producer._new_producer`` (faust returns ``acks``/``enable_idempotence`` only
        # inside transactions). No setting passes arbitrary producer options.
        return {**super()._settings_extra(), **self.extra_settings}


# --- accessors: private state of mode's Service, faust's Consumer and aiokafka's consumer -----------


def stop_requested(service: Any) -> Callable[[], bool]:
    """The "stop was requested" test of a mode service (bound ``Service._stopped.is_set``).

    Relies on mode ``Service._stopped`` (an ``Event`` set by ``Service.stop()``). faust's
    ``_drain_messages`` polls exactly this on the consumer and on the fetcher; the public
    ``should_stop`` also turns true on a crash, which would change when the loop ends."""
    return service._stopped.is_set


async def wait_next_records(consumer: Any, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:
    """One fetch of faust's consumer: ``(records by partition, active partitions or None)``.

    Relies on faust ``Consumer._wait_next_records(timeout)``: the fetch under ``Consumer.getmany``
    (waits while flow is suspended, fetches only the active, i.e. not paused, partitions through
    the consumer thread). ``getmany`` itself would wrap every record in a faust ``Message``, the
    per-record cost the batch path avoids."""
    return await consumer._wait_next_records(timeout)


def read_offsets(consumer: Any) -> MutableMapping[TP, int | None]:
    """faust's read offsets: per partition, the offset of the last record handed on (None: none).

    Relies on faust ``Consumer._read_offset`` (a ``defaultdict(lambda: None)``), which
    ``_drain_messages`` keeps (records at or below it are dropped as already read), ``perform_seek``
    sets to the committed offset after a rebalance and ``on_partitions_revoked`` clears. The batch
    path must update it as ``_drain_messages`` does; readiness reads it for the lag. Read-write: the
    mapping itself is returned."""
    return consumer._read_offset


def buffered_partitions(consumer: Any) -> set[TP]:
    """Partitions faust keeps delivering although not active (their records were buffered).

    Relies on faust ``Consumer._buffered_partitions``, which ``getmany`` consults next to the
    active partitions before yielding a record."""
    return consumer._buffered_partitions


async def add_gap(consumer: Any, tp: TP, offset_from: int, offset_to: int) -> None:
    """Record that offsets ``offset_from..offset_to`` of ``tp`` will never be read (compaction,
    transaction markers), so that commits may pass them.

    Relies on faust ``Consumer._add_gap(tp, offset_from, offset_to)`` (an interval in
    ``Consumer._gap``, consulted by the commit): ``_drain_messages`` calls it on any jump of more
    than one offset in a topic with acknowledgements."""
    await consumer._add_gap(tp, offset_from, offset_to)


async def commit_if_due(consumer: Any) -> None:
    """Commit when ``broker_commit_every`` acknowledgements piled up since the last such commit.

    Relies on faust ``Consumer._commit_every`` (the setting, None: off) and ``Consumer._n_acked``
    (acknowledgements since), reset and committed exactly as ``_drain_messages`` does before each
    record it delivers."""
    every = consumer._commit_every
    if every is not None and consumer._n_acked >= every:
        consumer._n_acked = 0
        await consumer.commit()


async def deliver_message(consumer: Any, tp: TP, record: Any) -> None:
    """Deliver one record through faust's usual per-message path (conductor -> streams/agents).

    Relies on faust ``Consumer._to_message(tp, record)`` (the aiokafka record as a faust
    ``ConsumerMessage``) and on the delivery ``_drain_messages`` does: ``callback(message)`` raced
    against ``suspend_flow`` (a rebalance abandons the delivery)."""
    message = consumer._to_message(tp, record)
    await consumer.wait_first(consumer.callback(message), consumer.suspend_flow.wait())


def record_acks(consumer: Any, tp: TP, offsets: Iterable[int]) -> int:
    """Acknowledge ``offsets`` of ``tp`` as faust's ``Consumer.ack`` does one message's; the next
    commit includes them. Returns how many were not acknowledged (nor committed) before.

    Relies on faust's acknowledgement bookkeeping: ``faust.types.tuples.ack_lock`` (the re-entrant
    lock ``Consumer.ack`` holds), ``Consumer._committed_offset`` (offsets below it are done),
    ``Consumer._acked_index`` (set) and ``Consumer._acked`` (list) per partition, which the commit
    turns into the committable offset, ``Consumer._n_acked`` (for ``commit_every``) and
    ``Consumer._waiting_for_ack`` (the future ``wait_empty`` sleeps on, woken by ``notify``). faust
    has no public bulk acknowledgement and ``ack`` needs a ``Message`` per record."""
    with ack_lock:
        committed = consumer._committed_offset[tp]
        index = consumer._acked_index[tp]
        fresh = []
        for o in offsets:
            if (committed is None or o >= committed) and o not in index:
                index.add(o)  # as we go: an offset given twice counts once, as faust's ack does
                fresh.append(o)
        if fresh:
            consumer._acked[tp].extend(fresh)
            consumer._n_acked += len(fresh)
        notify(consumer._waiting_for_ack)
    return len(fresh)


def aiokafka_consumer(consumer: Any) -> Any:
    """The ``AIOKafkaConsumer`` behind faust's consumer (None before the consumer thread started).

    Relies on faust ``ThreadDelegateConsumer._thread`` (the consumer's ``AIOKafkaConsumerThread``)
    and ``AIOKafkaConsumerThread._consumer`` (set in its ``on_start``). Raises ``AttributeError``
    if either moved."""
    return consumer._thread._consumer


def group_coordinator_known(consumer: Any) -> bool:
    """Whether faust's consumer knows its group coordinator (False before it started, and if the
    attributes moved: an upgrade must never make a disconnected worker look connected).

    Relies on aiokafka ``AIOKafkaConsumer._coordinator`` (the ``GroupCoordinator``, set in
    ``start()``) and its ``coordinator_id``, which aiokafka sets on a successful coordinator
    look-up and resets to None in ``coordinator_dead()`` (a failed request, or no successful
    heartbeat for the session timeout). No public API tells whether the consumer reaches the
    broker."""
    try:
        client = aiokafka_consumer(consumer)
        return client is not None and client._coordinator.coordinator_id is not None
    except AttributeError:
        return False


def set_fetch_max_wait(client: Any, ms: int) -> None:
    """Set an ``AIOKafkaConsumer``'s ``fetch_max_wait_ms`` after construction, before ``start()``.

    Relies on aiokafka ``AIOKafkaConsumer._fetch_max_wait_ms`` (stored by ``__init__``) being what
    ``start()`` passes to its ``Fetcher``; setting it after ``start()`` would do nothing."""
    client._fetch_max_wait_ms = ms


__all__ = [
    "WRITTEN_FOR", "HookedApp", "HookedConsumer", "HookedConsumerThread", "HookedProducer", "RecordMap",
    "add_gap", "aiokafka_consumer", "buffered_partitions", "commit_if_due", "deliver_message",
    "group_coordinator_known", "read_offsets", "record_acks", "set_fetch_max_wait", "stop_requested",
    "wait_next_records",
]
