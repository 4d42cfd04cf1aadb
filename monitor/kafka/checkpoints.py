"""Durable per-partition state checkpoints on a compacted Kafka topic, and output read-back.

Why Kafka and not the worker's disk: a partition moves to another worker on a rebalance or after a
crash, and its state must move with it. Partition ``p`` of every input topic is checkpointed to
partition ``p`` of the checkpoint topic.

A checkpoint is compressed with zlib (level 1) and split into chunks of at most ``CHUNK_BYTES``
(Kafka's default message limit is 1 MB; snapshots of large partitions are tens of MB). Chunk
``i`` of partition ``p`` has key ``b"p:i"`` so compaction keeps the latest chunk per index;
every chunk carries the checkpoint's sequence number, a random id of the write and the chunk
count, and :meth:`CheckpointStore.load` returns the newest sequence with a write whose chunks
are all present (the last such write of that sequence: after a crash in the middle of a write,
the restarted owner reuses its sequence number, and chunks of the two writes must not mix). A
checkpoint is durable once :meth:`CheckpointStore.save` returns (every chunk acknowledged by the
broker with ``acks=all``).

Failure behaviour: Kafka errors propagate (the worker crashes and restarts from the last durable
checkpoint); a corrupt chunk is skipped and logged (without payload), falling back to an older
complete checkpoint. A partition whose log holds chunks but no complete checkpoint (torn writes,
or compaction removed chunks of the last complete one) raises :class:`CheckpointUnreadable`:
its state cannot be recovered from the checkpoints, and the worker rebuilds it from the input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from monitor.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 900_000
MAGIC = b"CMCKPT1\n"


class CheckpointUnreadable(Exception):
    """The partition's log holds checkpoint chunks but no complete checkpoint. ``max_seq`` is the
    highest sequence number among its readable chunks (0 if none): a new checkpoint must use a
    higher one to be preferred to them."""

    def __init__(self, message: str, max_seq: int = 0) -> None:
        super().__init__(message)
        self.max_seq = max_seq


def encode_chunks(partition: int, seq: int, data: bytes, *, compressed: bool = False,
                  write_id: str | None = None) -> list[tuple[bytes, bytes]]:
    """(key, value) records of one checkpoint (``compressed``: ``data`` is zlib-compressed;
    ``write_id``: the id shared by the chunks of this write, random by default)."""
    n = max(1, -(-len(data) // CHUNK_BYTES))
    w = write_id or secrets.token_hex(8)
    out = []
    for i in range(n):
        meta = {"p": partition, "seq": seq, "w": w, "i": i, "n": n, "size": len(data)}
        if compressed:
            meta["z"] = 1
        head = json.dumps(meta).encode()
        body = data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]
        out.append((f"{partition}:{i}".encode(), MAGIC + len(head).to_bytes(4, "little") + head + body))
    return out


def decode_chunk(value: bytes) -> tuple[dict[str, Any], bytes] | None:
    if not value.startswith(MAGIC):
        return None
    m = len(MAGIC)
    n = int.from_bytes(value[m:m + 4], "little")
    try:
        head = json.loads(value[m + 4:m + 4 + n])
    except ValueError:
        return None
    return head, value[m + 4 + n:]


def assemble(chunks: list[tuple[dict[str, Any], bytes]]) -> tuple[int, bytes] | None:
    """The newest complete checkpoint among chunks (in log order): (seq, bytes) or None.

    Chunks are grouped by write (sequence number and write id; chunks written before write ids
    existed form one group per sequence). The highest sequence with a complete write wins, and of
    its complete writes the one that ended last in the log.
    """
    writes: dict[tuple[int, str], dict[int, bytes]] = {}
    meta: dict[tuple[int, str], tuple[int, int, bool]] = {}
    ended: dict[tuple[int, str], int] = {}
    for position, (head, body) in enumerate(chunks):
        key = (int(head["seq"]), str(head.get("w", "")))
        writes.setdefault(key, {})[int(head["i"])] = body
        meta[key] = (int(head["n"]), int(head["size"]), bool(head.get("z")))
        ended[key] = position
    for key in sorted(writes, key=lambda k: (k[0], ended[k]), reverse=True):
        n, size, compressed = meta[key]
        parts = writes[key]
        if len(parts) == n and all(i in parts for i in range(n)):
            data = b"".join(parts[i] for i in range(n))
            if len(data) != size:
                continue
            if compressed:
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    log.warning("skipping a corrupt compressed checkpoint")
                    continue
            return key[0], data
    return None


class CheckpointStore:
    """Save and load per-partition checkpoints on ``topic`` (one aiokafka producer)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._looked_up: set[str] = set()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **self.settings.aiokafka_config(), acks="all", max_request_size=CHUNK_BYTES + 100_000,
            linger_ms=5,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._offsets is not None:
            await self._offsets.stop()
            self._offsets = None
            self._looked_up.clear()

    async def ensure_started(self, topics: Sequence[str] = ()) -> None:
        """Connect the producer and the offsets client now and look up ``topics`` once (the first
        :meth:`save` or :meth:`end_offsets` otherwise pays for that, ~0.3 s, maybe while its
        caller holds a lock)."""
        if self._producer is None:
            await self.start()
        await self._offsets_client()
        new = [t for t in topics if t not in self._looked_up]
        if new:
            await self.end_offsets_of([(t, 0) for t in new])
            self._looked_up.update(new)

    async def _offsets_client(self) -> AIOKafkaConsumer:
        if self._offsets is None:
            offsets = AIOKafkaConsumer(**self.settings.aiokafka_config(), enable_auto_commit=False,
                                       group_id=None)
            await offsets.start()
            if self._offsets is None:
                self._offsets = offsets
            else:  # started concurrently
                await offsets.stop()
        return self._offsets

    async def end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """The next offset to be written of each partition of ``topic`` (one reused client)."""
        ends = await self.end_offsets_of([(topic, p) for p in partitions])
        return {p: off for (_, p), off in ends.items()}

    async def end_offsets_of(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offset to be written of each ``(topic, partition)``, in one request per
        broker (one reused client)."""
        client = await self._offsets_client()
        ends = await client.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}

    async def save(self, partition: int, seq: int, data: bytes) -> None:
        """Write a checkpoint; returns when every chunk is acknowledged (starts lazily)."""
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        # zlib level 1: state arrays are mostly slack, ~7x smaller at ~100 MB/s per core
        packed = await asyncio.get_running_loop().run_in_executor(None, zlib.compress, data, 1)
        futures = [
            await self._producer.send(self.topic, key=k, value=v, partition=partition)
            for k, v in encode_chunks(partition, seq, packed, compressed=True)
        ]
        await asyncio.gather(*futures)

    async def load(self, partition: int) -> tuple[int, bytes] | None:
        """The newest complete checkpoint of ``partition`` (None when the partition holds no
        record: nothing was ever checkpointed).

        Reads from the tail of the partition backwards (a window of records that grows 4x until
        it holds a complete checkpoint or reaches the beginning), so the cost does not grow with
        the superseded chunks that compaction has not removed yet. Raises
        :class:`CheckpointUnreadable` when the partition holds records but no complete checkpoint.
        """
        window = 64
        while True:
            records, at_beginning = await read_tail(self.settings, self.topic, partition, window)
            chunks: list[tuple[dict[str, Any], bytes]] = []
            for rec in records:
                if rec.value is None:
                    continue
                decoded = decode_chunk(rec.value)
                if decoded is None:
                    log.warning("skipping a corrupt checkpoint chunk in partition %d", partition)
                    continue
                chunks.append(decoded)
            found = assemble(chunks)
            if found is not None:
                return found
            if at_beginning:
                if any(rec.value is not None for rec in records):
                    raise CheckpointUnreadable(
                        f"partition {partition} holds {len(records)} checkpoint records but no "
                        "complete checkpoint", max((int(h["seq"]) for h, _ in chunks), default=0))
                return None
            window *= 4


async def read_tail(settings: Settings, topic: str, partition: int, count: int) -> tuple[list[Any], bool]:
    """The last ``count`` records of one topic partition, and whether that reaches its beginning."""
    probe = AIOKafkaConsumer(**settings.aiokafka_config(), enable_auto_commit=False, group_id=None)
    await probe.start()
    try:
        tp = TopicPartition(topic, partition)
        begin = (await probe.beginning_offsets([tp]))[tp]
        end = (await probe.end_offsets([tp]))[tp]
    finally:
        await probe.stop()
    start = max(begin, end - count)
    return await read_partition(settings, topic, partition, start), start == begin


async def read_partition(settings: Settings, topic: str, partition: int,
                         start: int | None = None, stop: int | None = None) -> list[Any]:
    """Every record of one topic partition from ``start`` (default: the beginning) to its end, or
    to ``stop`` (exclusive) if that is earlier."""
    consumer = AIOKafkaConsumer(
        **settings.aiokafka_config(), enable_auto_commit=False, group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=CHUNK_BYTES * 2, fetch_max_bytes=CHUNK_BYTES * 8,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if stop is not None:
            end = min(end, stop)
        # explicit offsets: seek_to_beginning right after assign() resolves lazily and was seen to
        # land at the end
        begin = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, max(begin, start or 0))
        out: list[Any] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for records in batch.values():
                out.extend(r for r in records if r.offset < end)
        return out
    finally:
        await consumer.stop()
