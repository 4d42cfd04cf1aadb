"""FHIR R4 REST on the intake, against the real broker: a transaction Bundle gets a batch-response
with one entry per Observation (201 with its location, or 422 with an OperationOutcome), only the
accepted Observations reach the readings topic (on their patient's partition), a single
Observation is 201 with Location or 422, and the CapabilityStatement says what is supported."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from monitor.contract.models import Reading
from monitor.kafka.partitioning import partition_for
from monitor.settings import Settings
from tests.integration.conftest import read_records, running_intake

pytestmark = pytest.mark.integration


def observation(oid: str, patient: str, bpm: float, unit: str = "/min") -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": stamp,
            "valueQuantity": {"value": bpm, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": unit}}


def test_a_transaction_bundle_gets_one_answer_per_observation(settings: Settings) -> None:
    token = settings.api_token.get_secret_value()
    post = {"method": "POST", "url": "Observation"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("hr-1", "P-FHIR-1", 72), "request": post},
        {"resource": observation("hr-2", "P-FHIR-2", 64, unit="kg"), "request": post},
        {"resource": observation("hr-3", "P-FHIR-3", 58), "request": post},
    ]}

    bases: list[str] = []

    async def go() -> list[tuple[int, dict[str, str], Any]]:
        out = []
        async with running_intake(settings) as intake:
            base = f"{intake}/fhir"
            bases.append(base)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/metadata") as resp:
                    out.append((resp.status, dict(resp.headers), await resp.json(content_type=None)))
                for path, body in (("", bundle), ("/Observation", observation("hr-4", "P-FHIR-4", 80)),
                                   ("/Observation", observation("hr-5", "P-FHIR-5", 80, unit="kg"))):
                    async with session.post(base + path, json=body, headers=headers) as resp:
                        out.append((resp.status, dict(resp.headers), await resp.json(content_type=None)))
                async with session.post(base, json=bundle) as resp:  # no token
                    out.append((resp.status, {}, None))
        return out

    (meta_status, _, meta), (status, _, answer), (one_status, one_headers, _), (bad_status, _, bad), (
        anon, _, _) = asyncio.run(go())
    base = bases[0]
    assert meta_status == 200 and meta["resourceType"] == "CapabilityStatement"
    assert {"code": "transaction"} in meta["rest"][0]["interaction"]
    assert status == 200 and answer["type"] == "batch-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "422 Unprocessable Entity",
                                                                  "201 Created"]
    assert answer["entry"][0]["response"]["location"] == f"{base}/Observation/hr-1"
    assert answer["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"].startswith("invalid_unit")
    assert one_status == 201 and one_headers["Location"] == f"{base}/Observation/hr-4"
    assert bad_status == 422 and bad["resourceType"] == "OperationOutcome"
    assert anon == 401

    records = read_records(settings, settings.topics.name("readings"), partitions=settings.partitions)
    readings = [(Reading.model_validate_json(r.value), r.partition) for r in records]
    assert sorted(reading.reading_id for reading, _ in readings) == ["hr-1", "hr-3", "hr-4"]
    for reading, partition in readings:
        assert partition == partition_for(reading.patient_id, settings.partitions)
