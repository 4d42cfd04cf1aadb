"""The deploy configs are valid for the real tools, and route/fire as documented.

Uses ``promtool`` and ``amtool`` (Debian packages ``prometheus`` and ``prometheus-alertmanager``);
each test is skipped only when its tool is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
AM_CONFIG = ROOT / "deploy" / "alertmanager.yml"

promtool = shutil.which("promtool")
amtool = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed")
needs_amtool = pytest.mark.skipif(amtool is None, reason="amtool not installed")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


@needs_promtool
def test_prometheus_rules_pass_promtool_check() -> None:
    result = _run(str(promtool), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_amtool
def test_alertmanager_config_passes_amtool_check() -> None:
    result = _run(str(amtool), "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            ["severity=emergency", "care_team=north", "patient_id=p1", "rule=glucose_very_low"],
            "clinical-emergency-care-team",
        ),
        (["severity=emergency", "patient_id=p1", "rule=glucose_very_low"], "clinical-emergency"),
        (
            ["severity=critical", "care_team=north", "patient_id=p1", "rule=bp_systolic_high"],
            "clinical-critical-care-team",
        ),
        (
            ["severity=warning", "care_team=south", "patient_id=p2", "rule=missed_readings"],
            "clinical-warning-care-team",
        ),
        (["severity=critical", "care_team=south", "patient_id=p2", "rule=missed_readings"],
         "clinical-critical-care-team"),
        (["severity=warning", "patient_id=p2", "rule=glucose_low"], "clinical-warning"),
        (
            ["severity=warning", "team=coordination", "alertname=PatientsWithoutSupportShareHigh"],
            "coordination",
        ),
        (["severity=critical", "team=platform", "alertname=ReadingsPipelineStalled"], "platform"),
        (["alertname=Unknown"], "clinical-default"),
        (["severity=emergency", "care_team=north", "patient_id=p1", "tier=2"], "clinical-escalation"),
    ],
)
def test_alertmanager_routes_by_severity_and_care_team(labels: list[str], receiver: str) -> None:
    result = _run(
        str(amtool),
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


PROMTOOL_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  # quintile 1: 30 of 100 without support (30 %, fires); quintile 5: 10 of 100 (does not);
  # quintile 3: 5 of 10 (50 %, but under 20 patients: does not fire).
  - interval: 1m
    input_series:
      - series: 'monitor_patients{{deprivation_quintile="1", instance="w1"}}'
        values: '60x90'
      - series: 'monitor_patients{{deprivation_quintile="1", instance="w2"}}'
        values: '40x90'
      - series: 'monitor_patients_without_support{{deprivation_quintile="1", instance="w1"}}'
        values: '20x90'
      - series: 'monitor_patients_without_support{{deprivation_quintile="1", instance="w2"}}'
        values: '10x90'
      - series: 'monitor_patients{{deprivation_quintile="5", instance="w1"}}'
        values: '100x90'
      - series: 'monitor_patients_without_support{{deprivation_quintile="5", instance="w1"}}'
        values: '10x90'
      - series: 'monitor_patients{{deprivation_quintile="3", instance="w1"}}'
        values: '10x90'
      - series: 'monitor_patients_without_support{{deprivation_quintile="3", instance="w1"}}'
        values: '5x90'
    alert_rule_test:
      - eval_time: 30m
        alertname: PatientsWithoutSupportShareHigh
        exp_alerts: []
      - eval_time: 61m
        alertname: PatientsWithoutSupportShareHigh
        exp_alerts:
          - exp_labels:
              severity: warning
              team: coordination
              deprivation_quintile: "1"
            exp_annotations:
              summary: "30% of patients in deprivation quintile 1 have no support network"
              description: "Over 25 % of patients without a support network for 1 h: review carer outreach."
              runbook_url: "http://127.0.0.1:6066/runbooks/PatientsWithoutSupportShareHigh"

  # readings flow for 20 minutes, then stop: stalled 10 minutes later, not before.
  - interval: 1m
    input_series:
      - series: 'monitor_readings_ingested_total{{instance="w1"}}'
        values: '0+10x20 200x40'
    alert_rule_test:
      - eval_time: 25m
        alertname: ReadingsPipelineStalled
        exp_alerts: []
      - eval_time: 31m
        alertname: ReadingsPipelineStalled
        exp_alerts:
          - exp_labels:
              severity: critical
              team: platform
            exp_annotations:
              summary: "No readings ingested for 10 minutes"
              description: "Intake, Kafka or the workers are stalled; clinical alerts need fresh readings."
              runbook_url: "http://127.0.0.1:6066/runbooks/ReadingsPipelineStalled"

  # a steady trickle of dead letters for 2 h, then a burst of 60/min: a spike for that reason only.
  - interval: 1m
    input_series:
      - series: 'monitor_dead_letters_total{{reason="malformed_json", instance="w1"}}'
        values: '0+1x120 120+60x30'
      - series: 'monitor_dead_letters_total{{reason="invalid_unit", instance="w1"}}'
        values: '0+1x150'
    alert_rule_test:
      - eval_time: 110m
        alertname: DeadLetterRateSpike
        exp_alerts: []
      - eval_time: 135m
        alertname: DeadLetterRateSpike
        exp_alerts:
          - exp_labels:
              severity: warning
              team: platform
              reason: malformed_json
            exp_annotations:
              summary: "Dead letters with reason malformed_json at 1/s"
              description: "Over 3x the rate of the previous hour: a gateway may send a new format."
              runbook_url: "http://127.0.0.1:6066/runbooks/DeadLetterRateSpike"

  # a reason never seen before appears at 1/s from minute 60: a new reason, paged within minutes
  - interval: 1m
    input_series:
      - series: 'monitor_dead_letters_total{{reason="invalid_unit", instance="w1"}}'
        values: '_x60 0+60x30'
    alert_rule_test:
      - eval_time: 59m
        alertname: DeadLetterRateSpikeNewReason
        exp_alerts: []
      - eval_time: 70m
        alertname: DeadLetterRateSpikeNewReason
        exp_alerts:
          - exp_labels:
              severity: warning
              team: platform
              reason: invalid_unit
            exp_annotations:
              summary: "New dead-letter reason invalid_unit at 1/s"
              description: "Inputs are being rejected for a reason not seen in the previous hour."
              runbook_url: "http://127.0.0.1:6066/runbooks/DeadLetterRateSpikeNewReason"

  # an alert event waits for Alertmanager from minute 10 on: stalled once it waited over 2 min for 1 min
  - interval: 1m
    input_series:
      - series: 'monitor_notifier_oldest_unaccepted_seconds{{instance="n1"}}'
        values: '0x10 60 120 180 240 300 360'
    alert_rule_test:
      - eval_time: 12m
        alertname: AlertDeliveryStalled
        exp_alerts: []
      - eval_time: 14m
        alertname: AlertDeliveryStalled
        exp_alerts:
          - exp_labels:
              severity: critical
              team: platform
            exp_annotations:
              summary: "Clinical alerts are not reaching Alertmanager"
              description: "An alert event waited over 2 minutes: check Alertmanager and the notifier's log."
              runbook_url: "http://127.0.0.1:6066/runbooks/AlertDeliveryStalled"

  # the notifier is scraped up for 5 minutes, then down: paged after 2 minutes of absence
  - interval: 1m
    input_series:
      - series: 'up{{job="notifier", instance="n1"}}'
        values: '1x5 0x10'
    alert_rule_test:
      - eval_time: 6m
        alertname: AlertNotifierDown
        exp_alerts: []
      - eval_time: 9m
        alertname: AlertNotifierDown
        exp_alerts:
          - exp_labels:
              severity: critical
              team: platform
            exp_annotations:
              summary: "No alert notifier is running"
              description: "Clinical alerts stay on the alerts topic and reach nobody until a notifier runs."
              runbook_url: "http://127.0.0.1:6066/runbooks/AlertNotifierDown"
"""


