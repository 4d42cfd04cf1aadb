"""``coproduction-monitor notify``: the alerts topic to Alertmanager, at least once, never dropped.

The alerts topic is the source of truth; the worker only publishes to it. The notifier is a
consumer group of its own (``MONITOR_NOTIFY_GROUP``) that posts each event to Alertmanager's v2 API
(:class:`~monitor.alerts.alertmanager.AlertmanagerClient`) and commits the offsets of a fetch only
after Alertmanager accepted all of it. One loop, no background tasks, so posts never overtake each
other (Alertmanager merges by label set, and a late "firing" post would re-open an alert resolved
meanwhile).

Failure behaviour:

* Alertmanager unreachable or 5xx/429: retried with exponential backoff and jitter (``tenacity``)
  for up to ``retry_window_s`` (``MONITOR_NOTIFY_RETRY_WINDOW_S``, 20 s); then the consumer seeks
  back to the first event not accepted and fetches it again, so the group membership stays alive
  however long the outage lasts. Each failed attempt is counted by reason; nothing is skipped.
* A 4xx other than 408/429 (Alertmanager refuses the alert itself): the fetch is posted one alert
  at a time, refused alerts are counted (``monitor_notifier_alerts_rejected_total``) and logged
  without labels; the rest are delivered. The event stays on the topic.
* A record that is not an alert event: counted (``..._unreadable_total``), skipped.
* Crash or SIGKILL: nothing was committed past what Alertmanager accepted, so the restarted
  notifier posts the rest again (at least once; Alertmanager deduplicates by labels).
* Keep-alive: every ``MONITOR_ALERT_REPOST_S`` (300 s, wall clock) the firing alerts are posted
  again (:class:`~monitor.alerts.delivery.FiringSet`), well within Alertmanager's
  ``resolve_timeout`` (3 h), so a firing alert never expires by itself and an Alertmanager that
  restarted (it keeps alerts in memory only) has every firing alert back within one interval.
  The set is rebuilt on each partition assignment by reading the partition from its beginning
  up to the committed offset (posting nothing); the alerts topic is kept forever for that
  (``monitor.kafka.admin``) and is small: transitions only.

Metrics (own registry, ``MONITOR_NOTIFY_PORT``, no patient ids in labels): lag in messages, post
failures by reason, alerts accepted/rejected, firing alerts, the age of the oldest event not yet
accepted (the delivery-stall alert, ``deploy/prometheus/rules.yml``) and the delivery time from
the event's publication by the worker (its Kafka timestamp) to Alertmanager's accept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from monitor.alerts.actions import AlertAction
from monitor.alerts.alertmanager import AlertmanagerClient, AlertmanagerError
from monitor.alerts.delivery import FiringSet, Responses
from monitor.alerts.episodes import AlertEvent
from monitor.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Notifier", "NotifierMetrics", "run_notifier"]


def _transient(exc: BaseException) -> bool:
    """Worth retrying: unreachable, a timeout, a 5xx, 408 or 429 (not a refusal of the alert)."""
    if not isinstance(exc, AlertmanagerError):
        return False
    return exc.status is None or exc.status >= 500 or exc.status in (408, 429)


def _reason(exc: AlertmanagerError) -> str:
    return "unreachable" if exc.status is None else f"http_{exc.status // 100}xx"


class NotifierMetrics:
    """The notifier's Prometheus metrics (one registry per notifier; labels carry no ids)."""

    def __init__(self, registry: CollectorRegistry, pending_age: Callable[[], float],
                 lag: Callable[[], float], firing: Callable[[], float]) -> None:
        p = "monitor_notifier_"
        self.accepted = Counter(p + "alerts_accepted", "Alerts Alertmanager accepted (re-posts included)",
                                registry=registry)
        self.rejected = Counter(p + "alerts_rejected", "Alerts Alertmanager refused with a 4xx",
                                registry=registry)
        self.failures = Counter(p + "post_failures", "Failed posts to Alertmanager by reason",
                                ["reason"], registry=registry)
        self.unreadable = Counter(p + "unreadable_records",
                                  "Records of the alerts topic that are not alert events", registry=registry)
        self.reposts = Counter(p + "keepalive_posts", "Keep-alive posts of the firing alerts",
                               registry=registry)
        self.delivery = Histogram(
            p + "delivery_seconds", "From the alert's publication (Kafka timestamp) to Alertmanager's accept",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600), registry=registry)
        Gauge(p + "oldest_unaccepted_seconds", "Age of the oldest alert event not yet accepted (0: none)",
              registry=registry).set_function(pending_age)
        Gauge(p + "lag_messages", "Alert events on the topic after the committed offsets",
              registry=registry).set_function(lag)
        Gauge(p + "firing_alerts", "Firing alerts the notifier keeps alive",
              registry=registry).set_function(firing)
        # is the response itself equitable? by region, deprivation quintile and severity (no ids)
        self.time_to_ack = Histogram(
            "monitor_alert_time_to_ack_seconds", "From an alert's publication to its first acknowledgement",
            ["region", "deprivation_quintile", "severity"],
            buckets=(60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400),
            registry=registry)
        self.escalations = Counter("monitor_alert_escalations", "Alerts escalated to tier 2 unacknowledged",
                                   ["severity"], registry=registry)
        self.silence_failures = Counter(p + "silence_failures", "Failed silence creations or expiries",
                                        registry=registry)


