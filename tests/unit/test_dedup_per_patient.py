"""De-duplication is per (patient, kind, id), not per id (issue 13, item 4).

An activity id is unique per patient and a reading id per patient and reading kind: two patients'
events that share an id are two events and both count, in the support core (care minutes,
readings received) and in the carers' ledger and fragility state. An exact re-delivery (same
patient, kind and id) is still a duplicate. Old checkpoints, whose duplicate keys were the bare
ids, are refused so that the partition is rebuilt from its input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from monitor.carers.fragility import FragilityState
from monitor.carers.ledger import CarerLedger
from monitor.carers.state import CarersState
from monitor.contract.models import CarerActivity, Reading
from monitor.core import support as k
from monitor.core.batch import READING_KINDS, EventBatch, ReadingColumnsView, batch_from_documents
from monitor.core.idhash import id_hash
from monitor.core.reference import ReferenceSupport
from monitor.core.state import SnapshotError, SupportState

T0 = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)  # a Monday
T0_S = int(T0.timestamp())


def act(patient: str, activity_id: str, minutes: float, carer: str = "c1",
        when: datetime = T0) -> CarerActivity:
    return CarerActivity(activity_id=activity_id, patient_id=patient, carer_id=carer,
                         kind="visit", started_at=when, duration_minutes=minutes)


def reading(patient: str, reading_id: str, kind: str = "glucose",
            when: datetime = T0) -> Reading:
    unit, value = {"glucose": ("mmol/L", 5.0), "heart_rate": ("/min", 70.0)}[kind]
    return Reading(reading_id=reading_id, patient_id=patient, device_id="d1", kind=kind,
                   value=value, unit=unit, measured_at=when)


def metrics(state: SupportState) -> dict[str, dict[str, Any]]:
    return state.evaluate().patients()


# ------------------------------------------------------------------------------------------
# 1. carer activities: (patient, "activity", activity_id)
# ------------------------------------------------------------------------------------------


def test_two_patients_activity_id_1_both_count_in_care_minutes():
    s = SupportState()
    out = s.apply(batch_from_documents(s, [act("p1", "1", 600), act("p2", "1", 30)]))
    assert out["duplicates"] == 0
    m = metrics(s)
    assert m["p1"]["care_minutes_7d"] == 600.0
    assert m["p2"]["care_minutes_7d"] == 30.0


def test_two_patients_activity_id_1_both_count_in_the_carers_ledger():
    led = CarerLedger()
    assert led.apply([act("p1", "1", 600), act("p2", "1", 30)]) == {
        "applied": 2, "duplicates": 0, "too_old": 0}
    (row,) = led.week_rows("2025-W10")
    assert row["carer_id"] == "c1"
    assert row["minutes"] == 630.0
    assert row["patients"] == 2
    assert row["activities_by_kind"] == {"visit": 2}


def test_two_patients_activity_id_1_both_count_in_fragility_and_carers_state():
    frag = FragilityState()
    assert frag.apply([act("p1", "1", 600), act("p2", "1", 30, carer="c2")])["applied"] == 2
    # each patient has one carer doing everything: both are single points of failure
    assert frag.flags(T0) == {"p1": ["single_point_of_failure"],
                              "p2": ["single_point_of_failure"]}
    st = CarersState()
    st.apply([act("p1", "1", 600), act("p2", "1", 30)])
    assert st.carer_report(T0)["c1"]["minutes_by_week"] == {"2025-W10": 630.0}


def test_activity_redelivery_of_the_same_patient_and_id_is_still_a_duplicate():
    s = SupportState()
    led = CarerLedger()
    frag = FragilityState()
    docs = [act("p1", "1", 600), act("p2", "1", 30)]
    for _ in range(2):  # the whole batch again: exact re-deliveries
        s.apply(batch_from_documents(s, docs))
        led.apply(docs)
        frag.apply(docs)
    assert s.stats["duplicates"] == 2
    assert {p: m["care_minutes_7d"] for p, m in metrics(s).items()} == {"p1": 600.0, "p2": 30.0}
    assert led.stats == {"applied": 2, "duplicates": 2, "too_old": 0}
    assert led.week_rows("2025-W10")[0]["minutes"] == 630.0
    assert frag.stats["duplicates"] == 2
    # the same patient re-sending id "1" with other content is a duplicate too (first wins)
    s.apply(batch_from_documents(s, [act("p1", "1", 5)]))
    assert metrics(s)["p1"]["care_minutes_7d"] == 600.0


def test_carers_activity_key_is_injective_on_the_pair():
    from monitor.carers._common import activity_key

    keys = {activity_key(p, a) for p, a in [("p1", "2:x"), ("p1:2", "x"), ("p1", "1"),
                                            ("p2", "1"), ("1", "p1"), ("", "p11"), ("p11", "")]}
    assert len(keys) == 7
    assert activity_key("p1", "1") == activity_key("p1", "1") != 0


# ------------------------------------------------------------------------------------------
# 2. readings: (patient, reading kind, reading_id)
# ------------------------------------------------------------------------------------------


def test_same_reading_id_for_two_patients_both_count():
    s = SupportState()
    out = s.apply(batch_from_documents(s, [reading("p1", "r1"), reading("p2", "r1")]))
    assert out["duplicates"] == 0
    m = metrics(s)
    assert m["p1"]["readings_received_7d"] == 1
    assert m["p2"]["readings_received_7d"] == 1


def test_same_reading_id_same_patient_different_kinds_both_count():
    s = SupportState()
    s.apply(batch_from_documents(s, [reading("p1", "r1", "glucose"),
                                     reading("p1", "r1", "heart_rate")]))
    assert metrics(s)["p1"]["readings_received_7d"] == 2


def test_exact_reading_redelivery_is_still_a_duplicate():
    s = SupportState()
    docs = [reading("p1", "r1"), reading("p2", "r1"), reading("p1", "r1", "heart_rate")]
    s.apply(batch_from_documents(s, docs + docs))  # within one batch
    s.apply(batch_from_documents(s, docs))  # and across batches
    assert s.stats["duplicates"] == 6
    m = metrics(s)
    assert (m["p1"]["readings_received_7d"], m["p2"]["readings_received_7d"]) == (2, 1)


class _Slice(ReadingColumnsView):
    """A columnar slice of readings as :func:`batch_from_documents` reads it (as
    ``monitor.intake.columnar.ReadingSlice``): the id hashes are ``id_hash("r", reading_id)``,
    as the intake computes them in numba, without the patient or the kind."""

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        self.rows = rows

    def event_seconds(self) -> np.ndarray:
        return np.full(len(self.rows), T0_S, np.int64)

    def patient_ids(self) -> list[str]:
        return [p for p, _, _ in self.rows]

    def kind_names(self) -> list[str]:
        return [kd for _, kd, _ in self.rows]

    def reading_ids(self) -> list[str]:
        return [r for _, _, r in self.rows]

    def reading_hashes(self) -> np.ndarray:
        return np.array([id_hash("r", r) for _, _, r in self.rows], np.uint64)


def test_columnar_readings_are_deduplicated_per_patient_and_kind():
    s = SupportState()
    rows = [("p1", "glucose", "r1"), ("p2", "glucose", "r1"), ("p1", "spo2", "r1")]
    out = s.apply(batch_from_documents(s, [_Slice(rows), _Slice(rows)]))
    assert out["duplicates"] == 3
    m = metrics(s)
    assert (m["p1"]["readings_received_7d"], m["p2"]["readings_received_7d"]) == (2, 1)


def test_an_activity_and_a_reading_of_one_patient_with_the_same_id_hash_both_count():
    s = SupportState()
    s.add_patients(1)
    s.add_carers(1)
    s.apply(EventBatch.from_columns(
        activity_patient=[0], activity_carer=[0], activity_start_s=[T0_S],
        activity_minutes=[15.0], activity_id_hash=[42],
        reading_patient=[0], reading_kind=[0], reading_t=[T0_S], reading_id_hash=[42]))
    m = s.evaluate().patient(0)
    assert (m["care_minutes_7d"], m["readings_received_7d"]) == (15.0, 1)


def test_reference_deduplicates_per_patient_and_kind_too():
    s = SupportState()
    ref = ReferenceSupport()
    docs = [act("p1", "1", 600), act("p2", "1", 30), act("p1", "1", 600),
            reading("p1", "r1"), reading("p2", "r1"), reading("p1", "r1", "heart_rate"),
            reading("p1", "r1")]
    batch = batch_from_documents(s, docs)
    s.apply(batch)
    ref.apply(batch)
    ev = s.evaluate(T0_S)
    for slot, want in ref.evaluate(T0_S).items():
        assert ev.patient(slot) == {key: want[key] for key in ev.patient(slot)}
    assert ref.evaluate(T0_S)[0]["care_minutes_7d"] == 600.0
    assert ref.evaluate(T0_S)[0]["readings_received_7d"] == 2


# ------------------------------------------------------------------------------------------
# the key, and old checkpoints
# ------------------------------------------------------------------------------------------


def test_dedup_key_of_one_id_differs_for_every_patient_and_kind():
    """mix64 is a bijection and the (slot, kind) tag injective: one id hash under 20,000
    patients x 9 kinds (7 reading kinds, unknown, activity) gives 180,000 distinct keys."""
    kinds = [*range(len(READING_KINDS)), 0xFF, k.DEDUP_ACTIVITY]
    for h in (np.uint64(1), np.uint64(id_hash("r", "1")), np.uint64(2**64 - 1)):
        keys = {int(k.dedup_key(h, np.int64(p), np.int64(kd)))
                for p in range(20_000) for kd in kinds}
        assert len(keys) == 20_000 * len(kinds)
        assert 0 not in keys


def test_a_version_3_support_snapshot_is_refused():
    s = SupportState()
    s.apply(batch_from_documents(s, [act("p1", "1", 600)]))
    data = s.snapshot()
    m = len(b"CMSUPPORT")
    old = data[:m] + (3).to_bytes(2, "little") + data[m + 2:]
    with pytest.raises(SnapshotError):
        SupportState.restore(old)
    assert SupportState.restore(data).evaluate().patients() == metrics(s)


@pytest.mark.parametrize("cls", [CarerLedger, FragilityState])
def test_a_version_1_carers_snapshot_is_refused(cls):
    state = cls()
    state.apply([act("p1", "1", 600), act("p2", "1", 30)])
    data = state.snapshot()
    m = len(b"CMCARERLEDGER") if cls is CarerLedger else len(b"CMCARERFRAGILITY")
    old = data[:m] + (1).to_bytes(2, "little") + data[m + 2:]
    with pytest.raises(SnapshotError):
        cls.restore(old)
    restored = cls.restore(data)
    assert restored.snapshot() == data
    with pytest.raises(SnapshotError):
        CarersState.restore(_carers_state_with(cls, old))


def _carers_state_with(cls: type, inner: bytes) -> bytes:
    """A carers-state snapshot whose ledger or fragility part is ``inner``."""
    import base64

    from monitor.carers._common import pack_snapshot, unpack_snapshot

    st = CarersState()
    st.apply([act("p1", "1", 600)])
    data = st.snapshot()
    body = unpack_snapshot(b"CMCARERS", int.from_bytes(data[8:10], "little"), data, "x")
    body["ledger" if cls is CarerLedger else "fragility"] = base64.b64encode(inner).decode()
    return pack_snapshot(b"CMCARERS", int.from_bytes(data[8:10], "little"), body)
