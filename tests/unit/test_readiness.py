"""Liveness and readiness without a broker: the intake's ``/healthz`` and ``/readyz`` against
publisher doubles (real classes whose ``check_broker`` answers as told), its check throttle, and the
worker's readiness decision (:func:`monitor.stream.health.decide`), lag arithmetic and ``/readyz``
view on a real faust app with stand-in consumer state."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from faust.types import TP
from multidict import CIMultiDict

from monitor.intake.http import READY_REASONS, ReadinessCache, create_intake_app
from monitor.intake.serve import ProbingPublisher
from monitor.kafka.publisher import OutgoingRecord
from monitor.settings import Settings, Topics
from monitor.stream.consumer import MonitorApp
from monitor.stream.health import (
    REASONS,
    WorkerReadiness,
    WorkerState,
    add_readiness,
    consumer_connected,
    decide,
    input_lag,
    next_offset,
    partition_lag,
)

TOKEN = "s3cret-token"
SASL_PASSWORD = "sasl-pa55word"
SETTINGS = Settings(  # the Kafka settings by their environment names (their aliases)
    api_token=TOKEN, partitions=8, topics=Topics(prefix="unit-"),  # type: ignore[arg-type]
    KAFKA_BOOTSTRAP_SERVERS="kafka.internal:9092", KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
    KAFKA_SASL_MECHANISM="PLAIN", KAFKA_SASL_USERNAME="intake", KAFKA_SASL_PASSWORD=SASL_PASSWORD,
)
assert SETTINGS.bootstrap == "kafka.internal:9092" and SETTINGS.sasl_password is not None


# --- the intake -----------------------------------------------------------------------------------


@dataclass
class BrokerPublisher:
    """A publisher whose broker check answers ``reason`` (None: reachable) after ``delay_s``, or
    raises ``error``; counts the checks."""

    reason: str | None = None
    delay_s: float = 0.0
    error: Exception | None = None
    checks: int = 0
    records: list[OutgoingRecord] = field(default_factory=list)

    async def publish(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        await self.publish_many([OutgoingRecord(topic, key, value, partition)])

    async def publish_many(self, items: Iterable[OutgoingRecord]) -> None:
        if self.reason is not None:
            raise ConnectionError("broker unavailable")
        self.records.extend(items)

    async def check_broker(self) -> str | None:
        self.checks += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.reason


class PlainPublisher:
    """A publisher that cannot check the broker (like the other tests' doubles)."""

    async def publish(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        return None

    async def publish_many(self, items: Iterable[OutgoingRecord]) -> None:
        return None


@dataclass
class Got:
    status: int
    headers: CIMultiDict[str]  # case-insensitive, like HTTP
    body: Any
    text: str


def get(publisher: Any, *paths: str, **options: Any) -> list[Got]:
    """GET each path, in order, from one fresh intake app (no Authorization header)."""

    async def go() -> list[Got]:
        app = create_intake_app(SETTINGS, publisher, **options)
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in paths:
                resp = await client.get(path)
                text = await resp.text()
                out.append(Got(resp.status, CIMultiDict(resp.headers), json.loads(text), text))
        return out

    return asyncio.run(go())


def test_healthz_is_liveness_and_stays_200_while_the_broker_is_down() -> None:
    pub = BrokerPublisher(reason="broker_unreachable")
    health, ready = get(pub, "/healthz", "/readyz")
    assert (health.status, health.body) == (200, {"status": "ok"})
    assert ready.status == 503
    assert ready.body["status"] == "not_ready" and ready.body["reason"] == "broker_unreachable"


def test_healthz_never_runs_the_broker_check() -> None:
    pub = BrokerPublisher()
    get(pub, "/healthz", "/healthz", "/healthz")
    assert pub.checks == 0


def test_readyz_is_200_without_a_token_when_the_broker_answers() -> None:
    (ready,) = get(BrokerPublisher(), "/readyz")
    assert ready.status == 200
    assert ready.body["status"] == "ready" and set(ready.body) == {"status", "checked_s_ago"}
    assert ready.headers["Cache-Control"] == "no-store"
    assert ready.headers["X-Request-Id"]


@pytest.mark.parametrize("reason", sorted(READY_REASONS - {"no_broker_check", "check_failed"}))
def test_readyz_is_503_with_the_reason_and_retry_after(reason: str) -> None:
    (ready,) = get(BrokerPublisher(reason=reason), "/readyz")
    assert ready.status == 503
    assert ready.body == {"status": "not_ready", "reason": reason,
                          "checked_s_ago": ready.body["checked_s_ago"]}
    assert int(ready.headers["Retry-After"]) >= 1


def test_a_publisher_without_a_broker_check_is_never_ready() -> None:
    (ready,) = get(PlainPublisher(), "/readyz")
    assert ready.status == 503 and ready.body["reason"] == "no_broker_check"


def test_a_failing_check_is_not_ready_and_its_message_never_reaches_the_answer() -> None:
    pub = BrokerPublisher(error=RuntimeError(f"login failed for intake:{SASL_PASSWORD}@kafka.internal"))
    (ready,) = get(pub, "/readyz")
    assert ready.status == 503 and ready.body["reason"] == "check_failed"
    for secret in (SASL_PASSWORD, TOKEN, "kafka.internal", "RuntimeError"):
        assert secret not in ready.text


def test_an_unknown_reason_from_the_check_is_replaced_by_check_failed() -> None:
    (ready,) = get(BrokerPublisher(reason=f"cannot log in with {SASL_PASSWORD}"), "/readyz")
    assert ready.status == 503 and ready.body["reason"] == "check_failed"
    assert SASL_PASSWORD not in ready.text


def test_a_slow_check_is_cut_at_the_timeout() -> None:
    t0 = time.monotonic()
    (ready,) = get(BrokerPublisher(delay_s=5.0), "/readyz", ready_timeout_s=0.2)
    assert time.monotonic() - t0 < 3.0
    assert ready.status == 503 and ready.body["reason"] == "broker_timeout"


def test_polling_readyz_checks_the_broker_at_most_once_per_interval() -> None:
    pub = BrokerPublisher(delay_s=0.05)

    async def go() -> list[int]:
        app = create_intake_app(SETTINGS, pub, ready_interval_s=60.0)
        async with TestClient(TestServer(app)) as client:
            concurrent = await asyncio.gather(*(client.get("/readyz") for _ in range(20)))
            sequential = [await client.get("/readyz") for _ in range(20)]
            return [r.status for r in [*concurrent, *sequential]]

    statuses = asyncio.run(go())
    assert statuses == [200] * 40
    assert pub.checks == 1  # 20 concurrent requests shared one check, the next 20 got its result


def test_readiness_cache_checks_again_once_the_interval_passed() -> None:
    now = [100.0]
    pub = BrokerPublisher()
    cache = ReadinessCache(pub.check_broker, interval_s=2.0, monotonic=lambda: now[0])

    async def go() -> list[tuple[str | None, float, int]]:
        out = []
        for step, reason in ((0.0, None), (1.5, "broker_unreachable"), (0.6, "broker_unreachable"),
                             (1.0, None), (1.0, None)):
            now[0] += step
            pub.reason = reason
            got, age = await cache.get()
            out.append((got, age, pub.checks))
        return out

    assert asyncio.run(go()) == [
        (None, 0.0, 1),  # first call: checked
        (None, 1.5, 1),  # 1.5 s later: the cached result (the broker went down meanwhile)
        ("broker_unreachable", 0.0, 2),  # 2.1 s after the check: checked again
        ("broker_unreachable", 1.0, 2),
        (None, 0.0, 3),
    ]


def test_readiness_cache_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        ReadinessCache(None, interval_s=-1)
    with pytest.raises(ValueError):
        ReadinessCache(None, timeout_s=0)


def test_probing_publisher_is_not_ready_before_it_started() -> None:
    pub = ProbingPublisher(Settings(topics=Topics(prefix="unit-")))  # type: ignore[arg-type]
    assert asyncio.run(pub.check_broker()) == "publisher_not_started"
    (ready,) = get(pub, "/readyz")
    assert ready.status == 503 and ready.body["reason"] == "publisher_not_started"


# --- the worker: the decision -------------------------------------------------------------------


def state(**overrides: Any) -> WorkerState:
    fields: dict[str, Any] = {"connected": True, "joined": True, "rebalancing": False, "assigned": 4,
                              "restoring": 0, "lag": 0}
    fields.update(overrides)
    return WorkerState(**fields)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),
        ({"lag": 1000}, None),  # at the threshold: ready
        ({"lag": 1001}, "lagging"),
        ({"connected": False}, "not_connected"),
        ({"connected": False, "joined": False, "lag": None}, "not_connected"),  # first failing wins
        ({"joined": False, "assigned": 0}, "joining"),
        ({"rebalancing": True}, "rebalancing"),
        ({"restoring": 1}, "restoring"),
        ({"restoring": 2, "lag": 10**9}, "restoring"),
        ({"lag": None}, "lag_unknown"),
        ({"assigned": 0, "lag": 0}, None),  # settled with no partition: a standby is ready
        ({"assigned": 0, "lag": None}, None),
        ({"assigned": 0, "rebalancing": True}, "rebalancing"),
    ],
)
def test_decide(overrides: dict[str, Any], expected: str | None) -> None:
    assert decide(state(**overrides), max_lag=1000) == expected


