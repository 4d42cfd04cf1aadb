"""The worker's web views on the real faust app (no broker: nothing is started but the web app),
the bearer-token check they share with the HTTP intake (:mod:`monitor.auth`), and the merge point
sending the population snapshot only when it changes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from monitor.auth import check_bearer, configured_token
from monitor.pipeline import Pipeline, RawRecord
from monitor.settings import Settings
from monitor.stream.app import create_app
from monitor.stream.merge import MergePoint, partial_doc

TOKEN = "s3cret-token"
PRIVATE = ("/patients/unsupported", "/patients/alerts", "/patients/state", "/carers/ledger")


def get_all(settings: Settings, paths: list[str],
            headers: dict[str, str] | None = None) -> list[tuple[int, Any]]:
    app = create_app(settings)

    async def go() -> list[tuple[int, Any]]:
        out = []
        async with TestClient(TestServer(app.web.web_app)) as client:
            for path in paths:
                resp = await client.get(path, headers=headers or {})
                body = await resp.read()
                is_json = resp.content_type == "application/json"
                out.append((resp.status, json.loads(body) if is_json else body))
        return out

    return asyncio.run(go())


def settings(token: str | None) -> Settings:
    s = Settings(bootstrap_servers="127.0.0.1:1", web_port=1)
    # model_copy skips validation: the views themselves must treat an empty secret as unset
    return s.model_copy(update={"api_token": SecretStr(token) if token is not None else None})


@pytest.mark.parametrize("token", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_patient_level_views_are_closed_without_a_token(token: str | None) -> None:
    for status, body in get_all(settings(token), list(PRIVATE), {"Authorization": f"Bearer {token or ''}"}):
        assert status == 403 and "MONITOR_API_TOKEN" in body["error"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN])
def test_patient_level_views_want_the_token(header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for status, body in get_all(settings(TOKEN), list(PRIVATE), headers):
        assert status == 401 and body == {"error": "a valid bearer token is required"}


def test_patient_level_views_with_the_token_and_the_open_views() -> None:
    answers = get_all(settings(TOKEN), [*PRIVATE[:3], "/health", "/summary", "/equity"],
                      {"Authorization": f"bearer {TOKEN}"})
    assert [s for s, _ in answers] == [200] * 6
    unsupported, alerts, state, health, summary, equity = (b for _, b in answers)
    assert (unsupported, alerts, state) == ({"patients": []}, {"alerts": []}, {"patients": {}})
    assert health["partitions"] == [] and health["restored"] == health["rebuilt"] == 0
    assert summary["inputs"] == 0 and summary["watermark"] is None
    assert equity == {}


def test_the_shared_check() -> None:
    token = configured_token(SecretStr(TOKEN))
    assert configured_token(None) is None and configured_token(SecretStr("  ")) is None
    assert check_bearer(f"Bearer {TOKEN}", None) == 403
    assert check_bearer(f"Bearer {TOKEN}", token) is None
    assert check_bearer(f"  BEARER   {TOKEN} ", token) is None
    # undecodable bytes reach a handler as lone surrogates; non-ASCII text is just another token
    for header in ("Bearer \udcff\udcfe", f"Bearer {TOKEN}\udcc3", "Bearer jeton-\u00e9", "Bearer", ""):
        assert check_bearer(header, token) == 401


def test_the_merge_point_sends_a_changed_snapshot_once() -> None:
    pipe = Pipeline(clock=lambda: datetime(2026, 11, 1, 12, tzinfo=UTC))
    docs = [{"patient_id": f"P{i}", "region": "north", "deprivation_quintile": 1 + i % 5,
             "age_band": "65-74"} for i in range(6)]
    reading = {"reading_id": "x", "patient_id": "P0", "device_id": "d", "kind": "spo2", "value": 97,
               "unit": "%", "measured_at": "2026-11-01T11:00:00+00:00"}
    pipe.ingest([RawRecord(json.dumps(d).encode(), "p", i % 2, i // 2) for i, d in enumerate(docs)]
                + [RawRecord(json.dumps(reading).encode(), "r", 0, 0)], {"p": "patient", "r": "reading"})
    sent: list[tuple[str, bytes]] = []

    async def send_equity(key: bytes, value: bytes) -> None:
        sent.append(("equity", value))

    async def send_flag(key: bytes, value: bytes) -> None:
        sent.append(("flag", value))

    merge = MergePoint(2, send_flag, send_equity)
    partials = {p: partial_doc(pipe, p, pipe.partitions[p]) for p in (0, 1)}
    assert partials[0] is not None and partials[1] is None  # partition 1 has no event time yet

    async def go() -> None:
        await merge.take([json.dumps(partials[0]).encode()])
        await merge.take([json.dumps(partials[0]).encode(), b"not json"])  # same: nothing sent

    asyncio.run(go())
    assert [k for k, _ in sent] == ["equity"] and merge.snapshot is not None
    assert merge.snapshot["partitions_reported"] == 1 and merge.snapshot["partitions"] == 2
    assert json.loads(sent[0][1]) == json.loads(json.dumps(merge.snapshot))
