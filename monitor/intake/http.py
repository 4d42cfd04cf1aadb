"""HTTP intake for apps and gateways that cannot speak Kafka: decode, validate, publish, answer.

Endpoints (every one but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer
$MONITOR_API_TOKEN``):

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
    partition of the patient id, so the compacted topic keeps the latest state of each link). A
    ``started_at``/``effective_at`` more than ``max_future`` (10 minutes) after the receive time is
    rejected (``future_timestamp``), as readings' ``measured_at`` are.
``GET /openapi.json``
    The OpenAPI 3.1 description of these routes (:mod:`monitor.intake.openapi`; no token).
``GET /fhir/metadata``, ``POST /fhir/Observation``, ``POST /fhir`` (batch or transaction Bundle)
    FHIR R4 REST (:mod:`monitor.intake.fhir_rest`: CapabilityStatement without a token; 201 with
    ``Location`` or 422 with an OperationOutcome; a batch-response Bundle per Observation).
``POST /ns/<site>/api/v1/entries`` (and ``entries.json``), ``GET /ns/<site>/api/v1/status.json``
    Nightscout API v1 for uploaders (xDrip+, AndroidAPS, Loop): each site is bound to one patient
    and authenticated by the header ``api-secret`` (SHA-1 hex of the site's secret; no bearer
    token), :mod:`monitor.intake.sites`. Entries are decoded as Nightscout and published like
    ``/v1/readings``; success is 200 (Nightscout's), 401 with a wrong secret (nothing published),
    404 for an unknown site.
``GET /healthz``
    Liveness: 200 ``{"status": "ok"}`` while the process serves HTTP (no token; never touches Kafka,
    so a broker outage does not get a healthy intake restarted).
``GET /readyz``
    Readiness: 200 ``{"status": "ready", "checked_s_ago"}`` when the publisher reached the broker at
    its latest check, else 503 ``{"status": "not_ready", "reason", "checked_s_ago"}`` with a fixed
    reason code (:data:`READY_REASONS`; never configuration, hosts or exception text) and
    ``Retry-After``. No token. The check is the publisher's ``check_broker()`` (:class:`BrokerCheck`;
    the real one asks the cluster for the intake's topics, see
    :class:`monitor.intake.serve.ProbingPublisher`), bounded by ``ready_timeout_s`` (2 s) and run at
    most once per ``ready_interval_s`` (2 s) however often ``/readyz`` is polled: concurrent requests
    share one check, later ones get its cached result. A publisher without ``check_broker`` is never
    ready (``no_broker_check``).

A request holds at most ``max_items`` items (10,000), counted after the JSON is parsed and before
any item is decoded (:func:`count_items`: a top-level array's length, a Bundle's entries, a gateway
batch's readings). Parsing, decoding and building the records run in a worker thread, so a large
request never stalls the event loop (``/healthz``, ``/readyz`` and other requests are answered
meanwhile).

Every response carries ``X-Request-Id`` (a fresh UUID per request). Statuses:

* 202 ``{"request_id", "accepted", "rejected", "reasons", "items", "items_omitted"}`` when at least
  one item was accepted. ``reasons`` counts the rejected items per reason code; ``items`` lists the
  first :data:`ANSWER_MAX_ITEMS` (100) items, each ``{"index", "ok": true}`` or ``{"index", "ok":
  false, "reason", "detail"}``, and ``items_omitted`` how many more there were. ``index`` is the
  position of the item among the decoded items (a Bundle counts its Observation entries, a gateway
  batch its readings); a client that needs every item's outcome sends at most 100 per request;
* 400 with the same body when nothing was acceptable (malformed JSON is one item with reason
  ``malformed_json``; an empty array has no items), or ``{"request_id", "error", "detail"}`` for a
  bad query parameter;
* 401 without a valid bearer token (missing, another scheme, a wrong, malformed or undecodable
  header); 403 when no token is configured, or an empty one (the intake is then closed);
* 413 ``{"request_id", "error", "detail"}`` when the body exceeds ``max_body_bytes`` (by
  ``Content-Length`` or by what was actually read; error ``body_too_large``) or holds more than
  ``max_items`` items (error ``too_many_items``); nothing is published;
* 415 when the content type is not JSON (``application/json`` or ``application/*+json``, UTF-8);
* 503 ``{"request_id", "accepted": 0, "error": "publish_failed", "detail"}`` when Kafka did not
  acknowledge every record in time: nothing is reported as accepted and the client should retry.
  Some records may have been delivered already; re-sending is harmless because readings without a
  source id get a deterministic ``reading_id`` (a hash of their content) and the worker drops
  duplicates.

Dead letters (``source="http"``, the ``request_id``, the reason, the receive time, the original) go
to the dead-letters topic before the answer is sent, so a 2xx/400 answer means every record of the
request was acknowledged by Kafka:

* when nothing in a request was accepted (malformed as a whole, or every item rejected) the request
  is **one** dead letter: the most common reason (the first to occur on a tie), a detail counting
  the items per reason, and the request body as ``original``;
* when some items were accepted, each rejected item is its own dead letter with the item's JSON as
  ``original`` (at most ``max_items`` of them).

An ``original`` longer than :data:`DEAD_LETTER_ORIGINAL_MAX_BYTES` (4,096 bytes) is cut to that
prefix; its full length and SHA-256 are kept (``original_bytes``/``original_sha256``), so a 1 MiB
body is never copied to Kafka.

Nothing here logs payloads, identifiers or query strings (they carry patient ids): log lines hold the
request id, the endpoint, the status and counts only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter

from monitor.auth import FORBIDDEN, configured_token
from monitor.contract.models import CareLink, CarerActivity, DeadLetter, Reading, to_json_dict
from monitor.credentials import CredentialRegistry, RateLimiter, resolve
from monitor.intake import fhir_rest
from monitor.intake.canonical import CanonicalReading, iso_utc, load_json
from monitor.intake.formats import FORMATS, decode_value
from monitor.intake.native import Rejection, event_time_rejection, validate_document
from monitor.intake.openapi import openapi_document
from monitor.intake.rules import MAX_FUTURE
from monitor.intake.sites import Site, load_sites
from monitor.kafka.partitioning import partition_for
from monitor.kafka.publisher import OutgoingRecord, Publisher
from monitor.settings import Settings

log = logging.getLogger(__name__)

PRINCIPAL: web.RequestKey[Any] = web.RequestKey("principal", object)
"""Who sent the request: ``None`` (the admin token) or a :class:`monitor.credentials.Credential`."""

Clock = Callable[[], datetime]

DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_MAX_ITEMS = 10_000
"""Most items one request may hold (see :func:`count_items`); more is answered 413."""
"""How far after the receive time a carer activity or care link may be dated (clock skew)."""
ANSWER_MAX_ITEMS = 100
"""Most per-item entries an answer lists; ``reasons`` and ``items_omitted`` account for the rest."""
UNKNOWN_DEVICE = "unknown-device"
"""``device_id`` of readings whose source names no device (the native contract requires one)."""
DEAD_LETTER_ORIGINAL_MAX_BYTES = 4096
"""Longest ``original`` kept in a dead letter; a longer one is cut to this prefix."""
PUBLISH_TIMEOUT_S = 30.0
REQUEST_ID_HEADER = "X-Request-Id"
READY_INTERVAL_S = 2.0
"""Shortest time between two broker checks of ``/readyz`` (polling faster gets the cached result)."""
READY_TIMEOUT_S = 2.0
"""Longest a broker check of ``/readyz`` may take; slower is ``broker_timeout`` (not ready)."""
READY_REASONS = frozenset({
    "broker_unreachable",  # no broker answered (connection refused or failed, request failed)
    "broker_timeout",  # no answer within ready_timeout_s
    "topic_missing",  # the cluster answered, but an intake topic does not exist (or is not authorized)
    "no_leader",  # an intake topic has a partition without a leader: writes to it would fail
    "publisher_not_started",  # before start-up finished or after shutdown began
    "no_broker_check",  # the publisher cannot check the broker (test doubles)
    "check_failed",  # the check itself raised an unexpected error (logged by type)
})
"""The ``reason`` codes ``/readyz`` answers with (a :class:`BrokerCheck` returning anything else
is reported as ``check_failed``)."""

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


@dataclass(frozen=True, slots=True)
class TooManyItems:
    """A body holding more than ``limit`` items: refused before any item is decoded."""

    count: int
    limit: int


def _accepted(record: OutgoingRecord) -> Outcome:
    return Outcome(record, None, b"")


def _rejected(rejection: Rejection, original: bytes) -> Outcome:
    return Outcome(None, rejection, original)


def _items_in(item: Any) -> int:
    """How many results one top-level readings item can give: a Bundle's entries, a gateway batch's
    readings (at least one: an empty one is one rejection), else 1."""
    if isinstance(item, dict):
        parts = item.get("entry") if item.get("resourceType") == "Bundle" else item.get("readings")
        if isinstance(parts, list):
            return max(1, len(parts))
    return 1


def count_items(parsed: Any, limit: int) -> int:
    """The items of a parsed readings body, counted without decoding any: the body or each element of
    a top-level array is one, except that a FHIR Bundle counts its entries and a gateway batch its
    readings. An array of more than ``limit`` elements gives its length at once (it is refused
    anyway), so counting costs at most ``limit`` steps."""
    items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > limit:
        return len(items)
    return sum(map(_items_in, items))


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
    max_items: int = DEFAULT_MAX_ITEMS,
) -> list[Outcome] | TooManyItems:
    """A readings request body -> one :class:`Outcome` per decoded item, in order, or
    :class:`TooManyItems` (see :func:`count_items`). Never raises on bad input (an unknown ``fmt``
    or a naive ``received_at`` raise ``ValueError``)."""
    parsed = load_json(raw)
    if isinstance(parsed, Rejection):
        return [_rejected(parsed, raw)]
    count = count_items(parsed, max_items)
    if count > max_items:
        return TooManyItems(count, max_items)
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


def decode_documents(
    raw: bytes,
    *,
    expected: str,
    topic: str,
    partitions: int,
    received_at: datetime,
    max_future: timedelta = MAX_FUTURE,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> list[Outcome] | TooManyItems:
    """A carer-activity or care-link request body (one document or an array) -> outcomes, or
    :class:`TooManyItems` for an array of more than ``max_items`` documents.

    ``expected`` is ``"carer_activity"`` (key: patient id) or ``"care_link"`` (key
    ``patient|carer``); both are partitioned by the patient id. A document dated more than
    ``max_future`` after ``received_at`` is rejected (``future_timestamp``).
    """
    parsed = load_json(raw)
    if isinstance(parsed, Rejection):
        return [_rejected(parsed, raw)]
    items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > max_items:
        return TooManyItems(len(items), max_items)
    outcomes: list[Outcome] = []
    for item in items:
        if not isinstance(item, dict):
            outcomes.append(_rejected(
                Rejection("not_an_object", f"got a JSON {type(item).__name__}"), _dumps(item)))
            continue
        doc = validate_document(item, expected=expected)
        if not isinstance(doc, Rejection):
            doc = event_time_rejection(doc, received_at, max_future) or doc
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


# --- dead letters and the answer of a decoded request ---------------------------------------------


def dead_letter_value(
    rejection: Rejection, original: bytes, *, topic: str, request_id: str, received_at: datetime,
    max_original_bytes: int = DEAD_LETTER_ORIGINAL_MAX_BYTES,
) -> bytes:
    """The JSON of a :class:`~monitor.contract.models.DeadLetter` for a rejected HTTP item or request.

    ``topic`` is the topic the input was meant for. ``original`` is kept as UTF-8 text (base64 when it
    is not UTF-8), cut to its first ``max_original_bytes`` bytes (a character split by the cut is
    dropped). Its full length and SHA-256 hex go to ``original_bytes``/``original_sha256``; the
    detail says when the original was cut.
    """
    try:
        original.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    part = original[:max_original_bytes]
    digest = hashlib.sha256(original).hexdigest()
    detail = rejection.detail
    if len(part) < len(original):
        detail += f" (original cut to its first {len(part)} of {len(original)} bytes)"
    fields: dict[str, Any] = {
        "reason": rejection.reason, "detail": detail, "source": "http", "topic": topic,
        "request_id": request_id, "received_at": received_at,
        "encoding": "utf-8" if utf8 else "base64",
        # errors="ignore" only drops a character split by the cut
        "original": part.decode("utf-8", errors="ignore") if utf8 else base64.b64encode(part).decode(),
    }
    fields |= {"original_bytes": len(original), "original_sha256": digest}
    return DeadLetter.model_validate(fields).model_dump_json(exclude_none=True).encode("utf-8")


def request_rejection(rejections: Sequence[Rejection]) -> Rejection:
    """The one rejection standing for a request of which nothing was accepted (``rejections`` not
    empty): a lone rejection itself, else the most common reason (the first to occur on a tie) with a
    detail counting the items per reason and quoting the first rejection of that reason."""
    if len(rejections) == 1:
        return rejections[0]
    counts = Counter(r.reason for r in rejections).most_common()  # stable: ties keep first-seen order
    reason = counts[0][0]
    first = next(r for r in rejections if r.reason == reason)
    per_reason = ", ".join(f"{name} {n}" for name, n in counts)
    return Rejection(reason, f"all {len(rejections)} items rejected ({per_reason}); "
                             f"first {reason}: {first.detail}")


@dataclass(frozen=True, slots=True)
class Settled:
    """A decoded request, ready to publish and answer."""

    records: list[OutgoingRecord]
    """The accepted items' records and the dead letters, in item order."""
    accepted: int
    reasons: dict[str, int]
    """Rejected items per reason code."""
    items: list[dict[str, Any]]
    """The answer's entries of the first :data:`ANSWER_MAX_ITEMS` items."""
    omitted: int
    """Items without an entry in ``items``."""
    outcomes: Sequence[Outcome] = ()
    """Every decoded item (for answers that list them all: the FHIR batch-response)."""

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())


