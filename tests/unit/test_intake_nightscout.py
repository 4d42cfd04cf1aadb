"""Nightscout entries -> canonical glucose (fixture: tests/data/intake/nightscout/entries.json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.intake import nightscout
from monitor.intake.canonical import CanonicalReading
from monitor.intake.native import Rejection

FIXTURE = Path(__file__).parent.parent / "data" / "intake" / "nightscout" / "entries.json"
RECEIVED = datetime(2024, 3, 5, 6, 50, tzinfo=UTC)  # just after the last entry (06:45Z)
MIDNIGHT = datetime(2024, 3, 5, tzinfo=UTC)
MG = 18.016


def decode(obj: Any, patient_id: str | None = "pat-0042") -> list[CanonicalReading | Rejection]:
    return nightscout.decode(obj, patient_id=patient_id, received_at=RECEIVED)


def entry(**fields: Any) -> dict[str, Any]:
    base = {"_id": "65e6aa", "type": "sgv", "sgv": 120, "date": 1709620800000, "device": "xDrip"}
    return {**base, **fields}


def by_id() -> dict[str, CanonicalReading | Rejection]:
    entries = json.loads(FIXTURE.read_bytes())
    results = decode(entries)
    assert len(results) == len(entries) == 13
    return {e["_id"]: r for e, r in zip(entries, results, strict=True)}


def test_fixture_accepted_readings_in_mmol_l() -> None:
    results = by_id()
    expected_mg_dl = {1: 104, 2: 98, 3: 91, 4: 83, 5: 70, 6: 54, 9: 180, 10: 250}
    for i, mg_dl in expected_mg_dl.items():
        r = results[f"65e6{i:020x}"]
        assert isinstance(r, CanonicalReading), (i, r)
        assert r.value == pytest.approx(mg_dl / MG, abs=1e-9)
        assert (r.kind, r.unit, r.original_unit, r.source) == ("glucose", "mmol/L", "mg/dL", "nightscout")
        assert r.bounded is None and r.patient_id == "pat-0042"
        assert r.device_id == "xDrip-DexcomG6" and r.reading_id == f"65e6{i:020x}"


def test_fixture_string_sgv_and_gap_keep_event_times() -> None:
    results = by_id()
    first, fifth, after_gap = (results[f"65e6{i:020x}"] for i in (1, 5, 6))
    assert isinstance(first, CanonicalReading) and isinstance(fifth, CanonicalReading)
    assert isinstance(after_gap, CanonicalReading)
    assert first.measured_at == MIDNIGHT  # "sgv": "104" (a string from an older uploader)
    assert fifth.measured_at == MIDNIGHT + timedelta(minutes=20)
    assert after_gap.measured_at - fifth.measured_at == timedelta(hours=6)
    assert first.late is True and after_gap.late is False


def test_fixture_low_high_sensor_error_mbg_and_cal() -> None:
    results = by_id()
    low = results[f"65e6{7:020x}"]
    assert isinstance(low, CanonicalReading)
    assert low.bounded == "low" and low.value == pytest.approx(40 / MG)
    error = results[f"65e6{8:020x}"]
    assert isinstance(error, Rejection) and error.reason == "sensor_error"
    high = results[f"65e6{11:020x}"]
    assert isinstance(high, CanonicalReading)
    assert high.bounded == "high" and high.value == pytest.approx(400 / MG)
    mbg = results["65e6" + "c" * 20]
    assert isinstance(mbg, CanonicalReading)
    assert mbg.value == pytest.approx(262 / MG) and mbg.bounded is None
    assert mbg.device_id is None  # "Contour Next One" is not an identifier: dropped, reading kept
    cal = results["65e6" + "d" * 20]
    assert isinstance(cal, Rejection) and cal.reason == "unsupported_format"


@pytest.mark.parametrize(
    ("sgv", "bounded", "mg_dl"),
    [
        (39, "low", 40),
        (40, "low", 40),
        ("39", "low", 40),
        (41, None, 41),
        (400, None, 400),
        (401, None, 401),  # FreeStyle Libre reports up to 500 mg/dL: real values
        (450, None, 450),
        (500, None, 500),
        (501, "high", 500),
        ({"sgv": 401, "device": "xDrip-DexcomG6"}, "high", 400),  # a Dexcom stops at 400
    ],
)
def test_sensor_range_edges(sgv: Any, bounded: str | None, mg_dl: float) -> None:
    [r] = decode(entry(**sgv) if isinstance(sgv, dict) else entry(sgv=sgv))
    assert isinstance(r, CanonicalReading)
    assert r.bounded == bounded
    assert r.value == pytest.approx(mg_dl / MG)


@pytest.mark.parametrize("sgv", [0, 1, 5, 9, 12, 38, 38.9, -3, "5"])
def test_sensor_error_codes(sgv: Any) -> None:
    [r] = decode(entry(sgv=sgv, direction="NOT COMPUTABLE"))
    assert isinstance(r, Rejection) and r.reason == "sensor_error"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"sgv": "abc"}, "invalid_value"),
        ({"sgv": None}, "missing_field"),
        ({"sgv": True}, "invalid_value"),
        ({"date": None, "dateString": None}, "missing_field"),
        ({"date": "yesterday"}, "invalid_timestamp"),
        ({"date": 10**20}, "invalid_timestamp"),
        ({"date": None, "dateString": "2024-03-05T06:00:00"}, "naive_timestamp"),
        ({"date": 1709625600000}, "future_timestamp"),  # 08:00Z, received 06:50Z
        ({"date": 1709620800}, "too_old"),  # epoch seconds, not milliseconds: 1970
        ({"type": "cal"}, "unsupported_format"),
        ({"type": "treatment"}, "unsupported_format"),
        ({"_id": "has space"}, "invalid_identifier"),
    ],
)
def test_rejections(fields: dict[str, Any], reason: str) -> None:
    [r] = decode(entry(**fields))
    assert isinstance(r, Rejection) and r.reason == reason, r


def test_date_string_when_no_epoch_and_v3_identifier() -> None:
    e = entry(date=None, dateString="2024-03-05T07:40:00.000+01:00", identifier="uuid-v3-1")
    [r] = decode(e)
    assert isinstance(r, CanonicalReading)
    assert r.measured_at == datetime(2024, 3, 5, 6, 40, tzinfo=UTC)
    assert r.reading_id == "uuid-v3-1"


def test_single_object_and_numeric_string_date() -> None:
    [r] = decode(entry(date="1709620800000"))
    assert isinstance(r, CanonicalReading)
    assert r.measured_at == datetime(2024, 3, 5, 6, 40, tzinfo=UTC)


def test_patient_comes_from_the_caller() -> None:
    [r] = decode(entry(), patient_id=None)
    assert isinstance(r, Rejection) and r.reason == "missing_patient"
    [r] = decode(entry(), patient_id="not valid!")
    assert isinstance(r, Rejection) and r.reason == "invalid_identifier"
    [r] = decode(entry(), patient_id="pat-7")
    assert isinstance(r, CanonicalReading) and r.patient_id == "pat-7"


def test_non_objects_and_bytes() -> None:
    assert [getattr(r, "reason", None) for r in decode([1, "x", None])] == ["not_an_object"] * 3
    assert decode([]) == []
    [r] = nightscout.decode_bytes(b"\xc3", patient_id="p", received_at=RECEIVED)
    assert isinstance(r, Rejection) and r.reason == "not_utf8"
