"""The offline replay driver: output shape, rejections, as-of, batching and order independence."""

from __future__ import annotations

import io
import json
import random
import sys
from datetime import UTC, datetime

import pytest

from monitor.replay import replay

LINES: list[dict] = [
    {"type": "patient", "patient_id": "p1", "region": "north", "deprivation_quintile": 1,
     "age_band": "65-74", "monitoring_plan": {"glucose": 2}},
    {"type": "patient", "patient_id": "p2", "region": "south", "deprivation_quintile": 5,
     "age_band": "75+", "monitoring_plan": {"glucose": 1, "blood_pressure": 1}},
    {"type": "patient", "patient_id": "p3", "region": "south", "deprivation_quintile": 3,
     "age_band": "75+"},
    {"type": "carer_activity", "activity_id": "a1", "patient_id": "p1", "carer_id": "c1",
     "kind": "visit", "started_at": "2025-01-30T10:00:00Z", "duration_minutes": 45},
    {"type": "carer_activity", "activity_id": "a1", "patient_id": "p1", "carer_id": "c1",
     "kind": "visit", "started_at": "2025-01-30T10:00:00Z", "duration_minutes": 45},  # re-delivery
    {"type": "carer_activity", "activity_id": "a2", "patient_id": "p2", "carer_id": "c2",
     "kind": "phone_call", "started_at": "2025-01-10T09:00:00+01:00", "duration_minutes": 10},
    {"type": "care_link", "patient_id": "p2", "carer_id": "c2", "relationship": "child",
     "action": "join", "effective_at": "2025-01-01T00:00:00Z"},
    {"type": "reading", "reading_id": "r1", "patient_id": "p1", "device_id": "d1",
     "kind": "glucose", "value": 5.5, "unit": "mmol/L", "measured_at": "2025-01-31T08:00:00Z"},
    {"type": "gateway_batch", "gateway_id": "g1", "sent_at": "2025-01-31T09:00:00Z", "readings": [
        {"reading_id": "r2", "patient_id": "p1", "device_id": "d1", "kind": "glucose",
         "value": 6.1, "unit": "mmol/L", "measured_at": "2025-01-29T08:00:00Z"},
        {"reading_id": "r1", "patient_id": "p1", "device_id": "d1", "kind": "glucose",
         "value": 5.5, "unit": "mmol/L", "measured_at": "2025-01-31T08:00:00Z"},
    ]},
]
BAD = [
    "not json",
    '{"type": "nope"}',
    '{"type": "carer_activity", "activity_id": "x", "patient_id": "p1", "carer_id": "c1", '
    '"kind": "visit", "started_at": "2025-01-30T10:00:00", "duration_minutes": 5}',
    '{"type": "carer_activity", "activity_id": "x", "patient_id": "p1", "carer_id": "c1", '
    '"kind": "visit", "started_at": "2025-01-30T10:00:00Z", "duration_minutes": 0}',
    "[1, 2]",
]


def ndjson() -> list[str]:
    return [json.dumps(line) for line in LINES]


def test_replay_output_shape_and_values():
    out = replay([*ndjson(), *BAD, "", "  "])
    assert out["as_of"] == "2025-01-31T08:00:00Z"
    assert out["counts"] == {
        "processed": len(LINES),
        "rejected": {"malformed_json": 1, "naive_timestamp": 1, "invalid_duration": 1,
                     "not_an_object": 1, "unknown_type": 1},
    }
    assert out["patients"] == {
        # one active carer does all the care: single_point_of_failure too (monitor.carers)
        "p1": {"flags": ["single_carer", "single_point_of_failure"], "active_carers_28d": 1,
               "care_minutes_7d": 45.0,
               "contact_days_7d": 1, "readings_expected_7d": 14.0, "readings_received_7d": 2},
        "p2": {"flags": ["single_carer", "single_point_of_failure", "support_lapsed"], "active_carers_28d": 1,
               "care_minutes_7d": 0.0, "contact_days_7d": 0, "readings_expected_7d": 14.0,
               "readings_received_7d": 0},
        "p3": {"flags": ["no_support_network"], "active_carers_28d": 0, "care_minutes_7d": 0.0,
               "contact_days_7d": 0, "readings_expected_7d": 0.0, "readings_received_7d": 0},
    }
    assert out["groups"]["region"]["south"] == {
        "patients": 2, "pct_covered": 0.0, "pct_no_support_network": 50.0,
        "mean_care_minutes_per_week": 0.0, "pct_readings_received": 0.0,
    }
    assert out["groups"]["deprivation_quintile"]["3"]["pct_readings_received"] is None
    assert set(out["equity"]) == {"region", "deprivation_quintile", "age_band", "individual"}
    assert set(out["equity"]["deprivation_quintile"]) == {
        "pct_covered", "pct_no_support_network", "mean_care_minutes_per_week",
        "pct_readings_received"}
    assert out["equity"]["deprivation_quintile"]["pct_covered"]["D"] == -100.0
    json.dumps(out, allow_nan=False)  # serialisable, no NaN


def test_replay_is_independent_of_line_order_batching_and_bytes_or_str():
    """State, flags, groups and equity do not depend on the order of the lines; alerts do (the
    engine judges readings in arrival order and the timers tick at event-time steps of the lines
    as read, as live), but never on the batching or on bytes versus text."""
    lines = ndjson()
    base = replay(lines)
    for seed in range(3):
        shuffled = list(lines)
        random.Random(seed).shuffle(shuffled)
        got = replay(shuffled, batch_lines=2)
        got.pop("alerts")
        assert got == {k: v for k, v in base.items() if k != "alerts"}
    assert replay([line.encode() for line in lines], batch_lines=1) == base
    assert replay(lines, batch_lines=3) == base


def test_replay_as_of_in_the_past_leaves_out_later_days():
    out = replay(ndjson(), as_of=datetime(2025, 1, 29, 23, tzinfo=UTC))
    assert out["as_of"] == "2025-01-29T23:00:00Z"
    assert out["counts"]["processed"] == len(LINES)
    p1 = out["patients"]["p1"]
    assert p1["readings_received_7d"] == 1  # r2 on the 29th only
    assert p1["active_carers_28d"] == 0  # the visit on the 30th is after the as-of day
    assert p1["flags"] == ["no_support_network"]


def test_replay_as_of_in_the_future_ages_the_windows():
    out = replay(ndjson(), as_of=datetime(2025, 3, 1, tzinfo=UTC))
    assert all(p["care_minutes_7d"] == 0 for p in out["patients"].values())
    assert out["patients"]["p1"]["flags"] == ["no_support_network", "support_lapsed"]


def test_replay_rejects_a_naive_as_of_and_handles_an_empty_input():
    with pytest.raises(ValueError):
        replay(ndjson(), as_of=datetime(2025, 1, 1))
    out = replay([])
    assert out["as_of"] is None
    assert out["patients"] == {}
    assert out["counts"] == {"processed": 0, "rejected": {}}
    assert out["equity"]["individual"]["care_minutes_7d"]["gini"] is None


def test_replay_shows_progress_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    lines = [line for line in ndjson() if line.strip()]
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    replay(lines, progress=True, total=len(lines))
    assert "replay: 100%" in err.getvalue()  # the bar ends at every line
    log = io.StringIO()  # not a terminal (a log, CI): no bar
    monkeypatch.setattr(sys, "stderr", log)
    replay(lines, progress=True, total=len(lines))
    assert log.getvalue() == ""
