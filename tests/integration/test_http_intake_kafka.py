"""The HTTP intake end to end: a real aiohttp server, the real AsyncPublisher and the real broker.

A mixed request is POSTed; then the readings and dead-letters topics (unique per test) are read back
completely (up to their end offsets, so nothing depends on timing) and must hold exactly the accepted
readings, on the partition of their patient, and the rejected items as dead letters with the request id.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from monitor.contract.models import DeadLetter, Reading
from monitor.kafka.partitioning import partition_for
from monitor.settings import Settings
from tests.integration.conftest import read_records, running_intake

pytestmark = pytest.mark.integration


def read_all(settings: Settings, topic: str) -> list[Any]:
    """Every record on ``topic`` up to its current end offsets (all partitions)."""
    return read_records(settings, topic, partitions=settings.partitions)


def serve_and_post(settings: Settings, requests: list[tuple[str, Any]]) -> list[tuple[int, str, Any]]:
    """Start the intake on a free port, POST each (path, JSON body), stop; (status, request id, body)."""
    assert settings.api_token is not None
    headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}

    async def go() -> list[tuple[int, str, Any]]:
        async with running_intake(settings) as base:  # stopping it flushes the publisher
            answers = []
            async with aiohttp.ClientSession() as session:
                for path, body in requests:
                    async with session.post(f"{base}{path}", json=body, headers=headers) as resp:
                        answers.append((resp.status, resp.headers["X-Request-Id"], await resp.json()))
            return answers

    return asyncio.run(go())


def test_mixed_request_lands_exactly_on_readings_and_dead_letters(settings: Settings) -> None:
    at = (datetime.now(UTC) - timedelta(minutes=20)).replace(microsecond=0)
    stamp = at.isoformat().replace("+00:00", "Z")
    patients = [f"pat-{i}" for i in range(6)]
    good = [{"reading_id": f"r-{p}", "patient_id": p, "device_id": "meter-1", "kind": "glucose",
             "value": 5.5 + i, "unit": "mmol/L", "measured_at": stamp} for i, p in enumerate(patients)]
    fhir_no_id = {"resourceType": "Observation", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                  "subject": {"reference": "Patient/pat-fhir"}, "effectiveDateTime": stamp,
                  "valueQuantity": {"value": 64, "unit": "/min", "code": "/min"}}
    bad_unit = {**good[0], "reading_id": "bad-1", "unit": "kg"}
    naive = {**good[1], "reading_id": "bad-2", "measured_at": stamp.rstrip("Z")}
    body = [good[0], bad_unit, *good[1:3], naive, fhir_no_id, *good[3:]]
    link = {"patient_id": "pat-3", "carer_id": "car-9", "relationship": "neighbour", "action": "join",
            "effective_at": stamp}

    (status, request_id, answer), (link_status, _, _) = serve_and_post(
        settings, [("/v1/readings", body), ("/v1/care-links", link)])

    assert status == 202, answer
    assert (answer["accepted"], answer["rejected"]) == (7, 2)
    assert [i["index"] for i in answer["items"] if not i["ok"]] == [1, 4]
    assert link_status == 202

    readings = read_all(settings, settings.topics.name("readings"))
    docs = {}
    for rec in readings:
        doc = Reading.model_validate_json(rec.value)
        assert rec.key == doc.patient_id.encode()
        assert rec.partition == partition_for(doc.patient_id, settings.partitions)
        docs[doc.reading_id] = doc
    assert len(readings) == 7  # exactly once each, nothing rejected on the topic
    (derived,) = [k for k in docs if k.startswith("h-")]  # the FHIR Observation had no id
    assert set(docs) - {derived} == {f"r-{p}" for p in patients}
    fhir = docs[derived]
    assert (fhir.patient_id, fhir.kind.value, fhir.value, fhir.device_id) == (
        "pat-fhir", "heart_rate", 64, "unknown-device")

    dead_records = read_all(settings, settings.topics.name("dead_letters"))
    dead = [DeadLetter.model_validate_json(r.value) for r in dead_records]
    assert sorted((d.reason, json.loads(d.original)["reading_id"]) for d in dead) == [
        ("invalid_unit", "bad-1"), ("naive_timestamp", "bad-2")]
    assert all(d.source == "http" and d.request_id == request_id for d in dead)

    (link_rec,) = read_all(settings, settings.topics.name("care_network"))
    assert link_rec.key == b"pat-3|car-9"
    assert link_rec.partition == partition_for("pat-3", settings.partitions)
