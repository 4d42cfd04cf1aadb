"""The simulator's delivery accounting, against a scripted stand-in for kafka-python's producer.

Every generated message ends up either delivered (acknowledged) or counted undelivered with a reason;
retriable failures are re-sent until the message's deadline, the number of messages awaiting
acknowledgement never exceeds ``max_pending``, and the CLI exits 3 with counts (never payloads or
patient ids) when anything was not delivered. The real broker outages are in
``tests/integration/test_simulator_outage.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    NotLeaderForPartitionError,
)

from monitor import cli
from monitor import simulate as sim
from monitor.kafka import clients
from monitor.settings import Settings, Topics
from monitor.simulate import NOT_SENT, UNACKNOWLEDGED, PublishResult, SimConfig, generate, publish

CFG = SimConfig(patients=30, days=2, seed=7, end=datetime(2026, 11, 1, tzinfo=UTC))
SETTINGS = Settings(bootstrap_servers="unused:9092", topics=Topics(prefix="unit-"))  # type: ignore[arg-type]


def generated_counts(cfg: SimConfig = CFG) -> Counter[str]:
    return Counter("invalid" if typ.startswith("invalid:") else typ for typ, _ in generate(cfg))


class Clock:
    """A fake monotonic clock: waiting on an unresolved future advances it by the wait."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeFuture:
    """The parts of kafka-python's FutureRecordMetadata that the simulator uses."""

    def __init__(self, producer: FakeProducer, outcome: Any) -> None:
        self.producer, self.outcome = producer, outcome
        self.is_done, self.exception = False, None
        if outcome != "hang" and not producer.lazy:
            self._resolve()

    def _resolve(self) -> None:
        self.is_done = True
        if isinstance(self.outcome, BaseException):
            self.exception = self.outcome
        self.producer.unresolved -= 1

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def get(self, timeout: float | None = None) -> Any:
        if not self.is_done and self.outcome != "hang":
            self._resolve()
        if not self.is_done:
            self.producer.clock.sleep(timeout or 0.0)
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if self.exception is not None:
            raise self.exception
        return "metadata"


class FakeProducer:
    """``outcome(n, attempt)`` decides the fate of the n-th distinct message's attempt: "ok", "hang"
    (never resolved), an exception instance (the future fails with it) or ("raise", exception) (send()
    itself raises). With ``lazy``, futures resolve only when waited on."""

    def __init__(self, outcome: Callable[[int, int], Any], clock: Clock | None = None,
                 lazy: bool = False) -> None:
        self.outcome, self.clock, self.lazy = outcome, clock or Clock(), lazy
        self.attempts: Counter[tuple[str, bytes, bytes, int]] = Counter()
        self.order: dict[tuple[str, bytes, bytes, int], int] = {}
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.unresolved = 0
        self.max_unresolved = 0
        self.closed_with: list[float | None] = []
        self.metadata_for: list[str] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int) -> FakeFuture:
        msg = (topic, key, value, partition)
        n = self.order.setdefault(msg, len(self.order))
        attempt = self.attempts[msg]
        self.attempts[msg] += 1
        outcome = self.outcome(n, attempt)
        if isinstance(outcome, tuple) and outcome[0] == "raise":
            raise outcome[1]
        self.sent.append(msg)
        self.unresolved += 1
        self.max_unresolved = max(self.max_unresolved, self.unresolved)
        return FakeFuture(self, outcome)

    def partitions_for(self, topic: str) -> set[int]:
        self.metadata_for.append(topic)
        return set(range(8))

    def close(self, timeout: float | None = None) -> None:
        self.closed_with.append(timeout)


def run(monkeypatch: pytest.MonkeyPatch, prod: FakeProducer, **kw: Any) -> PublishResult:
    monkeypatch.setattr(clients, "producer", lambda settings, **overrides: prod)
    monkeypatch.setattr(sim.time, "monotonic", prod.clock)
    monkeypatch.setattr(sim.time, "sleep", prod.clock.sleep)
    return publish(CFG, SETTINGS, progress=False, **kw)


