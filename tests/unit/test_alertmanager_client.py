"""The Alertmanager v2 client against a tiny real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitor.alerts.alertmanager import AlertmanagerClient, AlertmanagerError
from monitor.alerts.engine import AlertConfig, AlertEngine, AlertEvent
from monitor.contract.models import Patient
from monitor.intake.canonical import CanonicalReading

T0 = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)


class FakeAlertmanager:
    """Records every POST body; answers with ``status`` (200 by default)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.status = 200
        self.refuse_patient: str | None = None  # answer 400 to a batch holding this patient's alert
        self.accepted: list[dict[str, Any]] = []  # alerts of the batches answered 2xx
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                alerts = json.loads(body)
                outer.requests.append((self.path, self.headers.get("Content-Type", ""), alerts))
                status = outer.status
                if outer.refuse_patient and any(a["labels"]["patient_id"] == outer.refuse_patient
                                                for a in alerts):
                    status = 400
                if status < 300:
                    outer.accepted.extend(alerts)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'"bad alert: p1 label echo"' if status >= 400 else b"")

            def log_message(self, *args: object) -> None:  # keep test output clean
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [a for _, _, body in self.requests for a in body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def am() -> Iterator[FakeAlertmanager]:
    server = FakeAlertmanager()
    yield server
    server.close()


def post(client: AlertmanagerClient, events: list[AlertEvent]) -> int:
    """``client.post`` in a loop of its own (the client is async; its session closed after)."""
    async def run() -> int:
        async with client:
            return await client.post(events)

    return asyncio.run(run())


def glucose(value: float, at: datetime, rid: str) -> CanonicalReading:
    return CanonicalReading(
        rid, "p1", "d1", None, "glucose", value, None, None, "mmol/L", "mmol/L", None, at, "native"
    )


def lifecycle() -> list[AlertEvent]:
    eng = AlertEngine(AlertConfig(), clock=lambda: T0)
    eng.on_patient(Patient(patient_id="p1", region="north", deprivation_quintile=2, age_band="60-69"))
    opened = eng.on_readings([glucose(2.5, T0, "r1")], {"p1": {"no_support_network"}})
    resolved = eng.on_readings([glucose(6.0, T0 + timedelta(minutes=30), "r2")])
    return opened + resolved


def test_posts_firing_and_resolved_alerts_with_labels_annotations_and_times(am: FakeAlertmanager) -> None:
    events = lifecycle()
    client = AlertmanagerClient(
        am.url,
        care_teams={"north": "north-community-team"},
        generator_url="http://monitor.local/alerts/{alert_id}",
    )
    assert post(client, events) == 2
    ((path, content_type, _),) = am.requests  # one batch
    assert path == "/api/v2/alerts" and content_type == "application/json"
    firing, resolved = am.alerts
    assert firing["labels"] == {
        "alertname": "glucose_very_low",
        "rule": "glucose_very_low",
        "patient_id": "p1",
        "severity": "emergency",
        "kind": "glucose",
        "direction": "low",
        "region": "north",
        "care_team": "north-community-team",
    }
    assert firing["annotations"]["value"] == "2.5"
    assert firing["annotations"]["threshold"] == "3"
    assert firing["annotations"]["unsupported"] == "true"
    assert firing["annotations"]["alert_id"] == events[0].alert_id
    assert firing["startsAt"] == "2024-03-04T08:00:00Z"
    assert "endsAt" not in firing
    assert firing["generatorURL"] == f"http://monitor.local/alerts/{events[0].alert_id}"
    # the resolved alert has the same identity (labels) and an end
    assert resolved["labels"] == firing["labels"]
    assert resolved["startsAt"] == "2024-03-04T08:00:00Z"
    assert resolved["endsAt"] == "2024-03-04T08:30:00Z"
    assert resolved["annotations"]["notification"] == "resolved"


def test_batches_and_per_recipient_copies(am: FakeAlertmanager) -> None:
    events = lifecycle()
    client = AlertmanagerClient(am.url, batch_size=3, recipients=lambda e: ["dr-a", "nurse-b"])
    assert post(client, events) == 4
    assert [len(body) for _, _, body in am.requests] == [3, 1]
    assert sorted((a["labels"]["recipient"], "endsAt" in a) for a in am.alerts) == [
        ("dr-a", False),
        ("dr-a", True),
        ("nurse-b", False),
        ("nurse-b", True),
    ]


def test_escalation_ends_the_alert_with_the_old_severity(am: FakeAlertmanager) -> None:
    eng = AlertEngine(AlertConfig(), clock=lambda: T0)
    eng.on_readings([glucose(3.5, T0, "r1")])
    (escalation,) = eng.tick(T0 + timedelta(minutes=5), {"p1": {"support_lapsed"}})
    post(AlertmanagerClient(am.url), [escalation])
    old, new = am.alerts
    assert old["labels"]["severity"] == "warning" and old["endsAt"] == "2024-03-04T08:05:00Z"
    assert new["labels"]["severity"] == "critical" and "endsAt" not in new
    assert new["annotations"]["unsupported"] == "true"


def test_rejection_raises_a_clear_error_without_patient_data(am: FakeAlertmanager) -> None:
    am.status = 400
    with pytest.raises(AlertmanagerError) as info:
        post(AlertmanagerClient(am.url), lifecycle())
    assert info.value.status == 400 and info.value.posted == 0
    assert "HTTP 400" in str(info.value) and "p1" not in str(info.value)
    assert "bad alert" in info.value.body


def test_unreachable_alertmanager_raises() -> None:
    server = FakeAlertmanager()
    url = server.url
    server.close()  # nothing listens on that port any more
    with pytest.raises(AlertmanagerError, match="unreachable") as info:
        post(AlertmanagerClient(url, timeout=2), lifecycle())
    assert info.value.status is None


def test_empty_post_sends_nothing(am: FakeAlertmanager) -> None:
    assert post(AlertmanagerClient(am.url), []) == 0
    assert am.requests == []


def test_rejects_a_base_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertmanagerClient("ftp://127.0.0.1:9093")
