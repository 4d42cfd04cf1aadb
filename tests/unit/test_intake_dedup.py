"""Deduplication of readings from several uploaders, with memory bounded by event time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.intake import fhir, nightscout
from monitor.intake.canonical import CanonicalReading
from monitor.intake.dedup import Deduplicator

T0 = datetime(2024, 3, 5, 8, 0, tzinfo=UTC)
DATA = Path(__file__).parent.parent / "data" / "intake"


def r(
    reading_id: str | None = None,
    *,
    patient: str = "pat-1",
    at: datetime = T0,
    value: float = 5.5,
    kind: str = "glucose",
    source: str = "native",
) -> CanonicalReading:
    return CanonicalReading(
        reading_id=reading_id,
        patient_id=patient,
        device_id=None,
        gateway_id=None,
        kind=kind,
        value=value,
        systolic=None,
        diastolic=None,
        unit="mmol/L",
        original_unit="mmol/L",
        original_code=None,
        measured_at=at,
        source=source,
    )


def test_same_id_from_several_uploaders_counted_once() -> None:
    d = Deduplicator()
    assert d.admit(r("obs-1", source="fhir")) is True
    # a second uploader relays the same record (its value converted from mg/dL, slightly different)
    assert d.admit(r("obs-1", value=5.5001, source="native")) is False
    assert d.admit(r("obs-2")) is False  # different id, same content: the same measurement
    assert len(d) == 1


def test_no_id_uses_content() -> None:
    d = Deduplicator()
    assert d.admit(r()) is True
    assert d.admit(r()) is False
    assert d.admit(r(value=100 / 18.016)) is True
    assert d.admit(r(value=5.550621669627)) is False  # float noise from conversion


@pytest.mark.parametrize(
    "other",
    [
        {"at": T0 + timedelta(seconds=1)},
        {"at": T0 + timedelta(minutes=5)},
        {"value": 5.6},
        {"kind": "heart_rate", "value": 5.5},
        {"patient": "pat-2"},
    ],
)
def test_distinct_readings_close_in_time_are_kept(other: dict[str, Any]) -> None:
    d = Deduplicator()
    assert d.admit(r()) is True
    assert d.admit(r(**other)) is True
    assert d.admit(r(**other)) is False


def test_same_id_for_two_patients_is_two_readings() -> None:
    d = Deduplicator()
    assert d.admit(r("1", patient="pat-1")) is True
    assert d.admit(r("1", patient="pat-2", value=6.0)) is True


def test_content_match_can_be_turned_off() -> None:
    d = Deduplicator(match_content=False)
    assert d.admit(r("a")) is True
    assert d.admit(r("b")) is True
    assert d.admit(r("a")) is False
    assert d.admit(r()) is True  # no id: content key is its only key
    assert d.admit(r()) is False


def test_keys_evicted_beyond_horizon_by_event_time() -> None:
    # timeline (event time):  T0 ---- T0+1h ---- ... ---- T0+3h
    #                          a        b                    c  -> watermark T0+3h, cutoff T0+1h
    d = Deduplicator(horizon=timedelta(hours=2))
    assert d.admit(r("a", at=T0))
    assert d.admit(r("b", at=T0 + timedelta(hours=1)))
    assert d.admit(r("c", at=T0 + timedelta(hours=3)))
    assert len(d) == 2  # "a" evicted, "b" sits exactly at the cutoff and is kept
    assert d.admit(r("b", at=T0 + timedelta(hours=1))) is False
    # "a" is forgotten: a replay of it is admitted (a duplicate rather than a lost reading)
    assert d.admit(r("a", at=T0)) is True
    assert len(d) == 2  # ... but not remembered


def test_watermark_is_per_patient() -> None:
    d = Deduplicator(horizon=timedelta(hours=2))
    assert d.admit(r("late-patient", patient="pat-1", at=T0))
    assert d.admit(r("live", patient="pat-2", at=T0 + timedelta(days=1)))
    # pat-2's newer data does not evict pat-1's keys
    assert d.admit(r("late-patient", patient="pat-1", at=T0)) is False


def test_hard_cap_per_patient() -> None:
    d = Deduplicator(max_keys_per_patient=3, match_content=False)
    for i in range(5):
        assert d.admit(r(str(i), at=T0 + timedelta(minutes=i)))
    assert len(d) == 3
    assert d.admit(r("4", at=T0 + timedelta(minutes=4))) is False
    assert d.admit(r("0", at=T0)) is True  # oldest went first


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        Deduplicator(horizon=timedelta(0))
    with pytest.raises(ValueError):
        Deduplicator(max_keys_per_patient=0)


def test_fixture_uploaded_twice_is_admitted_once() -> None:
    received = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    entries = json.loads((DATA / "nightscout" / "entries.json").read_bytes())
    bundle = json.loads((DATA / "fhir" / "phd-transaction-bundle.json").read_bytes())
    d = Deduplicator(horizon=timedelta(days=2))
    admitted = 0
    for _ in range(2):
        readings = nightscout.decode(entries, patient_id="pat-0042", received_at=received)
        readings += fhir.decode(bundle, received_at=received)  # id-less PHD BP: content key
        admitted += sum(d.admit(x) for x in readings if isinstance(x, CanonicalReading))
    assert admitted == 11 + 2  # 10 sgv (one sensor error) + 1 mbg; PHD BP + pulse
