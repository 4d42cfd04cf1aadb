"""The HTTP intake's bounds (issue 13, item 6): items per request, dead letters per request, the size
of a dead letter's original, a responsive event loop, future-dated documents, and the token check.

Same harness as ``test_http_intake``: the aiohttp app on aiohttp's TestServer with an in-memory
publisher; the assertions are on status codes, answer bodies and the records handed to Kafka.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from monitor.contract.models import DeadLetter
from monitor.intake import http
from monitor.intake.http import create_intake_app
from monitor.settings import Settings
from tests.unit.test_http_intake import (
    AUTH,
    DEAD,
    READINGS,
    RECEIVED,
    SETTINGS,
    TOKEN,
    MemoryPublisher,
    post,
    reading,
)

CARE_LINKS = "/v1/care-links"
ACTIVITIES = "/v1/carer-activities"


def dead_letters(pub: MemoryPublisher) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]


def bundle(n_observations: int) -> dict[str, Any]:
    observation = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/pat-7"}, "effectiveDateTime": "2026-11-01T08:40:00Z",
        "valueQuantity": {"value": 72, "unit": "bpm", "code": "/min"},
    }
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {**observation, "id": f"hr-{i}"}} for i in range(n_observations)]}


def batch(n_readings: int, first: int = 0) -> dict[str, Any]:
    return {"gateway_id": "hub-9", "sent_at": "2026-11-01T08:59:00Z",
            "readings": [reading(f"r{first + i}") for i in range(n_readings)]}


def link(**overrides: Any) -> dict[str, Any]:
    return {"patient_id": "pat-3", "carer_id": "car-1", "relationship": "friend", "action": "join",
            "effective_at": "2026-10-01T00:00:00Z", **overrides}


def activity(**overrides: Any) -> dict[str, Any]:
    return {"activity_id": "a1", "patient_id": "pat-3", "carer_id": "car-1", "kind": "visit",
            "started_at": "2026-11-01T08:00:00Z", "duration_minutes": 45, **overrides}


# --- items per request ------------------------------------------------------------------------------


def test_a_mebibyte_of_ones_is_413_and_publishes_nothing() -> None:
    """The reproduction of issue 13 item 6: 520,000 dead letters before; now one refusal."""
    pub = MemoryPublisher()
    raw = b"[" + b",".join([b"1"] * 524_000) + b"]"
    assert len(raw) <= 1_048_576
    answer = post("/v1/readings", raw=raw, publisher=pub)
    assert answer.status == 413 and answer.body["error"] == "too_many_items"
    assert "524000 items, more than 10000" in answer.body["detail"]
    assert answer.body["request_id"] == answer.headers["X-Request-Id"]
    assert pub.calls == 0 and pub.records == []


def test_the_default_cap_is_10000_items_and_a_rejected_request_at_the_cap_is_one_dead_letter() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings", [1] * 10_001, publisher=pub)
    assert answer.status == 413 and pub.calls == 0

    answer = post("/v1/readings", [1] * 10_000, publisher=pub)
    assert answer.status == 400
    assert (answer.body["accepted"], answer.body["rejected"]) == (0, 10_000)
    assert answer.body["reasons"] == {"not_an_object": 10_000}
    assert [i["index"] for i in answer.body["items"]] == list(range(100))
    assert answer.body["items_omitted"] == 9_900
    (dl,) = dead_letters(pub)
    assert dl.reason == "not_an_object" and "all 10000 items rejected (not_an_object 10000)" in dl.detail
    assert len(pub.records) == 1


@pytest.mark.parametrize(("body", "n_items"), [
    ([reading(f"r{i}") for i in range(6)], 6),
    (bundle(6), 6),
    (batch(6), 6),
    ([batch(3), batch(2, first=3), reading("r9")], 6),
    ([bundle(4), bundle(2)], 6),
], ids=["array", "bundle", "gateway-batch", "batches-and-a-reading", "bundles"])
def test_items_are_counted_through_bundles_and_gateway_batches_before_any_is_decoded(
    body: Any, n_items: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[Any] = []
    real_decode_value = http.decode_value

    def counting_decode_value(obj: Any, **kwargs: Any) -> Any:
        decoded.append(obj)
        return real_decode_value(obj, **kwargs)

    monkeypatch.setattr(http, "decode_value", counting_decode_value)
    pub = MemoryPublisher()
    answer = post("/v1/readings", body, publisher=pub, max_items=n_items - 1)
    assert answer.status == 413 and answer.body["error"] == "too_many_items"
    assert f"holds {n_items} items, more than {n_items - 1}" in answer.body["detail"]
    assert pub.calls == 0 and decoded == []  # refused before any item was decoded

    answer = post("/v1/readings", body, publisher=pub, max_items=n_items)  # exactly at the cap
    assert answer.status == 202 and answer.body["accepted"] == n_items
    assert len(pub.on(READINGS)) == n_items and decoded


@pytest.mark.parametrize("path", [CARE_LINKS, ACTIVITIES])
def test_documents_are_capped_too(path: str) -> None:
    doc = link() if path == CARE_LINKS else activity()
    pub = MemoryPublisher()
    answer = post(path, [doc] * 4, publisher=pub, max_items=3)
    assert answer.status == 413 and answer.body["error"] == "too_many_items" and pub.calls == 0
    assert post(path, [doc] * 3, publisher=pub, max_items=3).status == 202


def test_the_answer_lists_the_first_100_items_and_counts_every_reason() -> None:
    pub = MemoryPublisher()
    body = [reading(f"r{i}", patient=f"pat-{i}") for i in range(150)]
    body[3]["unit"] = "kg"
    body[120]["unit"] = "kg"
    body[140]["kind"] = "mood"
    answer = post("/v1/readings", body, publisher=pub)
    assert answer.status == 202
    assert (answer.body["accepted"], answer.body["rejected"]) == (147, 3)
    assert answer.body["reasons"] == {"invalid_unit": 2, "unknown_kind": 1}
    items = answer.body["items"]
    assert [i["index"] for i in items] == list(range(100)) and answer.body["items_omitted"] == 50
    assert [i["index"] for i in items if not i["ok"]] == [3]
    # some accepted: every rejected item stays a dead letter of its own, with the item as original
    assert len(pub.on(READINGS)) == 147
    dead = dead_letters(pub)
    assert [d.reason for d in dead] == ["invalid_unit", "invalid_unit", "unknown_kind"]
    assert [json.loads(d.original)["reading_id"] for d in dead] == ["r3", "r120", "r140"]


# --- one dead letter per rejected request -----------------------------------------------------------


def test_a_request_of_only_rejected_items_is_one_dead_letter_of_its_most_common_reason() -> None:
    pub = MemoryPublisher()
    body = [reading("r1", kind="mood"), reading("r2", unit="kg"), 7, reading("r3", unit="mmHg"),
            reading("r4", unit="kg")]
    raw = json.dumps(body).encode()
    answer = post("/v1/readings", raw=raw, publisher=pub)
    assert answer.status == 400 and (answer.body["accepted"], answer.body["rejected"]) == (0, 5)
    assert answer.body["reasons"] == {"unknown_kind": 1, "invalid_unit": 3, "not_an_object": 1}
    assert [i["reason"] for i in answer.body["items"]] == [
        "unknown_kind", "invalid_unit", "not_an_object", "invalid_unit", "invalid_unit"]
    (dl,) = dead_letters(pub)
    assert len(pub.records) == 1
    assert (dl.reason, dl.request_id, dl.topic) == ("invalid_unit", answer.headers["X-Request-Id"],
                                                   READINGS)
    assert dl.detail.startswith(
        "all 5 items rejected (invalid_unit 3, unknown_kind 1, not_an_object 1); first invalid_unit: ")
    assert dl.detail.endswith(answer.body["items"][1]["detail"])
    assert dl.original.encode() == raw  # the whole request


def test_a_rejected_gateway_batch_of_many_readings_is_one_dead_letter() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings", [{**r, "unit": "kg"} for r in batch(40)["readings"]], publisher=pub)
    assert answer.status == 400 and answer.body["rejected"] == 40
    assert len(pub.records) == 1 and dead_letters(pub)[0].reason == "invalid_unit"

    pub = MemoryPublisher()
    answer = post(ACTIVITIES, [activity(duration_minutes=0)] * 30, publisher=pub)
    assert answer.status == 400 and answer.body["rejected"] == 30
    (dl,) = dead_letters(pub)
    assert dl.reason == "invalid_duration" and "all 30 items rejected (invalid_duration 30)" in dl.detail


# --- dead-letter originals are capped ---------------------------------------------------------------


def test_a_malformed_mebibyte_body_is_dead_lettered_as_a_4096_byte_prefix_with_length_and_hash() -> None:
    pub = MemoryPublisher()
    raw = b'{"reading_id": "' + b"x" * 1_048_000  # never closed
    answer = post("/v1/readings", raw=raw, publisher=pub)
    assert answer.status == 400 and answer.body["items"][0]["reason"] == "malformed_json"
    (record,) = pub.records
    assert len(record.value) < 6000  # the prefix and the envelope; the body was 1 MB
    dl = DeadLetter.model_validate_json(record.value)
    assert dl.reason == "malformed_json" and dl.original.encode() == raw[:4096]
    assert f"cut to its first 4096 of {len(raw)} bytes" in dl.detail
    digest = hashlib.sha256(raw).hexdigest()
    if "original_sha256" in DeadLetter.model_fields:
        assert (dl.original_bytes, dl.original_sha256) == (len(raw), digest)
    else:
        assert digest in dl.detail


def test_a_large_body_that_is_not_utf8_keeps_4096_bytes_as_base64() -> None:
    pub = MemoryPublisher()
    raw = b"\xff" * 100_000
    assert post("/v1/readings", raw=raw, publisher=pub).status == 400
    (dl,) = dead_letters(pub)
    assert (dl.reason, dl.encoding) == ("not_utf8", "base64")
    assert dl.original == "/" * 5460 + "/w=="  # base64 of 4096 x 0xff


# --- the event loop stays responsive ----------------------------------------------------------------

GUARD_S = 5.0
"""How long the gated decode waits for the test at most: a deadlock guard, asserted on nowhere."""


def test_healthz_answers_while_a_maximal_request_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode of a 10,000-reading request waits until ``/healthz`` has answered. Decoded in a
    worker thread, the health check is served meanwhile; decoded on the event loop (the old code),
    the wait blocks the loop, so the decode finishes (after the guard) before the check is served."""
    started, release = threading.Event(), threading.Event()
    order: list[str] = []
    real_decode = http.decode_readings

    def gated_decode(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(GUARD_S)
        result = real_decode(*args, **kwargs)
        order.append("decoded")
        return result

    monkeypatch.setattr(http, "decode_readings", gated_decode)
    pub = MemoryPublisher()
    raw = json.dumps([reading(f"r{i}", patient=f"pat-{i % 97}") for i in range(10_000)]).encode()

    async def go() -> tuple[int, Any]:
        app = create_intake_app(SETTINGS, pub, clock=lambda: RECEIVED, max_body_bytes=len(raw))
        async with TestClient(TestServer(app)) as client:
            big = asyncio.ensure_future(client.post("/v1/readings", data=raw, headers=AUTH))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, GUARD_S)
            health = await client.get("/healthz")
            order.append(f"healthz {health.status}")
            release.set()
            resp = await big
            return resp.status, await resp.json()

    status, body = asyncio.run(go())
    assert order == ["healthz 200", "decoded"]
    assert status == 202 and body["accepted"] == 10_000 and len(pub.on(READINGS)) == 10_000


