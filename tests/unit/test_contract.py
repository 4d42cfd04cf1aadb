"""The event contract: valid documents pass, every kind of bad input is rejected with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.contract import CarerActivity, Reading
from monitor.contract.schema_export import render_schemas
from monitor.contract.units import to_canonical
from monitor.intake.native import REASONS, Rejection, decode

ROOT = Path(__file__).resolve().parents[2]

GOOD_READING = {
    "type": "reading", "reading_id": "r1", "patient_id": "p1", "device_id": "d1", "kind": "glucose",
    "value": 5.4, "unit": "mmol/L", "measured_at": "2026-03-29T01:30:00+01:00",
}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_reading_is_normalised_to_utc():
    doc = decode(enc(GOOD_READING))
    assert isinstance(doc, Reading)
    assert doc.measured_at == datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert doc.measured_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"measured_at": "2026-03-29T01:30:00"}, "naive_timestamp"),
        ({"measured_at": "yesterday"}, "invalid_timestamp"),
        ({"kind": "ketones"}, "unknown_kind"),
        ({"unit": "kg"}, "invalid_unit"),
        ({"value": None}, "invalid_value"),
        ({"colour": "blue"}, "unexpected_field"),
        ({"type": "bogus"}, "unknown_type"),
        ({"patient_id": "has space"}, "invalid_value"),
    ],
)
def test_bad_readings_have_a_reason(change, reason):
    doc = {**GOOD_READING, **change}
    out = decode(enc(doc))
    assert isinstance(out, Rejection)
    assert out.reason == reason, out.detail


def test_missing_field():
    doc = dict(GOOD_READING)
    del doc["device_id"]
    out = decode(enc(doc))
    assert isinstance(out, Rejection) and out.reason == "missing_field"


def test_blood_pressure_shape():
    bp = {**GOOD_READING, "kind": "blood_pressure", "unit": "mm[Hg]", "value": None,
          "systolic": 181.0, "diastolic": 95.0}
    del bp["value"]
    assert isinstance(decode(enc(bp)), Reading)
    half = dict(bp)
    del half["diastolic"]
    assert decode(enc(half)).reason == "invalid_value"  # type: ignore[union-attr]


@pytest.mark.parametrize(("minutes", "ok"),
                         [(0, False), (-15, False), (0.5, True), (1440, True), (1441, False)])
def test_activity_duration_bounds(minutes, ok):
    doc = {"type": "carer_activity", "activity_id": "a", "patient_id": "p", "carer_id": "c",
           "kind": "visit", "started_at": "2026-01-01T10:00:00Z", "duration_minutes": minutes}
    out = decode(enc(doc))
    assert isinstance(out, CarerActivity) is ok
    if not ok:
        assert out.reason == "invalid_duration"  # type: ignore[union-attr]


def test_topic_implies_type_and_accepts_batches_on_readings():
    single = dict(GOOD_READING)
    del single["type"]
    assert isinstance(decode(enc(single), "reading"), Reading)
    batch = {"gateway_id": "g", "sent_at": "2026-01-01T10:00:00Z", "readings": [single]}
    assert type(decode(enc(batch), "reading")).__name__ == "GatewayBatch"
    out = decode(enc({**single, "type": "patient"}), "reading")
    assert isinstance(out, Rejection) and out.reason == "unknown_type"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"\xff\xfe", "not_utf8"), (b"{", "malformed_json"), (b"[]", "not_an_object"), (b"", "malformed_json")],
)
def test_undecodable_bytes(raw, reason):
    out = decode(raw)
    assert isinstance(out, Rejection) and out.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_on_bytes(raw):
    out = decode(raw, "reading")
    assert isinstance(out, Rejection | Reading) or type(out).__name__ == "GatewayBatch"
    if isinstance(out, Rejection):
        assert out.reason in REASONS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD_READING) + ["systolic", "x"]), json_values, max_size=10))
def test_decode_never_raises_on_near_valid_documents(fields):
    doc = {**GOOD_READING, **fields}
    out = decode(json.dumps(doc).encode())
    if isinstance(out, Rejection):
        assert out.reason in REASONS
    else:
        assert out.measured_at.tzinfo is not None  # type: ignore[union-attr]


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_any_offset_becomes_the_same_instant_in_utc(naive, minutes):
    tz = timezone(timedelta(minutes=minutes))
    local = naive.replace(tzinfo=tz)
    doc = decode(enc({**GOOD_READING, "measured_at": local.isoformat()}))
    assert isinstance(doc, Reading)
    assert doc.measured_at == local and doc.measured_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("kind", "value", "unit", "expected"),
    [
        ("glucose", 70.0, "mg/dL", 3.885435), ("glucose", 54.0, "mg/dL", 2.997336),
        ("glucose", 180.0, "mg/dL", 9.991119), ("glucose", 5.5, "mmol/L", 5.5),
        ("body_temperature", 95.0, "[degF]", 35.0), ("body_temperature", 102.38, "[degF]", 39.1),
        ("body_weight", 185.0, "[lb_av]", 83.914588), ("body_weight", 70500.0, "g", 70.5),
    ],
)
def test_units_to_canonical(kind, value, unit, expected):
    assert to_canonical(kind, value, unit) == pytest.approx(expected, abs=1e-6)


def test_checked_in_schemas_match_the_models():
    rendered = render_schemas()
    on_disk = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.schema.json")}
    assert set(on_disk) == set(rendered), "run `coproduction-monitor schemas export`"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} is stale: run `coproduction-monitor schemas export`"
