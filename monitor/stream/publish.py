"""The worker's outputs: dead letters, flags and alerts to their topics.

Outputs of input partition ``p`` go to partition ``p`` of their topics, each with an id
(:func:`output_key`) that a restore reads back to suppress what re-processing produces again
(:meth:`monitor.stream.partitions.PartitionManager.is_new`). Every output is recorded in the
delivery ledger (:class:`~monitor.stream.outputs.OutputLedger`) until the broker acknowledges it,
so a partition's checkpoint, and the acknowledgement of its input, wait for its outputs. The
worker never talks to Alertmanager: the notifier (:mod:`monitor.notify`) delivers the alerts topic,
so an Alertmanager outage cannot slow or stall the ingest. No faust here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from monitor.alerts.engine import AlertEvent
from monitor.pipeline import BatchResult, Pipeline, TickResult
from monitor.stream.outputs import OutputLedger

OUTPUTS = ("dead_letters", "flags", "alerts")
"""The output kinds of a partition (``Settings.topics.name(kind)`` is the topic)."""


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def dead_letter_key(d: Mapping[str, Any]) -> str:
    """Identity of a dead letter (its source position and reason), for suppression on restore."""
    raw = f"{d.get('topic')}|{d.get('partition')}|{d.get('offset')}|{d.get('reason')}|{d.get('detail')}"
    return "dl:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def output_key(kind: str, doc: Mapping[str, Any]) -> str:
    """The id of an output document of ``kind`` (one of :data:`OUTPUTS`)."""
    if kind == "dead_letters":
        return dead_letter_key(doc)
    if kind == "flags":
        return "flag:" + str(doc.get("flag_id"))
    return "alert:" + str(doc.get("event_id"))


def partitions_of(pipe: Pipeline, ids: Iterable[str]) -> dict[str, int]:
    """The partition holding each of the patients ``ids`` (those this worker holds)."""
    wanted = set(ids)
    out: dict[str, int] = {}
    for p, st in pipe.partitions.items():
        index = st.support.patient_index
        for pid in wanted:
            if pid in index:
                out[pid] = p
    return out


class Outputs:
    """Publishes a partition's outputs once each: ``topics`` maps each of :data:`OUTPUTS` to its
    topic and ``is_new(partition, key)`` says whether an output id is still to be written."""

    def __init__(self, ledger: OutputLedger, topics: Mapping[str, str],
                 is_new: Callable[[int, str], bool]) -> None:
        self.ledger = ledger
        self.topics = dict(topics)
        self.is_new = is_new

    async def publish(self, kind: str, partition: int, key: bytes | None, doc: dict[str, Any]) -> bool:
        """Send one output of input partition ``partition`` unless it was written before; whether
        it was sent."""
        if not self.is_new(partition, output_key(kind, doc)):
            return False
        # recorded until the broker acknowledges it: the checkpoint (and the input's ack) waits for it
        await self.ledger.send(partition, self.topics[kind], key, dumps(doc), partition)
        return True

    async def publish_alerts(self, events: list[AlertEvent], partition_of: Mapping[str, int]) -> None:
        for ev in events:
            pid = ev.patient_id
            await self.publish("alerts", partition_of[pid], pid.encode(), ev.to_json())

    async def publish_batch(self, result: BatchResult, pipe: Pipeline) -> None:
        """The outputs of one applied batch (``pipe`` locates the alerts' partitions)."""
        for d in result.dead_letters:
            await self.publish("dead_letters", d.partition or 0, None, d.model_dump(mode="json"))
        if result.flags:  # transitions of the event-time ticks the batch crossed
            where = partitions_of(pipe, {f.patient_id for f in result.flags})
            for ev in result.flags:
                await self.publish("flags", where[ev.patient_id], ev.patient_id.encode(),
                                   ev.model_dump(mode="json"))
        if result.alerts:
            where = partitions_of(pipe, {a.patient_id for a in result.alerts})
            await self.publish_alerts(result.alerts, where)

    async def publish_tick(self, partition: int, tick: TickResult) -> bool:
        """The outputs of one partition's tick; whether there were any."""
        for d in tick.dead_letters:  # held events of unregistered patients, expired
            await self.publish("dead_letters", partition, None, d.model_dump(mode="json"))
        for ev in tick.flags:
            await self.publish("flags", partition, ev.patient_id.encode(), ev.model_dump(mode="json"))
        await self.publish_alerts(tick.alerts, {a.patient_id: partition for a in tick.alerts})
        return bool(tick.flags or tick.alerts or tick.dead_letters)
