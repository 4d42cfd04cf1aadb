"""The faust application: thin agents feeding batches to the pipeline, durable partition state.

Topology (every input topic co-partitioned by patient id, ``MONITOR_PARTITIONS`` partitions)::

    readings ─┐
    carer-activity ─┤ batch handler: whole fetches ──► Pipeline.ingest ──► dead-letters, alerts
    care-network ─┤   (monitor.stream.consumer)            │
    patients ─┘                                          ▼
                     timer (MONITOR_FLAG_INTERVAL_S) ──► Pipeline.tick ──► flags, alerts
                                                     └─► per-partition partial summaries ──► equity-partials
    equity-partials (1 partition) ──► agent "merge" (the one merge point) ──► equity

Durability and exactly-once effects on top of at-least-once delivery
-------------------------------------------------------------------
* State is kept per input partition (:class:`monitor.pipeline.PartitionState`) and checkpointed
  to the compacted ``checkpoints`` topic (partition ``p`` -> partition ``p``) every
  ``MONITOR_CHECKPOINT_INTERVAL_S``. A checkpoint holds the state, the input offsets it includes and
  the end offsets of this partition's outputs at that moment.
* Input messages are **acknowledged only after the checkpoint that includes them is durable**
  (the batch handler holds each message until then), so faust never commits an offset past
  the last checkpoint. After a crash, the new owner restores the checkpoint, skips records at or
  below its offsets and re-processes the rest; state updates are idempotent.
* Outputs (dead letters, flags, alerts) of partition ``p`` go to partition ``p`` of their topics.
  On restore, the outputs written after the checkpoint are read back and their ids suppressed, so
  re-processing never emits an output id twice.
* Scale-out: N workers share the partitions through faust's consumer group; a partition's state
  moves with it (restore on assignment, drop on revocation), so answers do not depend on N. The
  population equity snapshot is merged from per-partition exact partial summaries by the single
  owner of the one-partition ``equity-partials`` topic.

Web (``MONITOR_WEB_HOST:MONITOR_WEB_PORT``): ``/metrics``, ``/health``, ``/summary`` and ``/equity``
(aggregates only) and the token-protected ``/patients/unsupported``, ``/patients/alerts`` and
``/patients/state`` (``Authorization: Bearer $MONITOR_API_TOKEN``; 401 without, 403 if unset).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from monitor.alerts.alertmanager import AlertmanagerClient, AlertmanagerError
from monitor.alerts.engine import AlertEvent
from monitor.carers.ledger import merge_rows, notifications_from_rows, to_csv, to_json, week_of
from monitor.carers.participation import ParticipationSummary, participation_measures
from monitor.core.state import StaleAsOfError
from monitor.core.summary import PartialSummary
from monitor.equity import equity_from_summary
from monitor.kafka.admin import committed_offsets
from monitor.kafka.checkpoints import CheckpointStore, CheckpointUnreadable, read_partition
from monitor.kafka.security import faust_credentials
from monitor.metrics.collectors import registry_for
from monitor.pipeline import PartitionState, Pipeline
from monitor.settings import Settings
from monitor.stream.consumer import MonitorApp
from monitor.stream.health import add_readiness
from monitor.stream.outputs import OutputLedger

log = logging.getLogger(__name__)

PROM_CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp wants the charset separately


def _broker_url(settings: Settings) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in settings.bootstrap.split(","))


def pipeline_for(settings: Settings) -> Pipeline:
    """The pipeline configured by ``settings`` (horizons, idle time)."""
    return Pipeline(oldest_reading=timedelta(days=settings.oldest_reading_days),
                    idle_after=timedelta(seconds=settings.idle_after_s),
                    max_future=timedelta(seconds=settings.max_clock_skew_s),
                    late_after=timedelta(seconds=settings.late_window_s),
                    unknown_grace=timedelta(seconds=settings.unknown_patient_grace_s),
                    unknown_cap=settings.unknown_patient_cap)


def dead_letter_key(d: dict[str, Any]) -> str:
    """Identity of a dead letter (its source position and reason), for suppression on restore."""
    raw = f"{d.get('topic')}|{d.get('partition')}|{d.get('offset')}|{d.get('reason')}|{d.get('detail')}"
    return "dl:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def output_key(topic_kind: str, doc: dict[str, Any]) -> str:
    if topic_kind == "dead_letters":
        return dead_letter_key(doc)
    if topic_kind == "flags":
        return "flag:" + str(doc.get("flag_id"))
    return "alert:" + str(doc.get("event_id"))


OUTPUTS = ("dead_letters", "flags", "alerts")
MAX_CHECKPOINT_INTERVAL_S = 30.0
"""Longest pause between checkpoint rounds whatever the last round took (seconds)."""


_REBUILD_ORDER = {"patient": 0, "care_link": 1, "carer_activity": 2, "reading": 3}


class PartitionManager:
    """Ownership, held (un-acked) events, checkpoints and output suppression per partition."""

    def __init__(self, settings: Settings, pipe: Pipeline) -> None:
        self.settings = settings
        self.pipe = pipe
        self.input_topics = set(settings.topics.inputs)
        self.owned: set[int] = set()  # restored and ours
        self.assigned: set[int] = set()  # ours (restored or being restored)
        self.restoring: asyncio.Future[None] | None = None
        self.held: dict[int, dict[str, list[int]]] = {}  # partition -> topic -> un-acked offsets
        self.dirty: set[int] = set()
        self.lock = asyncio.Lock()  # the partition states: held while they are read or changed
        self.round_lock = asyncio.Lock()  # one checkpoint round at a time; rebalances wait for it
        self.store = CheckpointStore(settings, settings.topics.name("checkpoints"))
        self.last_checkpoint = time.monotonic()
        self.saved_at: dict[int, float] = {}  # partition -> monotonic time of its last checkpoint
        self.checkpoint_seconds = 0.0  # duration of the latest checkpoint round
        self.checkpoints_written = 0
        self.restored = 0
        self.rebuilt = 0  # partitions whose checkpoint was unreadable: rebuilt from their input
        self.expected: dict[str, str] = {}  # input topic -> document type (set by create_app)
        self.flush_outputs: Callable[[], Awaitable[None]] | None = None  # set by create_app
        self.outputs: OutputLedger | None = None  # set by create_app: outputs not yet acknowledged

    def is_new(self, partition: int, key: str) -> bool:
        """False when this output id was already written (re-processing after a restore)."""
        st = self.pipe.partitions.get(partition)
        if st is not None and key in st.suppress:
            st.suppress.discard(key)
            return False
        return True

    async def on_assigned(self, assigned: set[TP]) -> None:
        """Drop partitions no longer ours; restore new ones in the background.

        Restoring a large partition takes seconds; doing it inside faust's rebalance callback
        kept the group rebalancing (every partition restored up to three times at 1M patients).
        Input of a partition being restored waits for it (:meth:`wait_restored`).
        """
        parts = {tp.partition for tp in assigned if tp.topic in self.input_topics}
        async with self.round_lock, self.lock:
            for p in sorted(self.owned - parts):
                self._drop(p)
            self.assigned = parts
            self.owned &= parts
            new = sorted(parts - self.owned)
        if new:
            task = asyncio.ensure_future(self._restore_all(new))
            self.restoring = task

    async def _restore_all(self, parts: list[int]) -> None:
        for p in parts:
            async with self.lock:
                if p in self.assigned and p not in self.owned:
                    await self._restore(p)
                    self.owned.add(p)

    async def wait_restored(self) -> None:
        """Return once every assigned partition is restored (input must not reach the pipeline
        before its partition's state is back)."""
        while self.restoring is not None:
            task = self.restoring
            await asyncio.shield(task)
            if self.restoring is task:
                self.restoring = None

    async def on_revoked(self, revoked: set[TP]) -> None:
        """Drop revoked partitions. A checkpoint being written finishes first, and the outputs
        sent so far are flushed: the next owner (maybe this worker again) restores the checkpoint
        and reads the outputs written after it back to suppress them, so they must be in the log
        before it can be assigned the partition (faust revokes before the group re-assigns).
        faust flushes its producer before this signal too, but a batch being applied (it holds
        :attr:`lock`) may publish after that flush."""
        parts = {tp.partition for tp in revoked if tp.topic in self.input_topics}
        async with self.round_lock, self.lock:
            if parts and self.flush_outputs is not None:
                await self.flush_outputs()
            for p in parts:
                self._drop(p)
            self.owned -= parts
            self.assigned -= parts

    def _drop(self, p: int) -> None:
        if self.outputs is not None:
            self.outputs.forget(p)
        self.pipe.release(p)
        self.held.pop(p, None)
        self.dirty.discard(p)

    async def _restore(self, p: int) -> None:
        """Restore partition ``p`` from its newest checkpoint. A checkpoint that cannot be used
        (no complete one among the partition's checkpoint records, or one that does not decode:
        corrupt, or written by an incompatible version) is not fatal: the partition is rebuilt
        from its input topics (everything retention kept, read directly up to the consumer
        group's committed offsets; the group then goes on from there). Outputs already written
        are suppressed as after any restore."""
        try:
            state = await self._load(p)
        except CheckpointUnreadable as exc:
            log.error("the checkpoint of partition %d is unusable (%s); rebuilding the partition "
                      "from its input topics", p, exc)
            state = await self._rebuild(p, exc.max_seq)
        if state is None:  # never checkpointed
            state = PartitionState(p, self.pipe.config, self.pipe.alert_config)
        self.pipe.adopt(state)
        for kind in OUTPUTS:
            topic = self.settings.topics.name(kind)
            for rec in await read_partition(self.settings, topic, p, state.output_offsets.get(kind, 0)):
                try:
                    state.suppress.add(output_key(kind, json.loads(rec.value)))
                except (TypeError, ValueError):
                    continue

    async def _load(self, p: int) -> PartitionState | None:
        """The state in partition ``p``'s newest checkpoint (None: never checkpointed). Raises
        :class:`CheckpointUnreadable` when there is no complete checkpoint or it does not decode."""
        loaded = await self.store.load(p)
        if loaded is None:
            return None
        seq, data = loaded
        try:
            state = PartitionState.restore(data)
        except (ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
            # the exception's type only: its text may quote the state it failed on (pydantic's
            # errors quote their input, a patient id), and this goes to the log
            raise CheckpointUnreadable(f"checkpoint {seq} does not decode ({type(exc).__name__})",
                                       seq) from exc
        self.restored += 1
        return state

    async def _rebuild(self, p: int, after_seq: int) -> PartitionState:
        """Partition ``p`` from the beginning of its input topics (patients, care links, carer
        activity, readings, each in offset order) up to the consumer group's committed offsets,
        in batches. That input was processed before and its outputs published (an offset is
        committed only after a checkpoint, which flushes the outputs first), so the outputs of
        the rebuild are not published; the group goes on from its committed offsets as usual.
        The next checkpoint gets a sequence number above ``after_seq`` (the unusable
        checkpoint's), so that it, not the unusable one, is restored next time."""
        self.pipe.release(p)
        topics = sorted(self.expected, key=lambda t: _REBUILD_ORDER.get(self.expected[t], 9))
        committed = await asyncio.get_running_loop().run_in_executor(
            None, committed_offsets, self.settings, self.settings.app_id, [(t, p) for t in topics])
        for topic in topics:
            records = await read_partition(self.settings, topic, p, stop=committed[(topic, p)])
            for i in range(0, len(records), 10_000):
                self.pipe.ingest(records[i : i + 10_000], self.expected)
                await asyncio.sleep(0)
        state = self.pipe.release(p) or PartitionState(p, self.pipe.config, self.pipe.alert_config)
        state.checkpoint_seq = max(state.checkpoint_seq, after_seq)
        self.rebuilt += 1
        self.dirty.add(p)  # a readable checkpoint replaces the bad one at the next round
        return state

    def checkpoint_due(self) -> bool:
        """Time for a checkpoint round: ``MONITOR_CHECKPOINT_INTERVAL_S`` after the last one, and
        at least 4x the last round's duration (checkpointing takes at most ~20 % of the time, however
        large the state grows), but never more than :data:`MAX_CHECKPOINT_INTERVAL_S`: a round slowed
        by a broker outage (31 s once) must not space the next ones out (it made 124 s, and no
        checkpoint followed for the rest of the run)."""
        interval = max(self.settings.checkpoint_interval_s,
                       min(4 * self.checkpoint_seconds, MAX_CHECKPOINT_INTERVAL_S))
        return time.monotonic() - self.last_checkpoint >= interval

    async def checkpoint(self, app: faust.App, budget_s: float = 2.0, confirm_s: float = 5.0) -> None:
        """One checkpoint round: dirty owned partitions, least recently saved first, until
        ``budget_s`` seconds of work are spent (the rest go first next round).

        Per partition, under :attr:`lock` (input waits): confirm its outputs (every one acknowledged
        by the broker, failed ones re-sent: :class:`~monitor.stream.outputs.OutputLedger`; if that
        takes more than ``confirm_s`` the partition stays dirty, its input unacknowledged, and the
        round ends: the broker is failing), record their end offsets and the applied input offsets
        in a snapshot, take the held input messages. Then, without the lock (input flows on): write
        the checkpoint, and acknowledge those messages once it is durable. A rebalance waits for the
        round (:attr:`round_lock`).
        """
        async with self.round_lock:
            t0 = time.monotonic()
            parts = sorted(self.dirty & self.owned, key=lambda p: (self.saved_at.get(p, 0.0), p))
            ack_offsets = app.consumer.ack_offsets
            outputs = {kind: self.settings.topics.name(kind) for kind in OUTPUTS}
            if parts:  # connect (first round) before taking the lock, not while input waits
                await self.store.ensure_started(list(outputs.values()))
            for p in parts:
                async with self.lock:
                    st = self.pipe.partitions.get(p)
                    if st is None or p not in self.dirty or p not in self.owned:
                        continue
                    if self.outputs is not None and not await self.outputs.confirm(p, confirm_s):
                        break  # outputs are refused: nothing of this partition is acknowledged
                    ends = await self.store.end_offsets_of([(topic, p) for topic in outputs.values()])
                    st.output_offsets = {kind: ends[(topic, p)] for kind, topic in outputs.items()}
                    st.checkpoint_seq += 1
                    seq, data = st.checkpoint_seq, st.snapshot()
                    messages = self.held.pop(p, {})
                    self.dirty.discard(p)
                await self.store.save(p, seq, data)
                for topic, offsets in messages.items():
                    ack_offsets(TP(topic, p), offsets)
                self.checkpoints_written += 1
                self.saved_at[p] = time.monotonic()
                if time.monotonic() - t0 >= budget_s:
                    break
            self.last_checkpoint = time.monotonic()
            self.checkpoint_seconds = self.last_checkpoint - t0 if parts else 0.0


def create_app(settings: Settings, pipeline: Pipeline | None = None, *,
               replication_factor: int = 1) -> faust.App:
    """Build the faust app for ``settings``; ``pipeline`` may be injected (tests)."""
    pipe = pipeline or pipeline_for(settings)
    alertmanager = (AlertmanagerClient(settings.alertmanager_url)
                    if settings.alertmanager_url else None)
    credentials = faust_credentials(settings)  # TLS and SASL as configured, never downgraded
    app = MonitorApp(
        settings.app_id,
        broker=_broker_url(settings),
        broker_credentials=credentials,
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
    app.pipeline = pipe  # type: ignore[attr-defined]
    mgr = PartitionManager(settings, pipe)
    app.partition_manager = mgr  # type: ignore[attr-defined]
    add_readiness(app, mgr, settings)  # /readyz: connected, assigned, restored, caught up
    expected = settings.topics.inputs
    inputs = app.topic(*expected, value_serializer="raw", key_serializer="raw")
    out_names = {kind: settings.topics.name(kind) for kind in OUTPUTS}
    out_topics = {kind: app.topic(settings.topics.name(kind), value_serializer="raw", key_serializer="raw")
                  for kind in OUTPUTS}
    partials_topic = app.topic(settings.topics.name("equity_partials"), value_serializer="raw",
                               key_serializer="raw", partitions=1)
    equity_topic = app.topic(settings.topics.name("equity"), value_serializer="raw", key_serializer="raw",
                             partitions=1)
    merged: dict[str, Any] = {"latest": {}, "ledger": {}, "participation": {}, "snapshot": None,
                              "digest": None, "notified": set()}
    registry = registry_for(pipe, equity_snapshot=lambda: merged["snapshot"],
                            highwater=lambda: {(tp.topic, tp.partition): app.consumer.highwater(tp)
                                               for tp in app.consumer.assignment()
                                               if tp.topic in mgr.input_topics})

    async def publish(kind: str, partition: int, key: bytes | None, doc: dict[str, Any]) -> bool:
        if not mgr.is_new(partition, output_key(kind, doc)):
            return False
        # recorded until the broker acknowledges it: the checkpoint (and the input's ack) waits for it
        await outputs.send(partition, out_names[kind], key, dumps(doc), partition)
        return True

    to_alertmanager: asyncio.Queue[list[AlertEvent]] = asyncio.Queue()

    async def publish_alerts(events: list[AlertEvent], partition_of: dict[str, int]) -> None:
        fresh = []
        for ev in events:
            if await publish("alerts", partition_of[ev.patient_id], ev.patient_id.encode(), ev.to_json()):
                fresh.append(ev)
        if alertmanager is not None and fresh:
            to_alertmanager.put_nowait(fresh)  # posted by ``post_to_alertmanager``, not under the lock

    if alertmanager is not None:
        @app.task
        async def post_to_alertmanager() -> None:
            """Post new alerts to Alertmanager in publication order, off the ingest path: the post
            (up to the client's timeout per request) used to run under the partition lock, so a
            slow Alertmanager stalled all input. Alerts queued meanwhile go in one post."""
            loop = asyncio.get_running_loop()
            while True:
                batch = list(await to_alertmanager.get())
                while not to_alertmanager.empty():
                    batch.extend(to_alertmanager.get_nowait())
                try:
                    await loop.run_in_executor(None, alertmanager.post, batch)
                except AlertmanagerError as exc:  # the alerts topic has them; re-posted on renotify
                    log.warning("posting %d alerts to Alertmanager failed: %s", len(batch), exc)
                except Exception as exc:  # noqa: BLE001 - keep posting later alerts
                    log.warning("posting %d alerts to Alertmanager failed: %s", len(batch),
                                type(exc).__name__)

    def partitions_of(ids: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for p, st in pipe.partitions.items():
            index = st.support._patient_index
            for pid in ids:
                if pid in index:
                    out[pid] = p
        return out

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        await mgr.on_assigned(assigned)
        if any(tp.topic == partials_topic.get_topic_name() for tp in assigned):
            await rebuild_merge_state()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await mgr.on_revoked(revoked)

    async def ingest(messages: list[Any]) -> None:
        """Every input message of one fetch (faust's consumer, see monitor.stream.consumer)."""
        while True:
            await mgr.wait_restored()
            async with mgr.lock:
                restoring = mgr.assigned - mgr.owned
                if not restoring or not any(m.partition in restoring for m in messages):
                    await apply(messages)
                    return

    async def apply(messages: list[Any]) -> None:
        """Apply a fetch (caller holds the lock; every partition of it is restored or not ours)."""
        records = []
        owned, held, dirty = mgr.owned, mgr.held, mgr.dirty
        run: tuple[str, int] | None = None
        offsets: list[int] = []
        for m in messages:  # aiokafka records (RawRecord fields), in runs of one topic-partition
            p = m.partition
            if p not in owned:
                continue  # revoked meanwhile: its new owner re-processes it
            if run != (m.topic, p):
                run = (m.topic, p)
                offsets = held.setdefault(p, {}).setdefault(m.topic, [])
                dirty.add(p)
            offsets.append(m.offset)  # acknowledged only once checkpointed
            records.append(m)
        result = pipe.ingest(records, expected)
        for d in result.dead_letters:
            await publish("dead_letters", d.partition or 0, None, d.model_dump(mode="json"))
        if result.alerts:
            await publish_alerts(result.alerts, partitions_of({a.patient_id for a in result.alerts}))

    mgr.expected = expected

    mgr.flush_outputs = lambda: app.producer.flush()
    outputs = mgr.outputs = OutputLedger(
        lambda topic, key, value, partition: app.producer.send(topic, key, value, partition, None, None),
        mgr.flush_outputs)
    app.topics.add(inputs)  # subscribed by the consumer group; consumed in batches by ``ingest``
    app.batch_topics = frozenset(inputs.topics)
    app.batch_handler = ingest

    @app.timer(settings.flag_interval_s)
    async def evaluate_timers() -> None:
        """Flags, alert timers and the partial summary, one partition at a time (input for the
        other partitions flows between them)."""
        for p in sorted(mgr.owned):
            async with mgr.lock:
                st = pipe.partitions.get(p)
                if st is None or p not in mgr.owned:
                    continue
                tick = pipe.tick_partition(st)
                for d in tick.dead_letters:  # held events of unregistered patients, expired
                    await publish("dead_letters", p, None, d.model_dump(mode="json"))
                for ev in tick.flags:
                    await publish("flags", p, ev.patient_id.encode(), ev.model_dump(mode="json"))
                await publish_alerts(tick.alerts, {a.patient_id: p for a in tick.alerts})
                if tick.flags or tick.alerts or tick.dead_letters:
                    mgr.dirty.add(p)
                if st.support.watermark_s is None:
                    continue
                t = pipe.effective_time(st)
                summary = st.support.partial_summary(as_of=t)
                doc: dict[str, Any] = {"partition": p, "summary": summary.to_dict()}
                doc.update(carers_partial(st, datetime.fromtimestamp(t, UTC)))
                await partials_topic.send(key=str(p).encode(), partition=0, value=dumps(doc))
            await asyncio.sleep(0)

    @app.timer(0.25)
    async def checkpoints() -> None:
        if mgr.checkpoint_due():
            await mgr.checkpoint(app)

    async def rebuild_merge_state() -> None:
        for rec in await read_partition(settings, partials_topic.get_topic_name(), 0):
            take_partial(rec.value)
        for rec in await read_partition(settings, settings.topics.name("flags"), 0):
            try:
                doc = json.loads(rec.value)
            except (TypeError, ValueError):
                continue
            if doc.get("notification") == "carer_overload":
                merged["notified"].add(doc["notification_id"])

    def take_partial(value: bytes | None) -> None:
        try:
            doc = json.loads(value or b"")
            p = int(doc["partition"])
            merged["latest"][p] = PartialSummary.from_dict(doc["summary"])
            merged["ledger"][p] = (doc.get("as_of"), doc.get("ledger", []))
            if doc.get("participation"):
                merged["participation"][p] = ParticipationSummary.from_dict(doc["participation"])
        except (TypeError, ValueError, KeyError):
            log.warning("skipping an unreadable equity partial")

    @app.agent(partials_topic, name="merge")
    async def merge(stream: faust.StreamT) -> None:
        async for values in stream.take(1000, within=0.5):
            for v in values:
                take_partial(v)
            snap = population_snapshot(merged["latest"], settings.partitions)
            if snap is None:
                continue
            snap["carers"], notes = carers_snapshot(merged)
            for note in notes:
                if note.notification_id in merged["notified"]:
                    continue
                await out_topics["flags"].send(key=note.carer_id.encode(), partition=0,
                                               value=dumps(note.to_dict()))
                merged["notified"].add(note.notification_id)
            digest = hashlib.sha256(dumps(snap)).hexdigest()
            if digest != merged["digest"]:
                merged["digest"], merged["snapshot"] = digest, snap
                await equity_topic.send(key=b"population", value=dumps(snap), partition=0)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), content_type=PROM_CONTENT_TYPE)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "inputs": pipe.counts.inputs,
                              "partitions": sorted(mgr.owned),
                              "checkpoints_written": mgr.checkpoints_written,
                              "dirty_partitions": len(mgr.dirty & mgr.owned),
                              "restoring_partitions": len(mgr.assigned - mgr.owned),
                              "restored": mgr.restored, "rebuilt": mgr.rebuilt})

    @app.page("/summary")
    class Summary(View):
        async def get(self, request: Request) -> Response:
            return self.json(summary(pipe))

    @app.page("/equity")
    class Equity(View):
        async def get(self, request: Request) -> Response:
            return self.json(merged["snapshot"] or {})

    @app.page("/patients/unsupported")
    class Unsupported(View):
        async def get(self, request: Request) -> Response:
            denied = _check_token(self, request, settings)
            return denied or self.json({"patients": pipe.flagged_patients()})

    @app.page("/patients/alerts")
    class OpenAlerts(View):
        async def get(self, request: Request) -> Response:
            denied = _check_token(self, request, settings)
            return denied or self.json({"alerts": pipe.open_alerts()})

    @app.page("/carers/ledger")
    class CarerLedgerView(View):
        async def get(self, request: Request) -> Response:
            denied = _check_token(self, request, settings)
            if denied:
                return denied
            week = request.query.get("week", "")
            fmt = request.query.get("format", "json")
            rows = live_ledger(pipe, merged, week)
            if rows is None:
                return self.json({"error": f"not a retained ISO week: {week!r}"}, status=400)
            if fmt == "csv":
                return self.text(to_csv(rows), content_type="text/csv")
            return self.text(to_json(rows), content_type="application/json")

    @app.page("/patients/state")
    class PatientState(View):
        async def get(self, request: Request) -> Response:
            denied = _check_token(self, request, settings)
            return denied or self.json({"patients": pipe.patient_report()})

    return app


