"""Open mHealth data points -> canonical readings (fixtures: tests/data/intake/openmhealth)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.intake import openmhealth
from monitor.intake.canonical import CanonicalReading
from monitor.intake.native import Rejection

FIXTURES = Path(__file__).parent.parent / "data" / "intake" / "openmhealth"
RECEIVED = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def load(path: str) -> dict[str, Any]:
    return json.loads((FIXTURES / path).read_bytes())


def decode_one(point: Any, patient_id: str | None = None) -> CanonicalReading | Rejection:
    [result] = openmhealth.decode(point, received_at=RECEIVED, patient_id=patient_id)
    return result


def utc(hour: int, minute: int) -> datetime:
    return datetime(2024, 3, 5, hour, minute, tzinfo=UTC)


# name -> (kind, value, systolic, diastolic, original unit, measured_at UTC)
PASSING: dict[str, tuple[str, float | None, float | None, float | None, str, datetime]] = {
    "blood-glucose-mgdl.json": ("glucose", 54 / 18.016, None, None, "mg/dL", utc(6, 10)),
    "blood-glucose-mmol.json": ("glucose", 13.9, None, None, "mmol/L", utc(9, 0)),
    "blood-pressure.json": ("blood_pressure", None, 160.0, 95.0, "mmHg", utc(7, 30)),
    "heart-rate-no-user.json": ("heart_rate", 131.0, None, None, "beats/min", utc(10, 20)),
    "oxygen-saturation.json": ("spo2", 91.0, None, None, "%", utc(10, 21)),
    "body-temperature-f.json": ("body_temperature", 35.0, None, None, "F", utc(11, 0)),
    "body-temperature-k.json": ("body_temperature", 37.0, None, None, "K", utc(11, 0)),
    "body-weight-lb.json": ("body_weight", 154 * 0.45359237, None, None, "lb", utc(7, 0)),
    "respiratory-rate.json": ("respiratory_rate", 25.0, None, None, "breaths/min", utc(11, 40)),
}

FAILING = {
    "descriptive-statistic.json": "aggregate_not_spot",
    "unit-not-allowed.json": "invalid_unit",
    "missing-time-frame.json": "missing_field",
    "naive-date-time.json": "naive_timestamp",
    "unsupported-schema.json": "unsupported_format",
    "value-as-string.json": "invalid_value",
    "implausible-weight.json": "implausible_value",
    "date-only.json": "invalid_timestamp",
    "missing-diastolic.json": "missing_field",
}


def test_every_fixture_is_covered() -> None:
    assert {p.name for p in (FIXTURES / "should-pass").iterdir()} == set(PASSING)
    assert {p.name for p in (FIXTURES / "should-fail").iterdir()} == set(FAILING)


@pytest.mark.parametrize("name", sorted(PASSING))
def test_should_pass(name: str) -> None:
    kind, value, systolic, diastolic, unit, measured_at = PASSING[name]
    point = load(f"should-pass/{name}")
    r = decode_one(point, patient_id="pat-fallback")
    assert isinstance(r, CanonicalReading), r
    assert r.kind == kind and r.original_unit == unit and r.measured_at == measured_at
    assert r.value == (None if value is None else pytest.approx(value, abs=1e-9))
    assert (r.systolic, r.diastolic) == (systolic, diastolic)
    assert r.reading_id == point["header"]["id"]
    assert r.patient_id == point["header"].get("user_id", "pat-fallback")
    assert r.source == "openmhealth" and r.original_code == f"omh:{point['header']['schema_id']['name']}"


@pytest.mark.parametrize("name", sorted(FAILING))
def test_should_fail(name: str) -> None:
    r = decode_one(load(f"should-fail/{name}"), patient_id="pat-fallback")
    assert isinstance(r, Rejection) and r.reason == FAILING[name], r


def test_units_are_canonical() -> None:
    units = {}
    for name in PASSING:
        r = decode_one(load(f"should-pass/{name}"), patient_id="p")
        assert isinstance(r, CanonicalReading)
        units[r.kind] = r.unit
    assert units == {
        "glucose": "mmol/L",
        "blood_pressure": "mm[Hg]",
        "heart_rate": "/min",
        "spo2": "%",
        "body_temperature": "Cel",
        "body_weight": "kg",
        "respiratory_rate": "/min",
    }


def test_patient_from_header_then_parameter() -> None:
    point = load("should-pass/heart-rate-no-user.json")
    r = decode_one(point)
    assert isinstance(r, Rejection) and r.reason == "missing_patient"
    point["header"]["acquisition_provenance"]["user_id"] = "pat-prov"
    r = decode_one(point, patient_id="pat-param")
    assert isinstance(r, CanonicalReading) and r.patient_id == "pat-prov"


def test_schema_id_as_string_and_bare_body() -> None:
    point = load("should-pass/heart-rate-no-user.json")
    point["header"]["schema_id"] = "omh:heart-rate:2.0"
    r = decode_one(point, patient_id="p")
    assert isinstance(r, CanonicalReading) and r.value == 131.0
    bare = {"body": point["body"]}
    r = decode_one(bare, patient_id="p")
    assert isinstance(r, CanonicalReading) and r.kind == "heart_rate" and r.reading_id is None


def test_structure_errors() -> None:
    assert decode_one([1]).reason == "not_an_object"  # type: ignore[union-attr]
    assert decode_one({"header": {}, "body": []}).reason == "unsupported_format"  # type: ignore[union-attr]
    assert decode_one({"header": {}, "body": {"x": 1}}).reason == "unsupported_format"  # type: ignore[union-attr]
    point = load("should-pass/blood-pressure.json")
    point["header"]["id"] = {"uuid": "x"}
    assert decode_one(point).reason == "invalid_identifier"  # type: ignore[union-attr]
    assert openmhealth.decode([], received_at=RECEIVED) == []
