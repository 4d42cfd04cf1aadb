"""HTTP intake for apps and gateways that cannot speak Kafka: decode, validate, publish, answer.

Endpoints (every one but ``/healthz`` needs ``Authorization: Bearer $MONITOR_API_TOKEN``):

``POST /v1/readings``
    A native reading, a JSON array of readings, a native gateway batch, a FHIR R4 Observation or
    Bundle, Nightscout entries (with ``?patient_id=``: entries carry no patient) or Open mHealth data
    points. The format is detected per item (:func:`monitor.intake.formats.decode_value`) unless
    ``?format=native|fhir|nightscout|openmhealth`` is given. ``?patient_id=`` is also the fallback
    patient of FHIR Observations without ``subject`` and data points without ``user_id``.
    Each valid reading is published to the readings topic in the **native contract form** the worker
    consumes (:func:`native_reading`: canonical unit and value, UTC ``measured_at``), keyed by the
    patient id on partition :func:`~monitor.kafka.partitioning.partition_for` (patient id).
``POST /v1/carer-activities``, ``POST /v1/care-links``
    One native document or a JSON array of them (an optional ``"type"`` must match). Published to
    the carer-activity topic (key: patient id) and the care-network topic (key ``patient|carer``,
    partition of the patient id, so the compacted topic keeps the latest state of each link).
``GET /healthz``
    200 ``{"status": "ok"}`` (no token; says nothing about Kafka).

Every response carries ``X-Request-Id`` (a fresh UUID per request). Statuses:

* 202 ``{"request_id", "accepted", "rejected", "items": [{"index", "ok": true} |
  {"index", "ok": false, "reason", "detail"}]}`` when at least one item was accepted; ``index`` is
  the position of the item among the decoded items (a Bundle counts its Observation entries, a
  gateway batch its readings);
* 400 with the same body when nothing was acceptable (malformed JSON is one item with reason
  ``malformed_json``; an empty array has no items), or ``{"request_id", "error", "detail"}`` for a
  bad query parameter;
* 401 without a valid bearer token; 403 when no token is configured (the intake is then closed);
* 413 when the body exceeds ``max_body_bytes`` (by ``Content-Length`` or by what was actually read);
* 415 when the content type is not JSON (``application/json`` or ``application/*+json``, UTF-8);
* 503 ``{"request_id", "accepted": 0, "error": "publish_failed", "detail"}`` when Kafka did not
  acknowledge every record in time: nothing is reported as accepted and the client should retry.
  Some records may have been delivered already; re-sending is harmless because readings without a
  source id get a deterministic ``reading_id`` (a hash of their content) and the worker drops
  duplicates.

Every rejected item is also published to the dead-letters topic (``source="http"``, the
``request_id``, the reason, the receive time and the item's JSON as ``original``; the whole body for
``malformed_json``/``not_utf8``), before the answer is sent: a 2xx/400 answer means every record of
the request was acknowledged by Kafka.

Nothing here logs payloads, identifiers or query strings (they carry patient ids): log lines hold the
request id, the endpoint, the status and counts only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from monitor.contract.models import CareLink, CarerActivity, DeadLetter, Reading, to_json_dict
from monitor.intake.canonical import CanonicalReading, iso_utc, load_json
from monitor.intake.formats import FORMATS, decode_value
from monitor.intake.native import Rejection, validate_document
from monitor.kafka.partitioning import partition_for
from monitor.kafka.publisher import OutgoingRecord, Publisher
from monitor.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_MAX_BODY_BYTES = 1_048_576
UNKNOWN_DEVICE = "unknown-device"
"""``device_id`` of readings whose source names no device (the native contract requires one)."""
DEAD_LETTER_MAX_BYTES = 900_000
"""Largest dead-letter value published; a longer ``original`` is cut (and the detail says so) so
that a large malformed body stays under the broker's default 1 MB message limit."""
PUBLISH_TIMEOUT_S = 30.0
REQUEST_ID_HEADER = "X-Request-Id"

_REQUEST_ID = web.RequestKey("request_id", str)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- canonical -> native ----------------------------------------------------------------------


