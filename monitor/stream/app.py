"""The faust application: thin agents that feed batches of raw records to the pipeline.

Topology (all input topics co-partitioned by patient id, ``MONITOR_PARTITIONS`` partitions each)::

    readings ─┐
    carer-activity ─┤  one agent, batches of up to 5000 events  ──► Pipeline.ingest ──► dead-letters
    care-network ─┤                                                      │
    patients ─┘                                                          ▼
                     wall-clock timer (MONITOR_FLAG_INTERVAL_S) ──► flag transitions ──► flags

The worker's web server (``MONITOR_WEB_HOST:MONITOR_WEB_PORT``) serves ``/metrics`` (Prometheus),
``/health`` and ``/summary`` (aggregates only, no identifiers) and the token-protected patient-level
``/patients/unsupported`` (``Authorization: Bearer $MONITOR_API_TOKEN``; 401 without it, 403 when no
token is configured).

Failure behaviour: an input that cannot be decoded never stops the agent; it is dead-lettered with a
reason and counted. Errors publishing to Kafka propagate (faust restarts the agent), so an input is
never silently dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from datetime import timedelta
from typing import Any

import faust
from faust.auth import SASLCredentials
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from monitor.alerts.alertmanager import AlertmanagerClient, AlertmanagerError
from monitor.alerts.engine import AlertEvent
from monitor.metrics.collectors import registry_for
from monitor.pipeline import Pipeline, RawRecord
from monitor.settings import Settings

log = logging.getLogger(__name__)

BATCH_MAX = 5000
BATCH_WITHIN_S = 0.1
PROM_CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp wants the charset separately


def _broker_url(settings: Settings) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in settings.bootstrap.split(","))


def pipeline_for(settings: Settings) -> Pipeline:
    """The pipeline configured by ``settings`` (horizons, idle time)."""
    return Pipeline(oldest_reading=timedelta(days=settings.oldest_reading_days),
                    idle_after=timedelta(seconds=settings.idle_after_s))


def create_app(settings: Settings, pipeline: Pipeline | None = None, *,
               replication_factor: int = 1) -> faust.App:
    """Build the faust app for ``settings``; ``pipeline`` may be injected (tests)."""
    pipe = pipeline or pipeline_for(settings)
    alertmanager = (AlertmanagerClient(settings.alertmanager_url)
                    if settings.alertmanager_url else None)
    credentials: Any = None
    if settings.sasl_mechanism:
        credentials = SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            mechanism=settings.sasl_mechanism,
        )
    app = faust.App(
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
        broker_max_poll_records=10000,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
    )
    app.pipeline = pipe  # type: ignore[attr-defined]
    expected = settings.topics.inputs
    inputs = app.topic(*expected, value_serializer="raw", key_serializer="raw")
    dead_topic = app.topic(settings.topics.name("dead_letters"), value_serializer="raw",
                           key_serializer="raw")
    flag_topic = app.topic(settings.topics.name("flags"), value_serializer="raw",
                           key_serializer="raw")
    alert_topic = app.topic(settings.topics.name("alerts"), value_serializer="raw",
                            key_serializer="raw")

    async def publish_alerts(events: list[AlertEvent]) -> None:
        for ev in events:
            await alert_topic.send(key=ev.patient_id.encode(), value=dumps(ev.to_json()))
        if alertmanager is not None and events:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, alertmanager.post, events)
            except AlertmanagerError as exc:  # the alerts topic still has them; retried on renotify
                log.warning("posting %d alerts to Alertmanager failed: %s", len(events), exc)
    registry = registry_for(pipe)

    @app.agent(inputs, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            records = [
                RawRecord(e.message.value, e.message.topic, e.message.partition, e.message.offset)
                for e in events
            ]
            result = pipe.ingest(records, expected)
            for d in result.dead_letters:
                await dead_topic.send(value=d.model_dump_json().encode())
            await publish_alerts(result.alerts)

    @app.timer(settings.flag_interval_s)
    async def evaluate_timers() -> None:
        tick = pipe.tick()
        for ev in tick.flags:
            await flag_topic.send(key=ev.patient_id.encode(), value=ev.model_dump_json().encode())
        await publish_alerts(tick.alerts)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), content_type=PROM_CONTENT_TYPE)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "inputs": pipe.counts.inputs})

    @app.page("/summary")
    class Summary(View):
        async def get(self, request: Request) -> Response:
            return self.json(summary(pipe))

    @app.page("/patients/unsupported")
    class Unsupported(View):
        async def get(self, request: Request) -> Response:
            denied = _check_token(self, request, settings)
            if denied is not None:
                return denied
            return self.json({"patients": pipe.flagged_patients()})

    @app.page("/patients/alerts")
    class OpenAlerts(View):
        async def get(self, request: Request) -> Response:
            denied = _check_token(self, request, settings)
            if denied is not None:
                return denied
            return self.json({"alerts": pipe.open_alerts()})

    return app


def _check_token(view: View, request: Request, settings: Settings) -> Response | None:
    if settings.api_token is None:
        return view.json({"error": "patient-level endpoints are disabled: set MONITOR_API_TOKEN"},
                         status=403)
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {settings.api_token.get_secret_value()}"
    if not hmac.compare_digest(header.encode(), expected.encode()):
        return view.json({"error": "a valid bearer token is required"}, status=401)
    return None


def summary(pipe: Pipeline) -> dict[str, Any]:
    """Aggregate counts for the demo and for humans: no identifiers."""
    wm = pipe.watermark
    return {
        "inputs": pipe.counts.inputs,
        "processed": dict(pipe.counts.processed),
        "readings": pipe.counts.readings,
        "dead_letters": dict(pipe.counts.dead_letters),
        "patients_by_quintile": pipe.patients_by_quintile(),
        "without_support_by_quintile": pipe.unsupported_by_quintile(),
        "flags_published": dict(pipe.counts.flags_published),
        "alerts_published": dict(pipe.counts.alerts_published),
        "duplicates": pipe.counts.duplicates,
        "watermark": wm.isoformat() if wm else None,
    }


def run_worker(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT (blocks; exits the process like ``faust worker``)."""
    from monitor.kafka.admin import ensure_topics, replication_factor

    ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, replication_factor=replication_factor(settings))
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