def test_every_message_acknowledged_is_delivered_and_the_result_reads_like_the_old_counts(monkeypatch):
    prod = FakeProducer(lambda n, attempt: "ok")
    result = run(monkeypatch, prod)
    want = generated_counts()
    assert result.complete and result.undelivered == {} and result.reasons == {}
    assert dict(result) == dict(want) and result.delivered == dict(want)
    assert sum(result.values()) == sum(want.values()) == result.generated == len(prod.sent)
    assert result["patient"] == CFG.patients and set(result) == set(want)
    assert json.loads(json.dumps(dict(result))) == dict(want)
    assert prod.closed_with == [30]  # nothing left to abandon: a normal close
    # metadata of every input topic fetched up front: no send() blocks on it if the broker goes away
    assert sorted(prod.metadata_for) == sorted(SETTINGS.topics.name(k) for k in set(sim.TOPIC_OF.values()))


def test_retriable_failures_are_resent_until_delivered(monkeypatch):
    # every third message fails twice (leader moved), then is acknowledged
    prod = FakeProducer(lambda n, attempt: NotLeaderForPartitionError() if n % 3 == 0 and attempt < 2
                        else "ok")
    result = run(monkeypatch, prod)
    total = sum(generated_counts().values())
    assert result.complete and result.total_delivered == total
    assert result.resent == 2 * len(range(0, total, 3))
    assert len(prod.sent) == total + result.resent  # the same message re-sent, nothing else


def test_send_that_cannot_even_queue_is_retried(monkeypatch):
    # no metadata for the topic within max_block_ms: send() raises a retriable error, twice
    prod = FakeProducer(lambda n, attempt: ("raise", KafkaTimeoutError("metadata")) if n == 5 and attempt < 2
                        else "ok")
    result = run(monkeypatch, prod)
    assert result.complete and result.total_delivered == sum(generated_counts().values())


def test_a_rejected_message_is_lost_alone_and_publication_goes_on(monkeypatch):
    prod = FakeProducer(lambda n, attempt: MessageSizeTooLargeError() if n == 10 else "ok")
    result = run(monkeypatch, prod)
    want = generated_counts()
    assert not result.complete and not result.stopped
    assert result.total_undelivered == 1 and result.reasons == {"rejected:MessageSizeTooLargeError": 1}
    assert result.total_delivered == sum(want.values()) - 1
    assert {t: result.delivered[t] + result.undelivered.get(t, 0) for t in want} == dict(want)


def test_broker_gone_gives_up_at_the_deadline_and_counts_everything(monkeypatch):
    # the first 40 messages are acknowledged, then nothing ever is: each later send hangs
    clock = Clock()
    prod = FakeProducer(lambda n, attempt: "ok" if n < 40 else "hang", clock)
    result = run(monkeypatch, prod, delivery_timeout_s=15.0, max_pending=25)
    want = generated_counts()
    total = sum(want.values())
    assert not result.complete and result.stopped
    assert result.total_delivered == 40 and result.total_undelivered == total - 40
    assert result.reasons[UNACKNOWLEDGED] == 25  # the window that was in flight
    assert result.reasons[NOT_SENT] == total - 40 - 25  # the rest was generated but not sent
    assert {t: result.delivered.get(t, 0) + result.undelivered.get(t, 0) for t in want} == dict(want)
    assert clock.now <= 15.0 + 1e-9  # gave up after one deadline, not one per message
    assert prod.closed_with == [0]  # abandoned: no flush of what will never be acknowledged
    report = result.loss_report()
    assert f"{total - 40:,} of {total:,} messages were NOT delivered" in report
    assert "P007-" not in report and "unacknowledged" in report and "15 s" in report