# --- future-dated documents -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "doc"), [
    (CARE_LINKS, link(effective_at="2099-01-01T00:00:00Z")),
    (ACTIVITIES, activity(started_at="2099-01-01T00:00:00Z")),
], ids=["care-link", "carer-activity"])
def test_a_document_dated_in_the_future_is_rejected(path: str, doc: dict[str, Any]) -> None:
    pub = MemoryPublisher()
    answer = post(path, doc, publisher=pub)
    assert answer.status == 400 and answer.body["items"][0]["reason"] == "future_timestamp"
    (dl,) = dead_letters(pub)
    assert dl.reason == "future_timestamp" and json.loads(dl.original) == doc
    assert len(pub.records) == 1


def test_documents_within_the_allowed_clock_skew_are_accepted_and_the_skew_is_configurable() -> None:
    five_minutes_ahead = (RECEIVED + timedelta(minutes=5)).isoformat()
    doc = link(effective_at=five_minutes_ahead)
    pub = MemoryPublisher()
    assert post(CARE_LINKS, doc, publisher=pub).status == 202  # default: 10 minutes
    assert len(pub.records) == 1

    pub = MemoryPublisher()
    answer = post(CARE_LINKS, doc, publisher=pub, max_future=timedelta(minutes=1))
    assert answer.status == 400 and answer.body["items"][0]["reason"] == "future_timestamp"
    assert [d.reason for d in dead_letters(pub)] == ["future_timestamp"]


