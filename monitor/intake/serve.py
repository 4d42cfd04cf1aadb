"""Serving the HTTP intake (:mod:`monitor.intake.http`) with a Kafka publisher.

``run_intake`` blocks until SIGINT/SIGTERM. The publisher connects on application start-up (the
server does not start listening when Kafka is unreachable) and flushes and disconnects on clean-up.
It is a :class:`ProbingPublisher`, whose broker check answers ``/readyz``.
The access log holds method, path (never the query string: ``?patient_id=`` is an identifier),
status, size, duration and the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from monitor.credentials import CredentialRegistry
from monitor.intake.http import DEFAULT_MAX_BODY_BYTES, REQUEST_ID_HEADER, create_intake_app
from monitor.kafka.admin import ensure_topics
from monitor.kafka.publisher import AsyncPublisher
from monitor.settings import Settings

INTAKE_TOPICS = ("readings", "carer_activity", "care_network", "dead_letters")
"""The topics (keys of :class:`monitor.settings.Topics`) the intake writes: all must be writable."""

log = logging.getLogger(__name__)


class PathOnlyAccessLogger(AbstractAccessLogger):
    """An access log line without the query string or any header but the request id."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s bytes sent %.1f ms request_id=%s", request.method, request.path,
            response.status, response.body_length, time * 1000.0,
            response.headers.get(REQUEST_ID_HEADER, "-"),
        )


class ProbingPublisher(AsyncPublisher):
    """An :class:`AsyncPublisher` that can tell whether its producer reaches the cluster now
    (:class:`monitor.intake.http.BrokerCheck`, behind ``/readyz``).

    :meth:`check_broker` sends one metadata request for the intake's topics over the producer's own
    client (its connections, TLS and SASL): to a known broker, trying the next one on a connection
    failure. Ready means a broker answered, every intake topic exists and each of its partitions has
    a leader (a write would be accepted). The request never auto-creates a topic. It has no timeout
    of its own: the caller bounds it (:class:`monitor.intake.http.ReadinessCache`, 2 s).
    """

    def __init__(self, settings: Settings, **overrides: object) -> None:
        super().__init__(settings, **overrides)
        self._topics = [settings.topics.name(kind) for kind in INTAKE_TOPICS]

    async def check_broker(self) -> str | None:
        if not self.started:
            return "publisher_not_started"
        client = self._require().client
        nodes = [b.nodeId for b in client.cluster.brokers()]
        random.shuffle(nodes)  # spread the checks of many intakes over the brokers
        request = MetadataRequest(self._topics, allow_auto_topic_creation=False)
        for node in nodes:
            try:
                response = await client.send(node, request)
            except KafkaError:  # connection refused or broken, node not ready, request timed out
                continue
            if not response.brokers:  # a broker without a cluster view yet (starting up)
                continue
            metadata = ClusterMetadata()
            metadata.update_metadata(response)
            for topic in self._topics:
                partitions = metadata.partitions_for_topic(topic)
                if not partitions:
                    return "topic_missing"
                if metadata.available_partitions_for_topic(topic) != partitions:
                    return "no_leader"
            return None
        return "broker_unreachable"


def attach_publisher(
    app: web.Application, publisher: AsyncPublisher
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Start ``publisher`` on ``app`` start-up and stop it on clean-up; returns the context added."""

    async def publisher_context(_: web.Application) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.stop()

    app.cleanup_ctx.append(publisher_context)
    return publisher_context


def attach_credentials(app: web.Application, settings: Settings,
                       registry: CredentialRegistry) -> Callable[[web.Application], AsyncIterator[None]]:
    """Follow the credentials topic into ``registry`` while ``app`` runs (start-up waits, up to
    10 s, until the credentials present at start are known, so none is refused for being new)."""
    from monitor.kafka.credentials import follow

    async def credentials_context(_: web.Application) -> AsyncIterator[None]:
        caught_up = asyncio.Event()
        task = asyncio.create_task(follow(settings, registry, caught_up))
        try:
            await asyncio.wait_for(caught_up.wait(), 10)
        except TimeoutError:
            log.warning("the credentials topic was not read within 10 s; credentials arrive as it is")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(credentials_context)
    return credentials_context


def run_intake(
    settings: Settings, host: str, port: int, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> None:
    """Create the topics if missing, then serve the intake on ``host:port`` until interrupted (blocks)."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.api_token is None:
        log.warning("MONITOR_API_TOKEN is not set: every intake endpoint but /healthz and /readyz "
                    "answers 403")
    ensure_topics(settings)  # never let a broker auto-create them with the wrong partition count
    publisher = ProbingPublisher(settings)
    credentials = CredentialRegistry()
    app = create_intake_app(settings, publisher, max_body_bytes=max_body_bytes,
                            max_items=settings.intake_max_items,
                            max_future=timedelta(seconds=settings.max_clock_skew_s), credentials=credentials)
    attach_publisher(app, publisher)
    attach_credentials(app, settings, credentials)
    web.run_app(app, host=host, port=port, access_log_class=PathOnlyAccessLogger,
                print=lambda msg: log.info("%s", msg))