def live_ledger(pipe: Pipeline, merged: dict[str, Any], week: str) -> list[dict[str, Any]] | None:
    """Ledger rows of ``week``: the merge point's rows summed over every partition when it holds
    that week (current and last week), else the rows of the partitions this worker owns."""
    per_partition = [[r for r in rows if r.get("week") == week] for _, rows in merged["ledger"].values()]
    if any(per_partition) and len(merged["ledger"]) == len(merged["latest"]):
        return merge_rows(per_partition)
    parts = []
    for st in pipe.partitions.values():
        try:
            parts.append(st.carers.ledger.week_rows(week))
        except (StaleAsOfError, ValueError):
            return None
    return merge_rows(parts)


def carers_partial(st: PartitionState, at: datetime) -> dict[str, Any]:
    """The carers' part of a partition's partial: ledger rows of this and last ISO week and the
    participation summary (both exactly mergeable across partitions)."""
    rows: list[dict[str, Any]] = []
    for week in sorted({week_of(at), week_of(at - timedelta(days=7))}):
        try:
            rows.extend(st.carers.ledger.week_rows(week))
        except StaleAsOfError:
            continue
    out: dict[str, Any] = {"as_of": at.isoformat(), "ledger": rows}
    if st.carers.latest_event is not None:
        try:
            out["participation"] = st.carers.participation(at).to_dict()
        except (StaleAsOfError, ValueError):
            pass
    return out


