"""The intake's OpenAPI 3.1 document validates, describes exactly the routes the application
serves, and every route in it answers (no 404 or 405) on a live aiohttp test server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from monitor.intake.http import create_intake_app
from monitor.intake.openapi import ROUTES, openapi_document
from monitor.intake.sites import secret_hash
from tests.unit.test_http_intake import SETTINGS, TOKEN, MemoryPublisher


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(openapi_document())  # raises on an invalid document


def test_it_describes_exactly_the_routes_the_application_serves() -> None:
    app = create_intake_app(SETTINGS, MemoryPublisher())
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    assert served == {(method, path) for method, path, _ in ROUTES}


def test_every_route_in_it_answers(tmp_path: Path) -> None:
    sites = tmp_path / "sites.json"
    entry = {"patient_id": "P1", "api_secret_sha256": secret_hash("x" * 16)}
    sites.write_text(json.dumps({"sites": {"s1": entry}}))
    settings = SETTINGS.model_copy(update={"nightscout_sites_file": sites})

    async def go() -> dict[tuple[str, str], int]:
        client = TestClient(TestServer(create_intake_app(settings, MemoryPublisher())))
        await client.start_server()
        try:
            out = {}
            for method, path, _ in ROUTES:
                url = path.replace("{site}", "s1")
                headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
                resp = await client.request(method.upper(), url, data=b"[]" if method == "post" else None,
                                            headers=headers)
                out[(method, path)] = resp.status
                resp.release()
            return out
        finally:
            await client.close()

    statuses = asyncio.run(go())
    assert all(status not in (404, 405) for status in statuses.values()), statuses
    assert statuses[("get", "/openapi.json")] == 200 and statuses[("get", "/fhir/metadata")] == 200
