"""Reaching a person: the real Alertmanager with deploy/alertmanager.yml sends the clinical email
to a real SMTP server (aiosmtpd) in the test.

One patient without support with three emergencies and one critical of the same kind as an
emergency: one email to the patient's care team (grouped per patient), holding the three
emergencies with value, threshold, unit, time, support status, the alert link and a runbook link
that the worker serves; the critical is inhibited by the emergency of its kind.
"""

from __future__ import annotations

import asyncio
import email
import json
import re
import time
import urllib.request
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from monitor.alerts.alertmanager import AlertmanagerClient
from monitor.alerts.episodes import AlertEvent
from tests.integration.conftest import ROOT, WorkerProcess, free_port
from tests.integration.test_alerting_e2e import ALERTMANAGER

pytestmark = pytest.mark.integration


class Mailbox:
    """aiosmtpd handler: keeps every message delivered."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd API
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


def config(path: Path, smtp_port: int) -> Path:
    """deploy/alertmanager.yml with the test's SMTP server and a short group_wait."""
    text = (ROOT / "deploy" / "alertmanager.yml").read_text()
    text = text.replace("smtp.example.org:587", f"127.0.0.1:{smtp_port}")
    text = text.replace("smtp_require_tls: true", "smtp_require_tls: false")
    text = re.sub(r"group_wait: \S+", "group_wait: 2s", text)  # the three alerts arrive together
    path.write_text(text)
    return path


def event(rule: str, kind: str, severity: str, value: float, threshold: float, unit: str,
          at: datetime) -> AlertEvent:
    return AlertEvent(alert_id=f"a-{rule}", event_id=f"e-{rule}", patient_id="P-EMAIL-1", rule=rule,
                      kind=kind, severity=severity, status="firing", notification="firing",
                      unsupported=True, value=value, threshold=threshold, unit=unit, opened_at=at,
                      resolved_at=None, event_at=at, region="north")


@pytest.mark.timeout(120)
def test_one_email_per_patient_with_what_the_clinician_needs(env, tmp_path):
    if ALERTMANAGER is None:
        pytest.skip("Debian package prometheus-alertmanager is not installed (.ci/run installs it)")
    import subprocess

    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    worker = WorkerProcess(env, tmp_path / "worker.log")  # serves the runbooks
    worker.start()
    am_port = free_port()
    am = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config(tmp_path / 'am.yml', smtp.port)}",
         f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address=", "--log.level=warn"],
        stdout=open(tmp_path / "am.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{am_port}/-/ready", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "am.log").read_text()
                time.sleep(0.2)
        # opened now: Alertmanager flushes a new group at once when an alert's startsAt is older
        # than group_wait, and the first alert would then go out alone (seen in CI: 1 of 3)
        at = datetime.now(UTC).replace(microsecond=0)
        events = [
            event("glucose_very_low", "glucose", "emergency", 2.8, 3.0, "mmol/L", at),
            event("spo2_very_low", "spo2", "emergency", 89.0, 91.0, "%", at),
            event("bp_systolic_high", "blood_pressure", "emergency", 192.0, 180.0, "mm[Hg]", at),
            event("glucose_very_high", "glucose", "critical", 23.0, 22.2, "mmol/L", at),  # inhibited
        ]
        client = AlertmanagerClient(
            f"http://127.0.0.1:{am_port}", care_teams={"north": "north-team"},
            generator_url=f"{worker.base}/alerts/{{alert_id}}",
            runbook_url=f"{worker.base}/runbooks/{{rule}}")

        async def post(batch: list[AlertEvent]) -> int:
            async with client:
                return await client.post(batch)

        def held() -> list[dict]:
            with urllib.request.urlopen(f"http://127.0.0.1:{am_port}/api/v2/alerts", timeout=5) as resp:
                return json.loads(resp.read())

        # the emergencies first: Alertmanager's inhibitor learns of a source alert asynchronously, so
        # a source and a target posted in one request may both page (a race in Alertmanager itself)
        assert asyncio.run(post(events[:3])) == 3
        deadline = time.monotonic() + 10
        while len(held()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert asyncio.run(post(events[3:])) == 1
        deadline = time.monotonic() + 30
        while not mailbox.messages and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # a second email (a split group, the inhibited critical) would come by now
        assert len(mailbox.messages) == 1, [m["Subject"] for _, m in mailbox.messages]
        critical = next(a for a in held() if a["labels"]["rule"] == "glucose_very_high")
        assert critical["status"]["state"] == "suppressed" and critical["status"]["inhibitedBy"]
        rcpt, msg = mailbox.messages[0]
        assert rcpt == ["north-team@care-teams.example.org"]
        assert "P-EMAIL-1" not in msg["Subject"] and "emergency" in msg["Subject"]
        body = msg.get_payload(decode=True).decode() if not msg.is_multipart() else next(
            p.get_payload(decode=True).decode() for p in msg.walk() if p.get_content_type() == "text/plain")
        assert body.count("EMERGENCY firing") == 3 and "glucose_very_high" not in body
        assert "Patient: P-EMAIL-1" in body
        assert "Value: 2.8 mmol/L, threshold 3 mmol/L" in body
        assert "Value: 192 mm[Hg], threshold 180 mm[Hg]" in body
        assert f"Since: {at.isoformat().replace('+00:00', 'Z')} (UTC)" in body
        assert body.count("Support: lives without carer support") == 3
        assert f"Alert: {worker.base}/alerts/a-glucose_very_low" in body
        runbook = re.search(r"Runbook: (\S+/runbooks/glucose_very_low)", body).group(1)
        with urllib.request.urlopen(runbook, timeout=10) as resp:  # the link works
            assert resp.status == 200 and resp.read().decode().startswith("# glucose_very_low")
    finally:
        am.terminate()
        am.wait(timeout=10)
        worker.stop()
        smtp.stop()