def carers_snapshot(merged: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Population carers' view at the merge point: overload per week, participation measures, and
    the carer_overload notifications due (exact: rows summed across partitions)."""
    entries = [e for e in merged["ledger"].values() if e[0]]
    if not entries:
        return {}, []
    as_of = max(datetime.fromisoformat(a) for a, _ in entries)
    rows = merge_rows([r for _, r in entries])
    notes = notifications_from_rows(rows, as_of)
    weeks: dict[str, dict[str, float]] = {}
    for r in rows:
        w = weeks.setdefault(r["week"], {"carers": 0, "hours": 0.0, "overloaded": 0})
        w["carers"] += 1
        w["hours"] += float(r["hours"])
        w["overloaded"] += int(float(r["minutes"]) >= 2100)
    out: dict[str, Any] = {"as_of": as_of.isoformat(), "weeks": weeks}
    parts = list(merged["participation"].values())
    if parts:
        day = max(s.as_of_day for s in parts)
        lifted = [dataclasses.replace(s, as_of_day=day) for s in parts]
        out["participation"] = participation_measures(ParticipationSummary.merge(*lifted))
    return out, notes


def population_snapshot(latest: dict[int, PartialSummary], partitions: int) -> dict[str, Any] | None:
    """Merge the latest partial summary of every partition into the population equity snapshot.

    Each partition is evaluated as of its own event-time watermark; summaries of different UTC days
    are merged under the latest day (they differ only around midnight while data flows). The
    result depends only on the per-partition summaries, never on which worker produced them.
    """
    if not latest:
        return None
    day = max(s.as_of_day for s in latest.values())
    total: PartialSummary | None = None
    for p in sorted(latest):
        s = dataclasses.replace(latest[p], as_of_day=day)
        total = s if total is None else PartialSummary.merge(total, s)
    assert total is not None
    return {
        "as_of_day": day,
        "partitions_reported": len(latest),
        "partitions": partitions,
        "groups": {dim: {g: c.indicators() for g, c in groups.items()}
                   for dim, groups in total.groups.items()},
        "equity": equity_from_summary(total, lorenz=True),
    }


def _check_token(view: View, request: Request, settings: Settings) -> Response | None:
    """403 when no token is configured (unset or empty), 401 unless the request carries it.

    A header that is not ASCII (aiohttp hands undecodable bytes over as surrogates) is simply a
    wrong token: 401, never a server error."""
    token = settings.api_token.get_secret_value() if settings.api_token is not None else ""
    if not token:
        return view.json({"error": "patient-level endpoints are disabled: set MONITOR_API_TOKEN"},
                         status=403)
    header = request.headers.get("Authorization", "")
    try:
        given = header.encode("ascii")
    except UnicodeEncodeError:
        given = b""
    if not given or not hmac.compare_digest(given, f"Bearer {token}".encode()):
        return view.json({"error": "a valid bearer token is required"}, status=401)
    return None


def summary(pipe: Pipeline) -> dict[str, Any]:
    """Aggregate counts for the demo and for humans: no identifiers."""
    wm = pipe.watermark
    counts = pipe.counts
    return {
        "inputs": counts.inputs,
        "processed": dict(counts.processed),
        "readings": counts.readings,
        "dead_letters": dict(counts.dead_letters),
        "patients_by_quintile": pipe.patients_by_quintile(),
        "without_support_by_quintile": pipe.unsupported_by_quintile(),
        "flags_published": dict(counts.flags_published),
        "alerts_published": dict(counts.alerts_published),
        "duplicates": counts.duplicates,
        "watermark": wm.isoformat() if wm else None,
    }


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


GC_THRESHOLD = 50_000
"""Allocations between young-generation collections in the worker (Python's default: 700)."""


class _Worker(faust.Worker):
    """faust's worker, with the root logger set to the configured level: faust leaves it at
    DEBUG (filtering in the handler), so every ``log.debug`` of aiokafka and faust built a record
    and looked up its caller - several per fetch, ~8 % of the worker's time."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        logger.setLevel(level)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()
