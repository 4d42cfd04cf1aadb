"""The contract of :mod:`monitor.stream.faust_adapter` with faust, mode and aiokafka.

The adapter reads, writes and overrides private internals of faust-streaming, mode-streaming and
aiokafka. These tests pin the exact versions it was written for (:data:`WRITTEN_FOR`) and fail on
any other, naming what must be re-checked; and for each private attribute or method it relies on
they assert, in the installed versions, that it exists with the expected kind and signature (and,
where the adapter mirrors faust's code, that this code is the one it mirrored). An upgrade fails
here, not in production. No broker: a real ``MonitorApp`` is built against an unreachable URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiokafka
import faust.transport.consumer as faust_consumer
import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.app.base import App
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types import tuples as faust_tuples
from mode import Service

from monitor.stream import faust_adapter as fa
from monitor.stream.consumer import (
    FETCH_MAX_WAIT_MS,
    BatchConsumer,
    BatchConsumerThread,
    BatchTransport,
    DurableProducer,
    MonitorApp,
)

WRITTEN_FOR = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}

RECHECK = """\
Re-check monitor/stream/faust_adapter.py against the new sources before changing the pins:
  faust  App._new_transport (still how the transport, hence consumer/producer classes, are made);
  faust  ThreadDelegateConsumer.__init__ -> _new_consumer_thread; AIOKafkaConsumerThread constructor;
  faust  AIOKafkaConsumerThread._create_worker_consumer (still fetch_max_wait_ms=1500? now a setting?);
  faust  Consumer._drain_messages and getmany (HookedConsumer._drain_messages and
         BatchConsumer.drain_fetch mirror them: stop checks, flow/seek, generation id, active and
         buffered partitions, read offsets, gaps, commit_every, the per-message delivery);
  faust  Consumer._wait_next_records, _to_message, _add_gap, _read_offset, _buffered_partitions,
         _commit_every, _n_acked;
  faust  Consumer.ack and the commit (record_acks mirrors ack: ack_lock, _committed_offset,
         _acked_index, _acked, _n_acked, _waiting_for_ack);
  faust  Producer._settings_extra / _new_producer (DurableProducer's acks=all + idempotence);
  mode   Service._stopped;
  aiokafka AIOKafkaConsumer._fetch_max_wait_ms (read by start()), ._coordinator and
         GroupCoordinator.coordinator_id (reset by coordinator_dead()) for /readyz;
then run this file, tests/unit/test_readiness.py and the integration tests test_readiness.py,
test_output_durability.py, test_worker_e2e.py on a broker, and update WRITTEN_FOR here and in the
adapter."""

MIRRORED = {
    # faust code that the adapter and the batch path copy or mirror
    "faust Consumer._drain_messages": faust_consumer.Consumer._drain_messages,
    "faust Consumer.getmany": faust_consumer.Consumer.getmany,
    "faust Consumer._wait_next_records": faust_consumer.Consumer._wait_next_records,
    "faust Consumer.ack": faust_consumer.Consumer.ack,
    "faust Consumer._add_gap": faust_consumer.Consumer._add_gap,
    "faust AIOKafkaConsumerThread._create_worker_consumer":
        faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer,
    "faust Producer._settings_extra": faust_aiokafka.Producer._settings_extra,
}

PINNED_DIGESTS = {
    # sha256 of their source in the pinned install (``python tests/unit/test_faust_contract.py``)
    'faust Consumer._drain_messages':
        '44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417',
    'faust Consumer.getmany':
        '4b168d84882a70d6e3e2f9804430a63b92f8fd117d3187cbb4aeb54305bda34e',
    'faust Consumer._wait_next_records':
        '6218e1969a636b3ff504ad1b8e7ad58a113572e43d746cc96d684ed5153032c6',
    'faust Consumer.ack':
        '5fcf41cf45153475de3790dc56fec1b83335956dc8b3bf7ff6bbb2b57627f03f',
    'faust Consumer._add_gap':
        '4df2573ded7c1c2cde04dc6bde6d4480cb5875ef565256e56966b585ae39b1c1',
    'faust AIOKafkaConsumerThread._create_worker_consumer':
        'c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7',
    'faust Producer._settings_extra':
        'a4c7bc41b63822236e4c9be1c49437d091f58c1b3a983eecabb7362a819aa8bd',
}


def source_digest(obj: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


# --- the versions ---------------------------------------------------------------------------------


def test_adapter_and_contract_name_the_same_versions() -> None:
    assert fa.WRITTEN_FOR == WRITTEN_FOR


@pytest.mark.parametrize("dist", sorted(WRITTEN_FOR))
def test_installed_version_is_the_one_the_adapter_was_written_for(dist: str) -> None:
    installed = importlib.metadata.version(dist)
    if installed != WRITTEN_FOR[dist]:
        pytest.fail(f"{dist} {installed} is installed; monitor/stream/faust_adapter.py was written "
                    f"for {WRITTEN_FOR[dist]} and relies on its private internals.\n{RECHECK}",
                    pytrace=False)


@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_the_mirrored_faust_code_is_unchanged(name: str) -> None:
    """Same version number, other code (a patched or rebuilt install) fails too."""
    if source_digest(MIRRORED[name]) != PINNED_DIGESTS.get(name):
        pytest.fail(f"the source of {name} differs from the one the adapter mirrors.\n{RECHECK}",
                    pytrace=False)


# --- the hooks ------------------------------------------------------------------------------------


def test_app_builds_its_transport_through_new_transport() -> None:
    assert params(App._new_transport) == ["self"]
    assert "self._new_transport()" in inspect.getsource(App.transport.fget)
    assert "self.transport.create_consumer(" in inspect.getsource(App._new_consumer)
    assert "self.transport.create_producer(" in inspect.getsource(App._new_producer)


def test_consumer_builds_its_thread_through_new_consumer_thread() -> None:
    assert params(faust_aiokafka.Consumer._new_consumer_thread) == ["self"]
    assert "self._thread = self._new_consumer_thread()" in inspect.getsource(
        faust_consumer.ThreadDelegateConsumer.__init__)
    # (consumer, **kwargs): loop= and beacon= go on to mode's ServiceThread
    assert params(faust_aiokafka.AIOKafkaConsumerThread.__init__) == ["self", "consumer", "kwargs"]


def test_fetcher_runs_drain_messages() -> None:
    fn = faust_consumer.Consumer._drain_messages
    assert inspect.iscoroutinefunction(fn) and params(fn) == ["self", "fetcher"]
    assert "await consumer._drain_messages(self)" in inspect.getsource(
        faust_consumer.Fetcher._fetcher.fun)
    # the names the mirrored loop uses on the consumer and its app
    assert isinstance(faust_consumer.CONSUMER_FETCHING, str)
    assert fa.CONSUMER_FETCHING is faust_consumer.CONSUMER_FETCHING
    for name in ("consumer_stopped_errors", "flow_active", "perform_seek", "highwater", "commit",
                 "wait_first", "should_stop", "sleep"):
        assert hasattr(faust_aiokafka.Consumer, name), name


def test_worker_consumer_is_built_with_a_hard_coded_fetch_wait() -> None:
    fn = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    assert params(fn) == ["self", "transport"]
    assert "fetch_max_wait_ms=1500" in inspect.getsource(fn), "now configurable? drop the override"


def test_producer_settings_extra_is_merged_last() -> None:
    assert params(faust_aiokafka.Producer._settings_extra) == ["self"]
    src = inspect.getsource(faust_aiokafka.Producer._new_producer)
    assert src.index("**self._settings_auth()") < src.index("**self._settings_extra()")


# --- the accessors --------------------------------------------------------------------------------


def test_mode_service_stopped_event() -> None:
    async def run() -> tuple[bool, bool]:
        service = Service()
        await service.start()
        stopped = fa.stop_requested(service)
        before = stopped()
        await service.stop()
        return before, stopped()

    assert asyncio.run(run()) == (False, True)


def test_consumer_private_methods() -> None:
    consumer = faust_aiokafka.Consumer
    assert inspect.iscoroutinefunction(consumer._wait_next_records)
    assert params(consumer._wait_next_records) == ["self", "timeout"]
    assert "await self._wait_next_records(timeout)" in inspect.getsource(consumer.getmany)
    assert not inspect.iscoroutinefunction(consumer._to_message)
    assert params(consumer._to_message) == ["self", "tp", "record"]
    assert inspect.iscoroutinefunction(consumer._add_gap)
    assert params(consumer._add_gap) == ["self", "tp", "offset_from", "offset_to"]
    assert "self.callback = callback" in inspect.getsource(faust_consumer.Consumer.__init__)
    assert "self.suspend_flow = " in inspect.getsource(faust_consumer.Consumer.__init__)


def test_ack_bookkeeping_names() -> None:
    assert faust_consumer.ack_lock is faust_tuples.ack_lock
    assert type(faust_tuples.ack_lock).__name__ == "RLock"
    src = inspect.getsource(faust_consumer.Consumer.ack)
    for used in ("with ack_lock", "self._committed_offset[tp]", "self._acked_index[tp]",
                 "self._acked[tp]", "self._n_acked += 1", "notify(self._waiting_for_ack)"):
        assert used in src, used
    commit_src = inspect.getsource(faust_consumer.Consumer._new_offset)
    assert "self._acked[tp]" in commit_src and "self._committed_offset[tp]" in commit_src


def test_aiokafka_consumer_internals() -> None:
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start
    assert "self._coordinator = GroupCoordinator(" in start
    assert "self.coordinator_id = None" in inspect.getsource(GroupCoordinator.__init__)
    assert "self.coordinator_id = None" in inspect.getsource(GroupCoordinator.coordinator_dead)
    assert "self.coordinator_id = coordinator_id" in inspect.getsource(
        GroupCoordinator.ensure_coordinator_known)
    assert faust_aiokafka.AIOKafkaConsumerThread._consumer is None  # declared; set in on_start
    assert "self._consumer = self._create_consumer(" in inspect.getsource(
        faust_aiokafka.AIOKafkaConsumerThread.on_start)

    async def built() -> int:
        client = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1500)
        fa.set_fetch_max_wait(client, 7)
        return client._fetch_max_wait_ms

    assert asyncio.run(built()) == 7


# --- the real app, consumer and producer (no broker) ----------------------------------------------


@dataclass
class FakeRecord:
    offset: int


class FakeMessage:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.topic, self.offset, self.acked = tp, tp.topic, offset, False


def run_with_app(body: Callable[[MonitorApp], Any]) -> Any:
    async def run() -> Any:
        app = MonitorApp("contract-test", broker="kafka://127.0.0.1:1", autodiscover=False, web_port=1,
                         store="memory://")
        return await body(app) if inspect.iscoroutinefunction(body) else body(app)

    return asyncio.run(run())


def test_monitor_app_wires_the_hooks() -> None:
    def body(app: MonitorApp) -> None:
        assert type(app.transport) is BatchTransport
        consumer = app.consumer
        assert type(consumer) is BatchConsumer and type(consumer._thread) is BatchConsumerThread
        assert type(app.producer) is DurableProducer
        assert fa.aiokafka_consumer(consumer) is None  # before the thread started
        assert not fa.group_coordinator_known(consumer)
        assert not consumer.batch_enabled()  # no handler yet: faust's own loop

    run_with_app(body)


def test_consumer_private_state_has_the_expected_shape() -> None:
    def body(app: MonitorApp) -> None:
        c = app.consumer
        tp = TP("t", 0)
        for name, default in (("_read_offset", None), ("_committed_offset", None)):
            mapping = getattr(c, name)
            assert isinstance(mapping, defaultdict) and mapping[tp] is default, name
        assert isinstance(c._acked, defaultdict) and c._acked[tp] == []
        assert isinstance(c._acked_index, defaultdict) and c._acked_index[tp] == set()
        assert c._n_acked == 0 and c._waiting_for_ack is None
        assert c._commit_every == app.conf.broker_commit_every
        assert fa.read_offsets(c) is c._read_offset
        assert fa.buffered_partitions(c) == set() and fa.buffered_partitions(c) is c._buffered_partitions

    run_with_app(body)


def test_worker_consumer_gets_the_short_fetch_wait_and_producer_the_durable_settings() -> None:
    async def body(app: MonitorApp) -> None:
        thread = app.consumer._thread
        client = thread._create_worker_consumer(thread.transport)
        assert client._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
        await client.stop()
        assert app.producer._settings_extra() == {"acks": "all", "enable_idempotence": True}
        producer = app.producer._new_producer()
        assert producer._txn_manager is not None  # aiokafka's idempotent producer (forces acks=all)
        await producer.stop()

    run_with_app(body)


def test_record_acks_keeps_the_books_as_faust_ack_does() -> None:
    """The same offsets acknowledged one message at a time by faust and in bulk by the adapter give
    the same books and the same committable offset."""

    def body(app: MonitorApp) -> None:
        c = app.consumer
        app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
        one, bulk = TP("t", 0), TP("t", 1)
        offsets = [5, 3, 4, 6, 4, 9]  # 4 twice; 9 after a gap
        for tp in (one, bulk):
            c._committed_offset[tp] = 3
        for o in offsets:
            c.ack(FakeMessage(one, o))  # type: ignore[arg-type]
        n_one = c._n_acked
        assert fa.record_acks(c, bulk, offsets) == 5
        assert c._n_acked == 2 * n_one == 2 * 5
        assert c._acked_index[one] == c._acked_index[bulk] == {3, 4, 5, 6, 9}
        assert sorted(c._acked[one]) == sorted(c._acked[bulk])
        assert fa.record_acks(c, bulk, [4, 2]) == 0  # acknowledged before, or below the committed
        assert c._new_offset(one) == c._new_offset(bulk) == 7  # 9 waits for 7 and 8

    run_with_app(body)


def test_drain_fetch_bookkeeping_on_a_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fetch through the real consumer: read offsets advance, a gap is recorded, the batch
    topic's records reach the handler in one call (the adapter's accessors end to end)."""

    async def body(app: MonitorApp) -> None:
        got: list[list[Any]] = []

        async def handler(records: list[Any]) -> None:
            got.append(records)

        app.batch_topics = frozenset({"t"})
        app.batch_handler = handler
        c = app.consumer
        assert c.batch_enabled()
        app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
        tp = TP("t", 0)
        fetch = {tp: [FakeRecord(1), FakeRecord(2), FakeRecord(5)]}
        c._read_offset[tp] = 1

        async def wait_next_records(consumer: Any, timeout: float) -> tuple[Any, Any]:
            return fetch, None

        monkeypatch.setattr(fa, "wait_next_records", wait_next_records)
        monkeypatch.setattr(type(c), "highwater", lambda self, tp: 6)
        await c.drain_fetch()
        assert [[r.offset for r in batch] for batch in got] == [[1, 2, 5]]
        assert c._read_offset[tp] == 5
        assert list(c._gap[tp]) and min(iv.begin for iv in c._gap[tp]) == 3

    run_with_app(body)


if __name__ == "__main__":  # the digests to paste into PINNED_DIGESTS after a re-check
    for key, fn in MIRRORED.items():
        print(f"    {key!r}:\n        {source_digest(fn)!r},")
