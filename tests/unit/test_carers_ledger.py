"""The carers' compensation ledger: ISO weeks (UTC), overload at 35 h, idempotence, partitions.

Timeline of the overload example (ISO week 2026-W44 = Mon 2026-10-26 .. Sun 2026-11-01, UTC)::

    carer  Mon 26        Wed 28        Sun 01
    C1     P1 700 min    P2 700 min    P3 700 min   -> 2100 min = 35 h  overloaded
    C2     P1 700 min    P2 700 min    P3 699 min   -> 2099 min         not overloaded
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.carers import (
    CarerLedger,
    CarersInputError,
    CarersState,
    ledger_from_file,
    merge_rows,
    notification_id,
    notifications_from_rows,
    parse_week,
    replay_carers,
    replay_carers_state,
    rows_from_json,
    to_csv,
    to_json,
    week_label,
    week_of,
)
from monitor.contract.models import CareLink, CarerActivity, Patient
from monitor.core.state import SnapshotError, StaleAsOfError


def act(aid: str, patient: str, carer: str, started_at: str, minutes: float,
        kind: str = "visit") -> CarerActivity:
    return CarerActivity(activity_id=aid, patient_id=patient, carer_id=carer, kind=kind,
                         started_at=started_at, duration_minutes=minutes)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


OVERLOAD_DOCS = [
    act("a1", "P1", "C1", "2026-10-26T09:00:00Z", 700),
    act("a2", "P2", "C1", "2026-10-28T09:00:00Z", 700, "meal"),
    act("a3", "P3", "C1", "2026-11-01T09:00:00Z", 700, "personal_care"),
    act("b1", "P1", "C2", "2026-10-26T10:00:00Z", 700),
    act("b2", "P2", "C2", "2026-10-28T10:00:00Z", 700),
    act("b3", "P3", "C2", "2026-11-01T10:00:00Z", 699, "phone_call"),
]


def by_carer(rows: list[dict]) -> dict[str, dict]:
    return {r["carer_id"]: r for r in rows}


# ------------------------------------------------------------------------------------------
# ISO weeks
# ------------------------------------------------------------------------------------------


def test_2026_has_53_iso_weeks_and_labels_round_trip() -> None:
    assert date(2026, 12, 28).isocalendar().week == 53  # 2026 is a 53-week ISO year
    assert date(2025, 12, 28).isocalendar().week == 52
    assert week_label(parse_week("2026-W53")) == "2026-W53"
    assert parse_week("2027-W01") == parse_week("2026-W53") + 1
    assert parse_week("2026-W45") == parse_week("2026-W44") + 1
    with pytest.raises(CarersInputError):
        parse_week("2025-W53")
    for bad in ("2026-44", "2026-W4", "2026-W00", "W44", ""):
        with pytest.raises(CarersInputError):
            parse_week(bad)


@pytest.mark.parametrize(
    ("instant", "week"),
    [
        ("2026-11-01T23:59:59Z", "2026-W44"),  # Sunday 23:59 UTC
        ("2026-11-02T00:00:00Z", "2026-W45"),  # Monday 00:00 UTC
        ("2026-11-02T00:30:00+01:00", "2026-W44"),  # Monday local time, Sunday 23:30 UTC
        ("2027-01-03T23:59:00Z", "2026-W53"),  # the last day of ISO year 2026
        ("2027-01-04T00:00:00Z", "2027-W01"),
        ("2026-01-01T00:00:00Z", "2026-W01"),  # a Thursday: week 1 of 2026
        ("2021-01-03T12:00:00Z", "2020-W53"),
    ],
)
def test_week_of_uses_the_utc_day(instant: str, week: str) -> None:
    assert week_of(t(instant)) == week


def test_week_boundary_sunday_2359_vs_monday_0000() -> None:
    led = CarerLedger()
    led.apply([
        act("s", "P1", "C1", "2026-11-01T23:59:00Z", 600),  # runs into Monday: wholly W44
        act("m", "P1", "C1", "2026-11-02T00:00:00Z", 30),
        act("z", "P1", "C1", "2026-11-02T00:30:00+01:00", 15),  # Sunday 23:30 UTC
    ])
    assert by_carer(led.week_rows("2026-W44"))["C1"]["minutes"] == 615.0
    assert by_carer(led.week_rows("2026-W45"))["C1"]["minutes"] == 30.0


def test_week_53_boundary() -> None:
    led = CarerLedger()
    led.apply([act("w", "P1", "C1", "2026-12-28T00:00:00Z", 1440),  # Monday of 2026-W53
               act("x", "P2", "C1", "2027-01-03T23:59:00Z", 660),  # Sunday 23:59 UTC
               act("y", "P1", "C1", "2027-01-04T00:00:00Z", 1)])
    (r53,) = led.week_rows("2026-W53")
    (r01,) = led.week_rows("2027-W01")
    assert (r53["minutes"], r53["overload"]) == (2100.0, True)
    assert (r01["minutes"], r01["overload"]) == (1.0, False)
    assert led.weeks() == ["2026-W53", "2027-W01"]


# ------------------------------------------------------------------------------------------
# overload at exactly 2100 minutes
# ------------------------------------------------------------------------------------------


def test_overload_at_2100_not_2099_across_patients_and_days() -> None:
    led = CarerLedger()
    counts = led.apply(OVERLOAD_DOCS)
    assert counts == {"applied": 6, "duplicates": 0, "too_old": 0}
    rows = led.week_rows("2026-W44")
    assert [r["carer_id"] for r in rows] == ["C1", "C2"]
    c1, c2 = rows
    assert c1 == {
        "week": "2026-W44", "carer_id": "C1", "minutes": 2100.0, "hours": 35.0,
        "activities_by_kind": {"meal": 1, "personal_care": 1, "visit": 1}, "patients": 3,
        "overload": True,
    }
    assert c2["minutes"] == 2099.0 and c2["hours"] == 34.98 and c2["overload"] is False
    assert c2["activities_by_kind"] == {"phone_call": 1, "visit": 2}
    assert c2["patients"] == 3


def test_overload_threshold_is_exact_on_fractional_minutes() -> None:
    led = CarerLedger()
    # 2099.999 minutes then +0.001: exactly 2100 in milliseconds
    led.apply([act("f1", "P1", "C1", "2026-10-26T09:00:00Z", 1440),
               act("f2", "P1", "C1", "2026-10-27T09:00:00Z", 659.999)])
    assert led.week_rows("2026-W44")[0]["overload"] is False
    led.apply([act("f3", "P2", "C1", "2026-10-28T09:00:00Z", 0.001)])
    assert led.week_rows("2026-W44")[0]["overload"] is True


@pytest.mark.parametrize("n_parts", [2, 3])
def test_partitions_merged_equal_one_ledger(n_parts: int) -> None:
    whole = CarerLedger()
    whole.apply(OVERLOAD_DOCS)
    parts = [CarerLedger() for _ in range(n_parts)]
    for d in OVERLOAD_DOCS:  # by patient: P1 -> 0, P2 -> 1, P3 -> 2 (mod n)
        parts[(int(d.patient_id[1]) - 1) % n_parts].apply([d])
    partial = [p.week_rows("2026-W44") for p in parts]
    assert all(not r["overload"] for rows in partial for r in rows)  # no partition sees 35 h
    merged = merge_rows(partial)
    assert merged == whole.week_rows("2026-W44")
    assert by_carer(merged)["C1"]["overload"] is True
    assert by_carer(merged)["C2"]["overload"] is False
    # through JSON (rows sent between workers) too
    assert merge_rows([rows_from_json(to_json(r)) for r in partial]) == merged


def test_duplicates_count_once() -> None:
    led = CarerLedger()
    led.apply(OVERLOAD_DOCS)
    again = led.apply(OVERLOAD_DOCS[:3] + [OVERLOAD_DOCS[5]])
    assert again == {"applied": 0, "duplicates": 4, "too_old": 0}
    # a duplicate inside one batch too
    led2 = CarerLedger()
    assert led2.apply(OVERLOAD_DOCS + OVERLOAD_DOCS)["duplicates"] == 6
    assert led.week_rows("2026-W44") == led2.week_rows("2026-W44")
    assert by_carer(led.week_rows("2026-W44"))["C2"]["minutes"] == 2099.0


# ------------------------------------------------------------------------------------------
# retention and order independence
# ------------------------------------------------------------------------------------------


def test_retention_drops_old_weeks_and_ignores_late_ones() -> None:
    led = CarerLedger(retention_weeks=8)
    led.apply([act("old", "P1", "C1", "2026-09-07T09:00:00Z", 60)])  # 2026-W37
    led.apply([act("new", "P1", "C1", "2026-10-26T09:00:00Z", 60)])  # 2026-W44: horizon W37
    assert led.weeks() == ["2026-W37", "2026-W44"]
    assert led.week_rows("2026-W37")[0]["minutes"] == 60.0
    led.apply([act("newer", "P1", "C1", "2026-11-02T09:00:00Z", 60)])  # W45: horizon W38
    assert led.weeks() == ["2026-W44", "2026-W45"]
    with pytest.raises(StaleAsOfError):
        led.week_rows("2026-W37")
    assert led.apply([act("late", "P1", "C1", "2026-09-08T09:00:00Z", 60)])["too_old"] == 1
    assert led.week_rows("2026-W38") == []  # inside the horizon, nothing there
    assert led.week_rows("2027-W10") == []  # the future: nothing yet


_START = datetime(2026, 9, 1, tzinfo=UTC)


@st.composite
def activity_sets(draw: st.DrawFn) -> list[CarerActivity]:
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        out.append(act(
            f"a{i}", f"P{draw(st.integers(0, 5))}", f"C{draw(st.integers(0, 3))}",
            (_START + timedelta(minutes=draw(st.integers(0, 16 * 7 * 1440)))).isoformat(),
            draw(st.sampled_from([0.5, 1, 59.75, 120, 700, 1440])),
            draw(st.sampled_from(["visit", "meal", "transport"])),
        ))
    return out


def _all_rows(led: CarerLedger) -> list[dict]:
    return [r for w in led.weeks() for r in led.week_rows(w)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=activity_sets(), seed=st.integers(0, 2**32 - 1), n_parts=st.integers(1, 3))
def test_order_batches_duplicates_and_partitions_do_not_matter(
    docs: list[CarerActivity], seed: int, n_parts: int
) -> None:
    rng = random.Random(seed)
    whole = CarerLedger(retention_weeks=4)
    whole.apply(docs)
    delivered = docs + rng.sample(docs, k=len(docs) // 2)  # at-least-once re-deliveries
    rng.shuffle(delivered)
    parts = [CarerLedger(retention_weeks=4) for _ in range(n_parts)]
    i = 0
    while i < len(delivered):
        size = rng.randint(1, 7)
        for d in delivered[i:i + size]:
            parts[int(d.patient_id[1:]) % n_parts].apply([d])
        i += size
    # the retention horizon is the same (max week) in every partition only if each saw it; merge
    # the weeks every partition still retains
    horizon = max(p.horizon_week for p in parts if p.horizon_week is not None)
    weeks = [w for w in whole.weeks() if parse_week(w) >= horizon]
    for w in weeks:
        merged = merge_rows([p.week_rows(w) for p in parts if p.horizon_week is not None
                             and parse_week(w) >= p.horizon_week])
        assert merged == whole.week_rows(w)
    if n_parts == 1:
        assert _all_rows(parts[0]) == _all_rows(whole)
    # reference: direct sums from the distinct events
    for w in weeks:
        expected: dict[str, float] = {}
        for d in docs:
            if week_of(d.started_at) == w:
                expected[d.carer_id] = expected.get(d.carer_id, 0) + round(d.duration_minutes * 60000)
        got = {r["carer_id"]: round(r["minutes"] * 60000) for r in whole.week_rows(w)}
        assert got == expected


# ------------------------------------------------------------------------------------------
# notifications
# ------------------------------------------------------------------------------------------


def test_overloaded_carers_current_and_last_complete_week() -> None:
    led = CarerLedger()
    led.apply(OVERLOAD_DOCS)  # C1 overloaded in W44
    led.apply([act("w45", "P1", "C3", "2026-11-03T09:00:00Z", 1440),
               act("w45b", "P1", "C3", "2026-11-04T09:00:00Z", 660)])  # C3: 2100 in W45
    led.apply([act("w43", "P1", "C4", "2026-10-19T09:00:00Z", 1440),
               act("w43b", "P1", "C4", "2026-10-20T09:00:00Z", 1440)])  # C4: W43
    notes = led.overloaded_carers(t("2026-11-04T12:00:00Z"))  # current W45, last complete W44
    assert [(n.week, n.carer_id) for n in notes] == [("2026-W44", "C1"), ("2026-W45", "C3")]
    n = notes[0]
    assert n.notification == "carer_overload" and n.minutes == 2100.0
    assert n.notification_id == hashlib.sha256(b"C1|2026-W44|carer_overload").hexdigest()[:32]
    assert n.notification_id == notification_id("C1", "2026-W44")
    assert n.as_of == "2026-11-04T12:00:00Z"
    # deterministic: the same evaluation later in the week gives the same ids
    again = led.overloaded_carers(t("2026-11-08T23:59:59Z"))
    assert [x.notification_id for x in again] == [x.notification_id for x in notes]
    assert n.to_dict()["carer_id"] == "C1"


def test_notifications_from_merged_rows_only() -> None:
    parts = [CarerLedger(), CarerLedger()]
    parts[0].apply([d for d in OVERLOAD_DOCS if d.patient_id == "P1"])
    parts[1].apply([d for d in OVERLOAD_DOCS if d.patient_id != "P1"])
    as_of = t("2026-11-01T20:00:00Z")
    assert parts[0].overloaded_carers(as_of) == [] and parts[1].overloaded_carers(as_of) == []
    merged = merge_rows([p.week_rows("2026-W44") for p in parts])
    notes = notifications_from_rows(merged, as_of)
    assert [n.carer_id for n in notes] == ["C1"]


# ------------------------------------------------------------------------------------------
# snapshot, formats, file and replay helpers
# ------------------------------------------------------------------------------------------


def test_snapshot_restore_round_trip() -> None:
    led = CarerLedger(retention_weeks=3, overload_minutes=1000)
    led.apply(OVERLOAD_DOCS)
    data = led.snapshot()
    assert data.startswith(b"CMCARERLEDGER") and b"P1" not in data  # compressed, versioned
    back = CarerLedger.restore(data)
    assert back.snapshot() == data
    assert back.week_rows("2026-W44") == led.week_rows("2026-W44")
    assert back.retention_weeks == 3 and back.overload_minutes == 1000
    assert back.apply(OVERLOAD_DOCS)["duplicates"] == 6  # the id sets came back too
    with pytest.raises(SnapshotError):
        CarerLedger.restore(b"nonsense")
    with pytest.raises(SnapshotError):
        CarerLedger.restore(data[:13] + (99).to_bytes(2, "little") + data[15:])
    with pytest.raises(SnapshotError):
        CarerLedger.restore(data[:-5])


def test_csv_and_json() -> None:
    led = CarerLedger()
    led.apply(OVERLOAD_DOCS)
    rows = led.week_rows("2026-W44")
    text = to_csv(rows)
    lines = text.splitlines()
    assert lines[0] == "week,carer_id,minutes,hours,activities_by_kind,patients,overload"
    assert lines[1] == '2026-W44,C1,2100.0,35.0,"{""meal"":1,""personal_care"":1,""visit"":1}",3,true'
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[1]["overload"] == "false" and json.loads(parsed[1]["activities_by_kind"]) == {
        "phone_call": 1, "visit": 2}
    assert rows_from_json(to_json(rows)) == rows
    with pytest.raises(CarersInputError):
        rows_from_json('[{"carer_id": "C1"}]')


def test_ledger_from_file(tmp_path) -> None:
    path = tmp_path / "events.ndjson"
    lines = [json.dumps({"type": "carer_activity", **d.model_dump(mode="json")}) for d in OVERLOAD_DOCS]
    lines += [lines[0], "", "{not json", json.dumps({
        "type": "carer_activity", "activity_id": "other-week", "patient_id": "P1", "carer_id": "C1",
        "kind": "visit", "started_at": "2026-11-02T00:00:00Z", "duration_minutes": 5})]
    path.write_text("\n".join(lines) + "\n")
    out = ledger_from_file(path, "2026-W44", "csv")
    assert out.splitlines()[1].startswith("2026-W44,C1,2100.0,35.0,")
    assert len(out.splitlines()) == 3
    rows = json.loads(ledger_from_file(path, "2026-W44", "json"))
    assert [(r["carer_id"], r["minutes"], r["overload"]) for r in rows] == [
        ("C1", 2100.0, True), ("C2", 2099.0, False)]
    assert json.loads(ledger_from_file(path, "2026-W45", "json"))[0]["minutes"] == 5.0
    with pytest.raises(CarersInputError):
        ledger_from_file(path, "2026-W44", "xml")
    with pytest.raises(CarersInputError):
        ledger_from_file(path, "2025-W53", "csv")


def test_replay_carers_report() -> None:
    docs = OVERLOAD_DOCS + [act("n1", "P1", "C1", "2026-11-03T09:00:00Z", 30),
                            act("later", "P1", "C1", "2026-11-20T09:00:00Z", 30)]
    report = replay_carers(docs, t("2026-11-03T12:00:00Z"))
    assert report == {
        "C1": {"minutes_by_week": {"2026-W44": 2100.0, "2026-W45": 30.0},
               "flags": ["overloaded:2026-W44"]},
        "C2": {"minutes_by_week": {"2026-W44": 2099.0}, "flags": []},
    }
    # default as-of: the latest event
    assert replay_carers(docs)["C1"]["minutes_by_week"]["2026-W47"] == 30.0
    assert replay_carers([]) == {}


def test_carers_state_snapshot_round_trip() -> None:
    docs = [
        *OVERLOAD_DOCS,
        CareLink(patient_id="P1", carer_id="C1", relationship="child", action="join",
                 effective_at="2026-10-01T00:00:00Z"),
        Patient(patient_id="P1", region="north", deprivation_quintile=1, age_band="65-74"),
    ]
    state = replay_carers_state(docs)
    back = CarersState.restore(state.snapshot())
    as_of = t("2026-11-01T12:00:00Z")
    assert back.snapshot() == state.snapshot()
    assert back.carer_report(as_of) == state.carer_report(as_of)
    assert back.patient_flags(as_of) == state.patient_flags(as_of)
    assert back.participation(as_of) == state.participation(as_of)
    assert back.patients == state.patients and back.latest_event == state.latest_event
    with pytest.raises(SnapshotError):
        CarersState.restore(state.ledger.snapshot())