def test_every_reason_is_documented() -> None:
    seen = {decide(state(**o), max_lag=0) for o in (
        {"connected": False}, {"joined": False}, {"rebalancing": True}, {"restoring": 1},
        {"lag": None}, {"lag": 1})}
    assert seen == set(REASONS)


def test_next_offset_and_partition_lag() -> None:
    assert next_offset(None, None) is None
    assert next_offset(41, None) == 42
    assert next_offset(None, 41) == 42
    assert next_offset(10, 41) == 42 and next_offset(41, 10) == 42
    assert partition_lag(100, 42) == 58
    assert partition_lag(100, 101) == 0  # never negative


# --- the worker: the consumer state ---------------------------------------------------------------


class FakeConsumer:
    """faust's consumer as far as readiness reads it."""

    def __init__(self, highwaters: dict[TP, int | None], *, read: dict[TP, int | None] | None = None,
                 positions: dict[TP, int] | None = None, position_delay_s: float = 0.0) -> None:
        self.highwaters = highwaters
        self._read_offset = read or {}
        self.positions = positions or {}
        self.position_delay_s = position_delay_s
        self.position_calls: list[TP] = []

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TP) -> int | None:
        self.position_calls.append(tp)
        await asyncio.sleep(self.position_delay_s)
        return self.positions.get(tp)