def test_expired_batches_after_the_deadline_are_not_resent(monkeypatch):
    # the client's own delivery timeout fails everything after message 40 with a retriable error
    clock = Clock()

    def outcome(n: int, attempt: int) -> Any:
        if n < 40:
            return "ok"
        clock.sleep(1.0)  # each later attempt "takes" a second before it expires
        return KafkaTimeoutError("Expiring 1 record(s)")

    prod = FakeProducer(outcome, clock)
    result = run(monkeypatch, prod, delivery_timeout_s=5.0)
    assert result.stopped and result.total_delivered == 40
    assert result.generated == sum(generated_counts().values())
    assert max(prod.attempts.values()) <= 6  # re-sent while the deadline allowed, then given up


def test_at_most_max_pending_messages_await_acknowledgement(monkeypatch):
    prod = FakeProducer(lambda n, attempt: "ok", lazy=True)  # acknowledged only when waited on
    result = run(monkeypatch, prod, max_pending=7)
    assert result.complete
    assert prod.max_unresolved == 7


def test_no_broker_at_start_up_counts_everything_not_sent(monkeypatch):
    clock = Clock()
    calls = []

    def no_broker(settings: Any, **overrides: Any) -> Any:
        calls.append(overrides)
        clock.sleep(0.5)
        raise NoBrokersAvailable()

    monkeypatch.setattr(clients, "producer", no_broker)
    monkeypatch.setattr(sim.time, "monotonic", clock)
    monkeypatch.setattr(sim.time, "sleep", clock.sleep)
    result = publish(CFG, SETTINGS, progress=False, delivery_timeout_s=3.0)
    assert result.stopped and result.total_delivered == 0
    assert result.reasons == {NOT_SENT: sum(generated_counts().values())}
    assert 2 <= len(calls) <= 4 and clock.now < 5.0
    assert calls[0]["enable_idempotence"] is True and calls[0]["delivery_timeout_ms"] == 3000


def test_an_unexpected_error_drops_the_pending_messages_and_propagates(monkeypatch):
    def outcome(n: int, attempt: int) -> Any:
        if n == 20:
            raise AssertionError("Unrecognized partition")  # what kafka-python raises for a bad partition
        return "hang"

    prod = FakeProducer(outcome)
    with pytest.raises(AssertionError):
        run(monkeypatch, prod)
    assert prod.closed_with == [0]  # closed without waiting for the 20 unacknowledged messages


def test_delivery_timeout_must_be_positive_and_finite():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            publish(CFG, SETTINGS, delivery_timeout_s=bad)


def test_producer_settings_follow_the_deadline():
    o = sim._producer_overrides(15.0)
    assert o["enable_idempotence"] is True and o["delivery_timeout_ms"] == 15_000
    assert o["request_timeout_ms"] + 20 <= o["delivery_timeout_ms"] and o["max_block_ms"] == 15_000
    assert sim._producer_overrides(300.0)["request_timeout_ms"] == 30_000


def result_with(undelivered: dict[str, int]) -> PublishResult:
    return PublishResult(delivered={"patient": 30, "reading": 100}, undelivered=undelivered,
                         reasons={UNACKNOWLEDGED: sum(undelivered.values())} if undelivered else {},
                         stopped=bool(undelivered), delivery_timeout_s=12.0)


@pytest.mark.parametrize("undelivered, code", [({}, 0), ({"reading": 7}, cli.EXIT_UNDELIVERED)])
def test_cli_exit_code_and_message(monkeypatch, capsys, undelivered, code):
    seen: dict[str, Any] = {}

    def fake_publish(cfg: SimConfig, settings: Any, **kw: Any) -> PublishResult:
        seen.update(kw)
        return result_with(undelivered)

    monkeypatch.setattr(sim, "publish", fake_publish)
    monkeypatch.setattr(cli, "_settings", lambda: SETTINGS)
    rc = cli.main(["simulate", "--patients", "3", "--days", "1", "--delivery-timeout", "12"])
    out, err = capsys.readouterr()
    assert rc == code == (0 if not undelivered else 3)
    assert seen["delivery_timeout_s"] == 12.0
    assert json.loads(out) == {"patient": 30, "reading": 100}  # what was delivered
    if undelivered:
        assert "7 of 137 messages were NOT delivered" in err and "reading: 7" in err
    else:
        assert err == ""