@needs_promtool
def test_prometheus_rules_fire_on_synthetic_series(tmp_path: Path) -> None:
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(textwrap.dedent(PROMTOOL_TESTS.format(rules=RULES)))
    result = _run(str(promtool), "test", "rules", str(test_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


alertmanager_bin = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.mark.skipif(alertmanager_bin is None, reason="alertmanager not installed")
def test_real_alertmanager_accepts_client_payload_and_acks_per_recipient(tmp_path: Path) -> None:
    """The real Alertmanager with deploy/alertmanager.yml: the client's alerts are accepted and routed,
    and one clinician's silence (ack) leaves the other recipient's copy active."""
    import asyncio
    import json
    import socket
    import time
    import urllib.request
    from datetime import UTC, datetime, timedelta

    from monitor.alerts import AlertConfig, AlertEngine, AlertmanagerClient
    from monitor.contract.models import Patient
    from monitor.intake.canonical import CanonicalReading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(alertmanager_bin),
            f"--config.file={AM_CONFIG}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # wait until ready (up to ~10 s); readiness, not a timing assertion
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("alertmanager did not become ready")

        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        eng = AlertEngine(AlertConfig(), clock=lambda: t0)
        eng.on_patient(Patient(patient_id="p1", region="north", deprivation_quintile=1, age_band="80+"))
        events = eng.on_readings(
            [CanonicalReading("r1", "p1", "d1", None, "spo2", 90.0, None, None, "%", "%", None, t0, "native")]
        )
        client = AlertmanagerClient(base, recipients=lambda e: ["dr-a", "nurse-b"])

        async def post() -> int:
            async with client:
                return await client.post(events)

        assert asyncio.run(post()) == 2

        silence = {
            "matchers": [
                {"name": "recipient", "value": "dr-a", "isRegex": False, "isEqual": True},
                {"name": "patient_id", "value": "p1", "isRegex": False, "isEqual": True},
                {"name": "rule", "value": "spo2_very_low", "isRegex": False, "isEqual": True},
            ],
            "startsAt": (t0 - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "endsAt": (t0 + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
            "createdBy": "dr-a",
            "comment": "ack",
        }
        req = urllib.request.Request(
            f"{base}/api/v2/silences",
            data=json.dumps(silence).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

        states: dict[str, str] = {}
        for _ in range(100):  # silences apply asynchronously to the alert list
            with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as r:
                alerts = json.load(r)
            states = {a["labels"]["recipient"]: a["status"]["state"] for a in alerts}
            if states.get("dr-a") == "suppressed":
                break
            time.sleep(0.1)
        assert states == {"dr-a": "suppressed", "nurse-b": "active"}
        assert {a["receivers"][0]["name"] for a in alerts} == {"clinical-critical-care-team"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
