"""Partitioning by patient id, identical to Kafka's default partitioner for keyed records.

``partition_for(patient_id, n) = (murmur2(utf8(patient_id)) & 0x7fffffff) % n``, the formula of the
Java client's default partitioner (and kafka-python's), so a record keyed by the patient id and a
record sent with an explicit partition from this function land on the same partition. Used where the
message key is not the bare patient id (care links are keyed ``patient|carer`` for compaction).
"""

from __future__ import annotations

from kafka.partitioner.default import murmur2


def partition_for(patient_id: str, partitions: int) -> int:
    """The partition of ``patient_id`` among ``partitions`` (0-based)."""
    return (murmur2(patient_id.encode("utf-8")) & 0x7FFFFFFF) % partitions