def derived_reading_id(reading: CanonicalReading) -> str:
    """A deterministic ``reading_id`` for a reading whose source gave none: ``h-`` and 32 hex digits
    of the SHA-256 of its content key (patient, kind, event time, values rounded to 6 decimals).

    The same measurement sent twice (a retried request, two uploaders) gets the same id, so the
    worker's dedup drops the copy.
    """
    _, patient, kind, measured_at, value, systolic, diastolic = reading.content_key
    text = json.dumps([patient, kind, iso_utc(measured_at), value, systolic, diastolic],
                      separators=(",", ":"))
    return "h-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def native_reading(reading: CanonicalReading) -> Reading | Rejection:
    """The native contract :class:`~monitor.contract.models.Reading` of a canonical reading.

    Canonical unit and value(s); ``reading_id`` from the source or :func:`derived_reading_id`;
    ``device_id`` from the source or :data:`UNKNOWN_DEVICE`. The canonical extras (``bounded``,
    ``late``, ``original_unit``, ``original_code``, ``source``) have no place in the contract and are
    dropped. Returns a rejection if the result does not validate against the contract.
    """
    doc: dict[str, Any] = {
        "reading_id": reading.reading_id or derived_reading_id(reading),
        "patient_id": reading.patient_id,
        "device_id": reading.device_id or UNKNOWN_DEVICE,
        "kind": reading.kind,
        "unit": reading.unit,
        "measured_at": iso_utc(reading.measured_at),
    }
    if reading.gateway_id:
        doc["gateway_id"] = reading.gateway_id
    if reading.kind == "blood_pressure":
        doc["systolic"], doc["diastolic"] = reading.systolic, reading.diastolic
    else:
        doc["value"] = reading.value
    result = validate_document(doc, expected="reading")
    assert isinstance(result, Reading | Rejection)  # no "readings" field: never a gateway batch
    return result


# --- decoding a request body into per-item outcomes ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One decoded item: the record to publish, or the rejection and the item's original bytes."""

    record: OutgoingRecord | None
    rejection: Rejection | None
    original: bytes


def _accepted(record: OutgoingRecord) -> Outcome:
    return Outcome(record, None, b"")


def _rejected(rejection: Rejection, original: bytes) -> Outcome:
    return Outcome(None, rejection, original)


def _sub_items(item: Any, n_results: int) -> list[Any]:
    """The JSON of each result of one top-level item, for dead letters.

    A Bundle gives one result per Observation entry (and per entry without a resource), a valid
    gateway batch one per reading; when the counts do not line up (the whole item was rejected),
    every result maps to the whole item.
    """
    parts: list[Any] | None = None
    if isinstance(item, dict) and item.get("resourceType") == "Bundle":
        if isinstance(item.get("entry"), list):
            parts = []
            for entry in item["entry"]:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    parts.append(entry)
                elif resource.get("resourceType") == "Observation":
                    parts.append(resource)
    elif isinstance(item, dict) and isinstance(item.get("readings"), list) and n_results > 1:
        parts = list(item["readings"])  # one result = the batch itself was rejected
    if parts is not None and len(parts) == n_results:
        return parts
    return [item] * n_results


def decode_readings(
    raw: bytes,
    *,
    topic: str,
    partitions: int,
    received_at: datetime,
    fmt: str = "auto",
    patient_id: str | None = None,
) -> list[Outcome]:
    """A readings request body -> one :class:`Outcome` per decoded item, in order. Never raises on
    bad input (an unknown ``fmt`` or a naive ``received_at`` raise ``ValueError``)."""
    parsed = load_json(raw)
    if isinstance(parsed, Rejection):
        return [_rejected(parsed, raw)]
    items = parsed if isinstance(parsed, list) else [parsed]
    outcomes: list[Outcome] = []
    for item in items:
        if isinstance(item, list):
            outcomes.append(_rejected(Rejection("not_an_object", "got a JSON list inside a list"),
                                      _dumps(item)))
            continue
        results = decode_value(item, fmt=fmt, patient_id=patient_id, received_at=received_at)
        originals = _sub_items(item, len(results))
        for result, original in zip(results, originals, strict=True):
            if isinstance(result, CanonicalReading):
                result = native_reading(result)
            if isinstance(result, Rejection):
                outcomes.append(_rejected(result, _dumps(original)))
                continue
            pid = result.patient_id
            outcomes.append(_accepted(OutgoingRecord(
                topic, pid.encode("utf-8"), _dumps(to_json_dict(result)), partition_for(pid, partitions)
            )))
    return outcomes