class Notifier:
    """Consumes the alerts topic in its own group and delivers it to ``client`` (see the module
    docstring). ``clock`` gives wall-clock seconds (injectable); ``retry_window_s`` bounds one
    round of retries before the fetch is read again."""

    def __init__(self, settings: Settings, client: AlertmanagerClient, *,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 retry_window_s: float = 20.0) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        self.retry_window_s = retry_window_s
        self.topic = settings.topics.name("alerts")
        self.firing: dict[TopicPartition, FiringSet] = {}
        self.resume_at: dict[TopicPartition, int] = {}  # first offset not yet accepted (= committed)
        self.next_offset: dict[TopicPartition, int] = {}  # next offset to read
        self._pending_since: float | None = None  # Kafka time (s) of the oldest event not accepted
        self._repost_due = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        # acknowledgements and escalations (the alert-actions topic, one partition, read in full)
        self.responses = Responses(settings.escalate_after)
        self.actions_topic = settings.topics.name("alert_actions")
        self.actions_live_from = 0  # its end offset at start: earlier actions are history
        self.actions_next = 0
        self.silence_todo: dict[str, AlertAction] = {}  # acks whose silence is still to be made
        self.producer: AIOKafkaProducer | None = None
        self.actions_consumer: AIOKafkaConsumer | None = None
        # patient -> deprivation quintile, from the patients topic (the registry; read in full)
        self.quintiles: dict[str, int] = {}
        self.patients_consumer: AIOKafkaConsumer | None = None
        self.metrics = NotifierMetrics(registry or CollectorRegistry(), self._pending_age, self._lag,
                                       lambda: float(sum(len(f) for f in self.firing.values())))

    # --- metrics callbacks ----------------------------------------------------------------------
    def _pending_age(self) -> float:
        since = self._pending_since
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def _lag(self) -> float:
        c = self.consumer
        if c is None:
            return 0.0
        total = 0
        for tp, committed in list(self.resume_at.items()):
            high = c.highwater(tp)
            if high is not None:
                total += max(0, high - committed)
        return float(total)

    # --- assignment -----------------------------------------------------------------------------
    async def assigned(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> None:
        """Rebuild the firing sets of newly assigned partitions: read from the beginning, post
        only from the committed offset on."""
        begins = await consumer.beginning_offsets(list(tps)) if tps else {}
        for tp in tps:
            committed = await consumer.committed(tp)
            self.resume_at[tp] = committed or 0
            self.next_offset[tp] = begins[tp]
            self.firing[tp] = FiringSet()
            consumer.seek(tp, begins[tp])
        self._repost_due = 0.0  # keep the rebuilt set alive as soon as it is complete

    def revoked(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            for table in (self.firing, self.resume_at, self.next_offset):
                table.pop(tp, None)

    def rebuilding(self) -> bool:
        return any(self.next_offset.get(tp, 0) < at for tp, at in self.resume_at.items())

    # --- delivery -------------------------------------------------------------------------------
    async def _post_with_retries(self, alerts: list[dict[str, Any]]) -> None:
        async for attempt in AsyncRetrying(retry=retry_if_exception(_transient),
                                           wait=wait_exponential_jitter(initial=0.2, max=5.0),
                                           stop=stop_after_delay(self.retry_window_s), reraise=True):
            with attempt:
                try:
                    await self.client.post_alerts(alerts)
                except AlertmanagerError as exc:
                    self.metrics.failures.labels(_reason(exc)).inc()
                    raise

    async def deliver(self, events: list[AlertEvent]) -> None:
        """Post ``events`` until Alertmanager accepted each (or refused it for good); raises
        :class:`AlertmanagerError` when it is still unreachable after the retry window."""
        alerts = self._payload(events)
        if not alerts:
            return
        try:
            await self._post_with_retries(alerts)
            self.metrics.accepted.inc(len(alerts))
        except AlertmanagerError as exc:
            if _transient(exc):
                raise
            # Alertmanager refuses something in this fetch: deliver the rest one by one
            for alert in alerts:
                try:
                    await self._post_with_retries([alert])
                    self.metrics.accepted.inc()
                except AlertmanagerError as one:
                    if _transient(one):
                        raise
                    self.metrics.rejected.inc()
                    log.error("Alertmanager refused an alert (HTTP %s); it stays on the alerts topic",
                              one.status)

    def _payload(self, events: list[AlertEvent]) -> list[dict[str, Any]]:
        """The alerts of ``events``, with the tier-2 copy of each escalated one."""
        out = self.client.payload(events)
        for e in events:
            if e.alert_id in self.responses.escalated and e.notification != "recorded":
                out.extend(self.client.alerts_for(e, tier=2))
        return out

    def _firing_event(self, alert_id: str) -> tuple[AlertEvent, float] | None:
        for f in self.firing.values():
            event = f.get(alert_id)
            if event is not None:
                return event, f.since.get(alert_id, 0.0)
        return None

    async def keep_alive(self) -> None:
        """Post every firing alert again (one attempt: the next round comes within the interval)."""
        events = [e for f in self.firing.values() for e in f.events()]
        self._repost_due = self.clock() + self.settings.alert_repost_s
        if not events:
            return
        try:
            await self.client.post_alerts(self._payload(events))
            self.metrics.reposts.inc()
        except AlertmanagerError as exc:
            self.metrics.failures.labels(_reason(exc)).inc()
            log.warning("keep-alive post of %d firing alerts failed: %s", len(events), exc)

    async def step(self, consumer: AIOKafkaConsumer, timeout_ms: int = 1000) -> int:
        """One fetch: rebuild, post, commit. Returns the number of events posted."""
        batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        to_post: list[AlertEvent] = []
        first_new: dict[TopicPartition, int] = {}
        last: dict[TopicPartition, int] = {}
        stamps: list[float] = []
        for tp, records in batch.items():
            firing = self.firing.get(tp)
            if firing is None:  # revoked meanwhile
                continue
            for r in records:
                self.next_offset[tp] = r.offset + 1
                try:
                    event = AlertEvent.from_json(json.loads(r.value))
                except (ValueError, TypeError, KeyError):
                    self.metrics.unreadable.inc()
                    log.error("record %d of partition %d of the alerts topic is not an alert event",
                              r.offset, tp.partition)
                    event = None
                if event is not None:
                    firing.apply(event, r.timestamp / 1000.0)
                if r.offset < self.resume_at[tp]:
                    continue  # delivered before: rebuilding the firing set only
                first_new.setdefault(tp, r.offset)
                last[tp] = r.offset
                if event is not None:
                    to_post.append(event)
                    stamps.append(r.timestamp / 1000.0)
        if last:
            if self._pending_since is None:
                self._pending_since = min(stamps) if stamps else self.clock()
            try:
                await self.deliver(to_post)
            except AlertmanagerError as exc:
                log.warning("Alertmanager unreachable for %.0f s (%s); reading the %d events again",
                            self.retry_window_s, exc, len(to_post))
                for tp, offset in first_new.items():
                    consumer.seek(tp, offset)
                    self.next_offset[tp] = offset
                return 0
            accepted = self.clock()
            for ts in stamps:
                self.metrics.delivery.observe(max(0.0, accepted - ts))
            for event in to_post:
                if event.status == "resolved":
                    await self._resolved(event.alert_id)
            commit = {tp: offset + 1 for tp, offset in last.items() if tp in self.resume_at}
            try:
                await consumer.commit(commit)
                self.resume_at.update(commit)
            except (CommitFailedError, IllegalStateError) as exc:  # a rebalance: posted again later
                log.warning("commit after delivery failed (%s): those events will be posted again",
                            type(exc).__name__)
            self._pending_since = None
        await self.take_actions()
        if not self.rebuilding():
            if self.actions_next >= self.actions_live_from:
                await self.escalate()
            if self.clock() >= self._repost_due:
                await self.keep_alive()
        return len(to_post)

    # --- acknowledgements and escalations ---------------------------------------------------------
    async def take_patients(self) -> None:
        """Follow the registry: each patient's deprivation quintile (invalid documents skipped:
        the worker dead-letters them)."""
        if self.patients_consumer is None:
            return
        batch = await self.patients_consumer.getmany(timeout_ms=0, max_records=10_000)
        for records in batch.values():
            for r in records:
                try:
                    doc = json.loads(r.value)
                    self.quintiles[str(doc["patient_id"])] = int(doc["deprivation_quintile"])
                except (ValueError, TypeError, KeyError):
                    continue

    async def take_actions(self) -> None:
        """Apply what arrived on the alert-actions topic; make the silences still to be made."""
        await self.take_patients()
        consumer = self.actions_consumer
        if consumer is not None:
            batch = await consumer.getmany(timeout_ms=0, max_records=1000)
            for records in batch.values():
                for r in records:
                    self.actions_next = r.offset + 1
                    try:
                        action = AlertAction.from_json(json.loads(r.value))
                    except (ValueError, TypeError, KeyError):
                        self.metrics.unreadable.inc()
                        continue
                    if not self.responses.apply(action) or action.action != "ack":
                        continue
                    found = self._firing_event(action.alert_id)
                    if found is None:
                        continue  # resolved already, or another notifier's partition
                    self.silence_todo[action.alert_id] = action
                    if r.offset >= self.actions_live_from:
                        event, since = found
                        quintile = self.quintiles.get(event.patient_id)
                        self.metrics.time_to_ack.labels(
                            event.region or "unknown", "unknown" if quintile is None else str(quintile),
                            event.severity).observe(max(0.0, action.at.timestamp() - since))
        for alert_id, action in list(self.silence_todo.items()):
            found = self._firing_event(alert_id)
            if found is None:
                self.silence_todo.pop(alert_id)
                continue
            try:
                await self._ensure_silence(found[0], action)
                self.silence_todo.pop(alert_id)
            except AlertmanagerError as exc:
                self.metrics.silence_failures.inc()
                log.warning("silencing an acknowledged alert failed (%s); trying again", exc)
                break  # Alertmanager is away: the next step tries again

    @staticmethod
    def _comment(alert_id: str) -> str:
        return f"ack {alert_id}"

    async def _silences_of(self, alert_id: str) -> list[dict[str, Any]]:
        """The unexpired silences made for ``alert_id``'s acknowledgement."""
        mine = self._comment(alert_id)
        return [s for s in await self.client.silences()
                if s.get("comment", "").startswith(mine) and s["status"]["state"] != "expired"]

    async def _ensure_silence(self, event: AlertEvent, action: AlertAction) -> None:
        """One silence per acknowledged alert (a restarted notifier finds the one it made)."""
        if await self._silences_of(event.alert_id):
            return
        mine = self._comment(event.alert_id)
        note = f": {action.note}" if action.note else ""
        await self.client.silence(event, by=action.by, comment=f"{mine} by {action.by}{note}",
                                  ends_at=datetime.now(UTC) + timedelta(days=7))

    async def _resolved(self, alert_id: str) -> None:
        """An episode resolved: end its silence (a later episode must page) and forget it."""
        if alert_id in self.responses.acked:
            try:
                for silence in await self._silences_of(alert_id):
                    await self.client.expire_silence(silence["id"])
            except AlertmanagerError as exc:
                self.metrics.silence_failures.inc()
                log.warning("expiring the silence of a resolved alert failed: %s", exc)
        self.responses.forget(alert_id)
        self.silence_todo.pop(alert_id, None)

    async def escalate(self) -> None:
        """Tier 2 for each unacknowledged alert past its severity's time: the action first on the
        topic (so a restart does not escalate again), then the tier-2 copy to Alertmanager."""
        firing = [(e, f.since.get(e.alert_id, 0.0)) for f in self.firing.values() for e in f.events()]
        due = self.responses.due(firing, self.clock())
        if not due or self.producer is None:
            return
        for event in due:
            action = AlertAction("escalate", event.alert_id, datetime.fromtimestamp(self.clock(), UTC),
                                 by="notifier", tier=2)
            await self.producer.send_and_wait(self.actions_topic, action.dumps(), key=event.alert_id.encode(),
                                              partition=0)
            self.responses.apply(action)
            self.metrics.escalations.labels(event.severity).inc()
        try:
            await self.client.post_alerts([a for e in due for a in self.client.alerts_for(e, tier=2)])
        except AlertmanagerError as exc:  # the keep-alive posts the tier-2 copies again
            self.metrics.failures.labels(_reason(exc)).inc()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set (then close the consumer and the HTTP session)."""
        consumer = AIOKafkaConsumer(
            **self.settings.aiokafka_config(), group_id=self.settings.notify_group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, self.settings.session_timeout_s / 3) * 1000))
        self.consumer = consumer
        notifier = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                notifier.revoked(set(revoked))

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                await notifier.assigned(consumer, set(assigned))

        consumer.subscribe([self.topic], listener=Listener())
        actions = AIOKafkaConsumer(**self.settings.aiokafka_config(), group_id=None,
                                   enable_auto_commit=False)
        producer = AIOKafkaProducer(**self.settings.aiokafka_config(), acks="all", enable_idempotence=True)
        await consumer.start()
        await actions.start()
        await producer.start()
        self.producer = producer
        tp = TopicPartition(self.actions_topic, 0)
        actions.assign([tp])
        await actions.seek_to_beginning(tp)
        self.actions_live_from = (await actions.end_offsets([tp]))[tp]
        self.actions_next = (await actions.beginning_offsets([tp]))[tp]
        self.actions_consumer = actions
        patients = AIOKafkaConsumer(**self.settings.aiokafka_config(), group_id=None,
                                    enable_auto_commit=False)
        await patients.start()
        registry_tps = [TopicPartition(self.settings.topics.name("patients"), p)
                        for p in range(self.settings.partitions)]
        patients.assign(registry_tps)
        await patients.seek_to_beginning(*registry_tps)
        self.patients_consumer = patients
        try:
            while not stop.is_set():
                try:
                    await self.step(consumer)
                except KafkaError as exc:  # the broker is away: the consumer reconnects by itself
                    log.warning("alerts topic unavailable: %s", type(exc).__name__)
                    await asyncio.sleep(1.0)
        finally:
            await consumer.stop()
            await actions.stop()
            await patients.stop()
            await producer.stop()
            await self.client.close()


def run_notifier(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT (blocks). Requires ``MONITOR_ALERTMANAGER_URL``."""
    from monitor.kafka.admin import ensure_topics

    if not settings.alertmanager_url:
        raise ValueError("MONITOR_ALERTMANAGER_URL is not set: the notifier has nowhere to deliver")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ensure_topics(settings)
    registry = CollectorRegistry()
    start_http_server(settings.notify_port, addr=settings.web_host, registry=registry)
    client = AlertmanagerClient(settings.alertmanager_url, generator_url=settings.alert_link_template,
                                runbook_url=settings.runbook_url_template)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Notifier(settings, client, registry=registry,
                       retry_window_s=settings.notify_retry_window_s).run(stop)

    asyncio.run(main())
