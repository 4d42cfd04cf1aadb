"""HL7 FHIR R4 Observations and Bundles -> canonical readings (fixtures in tests/data/intake/fhir)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.intake import fhir
from monitor.intake.canonical import CanonicalReading
from monitor.intake.native import Rejection

FIXTURES = Path(__file__).parent.parent / "data" / "intake" / "fhir"
RECEIVED = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_bytes())


def one(obj: Any, **kw: Any) -> CanonicalReading | Rejection:
    results = fhir.decode(obj, received_at=RECEIVED, **kw)
    assert len(results) == 1
    return results[0]


def ok(result: CanonicalReading | Rejection) -> CanonicalReading:
    assert isinstance(result, CanonicalReading), result
    return result


def rejected(result: CanonicalReading | Rejection, reason: str) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    return result


def test_blood_pressure_panel_with_components() -> None:
    c = ok(one(load("bp-panel.json")))
    assert (c.kind, c.value, c.systolic, c.diastolic, c.unit) == (
        "blood_pressure",
        None,
        142.0,
        88.0,
        "mm[Hg]",
    )
    assert c.reading_id == "bp-home-0305" and c.patient_id == "pat-0042"
    assert c.original_code == "http://loinc.org|85354-9"
    assert c.original_unit == "mm[Hg]"
    assert c.measured_at == datetime(2024, 3, 5, 8, 30, tzinfo=UTC)
    assert c.late is True  # 3.5 h before receipt
    assert c.source == "fhir" and c.device_id is None


def test_heart_rate_uses_ucum_code_not_display() -> None:
    c = ok(one(load("heart-rate.json")))
    assert (c.kind, c.value, c.unit, c.original_unit) == ("heart_rate", 48.0, "/min", "/min")
    assert c.measured_at == datetime(2024, 3, 5, 11, 15, tzinfo=UTC) and c.late is False


def test_heart_rate_falls_back_to_unit_display() -> None:
    obs = load("heart-rate.json")
    del obs["valueQuantity"]["code"]
    c = ok(one(obs))
    assert (c.value, c.unit, c.original_unit) == (48.0, "/min", "beats/minute")


def test_spo2_with_two_loinc_codes_and_mdc_and_device() -> None:
    c = ok(one(load("spo2.json")))
    assert (c.kind, c.value, c.unit) == ("spo2", 93.0, "%")
    assert c.original_code == "http://loinc.org|2708-6"
    assert c.device_id == "oximeter-19"
    assert c.measured_at == datetime(2024, 3, 5, 10, 0, tzinfo=UTC)


def test_glucose_mmol_with_effective_period() -> None:
    c = ok(one(load("glucose-mmol-period.json")))
    assert (c.kind, c.value, c.unit, c.original_unit) == ("glucose", 3.6, "mmol/L", "mmol/L")
    assert c.measured_at == datetime(2024, 3, 5, 6, 15, tzinfo=UTC)  # period start, not end/issued
    assert c.patient_id == "pat-0107"


def test_body_temperature_in_cel_with_negative_offset() -> None:
    c = ok(one(load("body-temperature.json")))
    assert (c.kind, c.value, c.unit) == ("body_temperature", 38.4, "Cel")
    assert c.measured_at == datetime(2024, 3, 5, 11, 5, tzinfo=UTC)  # 06:05-05:00


def test_body_weight_in_pounds() -> None:
    c = ok(one(load("body-weight-lb.json")))
    assert c.kind == "body_weight" and c.unit == "kg" and c.original_unit == "[lb_av]"
    assert c.value == pytest.approx(83.91458845, abs=1e-8)
    assert c.original_code == "http://loinc.org|29463-7"


def test_phd_mdc_only_glucose_with_device_and_gateway() -> None:
    c = ok(one(load("phd-glucose-mdc.json")))
    assert c.kind == "glucose"
    assert c.original_code == "urn:iso:std:iso:11073:10101|160368"
    assert c.value == pytest.approx(101 / 18.016) and c.original_unit == "mg/dL"
    assert c.device_id == "glucometer-e3d4e5f6a7b8c9d0"
    assert c.gateway_id == "phg-a1b2c3d4e5f60708"
    assert c.measured_at == datetime(2024, 3, 5, 6, 45, 12, tzinfo=UTC)


def test_transaction_bundle_per_observation() -> None:
    results = fhir.decode(load("phd-transaction-bundle.json"), received_at=RECEIVED)
    # Patient and Device entries are not readings; six Observations give six results.
    assert len(results) == 6
    bp = ok(results[0])
    assert (bp.systolic, bp.diastolic) == (128.0, 79.0)
    assert bp.reading_id is None  # PHD observations may have no id
    assert bp.patient_id == "pat-0311"  # urn:uuid subject resolved to the Patient entry's id
    assert bp.device_id == "BP-E3-D4-E5-F6"  # Device entry without id: its identifier
    assert bp.original_code == "urn:iso:std:iso:11073:10101|150020"
    rejected(results[1], "withdrawn_status")
    pulse = ok(results[2])
    assert (pulse.kind, pulse.value, pulse.original_unit) == ("heart_rate", 74.0, "{beat}/min")
    rejected(results[3], "unsupported_code")
    rejected(results[4], "naive_timestamp")
    # 112 "mmol/L" is a mg/dL value with the wrong unit: caught by plausibility
    rejected(results[5], "implausible_value")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.update(status="cancelled"), "withdrawn_status"),
        (lambda o: o.update(effectiveDateTime="2024-03-05T07:00:00"), "naive_timestamp"),
        (lambda o: o.update(effectiveDateTime="2024-03"), "invalid_timestamp"),  # a month: too coarse
        (lambda o: o.update(effectiveDateTime="yesterday"), "invalid_timestamp"),
        (lambda o: o.pop("effectiveDateTime"), "missing_field"),
        (lambda o: o.update(effectiveDateTime="2024-03-05T12:30:00Z"), "future_timestamp"),
        (lambda o: o.update(effectiveDateTime="2023-12-01T12:00:00Z"), "too_old"),
        (lambda o: o["valueQuantity"].update(code="kg", unit="kg"), "invalid_unit"),
        (lambda o: o["valueQuantity"].update(value="48"), "invalid_value"),
        (lambda o: o["valueQuantity"].update(value=480), "implausible_value"),
        (lambda o: o.pop("valueQuantity"), "missing_field"),
        (
            lambda o: o.update(code={"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}),
            "unsupported_code",
        ),
        (lambda o: o.update(code={"text": "pulse"}), "unsupported_code"),
        (
            lambda o: o["code"]["coding"].append({"system": "urn:iso:std:iso:11073:10101", "code": "150456"}),
            "ambiguous_code",
        ),
        (lambda o: o.pop("subject"), "missing_patient"),
        (lambda o: o.update(subject={"reference": "Patient/has space"}), "invalid_identifier"),
        (lambda o: o.update(id="x" * 200), "invalid_identifier"),
        (lambda o: o.update(resourceType="Condition"), "unsupported_format"),
    ],
)
def test_heart_rate_variants_rejected(mutate: Any, reason: str) -> None:
    obs = copy.deepcopy(load("heart-rate.json"))
    mutate(obs)
    rejected(one(obs), reason)


def test_subject_fallback_parameter_and_absolute_reference() -> None:
    obs = load("heart-rate.json")
    del obs["subject"]
    assert ok(one(obs, patient_id="pat-9")).patient_id == "pat-9"
    obs["subject"] = {"reference": "https://fhir.example.org/r4/Patient/pat-77/_history/3"}
    assert ok(one(obs, patient_id="pat-9")).patient_id == "pat-77"


def test_missing_id_gives_none_and_bad_device_is_dropped() -> None:
    obs = load("spo2.json")
    del obs["id"]
    assert ok(one(obs)).reading_id == obs["identifier"][0]["value"]  # no id: the business identifier
    del obs["identifier"]
    obs["device"] = {"reference": "#contained-oximeter"}
    c = ok(one(obs))
    assert c.reading_id is None and c.device_id is None
    assert c.dedup_key[0] == "content"


def test_bp_missing_or_bad_component() -> None:
    obs = load("bp-panel.json")
    no_dia = copy.deepcopy(obs)
    no_dia["component"] = no_dia["component"][:1]
    assert rejected(one(no_dia), "missing_field").detail == "component.diastolic: missing"
    kpa = copy.deepcopy(obs)
    kpa["component"][0]["valueQuantity"].update(code="kPa", unit="kPa")
    rejected(one(kpa), "invalid_unit")
    swapped = copy.deepcopy(obs)
    swapped["component"][0]["valueQuantity"]["value"] = 70
    rejected(one(swapped), "implausible_value")


def test_bundle_odd_entries_and_non_fhir() -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"fullUrl": "x"}, 3, {"resource": load("heart-rate.json")}]}
    results = fhir.decode(bundle, received_at=RECEIVED)
    assert [getattr(r, "reason", "ok") for r in results] == ["missing_field", "missing_field", "ok"]
    assert fhir.decode({"resourceType": "Bundle"}, received_at=RECEIVED) == []
    rejected(one({"resourceType": "Patient"}), "unsupported_format")
    rejected(one("Observation"), "not_an_object")
    assert fhir.decode_bytes(b"\x00{", received_at=RECEIVED)[0].reason == "malformed_json"  # type: ignore[union-attr]
