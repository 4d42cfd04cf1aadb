"""The faust application: wiring of the batch consumer, the partition manager, outputs, the merge
point and the web views around the pipeline.

Topology (every input topic co-partitioned by patient id, ``MONITOR_PARTITIONS`` partitions)::

    readings ─┐
    carer-activity ─┤ batch handler: whole fetches ──► Pipeline.ingest ──► dead-letters, alerts
    care-network ─┤   (monitor.stream.consumer)            │
    patients ─┘                                          ▼
                     timer (MONITOR_FLAG_INTERVAL_S) ──► Pipeline.tick ──► flags, alerts
                                                     └─► per-partition partial summaries ──► equity-partials
    equity-partials (1 partition) ──► agent "merge" (the one merge point) ──► equity

* Durable partition state, checkpoints and acknowledgements: :mod:`monitor.stream.partitions`
  (input is acknowledged only after the checkpoint that includes it is durable; a restore
  suppresses outputs already written, so no output id is emitted twice).
* Outputs: :mod:`monitor.stream.publish` (delivery ledger: :mod:`monitor.stream.outputs`).
  Alerts reach Alertmanager through the notifier (:mod:`monitor.notify`), not the worker.
* Population equity and the carers' view: :mod:`monitor.stream.merge`.
* Web views: :mod:`monitor.stream.views`; readiness: :mod:`monitor.stream.health`.
* Scale-out: N workers share the partitions through faust's consumer group; a partition's state
  moves with it (restore on assignment, drop on revocation), so answers do not depend on N.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import timedelta
from typing import Any

import faust
from faust.types import TP

from monitor.credentials import CredentialRegistry
from monitor.kafka.checkpoints import read_partition
from monitor.kafka.security import faust_credentials
from monitor.metrics.collectors import registry_for
from monitor.pipeline import PartitionState, Pipeline
from monitor.settings import Settings
from monitor.stream.consumer import MonitorApp
from monitor.stream.health import add_readiness
from monitor.stream.merge import MergePoint, partial_doc
from monitor.stream.outputs import OutputLedger
from monitor.stream.partitions import kafka_partition_manager
from monitor.stream.publish import Outputs, dumps
from monitor.stream.views import add_views

__all__ = ["create_app", "pipeline_for", "run_worker"]

log = logging.getLogger(__name__)

GC_THRESHOLD = 50_000
"""Allocations between young-generation collections in the worker (Python's default: 700)."""


def pipeline_for(settings: Settings) -> Pipeline:
    """The pipeline configured by ``settings`` (horizons, idle time, event-time ticks)."""
    return Pipeline(oldest_reading=timedelta(days=settings.oldest_reading_days),
                    idle_after=timedelta(seconds=settings.idle_after_s),
                    max_future=timedelta(seconds=settings.max_clock_skew_s),
                    late_after=timedelta(seconds=settings.late_window_s),
                    unknown_grace=timedelta(seconds=settings.unknown_patient_grace_s),
                    unknown_cap=settings.unknown_patient_cap,
                    tick_every=timedelta(seconds=settings.tick_every_s))


def _faust_app(settings: Settings, replication_factor: int) -> MonitorApp:
    return MonitorApp(
        settings.app_id,
        broker=";".join(f"kafka://{h.strip()}" for h in settings.bootstrap.split(",")),
        broker_credentials=faust_credentials(settings),  # TLS and SASL as configured, never downgraded
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=replication_factor,
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        stream_wait_empty=False,
        stream_buffer_maxsize=65536,
        broker_max_poll_records=settings.max_poll_records,
        consumer_auto_offset_reset="earliest",
        # a killed worker's partitions move on after this long (the default 60 s stalls recovery)
        broker_session_timeout=settings.session_timeout_s,
        consumer_group_instance_id=settings.instance_id,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        autodiscover=False,
    )


def create_app(settings: Settings, pipeline: Pipeline | None = None, *,
               replication_factor: int = 1) -> faust.App:
    """Build the faust app for ``settings``; ``pipeline`` may be injected (tests)."""
    pipe = pipeline or pipeline_for(settings)
    app = _faust_app(settings, replication_factor)

    def topic(kind: str, **kwargs: Any) -> Any:
        return app.topic(settings.topics.name(kind), value_serializer="raw", key_serializer="raw", **kwargs)

    ledger = OutputLedger(
        lambda topic, key, value, partition: app.producer.send(topic, key, value, partition, None, None),
        lambda: app.producer.flush())
    mgr = kafka_partition_manager(
        settings, pipe, ledger=ledger, flush=lambda: app.producer.flush(),
        ack=lambda topic, p, offsets: app.consumer.ack_offsets(TP(topic, p), offsets))
    app.partition_manager = mgr  # type: ignore[attr-defined]  # read by tests/integration/test_readiness.py
    add_readiness(app, mgr, settings)  # /readyz: connected, assigned, restored, caught up
    outputs = Outputs(ledger, mgr.output_topics, mgr.is_new)  # Alertmanager: monitor.notify
    flags_topic, partials_topic = topic("flags"), topic("equity_partials", partitions=1)
    equity_topic = topic("equity", partitions=1)
    merge = MergePoint(
        settings.partitions,
        send_flag=lambda key, value: flags_topic.send(key=key, partition=0, value=value),
        send_equity=lambda key, value: equity_topic.send(key=key, value=value, partition=0))

    inputs = app.topic(*settings.topics.inputs, value_serializer="raw", key_serializer="raw")
    app.topics.add(inputs)  # subscribed by the consumer group; consumed in batches by ``ingest``
    app.batch_topics = frozenset(inputs.topics)

    async def apply(records: list[Any]) -> None:
        await outputs.publish_batch(pipe.ingest(records, mgr.expected), pipe)

    async def ingest(messages: list[Any]) -> None:
        """Every input message of one fetch (faust's consumer, see monitor.stream.consumer)."""
        await mgr.ingest(messages, apply)

    app.batch_handler = ingest

    async def tick(p: int, st: PartitionState) -> bool:
        return await outputs.publish_tick(p, pipe.tick_partition(st))

    async def partial(p: int, st: PartitionState) -> bool:
        doc = partial_doc(pipe, p, st)
        if doc is not None:
            await partials_topic.send(key=str(p).encode(), partition=0, value=dumps(doc))
        return False  # nothing for the output ledger: the merge point rebuilds from the topic

    @app.timer(settings.flag_interval_s)
    async def evaluate_timers() -> None:
        """Flags and alert timers (held events expired), one partition at a time."""
        await mgr.each_owned(tick)

    @app.timer(settings.equity_interval_s)
    async def send_partials() -> None:
        """Each partition's partial summary to the merge point (the population's equity)."""
        await mgr.each_owned(partial)

    @app.timer(0.25)
    async def checkpoints() -> None:
        if mgr.checkpoint_due():
            await mgr.checkpoint()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        await mgr.on_assigned(assigned)
        if any(tp.topic == partials_topic.get_topic_name() for tp in assigned):
            await merge.rebuild(lambda name: read_partition(settings, name, 0),
                                partials_topic.get_topic_name(), settings.topics.name("flags"))

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await mgr.on_revoked(revoked)

    @app.agent(partials_topic, name="merge")
    async def merge_partials(stream: faust.StreamT) -> None:
        async for values in stream.take(1000, within=0.5):
            await merge.take(values)

    registry = registry_for(pipe, equity_snapshot=lambda: merge.snapshot,
                            highwater=lambda: {(tp.topic, tp.partition): app.consumer.highwater(tp)
                                               for tp in app.consumer.assignment()
                                               if tp.topic in mgr.input_topics})
    actions_topic = topic("alert_actions", partitions=1)

    async def send_action(action: Any) -> None:
        await actions_topic.send(key=action.alert_id.encode(), value=action.dumps(), partition=0)

    credentials = CredentialRegistry()

    @app.task
    async def follow_credentials() -> None:
        """Coordinator and clinician credentials for the patient-level views (monitor.credentials)."""
        from monitor.kafka.credentials import follow

        await follow(settings, credentials, asyncio.Event())

    add_views(app, settings, pipe, mgr, merge, registry, send_action, credentials)
    return app


def run_worker(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT (blocks; exits the process like ``faust worker``)."""
    from monitor.kafka.admin import ensure_topics, replication_factor
    from monitor.pipeline import warm_up

    ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    warm_up()  # JIT-compile (or load cached) kernels before joining the consumer group
    app = create_app(settings, replication_factor=replication_factor(settings))
    # The state of a large partition is millions of long-lived objects; with the default
    # thresholds (700, 10, 10) the cyclic collector ran every few hundred allocations and cost
    # ~20 % of ingest. The state holds no reference cycles that need prompt collection.
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    gc.freeze()  # what start-up loaded (modules, kernels) is never collected
    worker = _Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()


class _Worker(faust.Worker):
    """faust's worker, with the root logger set to the configured level: faust leaves it at
    DEBUG (filtering in the handler), so every ``log.debug`` of aiokafka and faust built a record
    and looked up its caller - several per fetch, ~8 % of the worker's time."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        logger.setLevel(level)
