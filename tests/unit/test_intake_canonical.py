"""Canonical readings: unit conversion at clinical thresholds, validation, keys, format dispatch."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from monitor.contract.models import Reading
from monitor.intake import canonical
from monitor.intake.canonical import (
    ALL_REASONS,
    REASONS,
    CanonicalReading,
    canonicalize,
    validate,
)
from monitor.intake.formats import decode_file_lines, decode_items, detect_format
from monitor.intake.native import REASONS as NATIVE_REASONS
from monitor.intake.native import Rejection

DATA = Path(__file__).parent.parent / "data" / "intake"
RECEIVED = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
MEASURED = datetime(2024, 3, 5, 11, 30, tzinfo=UTC)


def native(kind: str, unit: str, value: float | None = None, **extra: object) -> Reading:
    fields: dict[str, object] = {
        "reading_id": "r-1",
        "patient_id": "pat-1",
        "device_id": "dev-1",
        "kind": kind,
        "value": value,
        "unit": unit,
        "measured_at": MEASURED,
        **extra,
    }
    return Reading.model_validate(fields)


def reading(kind: str = "glucose", value: float | None = 5.5, **extra: object) -> CanonicalReading:
    fields: dict[str, object] = {
        "reading_id": None,
        "patient_id": "pat-1",
        "device_id": None,
        "gateway_id": None,
        "kind": kind,
        "value": value,
        "systolic": None,
        "diastolic": None,
        "unit": "mmol/L",
        "original_unit": "mmol/L",
        "original_code": None,
        "measured_at": MEASURED,
        "source": "native",
        **extra,
    }
    return CanonicalReading(**fields)  # type: ignore[arg-type]


def ok(result: CanonicalReading | Rejection) -> CanonicalReading:
    assert isinstance(result, CanonicalReading), result
    return result


# --- units at clinical thresholds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mg_dl", "mmol_l"),
    [
        (70, 3.885435),  # level 1 hypoglycaemia threshold (3.9 mmol/L)
        (54, 2.997336),  # level 2 hypoglycaemia (3.0 mmol/L)
        (180, 9.991119),  # level 1 hyperglycaemia (10.0 mmol/L)
        (250, 13.876554),  # level 2 hyperglycaemia (13.9 mmol/L)
    ],
)
def test_glucose_mg_dl_to_mmol_l_at_thresholds(mg_dl: float, mmol_l: float) -> None:
    c = ok(canonicalize(native("glucose", "mg/dL", mg_dl), received_at=RECEIVED))
    assert c.unit == "mmol/L"
    assert c.original_unit == "mg/dL"
    assert c.value == pytest.approx(mmol_l, abs=1e-6)


def test_factor_18_016_puts_70_mg_dl_just_below_3_9() -> None:
    # The two threshold spellings disagree at the boundary: rules must pick one unit.
    c = ok(canonicalize(native("glucose", "mg/dL", 70), received_at=RECEIVED))
    assert c.value is not None and c.value < 3.9
    back = ok(canonicalize(native("glucose", "mmol/L", 3.9), received_at=RECEIVED))
    assert back.value == 3.9
    assert back.value * 18.016 == pytest.approx(70.2624)


def test_95_fahrenheit_is_35_0_celsius_the_news2_boundary() -> None:
    c = ok(canonicalize(native("body_temperature", "[degF]", 95), received_at=RECEIVED))
    assert c.value == pytest.approx(35.0, abs=1e-12)
    assert c.unit == "Cel" and c.original_unit == "[degF]"
    hot = ok(canonicalize(native("body_temperature", "[degF]", 102.38), received_at=RECEIVED))
    assert hot.value == pytest.approx(39.1, abs=1e-9)


@pytest.mark.parametrize(("value", "unit", "kg"), [(185, "[lb_av]", 83.91458845), (70500, "g", 70.5)])
def test_weight_to_kg(value: float, unit: str, kg: float) -> None:
    c = ok(canonicalize(native("body_weight", unit, value), received_at=RECEIVED))
    assert c.value == pytest.approx(kg, abs=1e-8)
    assert c.unit == "kg" and c.original_unit == unit


def test_one_pound_is_exact_and_implausible_for_a_patient() -> None:
    result = canonicalize(native("body_weight", "[lb_av]", 1), received_at=RECEIVED)
    assert isinstance(result, Rejection) and result.reason == "implausible_value"
    assert result.detail == "body_weight 0.453592 is outside [1, 400]"


def test_blood_pressure_keeps_components_and_no_value() -> None:
    r = Reading.model_validate(
        {
            "reading_id": "bp-1",
            "patient_id": "pat-1",
            "device_id": "cuff-1",
            "gateway_id": "hub-1",
            "kind": "blood_pressure",
            "systolic": 221,
            "diastolic": 90,
            "unit": "mm[Hg]",
            "measured_at": "2024-03-05T12:30:00+01:00",
        }
    )
    c = ok(canonicalize(r, received_at=RECEIVED))
    assert (c.value, c.systolic, c.diastolic, c.unit) == (None, 221, 90, "mm[Hg]")
    assert c.gateway_id == "hub-1"
    assert c.measured_at == datetime(2024, 3, 5, 11, 30, tzinfo=UTC)
    assert c.source == "native" and c.late is False


# --- validate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "inside", "outside"),
    [
        ("glucose", [0.5, 60.0, 2.2], [0.49, 60.1, 0.0, -1.0]),
        ("heart_rate", [20, 300, 131], [19.9, 301]),
        ("spo2", [50, 100, 88], [49.9, 100.1]),
        ("respiratory_rate", [2, 80, 25], [1.9, 81]),
        ("body_temperature", [25, 45, 35.0], [24.9, 45.1, 98.6]),  # 98.6 is a F value in Cel
        ("body_weight", [1, 400, 83.9], [0.9, 400.5]),
    ],
)
def test_plausibility_limits_are_inclusive(kind: str, inside: list[float], outside: list[float]) -> None:
    for v in inside:
        assert ok(validate(reading(kind, v), received_at=RECEIVED)).value == v
    for v in outside:
        result = validate(reading(kind, v), received_at=RECEIVED)
        assert isinstance(result, Rejection) and result.reason == "implausible_value", (kind, v)


@pytest.mark.parametrize(
    ("sys", "dia", "reason"),
    [
        (120, 80, None),
        (300, 200, None),
        (40, 20, None),
        (301, 80, "implausible_value"),
        (120, 201, "implausible_value"),
        (39, 20, "implausible_value"),
        (80, 120, "implausible_value"),  # swapped
        (90, 90, "implausible_value"),
    ],
)
def test_blood_pressure_plausibility(sys: float, dia: float, reason: str | None) -> None:
    c = reading("blood_pressure", None, systolic=sys, diastolic=dia, unit="mm[Hg]")
    result = validate(c, received_at=RECEIVED)
    if reason is None:
        assert ok(result).systolic == sys
    else:
        assert isinstance(result, Rejection) and result.reason == reason


def test_bounded_reading_skips_only_its_own_side() -> None:
    low = reading("glucose", 0.3, bounded="low")
    assert ok(validate(low, received_at=RECEIVED)).bounded == "low"
    high = reading("glucose", 70.0, bounded="high")
    assert ok(validate(high, received_at=RECEIVED)).bounded == "high"
    wrong_side = validate(reading("glucose", 0.3, bounded="high"), received_at=RECEIVED)
    assert isinstance(wrong_side, Rejection) and wrong_side.reason == "implausible_value"


def test_event_time_horizons() -> None:
    at = RECEIVED
    assert ok(validate(reading(measured_at=at + timedelta(minutes=10)), received_at=at)).late is False
    future = validate(reading(measured_at=at + timedelta(minutes=10, seconds=1)), received_at=at)
    assert isinstance(future, Rejection) and future.reason == "future_timestamp"
    assert ok(validate(reading(measured_at=at - timedelta(hours=1)), received_at=at)).late is False
    late = ok(validate(reading(measured_at=at - timedelta(hours=1, seconds=1)), received_at=at))
    assert late.late is True
    assert ok(validate(reading(measured_at=at - timedelta(days=30)), received_at=at)).late is True
    old = validate(reading(measured_at=at - timedelta(days=30, seconds=1)), received_at=at)
    assert isinstance(old, Rejection) and old.reason == "too_old"
    custom = validate(
        reading(measured_at=at + timedelta(minutes=2)), received_at=at, max_future=timedelta(minutes=1)
    )
    assert isinstance(custom, Rejection) and custom.reason == "future_timestamp"


def test_received_at_in_another_zone_is_the_same_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    c = ok(validate(reading(), received_at=RECEIVED.astimezone(plus_two)))
    assert c.late is False


def test_naive_received_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate(reading(), received_at=datetime(2024, 3, 5, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        canonicalize(native("glucose", "mmol/L", 5.0), received_at=datetime(2024, 3, 5, 12, 0))


def test_canonical_reading_normalises_to_utc_and_refuses_naive() -> None:
    cet = timezone(timedelta(hours=1))
    c = reading(measured_at=datetime(2024, 3, 5, 12, 30, tzinfo=cet))
    assert c.measured_at == MEASURED and c.measured_at.tzinfo is UTC
    with pytest.raises(ValueError):
        reading(measured_at=datetime(2024, 3, 5, 12, 30))
    with pytest.raises(ValueError):
        reading(kind="steps")


def test_dedup_key_and_json() -> None:
    with_id = reading(reading_id="obs-1")
    assert with_id.dedup_key == ("id", "obs-1")
    no_id = reading(value=5.5506)
    assert no_id.dedup_key == ("content", "pat-1", "glucose", MEASURED, 5.5506, None, None)
    # float noise from unit conversion does not split a key
    assert reading(value=100 / 18.016).dedup_key == reading(value=5.550621669627).dedup_key
    data = with_id.to_json()
    assert data["measured_at"] == "2024-03-05T11:30:00Z"
    assert data["reading_id"] == "obs-1" and data["value"] == 5.5 and data["late"] is False
    assert json.loads(json.dumps(data)) == data


def test_reason_codes_have_meanings_and_do_not_shadow_native() -> None:
    assert set(REASONS).isdisjoint(NATIVE_REASONS)
    for code in (
        "implausible_value",
        "too_old",
        "unsupported_code",
        "aggregate_not_spot",
        "sensor_error",
        "unsupported_format",
    ):
        assert REASONS[code]
    assert ALL_REASONS["future_timestamp"]  # shared with the native decoder (every event time)
    assert ALL_REASONS.keys() == REASONS.keys() | NATIVE_REASONS.keys()


def test_replace_revalidates() -> None:
    with pytest.raises(ValueError):
        replace(reading(), source="email")


def test_helpers_reject_rather_than_raise() -> None:
    assert canonical.parse_timestamp("2024-03-05", "t") == Rejection(
        "invalid_timestamp", "t: a date-time with a time of day is required"
    )
    assert isinstance(canonical.parse_timestamp("0001-01-01T00:00:00+05:00", "t"), Rejection)
    assert canonical.from_epoch_ms(10**30, "d").reason == "invalid_timestamp"  # type: ignore[union-attr]
    assert canonical.from_epoch_ms("1709596800000", "d") == datetime(2024, 3, 5, tzinfo=UTC)
    assert canonical.as_number(True, "v").reason == "invalid_value"  # type: ignore[union-attr]
    assert canonical.as_number(10**400, "v").reason == "invalid_value"  # type: ignore[union-attr]
    assert canonical.check_identifier("Patient 1", "p").reason == "invalid_identifier"  # type: ignore[union-attr]


# --- format detection and dispatch ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("fhir/bp-panel.json", "fhir"),
        ("fhir/phd-transaction-bundle.json", "fhir"),
        ("nightscout/entries.json", "nightscout"),
        ("openmhealth/should-pass/blood-pressure.json", "openmhealth"),
    ],
)
def test_detect_format_of_fixtures(path: str, fmt: str) -> None:
    assert detect_format(json.loads((DATA / path).read_bytes())) == fmt


def test_detect_format_native_and_unknown() -> None:
    assert detect_format({"type": "reading", "reading_id": "x"}) == "native"
    assert detect_format({"gateway_id": "g", "readings": []}) == "native"
    assert detect_format({"foo": 1}) == "unknown"
    assert detect_format([]) == "unknown"
    assert detect_format("sgv") == "unknown"


def test_decode_items_native_gateway_batch_counts_as_its_readings() -> None:
    batch = {
        "type": "gateway_batch",
        "gateway_id": "hub-9",
        "sent_at": "2024-03-05T11:59:00Z",
        "readings": [
            {
                "reading_id": "a",
                "patient_id": "p",
                "device_id": "d",
                "kind": "heart_rate",
                "value": 61,
                "unit": "/min",
                "measured_at": "2024-03-05T11:50:00Z",
            },
            {
                "reading_id": "b",
                "patient_id": "p",
                "device_id": "d",
                "kind": "spo2",
                "value": 12,
                "unit": "%",
                "measured_at": "2024-03-05T11:50:00Z",
            },
        ],
    }
    results = decode_items(json.dumps(batch).encode(), received_at=RECEIVED)
    assert len(results) == 2
    first = ok(results[0])
    assert (first.reading_id, first.gateway_id, first.value) == ("a", "hub-9", 61.0)
    assert isinstance(results[1], Rejection) and results[1].reason == "implausible_value"


def test_decode_items_mixed_array_and_bad_bytes() -> None:
    ns = {"type": "sgv", "sgv": 120, "date": 1709638200000}
    raw = json.dumps([ns, {"what": 1}, 7, {"type": "reading", "kind": "x"}]).encode()
    results = decode_items(raw, patient_id="pat-1", received_at=RECEIVED)
    assert ok(results[0]).value == pytest.approx(120 / 18.016)
    assert [r.reason for r in results[1:]] == ["unsupported_format", "not_an_object", "missing_field"]  # type: ignore[union-attr]
    assert decode_items(b"\xff", received_at=RECEIVED) == [
        Rejection("not_utf8", "byte 0: invalid start byte")
    ]
    assert decode_items(b"{", received_at=RECEIVED)[0].reason == "malformed_json"  # type: ignore[union-attr]
    assert decode_items(b"[]", received_at=RECEIVED) == []
    with pytest.raises(ValueError):
        decode_items(b"[]", fmt="hl7v2", received_at=RECEIVED)


def test_decode_file_lines_json_document_and_ndjson(tmp_path: Path) -> None:
    lines = list(decode_file_lines(DATA / "fhir/phd-transaction-bundle.json", "auto", RECEIVED))
    assert [line["ok"] for line in lines] == [True, False, True, False, False, False]
    assert lines[0]["reading"]["measured_at"] == "2024-03-05T07:01:30Z"
    assert lines[1] == {"ok": False, "reason": "withdrawn_status", "detail": "status: entered-in-error"}

    ndjson = tmp_path / "mixed.ndjson"
    heart = {
        "type": "reading",
        "reading_id": "h1",
        "patient_id": "p",
        "device_id": "d",
        "kind": "heart_rate",
        "value": 70,
        "unit": "/min",
        "measured_at": "2024-03-05T11:00:00",
    }
    ndjson.write_text(
        json.dumps({**heart, "measured_at": "2024-03-05T11:00:00Z"})
        + "\n\n"
        + json.dumps(heart)
        + "\n"
        + "not json\n"
        + (DATA / "fhir/heart-rate.json").read_text().replace("\n", " ")
        + "\n"
    )
    out = list(decode_file_lines(ndjson, "auto", RECEIVED))
    assert out[0]["ok"] is True and out[0]["reading"]["late"] is False
    assert out[1]["reason"] == "naive_timestamp"
    assert out[2]["reason"] == "malformed_json"
    assert out[3]["reading"]["value"] == 48.0 and out[3]["reading"]["source"] == "fhir"
    assert len(out) == 4

    forced = list(decode_file_lines(DATA / "nightscout/entries.json", "nightscout", RECEIVED))
    assert {line.get("reason") for line in forced} == {"missing_patient"}
