"""Replay adds every alert episode; boundaries of the rule table through the whole offline path."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from monitor.replay import replay

T0 = datetime(2026, 10, 1, 8, tzinfo=UTC)


def patient(pid: str = "P1", **extra: object) -> str:
    return json.dumps({"type": "patient", "patient_id": pid, "region": "north", "deprivation_quintile": 2,
                       "age_band": "65-74", "monitoring_plan": {}, **extra})


def reading(rid: str, kind: str, t: datetime, pid: str = "P1", **values: object) -> str:
    return json.dumps({"type": "reading", "reading_id": rid, "patient_id": pid, "device_id": "d",
                       "kind": kind, "measured_at": t.isoformat(), **values})


def carer(pid: str = "P1") -> list[str]:
    return [json.dumps({"type": "care_link", "patient_id": pid, "carer_id": "C1", "relationship": "child",
                        "action": "join", "effective_at": (T0 - timedelta(days=3)).isoformat()}),
            json.dumps({"type": "carer_activity", "activity_id": "a1", "patient_id": pid, "carer_id": "C1",
                        "kind": "visit", "started_at": (T0 - timedelta(days=1)).isoformat(),
                        "duration_minutes": 60})]


CASES = [
    ("glucose", {"value": 3.8, "unit": "mmol/L"}, "glucose_low"),
    ("glucose", {"value": 3.9, "unit": "mmol/L"}, None),
    ("glucose", {"value": 70, "unit": "mg/dL"}, "glucose_low"),  # 3.885 mmol/L
    ("glucose", {"value": 2.9, "unit": "mmol/L"}, "glucose_very_low"),
    ("glucose", {"value": 3.0, "unit": "mmol/L"}, "glucose_low"),
    ("glucose", {"value": 13.9, "unit": "mmol/L"}, None),
    ("glucose", {"value": 14.0, "unit": "mmol/L"}, "glucose_high"),
    ("glucose", {"value": 22.3, "unit": "mmol/L"}, "glucose_very_high"),
    ("body_temperature", {"value": 35.0, "unit": "Cel"}, "temperature_low"),
    ("body_temperature", {"value": 35.1, "unit": "Cel"}, None),
    ("body_temperature", {"value": 39.1, "unit": "Cel"}, "temperature_high"),
    ("body_temperature", {"value": 39.0, "unit": "Cel"}, None),
    ("spo2", {"value": 91, "unit": "%"}, "spo2_very_low"),
    ("spo2", {"value": 92, "unit": "%"}, "spo2_low"),
    ("spo2", {"value": 94, "unit": "%"}, None),
    ("heart_rate", {"value": 131, "unit": "/min"}, "heart_rate_very_high"),
    ("heart_rate", {"value": 130, "unit": "/min"}, "heart_rate_high"),
    ("respiratory_rate", {"value": 25, "unit": "/min"}, "respiratory_rate_high"),
    ("respiratory_rate", {"value": 24, "unit": "/min"}, None),
    ("blood_pressure", {"systolic": 90, "diastolic": 60, "unit": "mm[Hg]"}, "bp_systolic_low"),
    ("blood_pressure", {"systolic": 91, "diastolic": 60, "unit": "mm[Hg]"}, None),
    ("blood_pressure", {"systolic": 150, "diastolic": 120, "unit": "mm[Hg]"}, "bp_diastolic_high"),
]


@pytest.mark.parametrize(("kind", "values", "rule"), CASES)
def test_rule_boundaries_through_replay(kind, values, rule):
    lines = [patient(), *carer(), reading("r1", kind, T0, **values)]
    out = replay(lines)
    rules = {a["rule"] for a in out["alerts"] if a["status"] == "firing"}
    assert rules == ({rule} if rule else set())


def test_unsupported_patient_is_escalated_and_the_next_normal_reading_resolves():
    lines = [patient(), reading("r1", "glucose", T0, value=2.8, unit="mmol/L")]
    (episode,) = replay(lines)["alerts"]
    assert (episode["rule"], episode["severity"], episode["unsupported"]) == (
        "glucose_very_low", "emergency", True)
    assert episode["status"] == "firing" and episode["value"] == pytest.approx(2.8)
    # a second batch with a normal reading resolves the same episode
    lines += [reading("r2", "glucose", T0 + timedelta(minutes=30), value=6.0, unit="mmol/L")]
    out = replay(lines, batch_lines=2)
    (resolved,) = out["alerts"]
    assert resolved["alert_id"] == episode["alert_id"]
    assert resolved["status"] == "resolved" and resolved["resolved_at"] == "2026-10-01T08:30:00Z"


def test_supported_patient_is_not_escalated():
    lines = [patient(), *carer(), reading("r1", "glucose", T0, value=2.8, unit="mmol/L")]
    (episode,) = replay(lines)["alerts"]
    assert (episode["severity"], episode["unsupported"]) == ("critical", False)


def test_duplicate_and_older_readings_give_one_episode():
    low = reading("r1", "glucose", T0, value=2.8, unit="mmol/L")
    older_low = reading("r0", "glucose", T0 - timedelta(hours=2), value=2.5, unit="mmol/L")
    out = replay([patient(), *carer(), low, low, older_low], batch_lines=1)
    assert len(out["alerts"]) == 1


def test_missed_readings_from_the_clock_at_the_as_of_time():
    # every 6 h: missed after 12 h without one; registered just before the first reading (before
    # the registration, the timers - ticking hourly on event time - see no plan to miss)
    plan = {"monitoring_plan": {"glucose": 4}, "registered_at": (T0 - timedelta(hours=1)).isoformat()}
    lines = [patient(**plan), *carer(), reading("r1", "glucose", T0, value=6.0, unit="mmol/L")]
    assert replay(lines, as_of=T0 + timedelta(hours=11))["alerts"] == []
    (missed,) = replay(lines, as_of=T0 + timedelta(hours=13))["alerts"]
    assert (missed["rule"], missed["kind"], missed["status"]) == ("missed_readings", "glucose", "firing")
    assert missed["opened_at"] == "2026-10-01T20:00:00Z"


def test_replay_does_not_depend_on_batch_lines() -> None:
    """Issue 13: one simulated fortnight replayed in batches of 50 / 3,000 / 10,000 lines opened
    736 / 479 / 201 alerts (the engine skipped readings older than the newest of their batch, and
    the timers ticked at batch ends). Now every output is identical for any batch size."""
    import io

    from monitor.simulate import SimConfig, write_ndjson

    buf = io.StringIO()
    write_ndjson(SimConfig(patients=60, days=10, seed=3, end=datetime(2026, 11, 1, tzinfo=UTC)), buf)
    lines = buf.getvalue().splitlines(keepends=True)
    want = replay(iter(lines), batch_lines=10_000)
    assert len(want["alerts"]) > 50 and {a["rule"] for a in want["alerts"]} > {"missed_readings"}
    for n in (1, 7, 50):
        assert replay(iter(lines), batch_lines=n) == want, n