def decode_documents(raw: bytes, *, expected: str, topic: str, partitions: int) -> list[Outcome]:
    """A carer-activity or care-link request body (one document or an array) -> outcomes.

    ``expected`` is ``"carer_activity"`` (key: patient id) or ``"care_link"`` (key
    ``patient|carer``); both are partitioned by the patient id.
    """
    parsed = load_json(raw)
    if isinstance(parsed, Rejection):
        return [_rejected(parsed, raw)]
    items = parsed if isinstance(parsed, list) else [parsed]
    outcomes: list[Outcome] = []
    for item in items:
        if not isinstance(item, dict):
            outcomes.append(_rejected(
                Rejection("not_an_object", f"got a JSON {type(item).__name__}"), _dumps(item)))
            continue
        doc = validate_document(item, expected=expected)
        if isinstance(doc, Rejection):
            outcomes.append(_rejected(doc, _dumps(item)))
            continue
        assert isinstance(doc, CarerActivity | CareLink)  # validate_document honours `expected`
        pid = doc.patient_id
        key = f"{pid}|{doc.carer_id}" if isinstance(doc, CareLink) else pid
        outcomes.append(_accepted(OutgoingRecord(
            topic, key.encode("utf-8"), _dumps(to_json_dict(doc)), partition_for(pid, partitions)
        )))
    return outcomes


def dead_letter_value(
    rejection: Rejection, original: bytes, *, topic: str, request_id: str, received_at: datetime,
    max_bytes: int = DEAD_LETTER_MAX_BYTES,
) -> bytes:
    """The JSON of a :class:`~monitor.contract.models.DeadLetter` for a rejected HTTP item.

    ``topic`` is the topic the item was meant for. ``original`` is kept as UTF-8 text (base64 when it
    is not UTF-8); if the record would exceed ``max_bytes`` the original is cut to fit and the detail
    says how many bytes were kept.
    """
    try:
        original.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    keep = len(original)
    while True:
        part = original[:keep]
        detail = rejection.detail
        if keep < len(original):
            detail += f" (original cut to its first {keep} of {len(original)} bytes)"
        dl = DeadLetter(
            reason=rejection.reason, detail=detail, source="http", topic=topic,
            request_id=request_id, received_at=received_at,
            encoding="utf-8" if utf8 else "base64",
            # errors="ignore" only drops a character split by the cut
            original=part.decode("utf-8", errors="ignore") if utf8 else base64.b64encode(part).decode(),
        )
        value = dl.model_dump_json(exclude_none=True).encode("utf-8")
        if len(value) <= max_bytes or keep == 0:
            return value
        keep = max(0, keep - (len(value) - max_bytes) - 1024)


# --- the aiohttp application ------------------------------------------------------------------


def _error(status: int, request: web.Request, error: str, detail: str) -> web.Response:
    return web.json_response(
        {"request_id": request[_REQUEST_ID], "error": error, "detail": detail}, status=status
    )


@web.middleware
async def _request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = str(uuid.uuid4())
    request[_REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own 404/405/...
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _is_json_type(request: web.Request) -> bool:
    mimetype = request.content_type.lower()
    json_type = mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )
    charset = request.charset
    return json_type and (charset is None or charset.lower() in ("utf-8", "utf8"))


