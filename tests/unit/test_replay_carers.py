"""Replay adds the carers' ledger and the fragile-network flags (hand-computed cases)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from monitor.replay import replay

MONDAY = datetime(2026, 10, 26, 8, tzinfo=UTC)  # ISO week 2026-W44


def patient(pid: str) -> str:
    return json.dumps({"type": "patient", "patient_id": pid, "region": "north", "deprivation_quintile": 1,
                       "age_band": "85+"})


def activity(aid: str, pid: str, carer: str, t: datetime, minutes: float) -> str:
    return json.dumps({"type": "carer_activity", "activity_id": aid, "patient_id": pid, "carer_id": carer,
                       "kind": "personal_care", "started_at": t.isoformat(), "duration_minutes": minutes})


def link(pid: str, carer: str, action: str, t: datetime) -> str:
    return json.dumps({"type": "care_link", "patient_id": pid, "carer_id": carer, "relationship": "child",
                       "action": action, "effective_at": t.isoformat()})


def week_of_care(total: int) -> list[str]:
    """``total`` minutes by one carer over three patients and five days of one ISO week."""
    lines = [patient(p) for p in ("P1", "P2", "P3")]
    per = [420, 420, 420, 420, total - 4 * 420]  # Mon..Fri
    for day, minutes in enumerate(per):
        third = minutes / 3
        for k, pid in enumerate(("P1", "P2", "P3")):
            lines.append(activity(f"a{day}{k}", pid, "C1", MONDAY + timedelta(days=day, hours=k), third))
    return lines


@pytest.mark.parametrize(("total", "overloaded"), [(2100, True), (2099, False)])
def test_overload_at_35_hours_a_week(total, overloaded):
    out = replay(week_of_care(total))
    carer = out["carers"]["C1"]
    assert carer["minutes_by_week"]["2026-W44"] == pytest.approx(total)
    assert ("overloaded:2026-W44" in carer["flags"]) is overloaded


def test_a_redelivered_activity_counts_once():
    lines = week_of_care(2099)
    out = replay(lines + [lines[-1]])
    assert "overloaded:2026-W44" not in out["carers"]["C1"]["flags"]


@pytest.mark.parametrize(("top", "other", "flagged"), [(90, 10, True), (89, 11, False)])
def test_single_point_of_failure_at_90_percent(top, other, flagged):
    lines = [patient("P1"), activity("a1", "P1", "C1", MONDAY, top),
             activity("a2", "P1", "C2", MONDAY, other)]
    flags = replay(lines)["patients"]["P1"]["flags"]
    assert ("single_point_of_failure" in flags) is flagged


@pytest.mark.parametrize(("days_before", "lost"), [(13, True), (14, False)])
def test_network_lost_within_14_days(days_before, lost):
    as_of = MONDAY + timedelta(days=20)
    left = as_of - timedelta(days=days_before)
    lines = [patient("P1"), link("P1", "C1", "join", MONDAY - timedelta(days=60)),
             link("P1", "C1", "leave", left),
             json.dumps({"type": "reading", "reading_id": "r", "patient_id": "P1", "device_id": "d",
                         "kind": "spo2", "value": 97, "unit": "%", "measured_at": as_of.isoformat()})]
    flags = replay(lines)["patients"]["P1"]["flags"]
    assert ("network_lost" in flags) is lost


def test_ledger_cli_exports_the_week(tmp_path):
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(week_of_care(2100)) + "\n")
    out = subprocess.run([sys.executable, "-m", "monitor", "carers", "ledger", "--week", "2026-W44",
                          "--from", str(path), "--format", "json"],
                         capture_output=True, text=True, check=True)
    (row,) = json.loads(out.stdout)
    assert (row["carer_id"], row["minutes"], row["hours"], row["patients"], row["overload"]) == (
        "C1", 2100, 35.0, 3, True)
    assert row["activities_by_kind"] == {"personal_care": 15}
