"""Public sample documents that gateways really send (FHIR specification, HL7 PHD IG, a Sensotrend
CGM batch Bundle, Open mHealth and IEEE 1752 samples) -> canonical readings.

The corpus is the shared ``realdata`` folder beside the checkout (provenance, blob ids and
SHA-256 in its ``SOURCES.md``; ``MONITOR_REALDATA`` points elsewhere). The expected readings are
written from the documents and the standards (value and unit as sent, converted with UCUM's
glucose factor 18.016 mg/dL per mmol/L; times converted to UTC), not from the decoder's output.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.intake.canonical import CanonicalReading
from monitor.intake.formats import decode_items
from monitor.intake.native import Rejection

ROOT = Path(__file__).resolve().parents[2]
REALDATA = Path(os.environ.get("MONITOR_REALDATA", ROOT.parent / "shared" / "realdata"))
pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"no realdata corpus at {REALDATA}")
MG = 18.016

# file, format, patient (for documents without one), [(kind, value in canonical unit, measured_at UTC,
# patient)] or a rejection reason
GLUCOSE_99_AT = ("glucose", 99 / MG, "2025-01-09T00:07:48Z", "patientExample-1")  # 99 mg/dL at 19:07:48-05:00
CASES = [
    # LOINC 14743-9: glucose [moles/volume] in capillary blood by glucometer (sent in mg/dL)
    ("derived/fhir-glucose-loinc-14743-9-mmol.json", "fhir", None, [GLUCOSE_99_AT]),
    # MDC 160184: MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD, what IEEE 11073-10417 glucometers report
    ("derived/fhir-glucose-mdc-160184-capillary.json", "fhir", None, [GLUCOSE_99_AT]),
    # "MG/DL": UCUM's case-insensitive spelling of mg/dL
    ("derived/fhir-glucose-unit-MG-DL-upper.json", "fhir", None, [GLUCOSE_99_AT]),
    # a subject with only a display names nobody: never filed under the configured patient
    ("derived/fhir-glucose-subject-display-only.json", "fhir", "P-CONFIGURED", "missing_patient"),
    # Open mHealth's own schema sample is a bare body: 95 mg/dL at 2013-02-05T07:25:00Z
    ("openmhealth/omh-body-blood-glucose-4.0-date-time.json", "openmhealth", "P1",
     [("glucose", 95 / MG, "2013-02-05T07:25:00Z", "P1")]),
    # IEEE 1752 / JupyterHealth data point: 129 mg/dL at 2025-01-01T00:01:00-08:00
    ("openmhealth/jhe-omh_blood-glucose_4-0.json", "openmhealth", "P1",
     [("glucose", 129 / MG, "2025-01-01T08:01:00Z", "P1")]),
]


def _decode(name: str, fmt: str, patient: str | None, at: datetime) -> list[CanonicalReading | Rejection]:
    return decode_items((REALDATA / name).read_bytes(), fmt=fmt, patient_id=patient, received_at=at)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.mark.parametrize(("name", "fmt", "patient", "expected"), CASES, ids=[c[0] for c in CASES])
def test_public_documents_decode_as_the_standards_say(name, fmt, patient, expected) -> None:
    refused = isinstance(expected, str)
    received = _utc("2025-01-09T00:10:00Z") if refused else _utc(expected[0][2]) + timedelta(minutes=1)
    results = _decode(name, fmt, patient, received)
    if isinstance(expected, str):
        assert [getattr(r, "reason", None) for r in results] == [expected]
        return
    assert all(isinstance(r, CanonicalReading) for r in results), results
    got = [(r.kind, r.value, r.measured_at, r.patient_id) for r in results]
    assert [(k, pytest.approx(v, rel=1e-12), _utc(t), p) for k, v, t, p in expected] == got


def test_ieee_1752_header_uuid_is_the_reading_id() -> None:
    at = _utc("2025-01-01T08:02:00Z")
    (r,) = _decode("openmhealth/jhe-omh_blood-glucose_4-0.json", "openmhealth", "P1", at)
    assert isinstance(r, CanonicalReading) and r.reading_id == "aaaa1234-1a2b-3c4d-5e6f-000000000001"


def test_every_cgm_reading_of_the_sensotrend_batch_bundle_is_accepted() -> None:
    """646 Observations: 637 CGM glucose (LOINC 14745-4, glucose moles/volume in body fluid, mmol/L)
    from 2.78 to 14.21 mmol/L, 2021-09-04 to 09-06 in Finland (+03:00), and 9 of another code."""
    results = _decode("fhir/sensotrend-cgm-batch-bundle.json", "fhir", None, _utc("2021-09-07T00:00:00Z"))
    readings = [r for r in results if isinstance(r, CanonicalReading)]
    assert len(readings) == 637 and {r.kind for r in readings} == {"glucose"}
    refused = [r.reason for r in results if isinstance(r, Rejection)]
    assert refused == ["unsupported_code"] * 9
    assert min(r.value for r in readings) == 2.78 and max(r.value for r in readings) == 14.21
    first = min(readings, key=lambda r: r.measured_at)
    assert first.measured_at == _utc("2021-09-04T13:39:35Z") and first.value == 7.16
    assert {r.patient_id for r in readings} == {"7257379"}


def test_a_meter_lo_comparator_is_a_bounded_reading_that_still_alerts() -> None:
    """valueQuantity {"comparator": "<", "value": 20, "unit": "mg/dL"}: the meter's LO. The true
    value is below 20 mg/dL (1.11 mmol/L): a reading bounded low, not an exact 20, and it pages."""
    from monitor.alerts.engine import AlertConfig, AlertEngine

    (r,) = _decode("derived/fhir-glucose-comparator-lt20.json", "fhir", None, _utc("2025-01-09T00:10:00Z"))
    assert isinstance(r, CanonicalReading)
    assert r.bounded == "low" and r.value == pytest.approx(20 / MG)
    engine = AlertEngine(AlertConfig(), clock=lambda: _utc("2025-01-09T00:10:00Z"))
    (event,) = engine.on_readings([r])
    assert event.rule == "glucose_very_low" and event.status == "firing"


@pytest.mark.parametrize("name", ["derived/empty.json", "derived/trunc-ns-compact-array.json",
                                  "derived/trunc-fhir-phd-glucose.json"])
def test_an_empty_or_truncated_file_is_one_clear_rejection(name: str) -> None:
    """Before: an empty file printed nothing, a truncated pretty-printed document one rejection per
    line, a truncated Nightscout array (one object per line) its complete lines as readings."""
    from monitor.intake.formats import decode_file_lines

    results = list(decode_file_lines(REALDATA / name, "auto", _utc("2016-10-24T00:00:00Z"), patient_id="P"))
    assert [r["reason"] for r in results] == ["malformed_json"]


def _split_pressure() -> tuple[dict, dict]:
    """The FHIR specification's blood-pressure example (107/60 mm[Hg], Patient/example) sent as two
    Observations, one per component, the way some gateways send it (effective time given a zone)."""
    import json

    panel = json.loads((REALDATA / "fhir/spec-observation-example-bloodpressure.json").read_bytes())
    halves = []
    for comp in panel["component"]:
        obs = {k: v for k, v in panel.items() if k not in ("component", "code", "id")}
        obs.update(code=comp["code"], valueQuantity=comp["valueQuantity"],
                   effectiveDateTime="2012-09-17T08:00:00Z")
        halves.append(obs)
    return halves[0], halves[1]


def test_systolic_and_diastolic_sent_apart_pair_into_one_reading() -> None:
    from monitor.intake import fhir

    systolic, diastolic = _split_pressure()
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": diastolic}, {"resource": systolic}]}
    (r,) = fhir.decode(bundle, received_at=_utc("2012-09-17T08:01:00Z"))
    assert isinstance(r, CanonicalReading)
    assert (r.kind, r.systolic, r.diastolic, r.patient_id) == ("blood_pressure", 107, 60, "example")
    alone = fhir.decode(systolic, received_at=_utc("2012-09-17T08:01:00Z"))
    assert [x.reason for x in alone] == ["unpaired_component"]
    twice = {"resourceType": "Bundle", "entry": [{"resource": systolic}, {"resource": systolic},
                                                 {"resource": diastolic}]}
    assert [x.reason for x in fhir.decode(twice, received_at=_utc("2012-09-17T08:01:00Z"))] == [
        "unpaired_component"] * 3


OMH_KINDS = {"blood-glucose": "glucose", "blood-pressure": "blood_pressure",
             "body-temperature": "body_temperature", "body-weight": "body_weight",
             "heart-rate": "heart_rate", "oxygen-saturation": "spo2", "respiratory-rate": "respiratory_rate"}
OMH_SAMPLES = (sorted(p.name for p in (REALDATA / "openmhealth").glob("omh-body-*.json"))
               if REALDATA.is_dir() else [])


@pytest.mark.parametrize("name", OMH_SAMPLES)
def test_open_mhealth_schema_samples_with_format_auto(name: str) -> None:
    """The schemas' own shouldPass samples (bare bodies) are spot readings of their kind; the
    shouldFail ones are refused with a precise reason; a descriptive statistic is not a reading."""
    import re

    raw = (REALDATA / "openmhealth" / name).read_bytes()
    times = re.findall(rb'"(?:end_)?date_time"\s*:\s*"([^"]+)"', raw)
    latest = max(_utc(t.decode()) for t in times)
    (r,) = decode_items(raw, fmt="auto", patient_id="P1", received_at=latest + timedelta(minutes=1))
    if "FAIL" in name:
        assert isinstance(r, Rejection) and r.reason in ("invalid_unit", "missing_field")
    elif "descriptive-statistic" in name:
        assert isinstance(r, Rejection) and r.reason == "aggregate_not_spot"
    else:
        kind = next(k for schema, k in OMH_KINDS.items() if schema in name)
        assert isinstance(r, CanonicalReading) and r.kind == kind and r.patient_id == "P1"


SPEC_DATED = [  # the FHIR specification's vital-sign examples dated by day only (valid dateTime)
    ("spec-observation-example-heart-rate.json", "heart_rate", 44),
    ("spec-observation-example-respiratory-rate.json", "respiratory_rate", 26),
    ("spec-observation-example-body-temperature.json", "body_temperature", 36.5),
]


@pytest.mark.parametrize(("name", "kind", "value"), SPEC_DATED)
def test_a_date_only_effective_time_is_that_day_and_recorded_not_paged(name: str, kind: str,
                                                                       value: float) -> None:
    """effectiveDateTime "1999-07-02": a valid FHIR dateTime without a time. Read as 00:00 UTC of
    the day; received that afternoon it is late (recorded, never paged at a made-up time)."""
    (r,) = decode_items((REALDATA / "fhir" / name).read_bytes(), fmt="auto",
                        received_at=_utc("1999-07-02T15:00:00Z"))
    assert isinstance(r, CanonicalReading), r
    assert (r.kind, r.value, r.measured_at, r.late) == (kind, value, _utc("1999-07-02T00:00:00Z"), True)


def test_a_batch_observation_without_id_is_identified_by_its_identifier() -> None:
    """The Sensotrend batch POSTs Observations without ``id``, each with an official
    ``urn:uuid:`` identifier: that uuid is the reading id, so a re-sent batch is a duplicate."""
    import json

    bundle = json.loads((REALDATA / "fhir/sensotrend-cgm-batch-bundle.json").read_bytes())
    uuids = [e["resource"]["identifier"][0]["value"].removeprefix("urn:uuid:") for e in bundle["entry"]
             if e["resource"]["resourceType"] == "Observation"
             and e["resource"]["code"]["coding"][0]["code"] == "14745-4"]
    results = _decode("fhir/sensotrend-cgm-batch-bundle.json", "fhir", None, _utc("2021-09-07T00:00:00Z"))
    ids = [r.reading_id for r in results if isinstance(r, CanonicalReading)]
    assert ids == uuids and len(set(ids)) == 637
