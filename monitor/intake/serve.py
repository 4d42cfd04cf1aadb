"""Serving the HTTP intake (:mod:`monitor.intake.http`) with a Kafka publisher.

``run_intake`` blocks until SIGINT/SIGTERM. The publisher connects on application start-up (the
server does not start listening when Kafka is unreachable) and flushes and disconnects on clean-up.
The access log holds method, path (never the query string: ``?patient_id=`` is an identifier),
status, size, duration and the request id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from monitor.intake.http import DEFAULT_MAX_BODY_BYTES, REQUEST_ID_HEADER, create_intake_app
from monitor.kafka.admin import ensure_topics
from monitor.kafka.publisher import AsyncPublisher
from monitor.settings import Settings

log = logging.getLogger(__name__)


class PathOnlyAccessLogger(AbstractAccessLogger):
    """An access log line without the query string or any header but the request id."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s bytes sent %.1f ms request_id=%s", request.method, request.path,
            response.status, response.body_length, time * 1000.0,
            response.headers.get(REQUEST_ID_HEADER, "-"),
        )


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


def run_intake(
    settings: Settings, host: str, port: int, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> None:
    """Create the topics if missing, then serve the intake on ``host:port`` until interrupted (blocks)."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.api_token is None:
        log.warning("MONITOR_API_TOKEN is not set: every intake endpoint but /healthz answers 403")
    ensure_topics(settings)  # never let a broker auto-create them with the wrong partition count
    publisher = AsyncPublisher(settings)
    app = create_intake_app(settings, publisher, max_body_bytes=max_body_bytes,
                            max_items=settings.intake_max_items,
                            max_future=timedelta(seconds=settings.max_clock_skew_s))
    attach_publisher(app, publisher)
    web.run_app(app, host=host, port=port, access_log_class=PathOnlyAccessLogger,
                print=lambda msg: log.info("%s", msg))
