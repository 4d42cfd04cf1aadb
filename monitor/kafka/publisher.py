"""An asyncio Kafka publisher (aiokafka) for code that lives in an event loop, such as the HTTP intake.

Delivery contract: :meth:`AsyncPublisher.publish` and :meth:`AsyncPublisher.publish_many` return only
once the broker has acknowledged every record (``acks="all"``, idempotent producer), and raise when
any record could not be delivered. A failure is therefore "not known to be delivered", never
"known not to be delivered": some records of a failed :meth:`~AsyncPublisher.publish_many` may have
reached the topic, so callers must make re-sending harmless (deterministic ids, consumer-side dedup).

Never logs keys or values: they carry patient identifiers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer

from monitor.settings import Settings


class OutgoingRecord(NamedTuple):
    """One record to publish: ``partition`` ``None`` lets the producer choose (by key)."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


class Publisher(Protocol):
    """What the HTTP intake needs from a publisher (the real one and in-memory test doubles)."""

    async def publish(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None: ...

    async def publish_many(self, items: Iterable[OutgoingRecord]) -> None: ...


class PublisherNotStarted(RuntimeError):
    """:meth:`AsyncPublisher.publish` was called before :meth:`AsyncPublisher.start`."""


def producer_config(settings: Settings) -> dict[str, object]:
    """aiokafka producer keyword arguments for ``settings`` (connection, security, delivery)."""
    cfg: dict[str, object] = {
        **settings.aiokafka_config(),
        "client_id": f"{settings.app_id}-intake",
        "acks": "all",
        "enable_idempotence": True,  # broker-side dedup of the producer's own retries
        "linger_ms": 5,  # a request's records go out in a few produce requests, not one each
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
    }
    return cfg


class AsyncPublisher:
    """An ``AIOKafkaProducer`` built from :class:`~monitor.settings.Settings`.

    The producer is created in :meth:`start` (aiokafka binds it to the running event loop), so one
    instance can be constructed anywhere and started inside the loop that uses it.
    """

    def __init__(self, settings: Settings, **overrides: object) -> None:
        self._config = {**producer_config(settings), **overrides}
        self._producer: AIOKafkaProducer | None = None

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect to the cluster (raises when it is unreachable). Idempotent."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._config)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is buffered and disconnect. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise PublisherNotStarted("AsyncPublisher.start() has not been awaited")
        return self._producer

    async def publish(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        """Publish one record and wait until the broker acknowledged it."""
        await self.publish_many([OutgoingRecord(topic, key, value, partition)])

    async def publish_many(self, items: Iterable[OutgoingRecord]) -> None:
        """Publish every record and wait until the broker acknowledged all of them.

        All records are handed to the producer first (it batches them per partition), then the
        delivery futures are awaited together. Raises the first delivery error, after every future
        has settled (so no delivery outcome is left unobserved).
        """
        producer = self._require()
        futures: list[asyncio.Future[object]] = []
        try:
            for topic, key, value, partition in items:
                # send() only waits while the producer's buffer is full; delivery is the future.
                futures.append(await producer.send(topic, value=value, key=key, partition=partition))
        except BaseException:
            await asyncio.gather(*futures, return_exceptions=True)
            raise
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
