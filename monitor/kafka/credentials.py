"""The ``credentials`` topic (compacted, one partition): publish a credential, read them all, and
follow the topic so that every intake sees additions and revocations within a fetch."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from monitor.credentials import Credential, CredentialRegistry
from monitor.kafka.clients import producer, read_topic
from monitor.settings import Settings

log = logging.getLogger(__name__)


def publish(settings: Settings, credential: Credential) -> None:
    """Write ``credential`` (a new one, or one revoked) and wait for the broker (acks=all)."""
    import json

    prod = producer(settings)
    try:
        prod.send(settings.topics.name("credentials"), key=credential.credential_id.encode(),
                  value=json.dumps(credential.to_json()).encode(), partition=0).get(timeout=30)
    finally:
        prod.close()


def load(settings: Settings, timeout_s: float = 3.0) -> CredentialRegistry:
    """Every credential on the topic now (blocking; for the CLI)."""
    registry = CredentialRegistry()
    for rec in read_topic(settings, settings.topics.name("credentials"), timeout_s=timeout_s):
        registry.apply(rec.value, rec.key)
    return registry


async def follow(settings: Settings, registry: CredentialRegistry, caught_up: asyncio.Event) -> None:
    """Apply the topic to ``registry`` for ever; ``caught_up`` is set once the records present at
    start are applied (the intake answers credentialed requests only after that). A failure
    (the broker away) is logged and the topic read again a second later: it never ends the
    worker or the intake it runs in; the credentials known so far stay in force meanwhile."""
    while True:
        try:
            await _follow_once(settings, registry, caught_up)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep following
            log.warning("following the credentials topic failed (%s); again in 1 s", type(exc).__name__)
            await asyncio.sleep(1.0)


async def _follow_once(settings: Settings, registry: CredentialRegistry, caught_up: asyncio.Event) -> None:
    tp = TopicPartition(settings.topics.name("credentials"), 0)
    consumer = AIOKafkaConsumer(**settings.aiokafka_config(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batch.values():
                for rec in records:
                    registry.apply(rec.value, rec.key)
            # the position, not the last offset seen: compaction leaves gaps in the offsets
            if not caught_up.is_set() and await consumer.position(tp) >= end:
                caught_up.set()
    finally:
        await consumer.stop()
