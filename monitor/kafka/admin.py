"""Topic administration: create every topic up front with consistent partition counts.

All patient-keyed topics get the same partition count (``MONITOR_PARTITIONS``, default 8) so they are
co-partitioned by patient id, as faust requires of the sources of one agent. ``care-network`` and
``patients`` are compacted (latest state per key). Creating an existing topic is not an error;
an existing topic with a different partition count is (faust would raise PartitionsMismatch later).
:func:`committed_offsets` reads a consumer group's committed offsets (rebuilding a partition).
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

from monitor.errors import MonitorError
from monitor.settings import Settings


class TopicError(MonitorError):
    """Topics could not be created or do not match the expected layout."""


def admin_client(settings: Settings, *, timeout_s: float = 30.0) -> KafkaAdminClient:
    """An admin client, retrying while the cluster is still coming up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(client_id="coproduction-monitor-admin", **settings.kafka_python_config())
        except NoBrokersAvailable as exc:
            if time.monotonic() > deadline:
                raise TopicError(f"no Kafka broker reachable at {settings.bootstrap}") from exc
            time.sleep(0.5)


def ensure_topics(settings: Settings, *, extra: dict[str, int] | None = None) -> dict[str, int]:
    """Create the monitor's topics (idempotent). Returns topic -> partition count."""
    wanted = {name: 1 if name in settings.topics.single_partition else settings.partitions
              for name in settings.topics.all()}
    wanted.update(extra or {})
    admin = admin_client(settings)
    try:
        replication = replication_factor(settings, admin)
        existing = set(admin.list_topics())
        new = []
        for name, parts in wanted.items():
            if name in existing:
                continue
            configs = {"cleanup.policy": "compact"} if name in settings.topics.compacted else {}
            # with acks=all, a write is acknowledged once on min(2, RF) replicas: an acknowledged
            # output or input survives the loss of one broker; with fewer in sync, writes pause
            configs["min.insync.replicas"] = str(min(2, replication))
            if name in settings.topics.inputs:
                # the broker stamps input records with its own clock: the receive time that event
                # times are checked against (clock skew, lateness) is then not the device's clock
                configs["message.timestamp.type"] = "LogAppendTime"
            if name in (settings.topics.name("alerts"), settings.topics.name("alert_actions")):
                # the accountability trail of every page and every answer, and what the notifier
                # rebuilds its state from (monitor.notify): kept forever; transitions only, small
                configs["retention.ms"] = "-1"
            if name == settings.topics.name("checkpoints"):
                # checkpoints are large and superseded often: roll segments early so compaction
                # (which never touches the active segment) keeps the topic near one checkpoint
                configs.update({"segment.bytes": str(128 * 1024 * 1024), "segment.ms": str(600_000),
                                "min.cleanable.dirty.ratio": "0.1"})
            new.append(NewTopic(name, num_partitions=parts, replication_factor=replication,
                                topic_configs=configs))
        if new:
            try:
                admin.create_topics(new, validate_only=False)
            except TopicAlreadyExistsError:
                pass
        # a new topic's metadata takes a moment to show its partitions: wait for them
        deadline = time.monotonic() + 15.0
        while True:
            described = admin.describe_topics(list(wanted))
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            if all(counts.get(t, 0) > 0 for t in wanted) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except KafkaError as exc:
        raise TopicError(f"topic administration failed: {exc}") from exc
    finally:
        admin.close()
    mismatched = {t: c for t, c in counts.items() if c != wanted[t]}
    if mismatched:
        raise TopicError(f"topics exist with other partition counts than expected: {mismatched}")
    return counts


def replication_factor(settings: Settings, admin: KafkaAdminClient | None = None) -> int:
    """``MONITOR_REPLICATION_FACTOR`` when set, else min(3, brokers in the cluster)."""
    if settings.replication_factor is not None:
        return settings.replication_factor
    own = admin is None
    admin = admin or admin_client(settings)
    try:
        brokers = len(admin.describe_cluster()["brokers"])
    finally:
        if own:
            admin.close()
    return max(1, min(3, brokers))


def committed_offsets(settings: Settings, group_id: str,
                      tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The offsets consumer group ``group_id`` has committed for ``(topic, partition)`` pairs: the
    next offset it will consume, 0 where it has committed nothing. Blocking (kafka-python)."""
    admin = admin_client(settings)
    try:
        got = admin.list_consumer_group_offsets(group_id, partitions=[TopicPartition(t, p) for t, p in tps])
    finally:
        admin.close()
    out = {}
    for t, p in tps:
        meta = got.get(TopicPartition(t, p))
        out[(t, p)] = max(0, meta.offset) if meta is not None else 0
    return out