INPUTS = {"t-readings", "t-patients"}


def test_input_lag_sums_the_input_partitions_from_applied_or_read_offsets() -> None:
    consumer = FakeConsumer(
        {TP("t-readings", 0): 100, TP("t-readings", 1): 50, TP("t-patients", 0): 7,
         TP("t-equity-partials", 0): 10**6},  # not an input topic: ignored
        read={TP("t-readings", 1): 44})
    applied = {("t-readings", 0): 89, ("t-readings", 1): 39, ("t-patients", 0): 6}
    # 100-90 + 50-45 (read is further than applied) + 7-7
    assert asyncio.run(input_lag(consumer, INPUTS, applied)) == 15
    assert consumer.position_calls == []


def test_input_lag_is_unknown_before_the_first_fetch() -> None:
    consumer = FakeConsumer({TP("t-readings", 0): 100, TP("t-readings", 1): None})
    assert asyncio.run(input_lag(consumer, INPUTS, {("t-readings", 0): 99})) is None


def test_input_lag_asks_the_fetch_position_when_nothing_was_read_or_applied() -> None:
    # a partition emptied by retention in a new group: nothing is ever read, the position is the end
    tp = TP("t-readings", 3)
    consumer = FakeConsumer({tp: 5000}, positions={tp: 5000})
    assert asyncio.run(input_lag(consumer, INPUTS, {})) == 0
    assert consumer.position_calls == [tp]
    empty = FakeConsumer({tp: 0})  # a partition never written to: no look-up needed
    assert asyncio.run(input_lag(empty, INPUTS, {})) == 0 and empty.position_calls == []
    slow = FakeConsumer({tp: 5000}, positions={tp: 5000}, position_delay_s=5.0)
    t0 = time.monotonic()
    assert asyncio.run(input_lag(slow, INPUTS, {})) is None
    assert time.monotonic() - t0 < 3.0


@dataclass
class FakePartition:
    offsets: dict[str, int]


@dataclass
class FakePipeline:
    partitions: dict[int, FakePartition]


