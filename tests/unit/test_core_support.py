"""Hand-built scenarios of the support core: window boundaries, care links, duplicates, registry,
snapshots and summaries.

Timelines use UTC days relative to the as-of day D (``days_ago`` = D - day of the event)::

    days_ago:  29  28  27 ... 15  14  13 ... 8   7   6  ...  0
    active:    --  --  [=========================================]   28 days: days_ago 0..27
    lapse:                       --  [============================]   14 days: days_ago 0..13
    covered:                                 --  [===============]    7 days: days_ago 0..6

"The 28th day" counts the as-of day as day 1, so days_ago 27 is the 28th day (inside) and days_ago
28 the 29th (outside); likewise the 14th/15th day for lapse and the 7th/8th day for coverage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.contract.models import CareLink, CarerActivity, GatewayBatch, Patient, Reading
from monitor.core.batch import EventBatch, batch_from_documents
from monitor.core.idhash import id_hash
from monitor.core.reference import ReferenceSupport
from monitor.core.state import SnapshotError, StaleAsOfError, SupportConfig, SupportState
from monitor.core.summary import PartialSummary
from monitor.equity import equity_from_summary, grouped_measures

D = 20_100  # the as-of day (2025-01-13)
AS_OF = D * 86400 + 12 * 3600  # noon of day D
_ids = iter(range(1, 10**9))


def at(days_ago: int, second: int = 43200) -> int:
    return (D - days_ago) * 86400 + second


def activities(*rows: tuple[int, int, int] | tuple[int, int, int, float]) -> EventBatch:
    """rows: (patient, carer, time s[, minutes]) with fresh ids."""
    return EventBatch.from_columns(
        activity_patient=[r[0] for r in rows], activity_carer=[r[1] for r in rows],
        activity_start_s=[r[2] for r in rows],
        activity_minutes=[r[3] if len(r) > 3 else 30.0 for r in rows],
        activity_id_hash=[next(_ids) for _ in rows],
    )


def links(*rows: tuple[int, int, int, int]) -> EventBatch:
    """rows: (patient, carer, effective_at s, +1 join / -1 leave)."""
    return EventBatch.from_columns(
        link_patient=[r[0] for r in rows], link_carer=[r[1] for r in rows],
        link_t=[r[2] for r in rows], link_action=[r[3] for r in rows],
    )


def readings(*rows: tuple[int, int], ids: list[int] | None = None) -> EventBatch:
    return EventBatch.from_columns(
        reading_patient=[r[0] for r in rows], reading_kind=[0] * len(rows),
        reading_t=[r[1] for r in rows],
        reading_id_hash=ids if ids is not None else [next(_ids) for _ in rows],
    )


def fresh(n_patients: int = 1, n_carers: int = 3, config: SupportConfig | None = None) -> SupportState:
    s = SupportState(config)
    s.add_patients(n_patients)
    s.add_carers(n_carers)
    return s


def one(state: SupportState, as_of: int = AS_OF, slot: int = 0) -> dict:
    ev = state.evaluate(as_of)
    return {**ev.patient(slot), "covered": bool(ev.covered[slot]),
            "registered": int(ev.registered_carers[slot])}


# ------------------------------------------------------------------------------------------
# window boundaries
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_ago", "second", "active"),
    [
        (0, 0, 1), (0, 86399, 1),  # the as-of day counts whatever the time of day
        (27, 0, 1),  # the 28th day (start of day): inside
        (27, 86399, 1),
        (28, 86399, 0),  # the 29th day, even 27 d 12 h 0 min 1 s before as-of: outside
        (28, 43200, 0),  # exactly 28 x 24 h before as-of: outside
        (29, 0, 0),
    ],
)
def test_active_carer_window_28th_vs_29th_day(days_ago, second, active):
    s = fresh()
    s.apply(activities((0, 0, at(days_ago, second))))
    s.apply(readings((0, AS_OF)))  # move the watermark to the as-of time
    got = one(s)
    assert got["active_carers_28d"] == active
    assert ("single_carer" in got["flags"]) == (active == 1)
    assert ("no_support_network" in got["flags"]) == (active == 0)


@pytest.mark.parametrize(("days_ago", "lapsed"), [(0, False), (13, False), (14, True), (15, True)])
def test_lapse_14th_vs_15th_day(days_ago, lapsed):
    s = fresh()
    s.apply(activities((0, 0, at(days_ago, 0))))
    got = one(s)
    assert ("support_lapsed" in got["flags"]) is lapsed
    assert got["active_carers_28d"] == 1  # still active: lapse is about recent contact


@pytest.mark.parametrize(("days_ago", "covered"), [(0, True), (6, True), (7, False), (8, False)])
def test_covered_7th_vs_8th_day(days_ago, covered):
    s = fresh()
    s.apply(activities((0, 0, at(days_ago, 86399), 12.5)))
    got = one(s)
    assert got["covered"] is covered
    assert got["contact_days_7d"] == int(covered)
    assert got["care_minutes_7d"] == (12.5 if covered else 0.0)


def test_contact_days_count_distinct_utc_days_in_window():
    s = fresh(1, 2)
    s.apply(activities(
        (0, 0, at(0, 10)), (0, 1, at(0, 80000)),  # two contacts on the as-of day -> 1 day
        (0, 0, at(3, 0)), (0, 0, at(6, 86399)),  # inside
        (0, 1, at(7, 0)), (0, 1, at(40, 0)),  # outside
    ))
    got = one(s)
    assert got["contact_days_7d"] == 3
    assert got["care_minutes_7d"] == 4 * 30.0
    assert got["active_carers_28d"] == 2


def test_care_minutes_are_exact_milliseconds():
    s = fresh()
    s.apply(activities((0, 0, at(1), 0.1), (0, 0, at(2), 0.2), (0, 0, at(3), 1440.0)))
    assert one(s)["care_minutes_7d"] == (6000 + 12000 + 86_400_000) / 60_000


def test_a_patient_without_any_event_but_registered_has_no_support_network():
    s = fresh()
    got = one(s)
    assert got["flags"] == ["no_support_network"]
    assert got["active_carers_28d"] == 0


# ------------------------------------------------------------------------------------------
# care links
# ------------------------------------------------------------------------------------------


def test_join_registers_leave_removes_by_effective_time():
    s = fresh()
    s.apply(links((0, 0, at(10), 1)))
    got = one(s)
    assert got["registered"] == 1
    assert "no_support_network" not in got["flags"]
    assert "support_lapsed" in got["flags"]  # registered carer but no contact in 14 days
    # a leave effective before the join does not remove it, even when it arrives later
    s.apply(links((0, 0, at(20), -1)))
    assert one(s)["registered"] == 1
    s.apply(links((0, 0, at(5), -1)))
    got = one(s)
    assert got["registered"] == 0
    assert got["flags"] == ["no_support_network"]


def test_leave_wins_over_join_at_the_same_instant_in_any_order():
    for order in ([1, -1], [-1, 1]):
        s = fresh()
        for action in order:
            s.apply(links((0, 0, at(3, 100), action)))
        assert one(s)["registered"] == 0


def test_registered_and_active_carers_are_counted_separately():
    s = fresh(1, 3)
    s.apply(links((0, 0, at(30), 1), (0, 1, at(30), 1), (0, 1, at(2), -1)))
    s.apply(activities((0, 2, at(1))))
    got = one(s)
    assert got["registered"] == 1
    assert got["active_carers_28d"] == 1
    assert got["flags"] == ["single_carer"]


def test_repeated_links_are_idempotent():
    s = fresh()
    b = links((0, 0, at(4), 1), (0, 0, at(4), 1))
    s.apply(b)
    s.apply(b)
    assert one(s)["registered"] == 1


# ------------------------------------------------------------------------------------------
# duplicates and lateness
# ------------------------------------------------------------------------------------------


def test_duplicate_activity_counts_once_within_and_across_batches():
    s = fresh()
    b = EventBatch.from_columns(activity_patient=[0, 0], activity_carer=[0, 0],
                                activity_start_s=[at(1), at(1)], activity_minutes=[20.0, 20.0],
                                activity_id_hash=[77, 77])
    assert s.apply(b)["duplicates"] == 1
    assert s.apply(b)["duplicates"] == 2
    assert one(s)["care_minutes_7d"] == 20.0


def test_duplicate_reading_counts_once_and_late_reading_counts():
    s = fresh()
    s.apply(readings((0, at(0)), (0, at(6)), ids=[5, 6]))
    s.apply(readings((0, at(6)), (0, at(3)), ids=[6, 7]))  # 6 re-delivered, 7 late but inside
    assert one(s)["readings_received_7d"] == 3


def test_redelivery_after_the_window_moved_on_is_still_not_counted():
    s = fresh()
    b = activities((0, 0, at(10), 45.0))
    s.apply(b)
    s.apply(readings((0, AS_OF)))  # watermark day D: day D-10 leaves the sum horizon, ids purged
    s.apply(b)  # re-delivery of an id no longer in the table
    got = one(s)
    assert got["care_minutes_7d"] == 0.0
    assert got["active_carers_28d"] == 1
    assert s.stats["stale"] >= 1


def test_as_of_before_the_watermark_day_is_refused():
    s = fresh()
    s.apply(activities((0, 0, at(0, 3600))))
    s.evaluate(at(0, 0))  # same day: fine (day resolution)
    with pytest.raises(StaleAsOfError):
        s.evaluate(at(1, 86399))


def test_evaluating_later_moves_events_out_of_the_windows():
    s = fresh()
    s.apply(activities((0, 0, at(0))))
    assert one(s, AS_OF + 13 * 86400)["flags"] == ["single_carer"]
    assert one(s, AS_OF + 14 * 86400)["flags"] == ["single_carer", "support_lapsed"]
    assert one(s, AS_OF + 28 * 86400)["flags"] == ["no_support_network", "support_lapsed"]


# ------------------------------------------------------------------------------------------
# documents, registry, readings expected
# ------------------------------------------------------------------------------------------

T0 = datetime(2025, 1, 13, 12, tzinfo=UTC)


def test_batch_from_documents_maps_every_document_type():
    s = SupportState()
    docs = [
        Patient(patient_id="p1", region="north", deprivation_quintile=2, age_band="75+",
                monitoring_plan={"glucose": 4, "blood_pressure": 0.5}),
        CarerActivity(activity_id="a1", patient_id="p1", carer_id="c1", kind="visit",
                      started_at=T0 - timedelta(days=1), duration_minutes=30),
        CareLink(patient_id="p1", carer_id="c2", relationship="child", action="join",
                 effective_at=T0 - timedelta(days=40)),
        GatewayBatch(gateway_id="g1", sent_at=T0, readings=[
            Reading(reading_id=f"r{i}", patient_id="p1", device_id="d", kind="glucose",
                    value=6.0, unit="mmol/L", measured_at=T0 - timedelta(hours=i))
            for i in range(3)
        ]),
        Reading(reading_id="r0", patient_id="p1", device_id="d", kind="glucose", value=6.0,
                unit="mmol/L", measured_at=T0),  # a re-delivery of r0
    ]
    batch = batch_from_documents(s, docs)
    assert (batch.n_activities, batch.n_links, batch.n_readings, len(batch.patients)) == (1, 1, 4, 1)
    assert batch.activity_id_hash[0] == id_hash("a", "a1")
    s.apply(batch)
    assert s.watermark == T0
    got = one(s, int(T0.timestamp()))
    assert got["readings_received_7d"] == 3
    assert got["readings_expected_7d"] == 4.5 * 7
    assert got["registered"] == 1
    assert got["flags"] == ["single_carer"]
    ev = s.evaluate()
    assert ev.last_times(0) == {"last_contact_at": "2025-01-12T12:00:00Z",
                                "last_reading_at": "2025-01-13T12:00:00Z"}


def test_batch_from_documents_until_leaves_out_later_days_and_rejects_non_documents():
    s = SupportState()
    late = CarerActivity(activity_id="a2", patient_id="p9", carer_id="c1", kind="visit",
                         started_at=T0 + timedelta(days=1), duration_minutes=30)
    same_day = CarerActivity(activity_id="a3", patient_id="p8", carer_id="c1", kind="visit",
                             started_at=T0 + timedelta(hours=5), duration_minutes=30)
    batch = batch_from_documents(s, [late, same_day], until=T0)
    assert batch.skipped_after_until == 1
    assert s.patient_ids == ["p8"]
    with pytest.raises(TypeError):
        batch_from_documents(s, [object()])


def test_registry_upsert_is_order_independent():
    def record(region: str, reg: datetime | None) -> Patient:
        return Patient(patient_id="p1", region=region, deprivation_quintile=3, age_band="75+",
                       registered_at=reg)

    docs = [record("north", T0), record("south", T0 + timedelta(days=1)), record("east", None)]
    seen = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        s = SupportState()
        s.apply(batch_from_documents(s, [docs[i] for i in order]))
        codes, names = s.group_codes("region")
        seen.add(names[codes[0]])
    assert seen == {"south"}


# ------------------------------------------------------------------------------------------
# batch validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns",
    [
        {"activity_patient": [5], "activity_carer": [0], "activity_start_s": [0],
         "activity_minutes": [1.0], "activity_id_hash": [1]},  # unknown patient slot
        {"activity_patient": [0], "activity_carer": [0], "activity_start_s": [0],
         "activity_minutes": [0.0], "activity_id_hash": [1]},  # minutes not > 0
        {"activity_patient": [0], "activity_carer": [0], "activity_start_s": [0, 1],
         "activity_minutes": [1.0], "activity_id_hash": [1]},  # length mismatch
        {"reading_patient": [0], "reading_kind": [0], "reading_t": [0], "reading_id_hash": [0]},
        {"link_patient": [0], "link_carer": [0], "link_t": [0], "link_action": [0]},
        {"link_patient": [0], "link_carer": [0], "link_t": [2**62], "link_action": [1]},
        {"activity_patient": [0], "activity_carer": [0], "activity_start_s": [0],
         "activity_minutes": [float("nan")], "activity_id_hash": [1]},
    ],
)
def test_malformed_batches_are_refused_before_any_change(columns):
    s = fresh()
    before = s.snapshot()
    with pytest.raises(ValueError):
        s.apply(EventBatch.from_columns(**columns))
    assert s.snapshot() == before


def test_config_is_validated():
    with pytest.raises(ValueError):
        SupportConfig(coverage_days=65)
    with pytest.raises(ValueError):
        SupportConfig(dimensions=("region", "income"))
    assert SupportConfig(coverage_days=7).ring_days == 8
    assert SupportConfig(coverage_days=3).ring_days == 4


# ------------------------------------------------------------------------------------------
# snapshots
# ------------------------------------------------------------------------------------------


def test_snapshot_round_trip_and_corrupt_snapshots():
    s = SupportState()
    s.apply(batch_from_documents(s, [
        Patient(patient_id="p1", region="north", deprivation_quintile=1, age_band="75+"),
        CarerActivity(activity_id="a1", patient_id="p1", carer_id="c1", kind="visit",
                      started_at=T0, duration_minutes=30),
    ]))
    data = s.snapshot()
    r = SupportState.restore(data)
    assert r.evaluate().patients() == s.evaluate().patients()
    assert r.partial_summary() == s.partial_summary()
    assert r.snapshot() == data
    with pytest.raises(SnapshotError):
        SupportState.restore(b"nonsense")
    with pytest.raises(SnapshotError):
        SupportState.restore(data[:9] + (99).to_bytes(2, "little") + data[11:])
    with pytest.raises(SnapshotError):
        SupportState.restore(data[:200])


# ------------------------------------------------------------------------------------------
# summaries and equity
# ------------------------------------------------------------------------------------------


def _registered_state(rows: list[tuple[str, int, bool]]) -> SupportState:
    """rows: (region, quintile, has a contact yesterday)."""
    s = SupportState()
    docs: list = []
    for i, (region, q, contact) in enumerate(rows):
        docs.append(Patient(patient_id=f"p{i}", region=region, deprivation_quintile=q,
                            age_band="75+", monitoring_plan={"glucose": 1}))
        if contact:
            docs.append(CarerActivity(activity_id=f"a{i}", patient_id=f"p{i}", carer_id="c1",
                                      kind="visit", started_at=T0 - timedelta(days=1),
                                      duration_minutes=60))
    s.apply(batch_from_documents(s, docs))
    return s


def test_group_indicators_and_equity_from_summary():
    rows = [("north", 1, False), ("north", 1, True), ("south", 3, True), ("south", 5, True),
            ("east", 5, True), ("east", 5, False)]
    s = _registered_state(rows)
    summary = s.partial_summary(as_of=T0)
    q = summary.groups["deprivation_quintile"]
    assert q["1"].indicators() == {
        "patients": 2, "pct_covered": 50.0, "pct_no_support_network": 50.0,
        "mean_care_minutes_per_week": 30.0, "pct_readings_received": 0.0,
    }
    eq = equity_from_summary(summary)
    want = grouped_measures([50.0, 100.0, 200 / 3], [2, 1, 3], order=[1, 3, 5], favourable=True)
    assert eq["deprivation_quintile"]["pct_covered"] == want
    want_region = grouped_measures([50.0, 50.0, 100.0], [2, 2, 2], favourable=False)
    assert eq["region"]["pct_no_support_network"] == grouped_measures(
        [50.0, 50.0, 0.0], [2, 2, 2], favourable=False)
    assert want_region != eq["region"]["pct_no_support_network"]
    ind = eq["individual"]["care_minutes_7d"]
    assert ind["gini"] == pytest.approx(2 / 6, rel=1e-12)  # four patients at 60, two at 0
    assert ind["mld"] is None  # zero values: MLD undefined


def test_unknown_group_is_reported_but_left_out_of_equity():
    s = _registered_state([("north", 1, True), ("south", 2, False)])
    s.apply(activities((s.patient_slot("unregistered"), s.carer_slot("c1"), int(T0.timestamp()))))
    summary = s.partial_summary(as_of=T0)
    assert summary.groups["region"]["unknown"].patients == 1
    eq = equity_from_summary(summary)
    assert eq["region"]["pct_covered"]["D"] == 100.0


def test_merge_refuses_different_days_and_is_exact():
    a = _registered_state([("north", 1, True)]).partial_summary(as_of=T0)
    b = _registered_state([("north", 1, False)]).partial_summary(as_of=T0)
    m = PartialSummary.merge(a, b)
    assert m.groups["region"]["north"].patients == 2
    assert m.care_ms_values.tolist() == [0, 3_600_000]
    assert m.care_ms_counts.tolist() == [1, 1]
    c = _registered_state([("north", 1, True)]).partial_summary(as_of=T0 + timedelta(days=1))
    with pytest.raises(ValueError):
        PartialSummary.merge(a, c)


def test_reference_agrees_on_a_hand_built_scenario():
    s = fresh(2, 2)
    ref = ReferenceSupport()
    for b in (activities((0, 0, at(3)), (1, 1, at(20))), links((1, 0, at(50), 1)),
              readings((0, at(1)), (0, at(9)))):
        s.apply(b)
        ref.apply(b)
    ev = s.evaluate(AS_OF)
    want = ref.evaluate(AS_OF)
    for slot in (0, 1):
        assert ev.patient(slot) == {k: want[slot][k] for k in ev.patient(slot)}


def test_bytes_per_patient_is_reported():
    s = SupportState(expected_patients=10_000)
    s.add_patients(10_000)
    assert 100 < s.bytes_per_patient() < 1024
    assert np.all(s.evaluate(0).flags == 1)


def test_duplicate_table_survives_long_runs_and_watermark_jumps():
    """300+ days of daily readings with re-deliveries of the last days, and jumps of 250-260
    days (around the 1-byte day-tag wrap): every window counts each reading exactly once."""
    s = fresh()
    ref = ReferenceSupport()
    day = D
    rid = {}
    steps = [1] * 300 + [256, 1, 1, 249, 1, 255, 1, 260, 3, 1]
    for step in steps:
        day += step
        rid[day] = next(_ids)
        days = [d for d in range(day - 9, day + 1) if d in rid]  # today + re-deliveries
        b = readings(*[(0, d * 86400 + 60) for d in days], ids=[rid[d] for d in days])
        s.apply(b)
        ref.apply(b)
        t = day * 86400 + 3600
        assert s.evaluate(t).patient(0) == {
            k: v for k, v in ref.evaluate(t)[0].items() if k in s.evaluate(t).patient(0)}
    assert s._dedup_count <= 7


def test_dedup_buckets_probe_across_buckets_and_wrap_around():
    """A 3-bucket table (not a power of two) filled to 20 of 21 slots: every id is admitted once,
    re-deliveries are refused, and a purge/rehash keeps exactly the ids of the kept days."""
    from monitor.core import support as k

    table = np.zeros((3, k.DEDUP_WAYS + 1), np.uint64)
    ids = [np.uint64(0x9E3779B97F4A7C15 * i % 2**64 or 1) for i in range(1, 21)]
    for i, h in enumerate(ids):
        assert k._dedup_admit(table, h, np.int64(100 + i % 3))
    for i, h in enumerate(ids):
        assert not k._dedup_admit(table, h, np.int64(100 + i % 3))
    assert int(np.count_nonzero(table[:, : k.DEDUP_WAYS])) == 20
    new = np.zeros((5, k.DEDUP_WAYS + 1), np.uint64)
    # watermark day 102, keep 2 days: ids of days 101 and 102 survive
    assert k.rehash_dedup(table, np.int64(102), np.int64(2), new) == sum(
        1 for i in range(20) if i % 3 >= 1)
    for i, h in enumerate(ids):
        assert k._dedup_admit(new, h, np.int64(102)) == (i % 3 == 0)


@given(st.integers(1, 64), st.one_of(st.integers(0, 2**30 + 5), st.integers(-(2**62), 2**62),
                                   st.sampled_from([0, 2**30 - 1, 2**30, -1, -(2**63) // 86400])))
@settings(max_examples=300, deadline=None)
def test_ring_cell_by_reciprocal_is_floor_modulo(cov, day):
    """The ring cell of a day (multiply-shift for the days 0 .. 2**30 - 1, a division elsewhere)
    is exactly ``day mod cov``, for every ring size."""
    from monitor.core import support as k

    m, s = k._mod_magic(np.int64(cov))
    assert k._ring_cell(np.int64(day), np.int64(cov), m, s) == day % cov


def test_state_arrays_are_cache_line_aligned_records():
    s = SupportState(expected_patients=3000, expected_pairs=100, expected_window_events=1000)
    for name, arr in s._arrays.items():
        assert arr.ctypes.data % 64 == 0, name
    assert s._arrays["record"].shape[1] * 8 == 64  # one line per patient (default windows)
    assert SupportState(SupportConfig(coverage_days=64))._arrays["record"].shape[1] * 8 % 64 == 0
    assert s._arrays["pairs"].dtype.itemsize * 4 == 64
    assert s._arrays["links"].dtype.itemsize * 4 == 64
    assert s._arrays["dedup"].shape[1] * 8 == 64
    r = SupportState.restore(s.snapshot())
    for name, arr in r._arrays.items():
        assert arr.ctypes.data % 64 == 0, name


def test_ring_cell_overflow_of_the_low_parts_keeps_exact_sums():
    """More than 2**16 readings and 2**32 care ms on one patient-day use the high parts of the
    ring cells; they are summed, and cleared when the ring moves past their day."""
    s = fresh(2, 60)
    ref = ReferenceSupport()
    n_r = 70_000
    batches = [
        readings(*[(0, at(2, i % 86400)) for i in range(n_r)]),
        readings((0, at(1)), (1, at(1))),
        activities(*[(0, c, at(3, 60 * c), 1440.0) for c in range(55)],  # 55 x 86.4e6 ms
                   (0, 0, at(1), 30.0), (1, 0, at(3), 1440.0)),
    ]
    for b in batches:
        s.apply(b)
        ref.apply(b)

    def check(as_of: int) -> None:
        ev = s.evaluate(as_of)
        want = ref.evaluate(as_of)
        for slot in (0, 1):
            assert ev.patient(slot) == {k: want[slot][k] for k in ev.patient(slot)}

    assert s.evaluate(AS_OF).patient(0)["readings_received_7d"] == n_r + 1
    assert s.evaluate(AS_OF).care_ms[0] == 55 * 86_400_000 + 30 * 60_000
    for later in range(0, 9):
        check(AS_OF + later * 86400)
    # the rings move on by 6 and 10 days: the cells (and high parts) of the old days are cleared
    for b in (readings((0, at(-4))), activities((0, 1, at(-4))), readings((0, at(-8))),
              activities((0, 2, at(-8)))):
        s.apply(b)
        ref.apply(b)
        check(s.watermark_s)
    restored = SupportState.restore(s.snapshot())
    assert restored.evaluate(s.watermark_s).patients() == s.evaluate(s.watermark_s).patients()
