"""Scoped credentials on the real broker: a credential made with ``coproduction-monitor
credentials add`` reaches a running intake through the compacted credentials topic; its gateway
writes its own patient (202), is refused another patient (403, nothing of that request on the
readings topic); ``credentials revoke`` makes the intake refuse it (401) within seconds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import pytest

from monitor.contract.models import Reading
from monitor.credentials import CredentialRegistry
from tests.integration.conftest import ROOT, read_records, running_intake

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "monitor", "credentials", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def reading(pid: str, rid: str) -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 300))
    return {"reading_id": rid, "patient_id": pid, "device_id": "hub-1", "kind": "glucose", "value": 6.1,
            "unit": "mmol/L", "measured_at": stamp}


@pytest.mark.timeout(180)
def test_a_gateway_credential_is_scoped_and_revocable(env, settings) -> None:
    made = cli(env, "add", "--role", "gateway", "--patient", "P-CRED-1", "--name", "hub of P-CRED-1")
    token = made["token"]

    async def go() -> list[int]:
        statuses = []
        async with running_intake(settings, credentials=CredentialRegistry()) as base:
            url = f"{base}/v1/readings"
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession() as session:
                mixed = [reading("P-CRED-1", "c-2"), reading("P-OTHER", "c-3")]
                for body in ([reading("P-CRED-1", "c-1")], mixed):
                    async with session.post(url, json=body, headers=headers) as resp:
                        statuses.append(resp.status)
                await asyncio.to_thread(cli, env, "revoke", made["credential_id"])
                deadline = time.monotonic() + 30
                while True:  # the intake follows the topic: refused within a fetch or two
                    async with session.post(url, json=[reading("P-CRED-1", "c-4")], headers=headers) as resp:
                        if resp.status == 401 or time.monotonic() > deadline:
                            statuses.append(resp.status)
                            break
                    await asyncio.sleep(0.5)
        return statuses

    assert asyncio.run(go()) == [202, 403, 401]
    records = read_records(settings, settings.topics.name("readings"), partitions=settings.partitions)
    ids = sorted(Reading.model_validate_json(r.value).reading_id for r in records)
    assert ids[0] == "c-1" and "c-2" not in ids and "c-3" not in ids
    listing = cli(env, "list")
    assert [c["revoked"] for c in listing] == [True] and "token" not in listing[0]