@dataclass
class FakeManager:
    """``PartitionManager`` as far as readiness reads it."""

    input_topics: set[str]
    assigned: set[int]
    owned: set[int]
    pipe: FakePipeline


class Coordinator:
    def __init__(self, coordinator_id: int | None) -> None:
        self.coordinator_id = coordinator_id


class AIOKafkaConsumer:
    def __init__(self, coordinator_id: int | None) -> None:
        self._coordinator = Coordinator(coordinator_id)


class ConsumerThread:
    def __init__(self, consumer: AIOKafkaConsumer | None) -> None:
        self._consumer = consumer


class ThreadedConsumer(FakeConsumer):
    def __init__(self, coordinator_id: int | None, highwaters: dict[TP, int | None]) -> None:
        super().__init__(highwaters)
        self._thread = ConsumerThread(AIOKafkaConsumer(coordinator_id))


class FakeApp:
    def __init__(self, consumer: Any, rebalancing: bool = False) -> None:
        self.consumer = consumer
        self.rebalancing = rebalancing


def test_consumer_connected_reads_the_group_coordinator() -> None:
    assert consumer_connected(FakeApp(ThreadedConsumer(1, {})))
    assert not consumer_connected(FakeApp(ThreadedConsumer(None, {})))  # coordinator lost
    not_started = ThreadedConsumer(1, {})
    not_started._thread = ConsumerThread(None)
    assert not consumer_connected(FakeApp(not_started))
    assert not consumer_connected(FakeApp(object()))  # attributes moved by an upgrade: never ready


def test_worker_readiness_report() -> None:
    tps = {TP("t-readings", 0): 120, TP("t-readings", 2): 30}
    mgr = FakeManager(INPUTS, assigned={0, 2}, owned={0, 2},
                      pipe=FakePipeline({0: FakePartition({"t-readings": 99}),
                                         2: FakePartition({"t-readings": 29})}))
    app = FakeApp(ThreadedConsumer(1, tps))
    readiness = WorkerReadiness(app, mgr, max_lag=20)
    readiness.joined = True
    status, body = asyncio.run(readiness.report())
    assert status == 200
    assert body == {"status": "ready", "connected": True, "joined": True, "rebalancing": False,
                    "partitions": [0, 2], "restoring_partitions": 0, "lag_messages": 20,
                    "max_lag_messages": 20}

    tps[TP("t-readings", 0)] = 121
    status, body = asyncio.run(readiness.report())
    assert (status, body["reason"], body["lag_messages"]) == (503, "lagging", 21)

    mgr.owned = {0}
    status, body = asyncio.run(readiness.report())
    assert (status, body["reason"], body["restoring_partitions"]) == (503, "restoring", 1)

    app.consumer._thread._consumer._coordinator.coordinator_id = None
    status, body = asyncio.run(readiness.report())
    assert (status, body["reason"], body["lag_messages"]) == (503, "not_connected", None)
    assert body["detail"] == REASONS["not_connected"]


def test_add_readiness_serves_readyz_on_the_faust_web_app() -> None:
    """The real faust app and view; the consumer's state stands in for a broker."""
    app = MonitorApp("unit-readiness", broker="kafka://127.0.0.1:1", autodiscover=False,
                     web_port=1)
    mgr = FakeManager(INPUTS, assigned=set(), owned=set(), pipe=FakePipeline({}))
    readiness = add_readiness(app, mgr, Settings(max_poll_records=500))
    assert readiness.max_lag == 5000  # DEFAULT_LAG_FETCHES fetches
    assert add_readiness(app, mgr, Settings(), max_lag=1) is readiness  # idempotent: one route
    readiness.app = FakeApp(ThreadedConsumer(1, {}))  # no broker: a connected consumer's state

    async def go() -> list[tuple[int, dict[str, Any]]]:
        out = []
        async with TestClient(TestServer(app.web.web_app)) as client:
            for _ in range(2):
                resp = await client.get("/readyz")
                out.append((resp.status, await resp.json()))
                # the group settles with no partition for this worker
                await app.on_partitions_assigned.send(set())
        return out

    (before, body_before), (after, body_after) = asyncio.run(go())
    assert (before, body_before["reason"]) == (503, "joining")
    assert after == 200 and body_after["status"] == "ready" and body_after["partitions"] == []
