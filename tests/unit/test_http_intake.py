"""The HTTP intake (monitor.intake.http) against an in-memory publisher: no broker.

Each test runs the aiohttp app on aiohttp's TestServer inside ``asyncio.run`` and asserts on the
answer and on what the app handed to the publisher (topic, key, partition, value).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from monitor.contract.models import DeadLetter, Reading
from monitor.contract.units import GLUCOSE_MG_PER_DL_PER_MMOL_PER_L
from monitor.intake.http import create_intake_app, dead_letter_value
from monitor.intake.native import Rejection
from monitor.kafka.partitioning import partition_for
from monitor.kafka.publisher import OutgoingRecord
from monitor.settings import Settings, Topics

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
RECEIVED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
SETTINGS = Settings(api_token=TOKEN, partitions=8, topics=Topics(prefix="unit-"))  # type: ignore[arg-type]
READINGS = SETTINGS.topics.name("readings")
DEAD = SETTINGS.topics.name("dead_letters")


@dataclass
class MemoryPublisher:
    """Records what would be sent; ``fail`` makes every publish raise (Kafka unavailable)."""

    records: list[OutgoingRecord] = field(default_factory=list)
    fail: bool = False
    calls: int = 0

    async def publish(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        await self.publish_many([OutgoingRecord(topic, key, value, partition)])

    async def publish_many(self, items: Iterable[OutgoingRecord]) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("broker unavailable")
        self.records.extend(items)

    def on(self, topic: str) -> list[OutgoingRecord]:
        return [r for r in self.records if r.topic == topic]


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]  # case-insensitive, like HTTP
    body: Any


def post(
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    publisher: MemoryPublisher | None = None,
    settings: Settings = SETTINGS,
    chunked: bool = False,
    **options: Any,
) -> Answer:
    """POST to a fresh intake app; ``body`` is JSON-encoded unless ``raw`` bytes are given.
    ``options`` go to :func:`create_intake_app` (``max_body_bytes``, ``max_items``, ...)."""
    pub = publisher if publisher is not None else MemoryPublisher()
    data = raw if raw is not None else json.dumps(body).encode()

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    async def go() -> Answer:
        app = create_intake_app(settings, pub, clock=lambda: RECEIVED, **options)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post(path, data=stream() if chunked else data,
                                     headers=AUTH if headers is None else headers)
            text = await resp.text()
            return Answer(resp.status, CIMultiDict(resp.headers),
                          json.loads(text) if resp.content_type == "application/json" else text)

    return asyncio.run(go())


def reading(rid: str = "r1", patient: str = "pat-1", **overrides: Any) -> dict[str, Any]:
    doc = {"reading_id": rid, "patient_id": patient, "device_id": "meter-1", "kind": "glucose",
           "value": 126.0, "unit": "mg/dL", "measured_at": "2026-11-01T08:30:00+01:00"}
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def values(records: list[OutgoingRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


# --- readings ---------------------------------------------------------------------------------


def test_mixed_batch_publishes_accepted_native_readings_and_dead_letters_the_rest() -> None:
    pub = MemoryPublisher()
    bad_unit = reading("r2", unit="mmHg")
    missing = reading("r3", patient="pat-2", device_id=None, measured_at=None)
    bp = {"reading_id": "r4", "patient_id": "pat-2", "device_id": "cuff", "kind": "blood_pressure",
          "systolic": 135, "diastolic": 85, "unit": "mm[Hg]", "measured_at": "2026-11-01T08:45:00Z"}
    answer = post("/v1/readings", [reading("r1"), bad_unit, missing, bp], publisher=pub)

    assert answer.status == 202
    request_id = answer.headers["X-Request-Id"]
    assert answer.body["request_id"] == request_id
    assert (answer.body["accepted"], answer.body["rejected"]) == (2, 2)
    items = answer.body["items"]
    assert [(i["index"], i["ok"]) for i in items] == [(0, True), (1, False), (2, False), (3, True)]
    assert items[1]["reason"] == "invalid_unit"
    assert items[2]["reason"] == "missing_field" and items[2]["detail"]

    published = pub.on(READINGS)
    assert [(r.key, r.partition) for r in published] == [
        (b"pat-1", partition_for("pat-1", 8)), (b"pat-2", partition_for("pat-2", 8))]
    glucose, pressure = values(published)
    # native contract, canonical unit: 126 mg/dL -> mmol/L; UTC measured_at
    assert glucose["unit"] == "mmol/L"
    assert glucose["value"] == pytest.approx(126.0 / GLUCOSE_MG_PER_DL_PER_MMOL_PER_L)
    assert glucose["measured_at"] == "2026-11-01T07:30:00Z"
    assert {k: glucose[k] for k in ("reading_id", "patient_id", "device_id", "kind")} == {
        "reading_id": "r1", "patient_id": "pat-1", "device_id": "meter-1", "kind": "glucose"}
    assert (pressure["systolic"], pressure["diastolic"], "value" in pressure) == (135, 85, False)
    for doc in (glucose, pressure):
        Reading.model_validate(doc)  # what the worker consumes

    dead = [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]
    assert [d.reason for d in dead] == ["invalid_unit", "missing_field"]
    for d, original in zip(dead, (bad_unit, missing), strict=True):
        assert (d.source, d.request_id, d.topic, d.received_at) == ("http", request_id, READINGS, RECEIVED)
        assert d.encoding == "utf-8" and json.loads(d.original) == original
    assert len(pub.records) == 4


def test_every_reading_goes_to_the_partition_of_its_patient() -> None:
    pub = MemoryPublisher()
    patients = [f"pat-{i}" for i in range(24)]
    answer = post("/v1/readings", [reading(f"r{i}", patient=p) for i, p in enumerate(patients)],
                  publisher=pub)
    assert answer.status == 202 and answer.body["accepted"] == len(patients)
    records = pub.on(READINGS)
    assert [(r.key, r.partition) for r in records] == [
        (p.encode(), partition_for(p, 8)) for p in patients]
    assert len({r.partition for r in records}) > 2  # the ids really spread over partitions


def test_nothing_acceptable_is_400_with_the_same_body_and_one_dead_letter() -> None:
    pub = MemoryPublisher()
    body = [reading("r1", kind="mood"), 7]
    answer = post("/v1/readings", body, publisher=pub)
    assert answer.status == 400
    assert (answer.body["accepted"], answer.body["rejected"]) == (0, 2)
    assert [i["reason"] for i in answer.body["items"]] == ["unknown_kind", "not_an_object"]
    assert answer.body["reasons"] == {"unknown_kind": 1, "not_an_object": 1}
    assert pub.on(READINGS) == []
    (dl,) = [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]
    assert dl.reason == "unknown_kind"  # a tie: the first to occur
    assert "all 2 items rejected (unknown_kind 1, not_an_object 1)" in dl.detail
    assert json.loads(dl.original) == body  # the request, not an item


def test_malformed_json_is_400_and_the_raw_body_is_dead_lettered() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings", raw=b'{"reading_id": "r1", ', publisher=pub)
    assert answer.status == 400
    assert answer.body["items"] == [
        {"index": 0, "ok": False, "reason": "malformed_json", "detail": answer.body["items"][0]["detail"]}]
    (dl,) = [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]
    assert (dl.reason, dl.original, dl.request_id) == (
        "malformed_json", '{"reading_id": "r1", ', answer.headers["X-Request-Id"])


def test_bytes_that_are_not_utf8_are_dead_lettered_as_base64() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings", raw=b"\xff\xfe{}", publisher=pub)
    assert answer.status == 400 and answer.body["items"][0]["reason"] == "not_utf8"
    (dl,) = [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]
    assert (dl.encoding, dl.original) == ("base64", "//57fQ==")


def test_gateway_batch_readings_carry_the_gateway_and_a_rejected_batch_is_one_dead_letter() -> None:
    pub = MemoryPublisher()
    batch = {"gateway_id": "hub-9", "sent_at": "2026-11-01T08:59:00Z",
             "readings": [reading("r1"), reading("r2", patient="pat-2", value=99.0)]}
    answer = post("/v1/readings", batch, publisher=pub)
    assert answer.status == 202 and answer.body["accepted"] == 2
    assert [v["gateway_id"] for v in values(pub.on(READINGS))] == ["hub-9", "hub-9"]

    pub = MemoryPublisher()
    broken = {**batch, "readings": [reading("r1"), reading("r2", unit="kg")]}
    answer = post("/v1/readings", broken, publisher=pub)
    assert answer.status == 400 and answer.body["rejected"] == 1
    (dl,) = [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]
    assert json.loads(dl.original) == broken


def _bundle() -> dict[str, Any]:
    patient_url = "urn:uuid:00000000-0000-4000-8000-0000000000a1"
    hr_code = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    return {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": patient_url, "resource": {"resourceType": "Patient", "id": "pat-7"}},
            {"resource": {  # no id: the intake derives a deterministic reading_id
                "resourceType": "Observation", "status": "final", "code": hr_code,
                "subject": {"reference": patient_url}, "effectiveDateTime": "2026-11-01T08:40:00Z",
                "valueQuantity": {"value": 72, "unit": "bpm", "code": "/min"}}},
            {"resource": {
                "resourceType": "Observation", "id": "hr-2", "status": "entered-in-error",
                "code": hr_code, "subject": {"reference": "Patient/pat-7"},
                "effectiveDateTime": "2026-11-01T08:41:00Z",
                "valueQuantity": {"value": 75, "unit": "bpm", "code": "/min"}}},
        ],
    }


def test_fhir_bundle_is_accepted_per_observation() -> None:
    pub = MemoryPublisher()
    headers = {**AUTH, "Content-Type": "application/fhir+json; charset=utf-8"}
    answer = post("/v1/readings", _bundle(), headers=headers, publisher=pub)
    assert answer.status == 202
    assert [(i["index"], i["ok"]) for i in answer.body["items"]] == [(0, True), (1, False)]
    assert answer.body["items"][1]["reason"] == "withdrawn_status"
    (rec,) = pub.on(READINGS)
    doc = json.loads(rec.value)
    assert (rec.key, rec.partition) == (b"pat-7", partition_for("pat-7", 8))
    assert (doc["kind"], doc["value"], doc["unit"], doc["device_id"]) == ("heart_rate", 72, "/min",
                                                                          "unknown-device")
    assert doc["reading_id"].startswith("h-")
    (dl,) = [DeadLetter.model_validate_json(r.value) for r in pub.on(DEAD)]
    assert json.loads(dl.original)["id"] == "hr-2"  # the Observation, not the whole Bundle

    again = MemoryPublisher()
    post("/v1/readings", _bundle(), headers=headers, publisher=again)
    assert json.loads(again.on(READINGS)[0].value)["reading_id"] == doc["reading_id"]


def _nightscout() -> list[dict[str, Any]]:
    return [
        {"_id": "ns-1", "type": "sgv", "sgv": 180, "date": 1793520000000, "device": "xDrip"},
        {"_id": "ns-2", "type": "cal", "slope": 1000, "date": 1793520000000},
    ]


def test_nightscout_entries_need_a_patient_id_in_the_query() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings?patient_id=pat-ns&format=nightscout", _nightscout(), publisher=pub)
    assert answer.status == 202 and (answer.body["accepted"], answer.body["rejected"]) == (1, 1)
    (rec,) = pub.on(READINGS)
    doc = json.loads(rec.value)
    assert (rec.key, rec.partition) == (b"pat-ns", partition_for("pat-ns", 8))
    assert (doc["patient_id"], doc["reading_id"], doc["unit"]) == ("pat-ns", "ns-1", "mmol/L")
    assert doc["value"] == pytest.approx(180 / GLUCOSE_MG_PER_DL_PER_MMOL_PER_L)

    answer = post("/v1/readings", _nightscout())  # auto-detected, but no patient
    assert answer.status == 400 and answer.body["items"][0]["reason"] == "missing_patient"


def test_unknown_format_parameter_is_400_and_publishes_nothing() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings?format=hl7v2", reading(), publisher=pub)
    assert answer.status == 400 and answer.body["error"] == "unknown_format"
    assert pub.calls == 0


def test_empty_array_is_400_without_items() -> None:
    answer = post("/v1/readings", [])
    assert answer.status == 400 and answer.body["items"] == [] and answer.body["accepted"] == 0


# --- carer activities and care links ------------------------------------------------------------


def test_carer_activities_and_care_links_are_keyed_and_partitioned_by_patient() -> None:
    pub = MemoryPublisher()
    activity = {"activity_id": "a1", "patient_id": "pat-3", "carer_id": "car-1", "kind": "visit",
                "started_at": "2026-11-01T08:00:00+01:00", "duration_minutes": 45}
    answer = post("/v1/carer-activities", [activity, {**activity, "duration_minutes": 0}], publisher=pub)
    assert answer.status == 202 and answer.body["items"][1]["reason"] == "invalid_duration"
    (rec,) = pub.on(SETTINGS.topics.name("carer_activity"))
    assert (rec.key, rec.partition) == (b"pat-3", partition_for("pat-3", 8))
    assert json.loads(rec.value)["started_at"] == "2026-11-01T07:00:00Z"

    pub = MemoryPublisher()
    link = {"type": "care_link", "patient_id": "pat-3", "carer_id": "car-1", "relationship": "friend",
            "action": "join", "effective_at": "2026-10-01T00:00:00Z"}
    answer = post("/v1/care-links", link, publisher=pub)
    assert answer.status == 202
    (rec,) = pub.on(SETTINGS.topics.name("care_network"))
    assert (rec.key, rec.partition) == (b"pat-3|car-1", partition_for("pat-3", 8))

    answer = post("/v1/care-links", activity)  # an activity is not a care link
    assert answer.status == 400 and answer.body["items"][0]["reason"] in {"missing_field",
                                                                         "unexpected_field"}


# --- refusals before decoding ---------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_missing_or_wrong_token_is_401_and_nothing_is_published(auth: str | None) -> None:
    pub = MemoryPublisher()
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    answer = post("/v1/readings", reading(), headers=headers, publisher=pub)
    assert answer.status == 401 and answer.headers["X-Request-Id"]
    assert pub.calls == 0


def test_no_configured_token_is_403_explaining_why() -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings", reading(), publisher=pub,
                  settings=SETTINGS.model_copy(update={"api_token": None}))
    assert answer.status == 403 and "MONITOR_API_TOKEN" in answer.body["detail"]
    assert pub.calls == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(chunked: bool) -> None:
    pub = MemoryPublisher()
    body = [reading(f"r{i}") for i in range(40)]
    assert len(json.dumps(body)) > 5000
    answer = post("/v1/readings", body, publisher=pub, max_body_bytes=5000, chunked=chunked)
    assert answer.status == 413
    assert pub.calls == 0
    assert post("/v1/readings", body[:2], max_body_bytes=5000, chunked=chunked).status == 202


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/json; charset=latin-1"])
def test_non_json_content_type_is_415(ctype: str) -> None:
    pub = MemoryPublisher()
    answer = post("/v1/readings", reading(), headers={**AUTH, "Content-Type": ctype}, publisher=pub)
    assert answer.status == 415 and pub.calls == 0


def test_publishing_failure_is_503_and_nothing_is_reported_accepted() -> None:
    answer = post("/v1/readings", [reading("r1"), reading("r2", unit="kg")],
                  publisher=MemoryPublisher(fail=True))
    assert answer.status == 503
    assert answer.body["accepted"] == 0 and answer.body["error"] == "publish_failed"
    assert "items" not in answer.body


def test_healthz_needs_no_token() -> None:
    async def go() -> tuple[int, dict[str, str]]:
        app = create_intake_app(SETTINGS, MemoryPublisher())
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/healthz")
            return resp.status, await resp.json()

    assert asyncio.run(go()) == (200, {"status": "ok"})


def test_long_dead_letter_original_is_cut_to_a_prefix_with_its_length_and_hash() -> None:
    original = ('{"x": "' + "é" * 4000).encode()  # malformed, 8007 bytes, multi-byte characters
    value = dead_letter_value(Rejection("malformed_json", "cut"), original, topic=READINGS,
                              request_id="rid", received_at=RECEIVED)
    dl = DeadLetter.model_validate_json(value)
    kept = dl.original.encode()
    assert dl.encoding == "utf-8" and original.startswith(kept)
    assert 4094 <= len(kept) <= 4096  # a 2-byte character split by the cut is dropped
    assert "cut to its first 4096 of 8007 bytes" in dl.detail
    digest = hashlib.sha256(original).hexdigest()
    if "original_sha256" in DeadLetter.model_fields:
        assert (dl.original_bytes, dl.original_sha256) == (8007, digest)
    else:
        assert digest in dl.detail
