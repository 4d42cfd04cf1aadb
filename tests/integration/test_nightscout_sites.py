"""Nightscout uploaders pointed at the intake unchanged: an xDrip+-shaped upload to
``/ns/<site>/api/v1/entries`` with the site's ``api-secret`` lands on the real broker as readings
of the patient the site is bound to; a wrong secret is 401 and publishes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import aiohttp
import pytest

from monitor.contract.models import Reading
from monitor.intake.sites import secret_hash
from monitor.kafka.partitioning import partition_for
from monitor.settings import Settings
from tests.integration.conftest import read_records, running_intake

pytestmark = pytest.mark.integration
SECRET = "a-long-site-secret"


def xdrip_entries(n: int) -> list[dict]:
    """What xDrip+ POSTs to /api/v1/entries: sgv entries in mg/dL, epoch ms and dateString."""
    now_ms = int(time.time() * 1000) - 30 * 60_000
    stamps = [now_ms + i * 300_000 for i in range(n)]
    return [{"device": "xDrip-LibreOOP", "date": stamps[i],
             "dateString": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(stamps[i] / 1000)),
             "sgv": 100 + 10 * i, "delta": 10.0, "direction": "FortyFiveUp", "type": "sgv",
             "filtered": 0, "unfiltered": 0, "rssi": 100, "noise": 1, "sysTime": "x"} for i in range(n)]


def test_an_xdrip_upload_lands_as_the_bound_patients_readings_and_a_wrong_secret_publishes_nothing(
        settings: Settings, tmp_path: Path) -> None:
    sites = tmp_path / "sites.json"
    sites.write_text(json.dumps({"sites": {"home-1": {"patient_id": "P-NS-1",
                                                      "api_secret_sha256": secret_hash(SECRET)}}}))
    settings = settings.model_copy(update={"nightscout_sites_file": sites})
    sha1 = hashlib.sha1(SECRET.encode()).hexdigest()

    async def go() -> list[tuple[int, object]]:
        async with running_intake(settings) as intake:
            base = f"{intake}/ns/home-1/api/v1"
            out = []
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/status.json") as resp:
                    out.append((resp.status, await resp.json()))
                for path, secret, body in (("entries", "0" * 40, xdrip_entries(2)),
                                           ("entries.json", sha1.upper(), xdrip_entries(3)),
                                           ("entries", None, xdrip_entries(1))):
                    headers = {"api-secret": secret} if secret else {}
                    async with session.post(f"{base}/{path}", json=body, headers=headers) as resp:
                        out.append((resp.status, await resp.json()))
                async with session.post(f"{intake}/ns/nobody/api/v1/entries",
                                        json=xdrip_entries(1), headers={"api-secret": sha1}) as resp:
                    out.append((resp.status, None))
            return out

    (status_code, status), (wrong, _), (ok, answer), (missing, _), (unknown, _) = asyncio.run(go())
    assert status_code == 200 and status["status"] == "ok"
    assert (wrong, missing, unknown) == (401, 401, 404)
    assert ok == 200 and answer["accepted"] == 3 and answer["rejected"] == 0

    records = read_records(settings, settings.topics.name("readings"), partitions=settings.partitions)
    readings = [Reading.model_validate_json(r.value) for r in records]
    assert len(readings) == 3  # the two uploads refused published nothing
    assert {r.patient_id for r in readings} == {"P-NS-1"}
    assert {r.partition for r in records} == {partition_for("P-NS-1", settings.partitions)}
    assert sorted(round(r.value * 18.016) for r in readings) == [100, 110, 120]
