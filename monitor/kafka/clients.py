"""Kafka producers and consumers (kafka-python) used by the simulator, the CLI and the tests.

The live worker uses faust (aiokafka) instead; see ``monitor.stream``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from monitor.settings import Settings


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer batching aggressively (linger 20 ms, lz4-free gzip-free: plain bytes)."""
    cfg: dict[str, Any] = {
        **settings.kafka_python_config(),
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "acks": "all",
        "max_request_size": 8 * 1024 * 1024,
        "retries": 5,
    }
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def read_topic(settings: Settings, topic: str, *, timeout_s: float = 5.0,
               group_id: str | None = None) -> Iterator[Any]:
    """Every record currently on ``topic`` from the beginning (stops after ``timeout_s`` idle)."""
    consumer = KafkaConsumer(
        topic,
        **settings.kafka_python_config(),
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        yield from consumer
    finally:
        consumer.close()