class _Intake:
    """The request handlers, bound to settings, a publisher and a clock."""

    def __init__(self, settings: Settings, publisher: Publisher, clock: Clock, max_body_bytes: int,
                 publish_timeout_s: float) -> None:
        self.settings = settings
        self.publisher = publisher
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.publish_timeout_s = publish_timeout_s
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self._expected_auth = f"Bearer {token}".encode() if token else None

    # -- checks before any decoding --

    def _denied(self, request: web.Request) -> web.Response | None:
        if self._expected_auth is None:
            return _error(403, request, "intake_disabled",
                          "the HTTP intake is closed: no MONITOR_API_TOKEN is configured")
        try:
            given = request.headers.get("Authorization", "").encode("utf-8")
        except UnicodeEncodeError:
            given = b""
        if not hmac.compare_digest(given, self._expected_auth):
            response = _error(401, request, "unauthorized",
                              "send Authorization: Bearer <MONITOR_API_TOKEN>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="coproduction-monitor intake"'
            return response
        return None

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The request body, or the 401/403/415/413 answer that stops the request."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        if not _is_json_type(request):
            return _error(415, request, "unsupported_media_type",
                          "send JSON: Content-Type application/json (or application/fhir+json), UTF-8")
        too_large = _error(413, request, "body_too_large",
                           f"the body is larger than {self.max_body_bytes} bytes; split it")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return too_large
        body = bytearray()
        while chunk := await request.content.read(64 * 1024):
            body += chunk
            if len(body) > self.max_body_bytes:  # a lying Content-Length or a chunked body
                return too_large
        return bytes(body)

    # -- publishing and answering --

    async def _answer(self, request: web.Request, outcomes: Sequence[Outcome], topic: str,
                      received_at: datetime) -> web.Response:
        request_id = request[_REQUEST_ID]
        dead_topic = self.settings.topics.name("dead_letters")
        records: list[OutgoingRecord] = []
        items: list[dict[str, Any]] = []
        for index, outcome in enumerate(outcomes):
            if outcome.record is not None:
                records.append(outcome.record)
                items.append({"index": index, "ok": True})
            else:
                assert outcome.rejection is not None
                rej = outcome.rejection
                records.append(OutgoingRecord(dead_topic, None, dead_letter_value(
                    rej, outcome.original, topic=topic, request_id=request_id,
                    received_at=received_at), None))
                items.append({"index": index, "ok": False, "reason": rej.reason, "detail": rej.detail})
        accepted = sum(1 for o in outcomes if o.record is not None)
        rejected = len(outcomes) - accepted
        if records:
            try:
                await asyncio.wait_for(self.publisher.publish_many(records), self.publish_timeout_s)
            except Exception as exc:  # any delivery failure: the client must retry
                log.warning("intake request %s %s: publishing failed (%s)", request_id, request.path,
                            type(exc).__name__)
                return web.json_response({
                    "request_id": request_id, "accepted": 0, "error": "publish_failed",
                    "detail": f"Kafka did not acknowledge the records ({type(exc).__name__}); "
                              "nothing was accepted: retry the request",
                }, status=503, headers={"Retry-After": "5"})
        status = 202 if accepted else 400
        log.info("intake request %s %s: %d accepted, %d rejected -> %d", request_id, request.path,
                 accepted, rejected, status)
        return web.json_response({"request_id": request_id, "accepted": accepted,
                                  "rejected": rejected, "items": items}, status=status)

    # -- handlers --

    async def readings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        fmt = request.query.get("format", "auto")
        if fmt not in FORMATS:
            return _error(400, request, "unknown_format", f"format must be one of {list(FORMATS)}")
        patient_id = request.query.get("patient_id") or None
        received_at = self.clock()
        topic = self.settings.topics.name("readings")
        outcomes = decode_readings(body, topic=topic, partitions=self.settings.partitions,
                                   received_at=received_at, fmt=fmt, patient_id=patient_id)
        return await self._answer(request, outcomes, topic, received_at)

    def documents(self, expected: str, topic_key: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body = await self._body(request)
            if isinstance(body, web.Response):
                return body
            received_at = self.clock()
            topic = self.settings.topics.name(topic_key)
            outcomes = decode_documents(body, expected=expected, topic=topic,
                                        partitions=self.settings.partitions)
            return await self._answer(request, outcomes, topic, received_at)

        return handler


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_intake_app(
    settings: Settings,
    publisher: Publisher,
    *,
    clock: Clock = _utc_now,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    publish_timeout_s: float = PUBLISH_TIMEOUT_S,
) -> web.Application:
    """The intake :class:`aiohttp.web.Application` (routes in the module docstring).

    ``publisher`` must be started before the first request (see :func:`monitor.intake.serve.run_intake`);
    ``clock`` returns the timezone-aware receive time that anchors the future/too-old checks and the
    dead letters' ``received_at``. ``publish_timeout_s`` bounds the wait for Kafka (then 503).
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    intake = _Intake(settings, publisher, clock, max_body_bytes, publish_timeout_s)
    # aiohttp's own limit applies to request.read()/post(), which the handlers do not use; keep it
    # above ours so that our 413 (with a request id) is the one a client sees.
    app = web.Application(middlewares=[_request_id_middleware], client_max_size=max_body_bytes + 1)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/v1/readings", intake.readings)
    app.router.add_post("/v1/carer-activities", intake.documents("carer_activity", "carer_activity"))
    app.router.add_post("/v1/care-links", intake.documents("care_link", "care_network"))
    return app
