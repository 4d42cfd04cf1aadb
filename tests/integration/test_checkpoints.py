"""The checkpoint store against the real broker: the newest complete checkpoint wins, read from the tail."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import AIOKafkaProducer

from monitor.kafka import checkpoints
from monitor.kafka.admin import ensure_topics

from .conftest import settings_from


def _data(seq: int, size: int) -> bytes:
    return random.Random(seq).randbytes(size)  # incompressible: chunk counts stay as planned


@pytest.mark.timeout(180)
def test_load_finds_the_newest_complete_checkpoint_behind_a_torn_tail(env, monkeypatch):
    monkeypatch.setattr(checkpoints, "CHUNK_BYTES", 10)  # many chunks per checkpoint
    settings = settings_from(env)
    ensure_topics(settings)
    topic = settings.topics.name("checkpoints")

    async def scenario() -> tuple[object, object, object]:
        store = checkpoints.CheckpointStore(settings, topic)
        try:
            for seq in range(1, 41):  # 40 superseded small checkpoints: 3 chunks each
                await store.save(0, seq, _data(seq, 25))
            await store.save(0, 41, _data(41, 2000))  # >200 chunks: larger than the first window
            empty = await store.load(1)
            big = await store.load(0)
            # a crash in the middle of checkpoint 42: only some of its chunks reach the log
            producer = AIOKafkaProducer(**settings.aiokafka_config(), acks="all")
            await producer.start()
            try:
                for key, value in checkpoints.encode_chunks(0, 42, _data(42, 300))[:17]:
                    await producer.send_and_wait(topic, key=key, value=value, partition=0)
            finally:
                await producer.stop()
            torn = await store.load(0)
        finally:
            await store.stop()
        return empty, big, torn

    empty, big, torn = asyncio.run(scenario())
    assert empty is None
    assert big == (41, _data(41, 2000))
    assert torn == (41, _data(41, 2000))  # the incomplete checkpoint 42 is ignored


@pytest.mark.timeout(120)
def test_a_partition_with_chunks_but_no_complete_checkpoint_is_unreadable(env, monkeypatch):
    """Only a torn write (or what compaction left of older ones): the store says so instead of
    returning "no checkpoint", which would restart the partition from empty state."""
    monkeypatch.setattr(checkpoints, "CHUNK_BYTES", 10)
    settings = settings_from(env)
    ensure_topics(settings)
    topic = settings.topics.name("checkpoints")

    async def scenario() -> tuple[object, BaseException | None]:
        store = checkpoints.CheckpointStore(settings, topic)
        producer = AIOKafkaProducer(**settings.aiokafka_config(), acks="all")
        await producer.start()
        try:
            for key, value in checkpoints.encode_chunks(1, 7, _data(7, 300))[:5]:
                await producer.send_and_wait(topic, key=key, value=value, partition=1)
            empty = await store.load(2)
            try:
                await store.load(1)
            except checkpoints.CheckpointUnreadable as exc:
                return empty, exc
            return empty, None
        finally:
            await producer.stop()
            await store.stop()

    empty, error = asyncio.run(scenario())
    assert empty is None
    assert isinstance(error, checkpoints.CheckpointUnreadable)