# --- the token check --------------------------------------------------------------------------------


def raw_status(settings: Settings, authorization: bytes) -> tuple[int, MemoryPublisher]:
    """The status of a POST whose Authorization header is exactly ``authorization`` (any bytes)."""
    pub = MemoryPublisher()
    body = json.dumps(reading()).encode()

    async def go() -> int:
        app = create_intake_app(settings, pub, clock=lambda: RECEIVED)
        async with TestServer(app) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"POST /v1/readings HTTP/1.1\r\nHost: intake\r\nConnection: close\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\nAuthorization: %b\r\n\r\n%b"
                         % (len(body), authorization, body))
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return int(status_line.split()[1])

    return asyncio.run(go()), pub


@pytest.mark.parametrize("authorization", [
    b"Bearer \xff\xfe", b"Bearer " + TOKEN.encode() + b"\xc3", b"\x80\x81", "Bearer jeton-\u00e9".encode(),
    "Bearer jeton-\u00e9".encode("latin-1"), b"Bearer", b"Bearer ", b"Bearer" + TOKEN.encode(),
    b"Basic " + TOKEN.encode(), TOKEN.encode(),
], ids=["not-utf8", "token-then-a-cut-character", "no-scheme-not-utf8", "non-ascii", "latin-1",
        "scheme-only", "scheme-and-space", "no-space", "basic", "token-only"])
def test_an_undecodable_or_malformed_authorization_header_is_401(authorization: bytes) -> None:
    status, pub = raw_status(SETTINGS, authorization)
    assert status == 401 and pub.calls == 0


def test_the_bearer_scheme_is_case_insensitive() -> None:
    status, pub = raw_status(SETTINGS, b"bearer " + TOKEN.encode())
    assert status == 202 and len(pub.on(READINGS)) == 1


@pytest.mark.parametrize("token", ["", "   "], ids=["empty", "blank"])
def test_an_empty_configured_token_closes_the_intake(token: str) -> None:
    # model_copy skips validation: the intake itself must treat an empty secret as unset
    settings = SETTINGS.model_copy(update={"api_token": SecretStr(token)})
    for authorization in (b"Bearer ", b"Bearer " + token.encode(), b"Bearer " + TOKEN.encode()):
        status, pub = raw_status(settings, authorization)
        assert status == 403 and pub.calls == 0
    answer = post("/v1/readings", reading(), settings=settings,
                  headers={**AUTH, "Authorization": f"Bearer {token}"})
    assert answer.status == 403 and "MONITOR_API_TOKEN" in answer.body["detail"]
