"""Scoped credentials (monitor.credentials) and their enforcement by the intake: a gateway writes
only its patients' readings, a carer app only as its carer; outside the scope is 403 with nothing
published and counted (no ids in labels); revoked is 401; over the rate is 429."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.credentials import CredentialRegistry, RateLimiter, issue
from monitor.intake.http import create_intake_app
from tests.unit.test_http_intake import SETTINGS, MemoryPublisher

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def reading(pid: str, rid: str) -> dict[str, Any]:
    return {"reading_id": rid, "patient_id": pid, "device_id": "m", "kind": "glucose", "value": 5.5,
            "unit": "mmol/L", "measured_at": "2026-12-07T08:50:00Z"}


def registry_with(*creds: Any) -> CredentialRegistry:
    reg = CredentialRegistry()
    for c in creds:
        reg.apply(json.dumps(c.to_json()).encode())
    return reg


def call(reg: CredentialRegistry, requests: list[tuple[str, str, Any]], pub: MemoryPublisher,
         limiter: RateLimiter | None = None) -> list[tuple[int, Any]]:
    async def go() -> list[tuple[int, Any]]:
        app = create_intake_app(SETTINGS, pub, clock=lambda: NOW, credentials=reg, limiter=limiter)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            out = []
            for path, token, body in requests:
                resp = await client.post(path, data=json.dumps(body),
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
                out.append((resp.status, await resp.json()))
            resp = await client.get("/metrics")
            out.append((resp.status, await resp.text()))
            return out
        finally:
            await client.close()

    return asyncio.run(go())


def test_a_gateway_writes_its_patients_only_and_outside_its_scope_nothing_is_published() -> None:
    gw, token = issue("gateway", name="home hub", created_at=NOW, patients=frozenset({"P1", "P2"}))
    pub = MemoryPublisher()
    answers = call(registry_with(gw), [
        ("/v1/readings", token, [reading("P1", "r1"), reading("P2", "r2")]),
        ("/v1/readings", token, [reading("P1", "r3"), reading("P9", "r4")]),  # one foreign patient
        ("/v1/carer-activities", token, {}),  # not a gateway's endpoint
    ], pub)
    (ok, _), (outside, body), (wrong_role, _), (_, metrics) = answers
    assert ok == 202 and outside == 403 and body["error"] == "outside_scope" and wrong_role == 403
    readings = pub.on(SETTINGS.topics.name("readings"))
    assert sorted(json.loads(r.value)["reading_id"] for r in readings) == ["r1", "r2"]  # not r3 either
    assert 'monitor_intake_refused_requests_total{reason="outside_scope",role="gateway"} 1.0' in metrics
    assert "P9" not in metrics and "P1" not in metrics


def test_a_carer_app_writes_as_its_carer_only() -> None:
    app_cred, token = issue("carer_app", name="phone", created_at=NOW, carer_id="C1")
    activity = {"activity_id": "a1", "patient_id": "P1", "carer_id": "C1", "kind": "visit",
                "started_at": "2026-12-07T08:00:00Z", "duration_minutes": 30}
    pub = MemoryPublisher()
    (ok, _), (outside, _), (readings, _), _ = call(registry_with(app_cred), [
        ("/v1/carer-activities", token, activity),
        ("/v1/carer-activities", token, {**activity, "activity_id": "a2", "carer_id": "C2"}),
        ("/v1/readings", token, reading("P1", "r1")),
    ], pub)
    assert (ok, outside, readings) == (202, 403, 403)
    published = pub.on(SETTINGS.topics.name("carer_activity"))
    assert [json.loads(r.value)["activity_id"] for r in published] == ["a1"]


def test_revoked_unknown_and_over_the_rate() -> None:
    gw, token = issue("gateway", name="hub", created_at=NOW, patients=frozenset({"P1"}))
    revoked = registry_with(gw, dataclasses.replace(gw, revoked=True))  # the topic's later record wins
    (status, _), _ = call(revoked, [("/v1/readings", token, reading("P1", "r1"))], MemoryPublisher())
    assert status == 401
    (status, _), _ = call(registry_with(gw), [("/v1/readings", token + "x", reading("P1", "r1"))],
                          MemoryPublisher())
    assert status == 401
    answers = call(registry_with(gw), [("/v1/readings", token, reading("P1", f"r{i}")) for i in range(4)],
                   MemoryPublisher(), limiter=RateLimiter(rate=0.001, burst=2))
    assert [s for s, _ in answers[:-1]] == [202, 202, 429, 429]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_token_text_is_refused_unless_it_is_the_credential_s(text: str) -> None:
    gw, token = issue("gateway", name="hub", created_at=NOW, patients=frozenset({"P1"}))
    reg = registry_with(gw)
    assert reg.authenticate(text) is None or text == token
    assert reg.authenticate(token) == gw


def test_the_rate_limiter_refills_at_its_rate() -> None:
    lim = RateLimiter(rate=2.0, burst=2.0)
    assert [lim.allow("c", 0.0) for _ in range(3)] == [True, True, False]
    assert lim.allow("c", 0.5) and not lim.allow("c", 0.5)  # one token back after 0.5 s at 2/s