def _answer_item(index: int, outcome: Outcome) -> dict[str, Any]:
    rej = outcome.rejection
    if rej is None:
        return {"index": index, "ok": True}
    return {"index": index, "ok": False, "reason": rej.reason, "detail": rej.detail}


def settle(
    outcomes: Sequence[Outcome], raw: bytes, *, topic: str, dead_topic: str, request_id: str,
    received_at: datetime,
) -> Settled:
    """The records and answer of a decoded request whose body was ``raw``.

    When anything was accepted, each rejected item is a dead letter of its own (the item as
    ``original``); when nothing was, the request is one dead letter (:func:`request_rejection`,
    ``raw`` as ``original``); an empty array gives none.
    """
    def dead_letter(rejection: Rejection, original: bytes) -> OutgoingRecord:
        return OutgoingRecord(dead_topic, None, dead_letter_value(
            rejection, original, topic=topic, request_id=request_id, received_at=received_at), None)

    rejections = [o.rejection for o in outcomes if o.rejection is not None]
    accepted = len(outcomes) - len(rejections)
    records: list[OutgoingRecord] = []
    if accepted:
        for outcome in outcomes:
            if outcome.rejection is not None:
                records.append(dead_letter(outcome.rejection, outcome.original))
            elif outcome.record is not None:
                records.append(outcome.record)
    elif rejections:
        records.append(dead_letter(request_rejection(rejections), raw))
    return Settled(
        records=records, accepted=accepted, reasons=dict(Counter(r.reason for r in rejections)),
        items=[_answer_item(i, o) for i, o in enumerate(outcomes[:ANSWER_MAX_ITEMS])],
        omitted=max(0, len(outcomes) - ANSWER_MAX_ITEMS), outcomes=outcomes,
    )


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
    """The request handlers, bound to settings, a publisher, a clock and the limits."""

    def __init__(self, settings: Settings, publisher: Publisher, clock: Clock, *, max_body_bytes: int,
                 max_items: int, max_future: timedelta, publish_timeout_s: float,
                 credentials: CredentialRegistry | None = None, limiter: RateLimiter | None = None,
                 refused: PromCounter | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.max_items = max_items
        self.max_future = max_future
        self.publish_timeout_s = publish_timeout_s
        self._token = configured_token(settings.api_token)  # None: not configured
        self.sites = load_sites(settings.nightscout_sites_file)
        self.credentials = credentials
        self.limiter = limiter or RateLimiter()
        self.refused = refused  # refused requests by reason and role (no ids)

    # -- checks before any decoding --

    def _count(self, reason: str, role: str) -> None:
        if self.refused is not None:
            self.refused.labels(reason, role).inc()

    def _denied(self, request: web.Request, roles: tuple[str, ...] = ()) -> web.Response | None:
        """``None`` when the request may go on (its principal in ``request[PRINCIPAL]``: ``None``
        for the admin token, else the :class:`~monitor.credentials.Credential`), else the answer:
        403 closed, 401 unknown, 429 over the credential's rate, 403 a role not allowed here."""
        status, credential = resolve(request.headers.get("Authorization", ""), self._token, self.credentials)
        if status is None and credential is None:
            request[PRINCIPAL] = None  # the admin bootstrap token
            return None
        if credential is None:
            if status == FORBIDDEN:
                return _error(403, request, "intake_disabled",
                              "the HTTP intake is closed: no MONITOR_API_TOKEN and no credentials")
            self._count("unauthorized", "none")
            response = _error(401, request, "unauthorized", "send Authorization: Bearer <your token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="coproduction-monitor intake"'
            return response
        if not self.limiter.allow(credential.credential_id, time.monotonic()):
            self._count("rate_limited", credential.role)
            response = _error(429, request, "rate_limited",
                              f"over {self.limiter.rate:g} requests/s for this credential: slow down")
            response.headers["Retry-After"] = "1"
            return response
        if credential.role not in roles:
            self._count("forbidden_role", credential.role)
            return _error(403, request, "forbidden_role",
                          f"a {credential.role} credential may not use this endpoint")
        request[PRINCIPAL] = credential
        return None

    def _outside_scope(self, request: web.Request, settled: Settled) -> web.Response | None:
        """403 when an accepted record is outside the credential's scope: a gateway writing another
        patient, a carer app writing as another carer. Nothing of the request is published."""
        credential = request.get(PRINCIPAL)
        if credential is None:
            return None
        for record in settled.records:
            if record.topic == self.settings.topics.name("dead_letters"):
                continue
            if credential.role == "gateway":
                inside = record.key is not None and record.key.decode() in credential.patients
            else:
                inside = json.loads(record.value).get("carer_id") == credential.carer_id
            if not inside:
                self._count("outside_scope", credential.role)
                return _error(403, request, "outside_scope",
                              "the request writes outside this credential's scope; nothing was published")
        return None

    async def _body(self, request: web.Request, denied: web.Response | None | bool = False,
                    roles: tuple[str, ...] = ()) -> bytes | web.Response:
        """The request body, or the 401/403/415/413 answer that stops the request (``denied``:
        a route's own authentication answer; by default the bearer token's or a credential of
        one of ``roles``)."""
        if denied is False:
            denied = self._denied(request, roles)
        if isinstance(denied, web.Response):
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

    # -- decoding, publishing and answering --

    async def _process(self, request: web.Request, decode: Callable[[], list[Outcome] | TooManyItems],
                       raw: bytes, topic: str, received_at: datetime,
                       render: Callable[[Settled], web.Response] | None = None) -> web.Response:
        """Run ``decode`` and :func:`settle` in a worker thread (CPU-bound: the event loop keeps
        serving meanwhile), then publish and answer."""
        request_id = request[_REQUEST_ID]

        def work() -> Settled | TooManyItems:
            outcomes = decode()
            if isinstance(outcomes, TooManyItems):
                return outcomes
            return settle(outcomes, raw, topic=topic, dead_topic=self.settings.topics.name("dead_letters"),
                          request_id=request_id, received_at=received_at)

        settled = await asyncio.get_running_loop().run_in_executor(None, work)
        if isinstance(settled, TooManyItems):
            log.info("intake request %s %s: %d items, limit %d -> 413", request_id, request.path,
                     settled.count, settled.limit)
            return _error(413, request, "too_many_items",
                          f"the body holds {settled.count} items, more than {settled.limit}; split it")
        return await self._answer(request, settled, render)

    async def _answer(self, request: web.Request, settled: Settled,
                      render: Callable[[Settled], web.Response] | None = None) -> web.Response:
        request_id = request[_REQUEST_ID]
        outside = self._outside_scope(request, settled)
        if outside is not None:
            return outside
        if settled.records:
            try:
                await asyncio.wait_for(self.publisher.publish_many(settled.records),
                                       self.publish_timeout_s)
            except Exception as exc:  # any delivery failure: the client must retry
                log.warning("intake request %s %s: publishing failed (%s)", request_id, request.path,
                            type(exc).__name__)
                return web.json_response({
                    "request_id": request_id, "accepted": 0, "error": "publish_failed",
                    "detail": f"Kafka did not acknowledge the records ({type(exc).__name__}); "
                              "nothing was accepted: retry the request",
                }, status=503, headers={"Retry-After": "5"})
        status = 202 if settled.accepted else 400
        log.info("intake request %s %s: %d accepted, %d rejected -> %d", request_id, request.path,
                 settled.accepted, settled.rejected, status)
        if render is not None:
            return render(settled)
        return web.json_response({
            "request_id": request_id, "accepted": settled.accepted, "rejected": settled.rejected,
            "reasons": settled.reasons, "items": settled.items, "items_omitted": settled.omitted,
        }, status=status)

    # -- handlers --

    async def readings(self, request: web.Request) -> web.Response:
        body = await self._body(request, roles=("gateway",))
        if isinstance(body, web.Response):
            return body
        fmt = request.query.get("format", "auto")
        if fmt not in FORMATS:
            return _error(400, request, "unknown_format", f"format must be one of {list(FORMATS)}")
        received_at = self.clock()
        topic = self.settings.topics.name("readings")
        decode = partial(decode_readings, body, topic=topic, partitions=self.settings.partitions,
                         received_at=received_at, fmt=fmt,
                         patient_id=request.query.get("patient_id") or None, max_items=self.max_items)
        return await self._process(request, decode, body, topic, received_at)

    # -- FHIR R4 REST (monitor.intake.fhir_rest) --

    def _fhir_base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}/fhir"

    async def fhir_metadata(self, request: web.Request) -> web.Response:
        doc = fhir_rest.capability_statement(self._fhir_base(request), iso_utc(self.clock()))
        return web.json_response(doc, content_type=fhir_rest.FHIR_JSON)

    async def fhir_post(self, request: web.Request) -> web.Response:
        """``POST /fhir/Observation`` (one) and ``POST /fhir`` (a batch or transaction Bundle)."""
        bundle = request.path.rstrip("/") == "/fhir"
        body = await self._body(request, roles=("gateway",))
        if isinstance(body, web.Response):
            return body
        parsed = load_json(body)
        wrong = None
        if isinstance(parsed, Rejection):
            wrong = (400, fhir_rest.refused(parsed.reason, parsed.detail))
        elif not isinstance(parsed, dict) or parsed.get("resourceType") != (
                "Bundle" if bundle else "Observation"):
            wanted = "a batch or transaction Bundle" if bundle else "an Observation"
            wrong = (400, fhir_rest.operation_outcome("error", "structure", f"the body is not {wanted}"))
        elif bundle and parsed.get("type") not in ("batch", "transaction"):
            wrong = (400, fhir_rest.operation_outcome("error", "not-supported",
                                                      "Bundle.type must be batch or transaction"))
        if wrong is not None:
            return web.json_response(wrong[1], status=wrong[0], content_type=fhir_rest.FHIR_JSON)
        received_at = self.clock()
        topic = self.settings.topics.name("readings")
        decode = partial(decode_readings, body, topic=topic, partitions=self.settings.partitions,
                         received_at=received_at, fmt="fhir", max_items=self.max_items)
        base = self._fhir_base(request)

        def render(settled: Settled) -> web.Response:
            if bundle:
                return web.json_response(fhir_rest.batch_response(base, settled.outcomes),
                                         content_type=fhir_rest.FHIR_JSON)
            (outcome,) = settled.outcomes
            rejection = outcome.rejection
            if rejection is not None:
                return web.json_response(fhir_rest.refused(rejection.reason, rejection.detail),
                                         status=422, content_type=fhir_rest.FHIR_JSON)
            (entry,) = fhir_rest.entry_answers(base, settled.outcomes)
            return web.json_response(fhir_rest.operation_outcome("information", "informational", "created"),
                                     status=201, content_type=fhir_rest.FHIR_JSON,
                                     headers={"Location": entry["response"]["location"]})

        return await self._process(request, decode, body, topic, received_at, render)

    # -- Nightscout API v1, per site (monitor.intake.sites) --

    def _site(self, request: web.Request) -> Site | web.Response:
        site = self.sites.get(request.match_info["site"])
        if site is None:
            return _error(404, request, "unknown_site", "no such Nightscout site")
        return site

    async def nightscout_entries(self, request: web.Request) -> web.Response:
        """``POST /ns/<site>/api/v1/entries[.json]``: Nightscout entries of the site's patient."""
        site = self._site(request)
        if isinstance(site, web.Response):
            return site
        denied = None
        if not site.admits(request.headers.get("api-secret")):
            denied = _error(401, request, "unauthorized",
                            "send the header api-secret: the SHA-1 hex digest of the site's secret")
        body = await self._body(request, denied)
        if isinstance(body, web.Response):
            return body
        received_at = self.clock()
        topic = self.settings.topics.name("readings")
        decode = partial(decode_readings, body, topic=topic, partitions=self.settings.partitions,
                         received_at=received_at, fmt="nightscout", patient_id=site.patient_id,
                         max_items=self.max_items)
        response = await self._process(request, decode, body, topic, received_at)
        if response.status == 202:  # uploaders expect Nightscout's 200
            response.set_status(200)
        return response

    async def nightscout_status(self, request: web.Request) -> web.Response:
        """``GET /ns/<site>/api/v1/status.json``: what uploaders check before uploading."""
        site = self._site(request)
        if isinstance(site, web.Response):
            return site
        return web.json_response({"status": "ok", "name": "coproduction-monitor", "apiEnabled": True,
                                  "careportalEnabled": False, "serverTime": self.clock().isoformat()})

    def documents(self, expected: str, topic_key: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body = await self._body(request, roles=("carer_app",))
            if isinstance(body, web.Response):
                return body
            received_at = self.clock()
            topic = self.settings.topics.name(topic_key)
            decode = partial(decode_documents, body, expected=expected, topic=topic,
                             partitions=self.settings.partitions, received_at=received_at,
                             max_future=self.max_future, max_items=self.max_items)
            return await self._process(request, decode, body, topic, received_at)

        return handler


async def _healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Never touches Kafka."""
    return web.json_response({"status": "ok"})


@runtime_checkable
class BrokerCheck(Protocol):
    """A publisher that can tell whether it reaches the broker now (what ``/readyz`` asks)."""

    async def check_broker(self) -> str | None:
        """``None`` when the broker answered now; else a reason code of :data:`READY_REASONS`.
        May raise (reported as ``check_failed``); must never return configuration or secrets."""
        ...


class ReadinessCache:
    """The broker check behind ``/readyz``, run at most once per ``interval_s``.

    :meth:`get` returns the latest result while it is younger than ``interval_s`` (measured from the
    end of the check that produced it); otherwise it starts a check, bounded by ``timeout_s``, that
    every concurrent caller awaits (one check in flight at a time). So polling ``/readyz`` as fast as
    possible costs the broker at most one check per ``interval_s`` plus the check's own duration.
    """

    def __init__(self, check: Callable[[], Awaitable[str | None]] | None, *,
                 interval_s: float = READY_INTERVAL_S, timeout_s: float = READY_TIMEOUT_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0 or timeout_s <= 0:
            raise ValueError("interval_s must not be negative and timeout_s must be positive")
        self._check = check
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._monotonic = monotonic
        self._latest: tuple[float, str | None] | None = None  # (when it ended, reason)
        self._running: asyncio.Task[tuple[float, str | None]] | None = None
        self.checks = 0
        """How many checks were started (tests, and a debugging aid)."""

    async def get(self) -> tuple[str | None, float]:
        """``(reason, seconds since the check ended)``; reason ``None`` means ready."""
        latest = self._latest
        if latest is None or self._monotonic() - latest[0] >= self.interval_s:
            if self._running is None:
                self._running = asyncio.ensure_future(self._run())
            latest = await asyncio.shield(self._running)  # a caller that goes away leaves it running
        return latest[1], max(0.0, self._monotonic() - latest[0])

    async def _run(self) -> tuple[float, str | None]:
        self.checks += 1
        try:
            reason = await asyncio.wait_for(self._call(), self.timeout_s)
        except TimeoutError:
            reason = "broker_timeout"
        except Exception as exc:  # noqa: BLE001 - any failure of the check means "not ready"
            log.warning("readiness check failed (%s)", type(exc).__name__)
            reason = "check_failed"
        if reason is not None and reason not in READY_REASONS:
            log.warning("readiness check returned an unknown reason code; answering check_failed")
            reason = "check_failed"
        self._latest = (self._monotonic(), reason)
        self._running = None
        return self._latest

    async def _call(self) -> str | None:
        if self._check is None:
            return "no_broker_check"
        return await self._check()

    async def close(self) -> None:
        """Cancel a check in flight (application shutdown)."""
        task, self._running = self._running, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


_READINESS = web.AppKey("readiness", ReadinessCache)


async def _readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the publisher reached the broker at the latest check, else 503."""
    reason, age = await request.app[_READINESS].get()
    headers = {"Cache-Control": "no-store"}
    if reason is None:
        return web.json_response({"status": "ready", "checked_s_ago": round(age, 3)}, headers=headers)
    headers["Retry-After"] = str(max(1, round(request.app[_READINESS].interval_s)))
    return web.json_response({"status": "not_ready", "reason": reason, "checked_s_ago": round(age, 3)},
                             status=503, headers=headers)


def create_intake_app(
    settings: Settings,
    publisher: Publisher,
    *,
    clock: Clock = _utc_now,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_future: timedelta = MAX_FUTURE,
    publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ready_interval_s: float = READY_INTERVAL_S,
    ready_timeout_s: float = READY_TIMEOUT_S,
    credentials: CredentialRegistry | None = None,
    limiter: RateLimiter | None = None,
) -> web.Application:
    """The intake :class:`aiohttp.web.Application` (routes in the module docstring).

    ``publisher`` must be started before the first request (see :func:`monitor.intake.serve.run_intake`);
    ``clock`` returns the timezone-aware receive time that anchors the future/too-old checks and the
    dead letters' ``received_at``. ``max_items`` caps the items of one request (413 above it);
    ``max_future`` is the clock skew allowed to carer activities and care links (readings get
    :func:`monitor.intake.canonical.validate`'s). ``publish_timeout_s`` bounds the wait for Kafka
    (then 503). ``/readyz`` runs ``publisher.check_broker()`` (when the publisher is a
    :class:`BrokerCheck`) at most once per ``ready_interval_s``, each run bounded by
    ``ready_timeout_s`` (see :class:`ReadinessCache`). ``credentials`` (followed from the
    credentials topic, :func:`monitor.intake.serve.attach_credentials`) admits scoped tokens beside
    the admin token, each limited by ``limiter`` (20 requests/s, bursts of 40, by default).
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    if max_items < 1:
        raise ValueError("max_items must be positive")
    if max_future < timedelta(0):
        raise ValueError("max_future must not be negative")
    registry = CollectorRegistry()
    refused = PromCounter("monitor_intake_refused_requests", "Requests refused before publishing, by reason "
                          "(unauthorized, rate_limited, forbidden_role, outside_scope) and role",
                          ["reason", "role"], registry=registry)
    intake = _Intake(settings, publisher, clock, max_body_bytes=max_body_bytes, max_items=max_items,
                     max_future=max_future, publish_timeout_s=publish_timeout_s, credentials=credentials,
                     limiter=limiter, refused=refused)
    # aiohttp's own limit applies to request.read()/post(), which the handlers do not use; keep it
    # above ours so that our 413 (with a request id) is the one a client sees.
    app = web.Application(middlewares=[_request_id_middleware], client_max_size=max_body_bytes + 1)
    readiness = ReadinessCache(publisher.check_broker if isinstance(publisher, BrokerCheck) else None,
                               interval_s=ready_interval_s, timeout_s=ready_timeout_s)
    app[_READINESS] = readiness

    async def close_readiness(_: web.Application) -> None:
        await readiness.close()  # before the publisher stops (cleanup runs after shutdown)

    app.on_shutdown.append(close_readiness)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_post("/v1/readings", intake.readings)
    app.router.add_post("/v1/carer-activities", intake.documents("carer_activity", "carer_activity"))
    app.router.add_post("/v1/care-links", intake.documents("care_link", "care_network"))
    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/fhir/metadata", intake.fhir_metadata)
    app.router.add_post("/fhir/Observation", intake.fhir_post)
    app.router.add_post("/fhir", intake.fhir_post)
    app.router.add_post("/ns/{site}/api/v1/entries", intake.nightscout_entries)
    app.router.add_post("/ns/{site}/api/v1/entries.json", intake.nightscout_entries)
    app.router.add_get("/ns/{site}/api/v1/status.json", intake.nightscout_status)
    return app
