"""Fragile support networks: single point of failure (>= 90 % of 28 days' care) and network lost.

As-of day D = 2026-11-30 (UTC). Day offsets counted back from D::

    D-28 = 11-02 (29th day, outside 28-day window)   D-27 = 11-03 (28th day, inside)
    D-14 = 11-16 (15th day, outside 14-day window)   D-13 = 11-17 (14th day, inside)
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.carers import FragilityState
from monitor.contract.models import CareLink, CarerActivity
from monitor.core.state import SnapshotError, StaleAsOfError

AS_OF = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)


def act(aid: str, patient: str, carer: str, started_at: str, minutes: float) -> CarerActivity:
    return CarerActivity(activity_id=aid, patient_id=patient, carer_id=carer, kind="visit",
                         started_at=started_at, duration_minutes=minutes)


def link(patient: str, carer: str, action: str, at: str) -> CareLink:
    return CareLink(patient_id=patient, carer_id=carer, relationship="friend", action=action,
                    effective_at=at)


def test_single_point_of_failure_90_vs_89_percent() -> None:
    fs = FragilityState()
    fs.apply([
        act("p1a", "P90", "A", "2026-11-10T10:00:00Z", 90),
        act("p1b", "P90", "B", "2026-11-20T10:00:00Z", 10),
        act("p2a", "P89", "A", "2026-11-10T10:00:00Z", 89),
        act("p2b", "P89", "B", "2026-11-20T10:00:00Z", 11),
        act("p3a", "P1C", "A", "2026-11-29T10:00:00Z", 5),  # a single active carer: 100 %
        act("p3b", "P1C", "A", "2026-11-30T10:00:00Z", 5),
    ])
    shares = fs.top_share(AS_OF)
    assert shares == {"P1C": 1.0, "P89": 0.89, "P90": 0.9}
    assert fs.flags(AS_OF) == {"P1C": ["single_point_of_failure"], "P90": ["single_point_of_failure"]}


def test_the_window_is_28_days() -> None:
    fs = FragilityState()
    fs.apply([
        act("out", "P", "A", "2026-11-02T23:59:59Z", 100),  # D-28: outside
        act("in", "P", "B", "2026-11-03T00:00:00Z", 90),  # D-27: inside
        act("now", "P", "A", "2026-11-30T00:00:00Z", 10),
    ])
    # inside only: B 90 of 100 -> 90 %; with the outside activity it would be A 110 of 200
    assert fs.top_share(AS_OF) == {"P": 0.9}
    assert fs.flags(AS_OF) == {"P": ["single_point_of_failure"]}
    assert fs.window_cells(AS_OF) == {"P": {"A": (600_000, 1), "B": (5_400_000, 1)}}
    # a day later the B activity leaves the window too: A alone (100 %)
    assert fs.top_share(AS_OF + timedelta(days=1)) == {"P": 1.0}


def test_network_lost_14_vs_15_days() -> None:
    fs = FragilityState()
    fs.apply([
        link("P14", "A", "join", "2026-10-01T00:00:00Z"),
        link("P14", "A", "leave", "2026-11-17T23:59:59Z"),  # D-13: the 14th day, inside
        link("P15", "A", "join", "2026-10-01T00:00:00Z"),
        link("P15", "A", "leave", "2026-11-16T23:59:59Z"),  # D-14: the 15th day, outside
        link("P0", "A", "join", "2026-10-01T00:00:00Z"),
        link("P0", "A", "leave", "2026-11-30T17:00:00Z"),  # today
    ])
    assert fs.flags(AS_OF) == {"P0": ["network_lost"], "P14": ["network_lost"]}
    # the next day, P14's leave is on the 15th day
    assert fs.flags(AS_OF + timedelta(days=1)) == {"P0": ["network_lost"]}


def test_network_lost_needs_the_last_carer_to_leave_and_a_join_clears_it() -> None:
    fs = FragilityState()
    fs.apply([
        link("P", "A", "join", "2026-10-01T00:00:00Z"),
        link("P", "B", "join", "2026-10-02T00:00:00Z"),
        link("P", "A", "leave", "2026-11-20T00:00:00Z"),
    ])
    assert fs.flags(AS_OF) == {}  # B is still registered
    fs.apply([link("P", "B", "leave", "2026-11-25T00:00:00Z")])
    assert fs.flags(AS_OF) == {"P": ["network_lost"]}
    assert fs.registered_carers("P") == []
    fs.apply([link("P", "C", "join", "2026-11-26T00:00:00Z")])  # a join after the leave
    assert fs.flags(AS_OF) == {}
    assert fs.registered_carers("P") == ["C"]


def test_same_instant_leave_wins_and_rejoin_clears() -> None:
    fs = FragilityState()
    fs.apply([link("P", "A", "join", "2026-11-25T00:00:00Z"),
              link("P", "A", "leave", "2026-11-25T00:00:00Z")])
    assert fs.flags(AS_OF) == {"P": ["network_lost"]}
    fs.apply([link("P", "A", "join", "2026-11-25T00:00:01Z")])
    assert fs.flags(AS_OF) == {}
    # an older leave arriving late changes nothing (latest link wins)
    fs.apply([link("P", "A", "leave", "2026-11-24T00:00:00Z")])
    assert fs.flags(AS_OF) == {}


def test_both_flags_together_and_duplicates() -> None:
    fs = FragilityState()
    docs = [link("P", "A", "join", "2026-10-01T00:00:00Z"),
            act("x", "P", "A", "2026-11-20T10:00:00Z", 60),
            link("P", "A", "leave", "2026-11-21T00:00:00Z")]
    fs.apply(docs)
    counts = fs.apply(docs)
    assert counts["duplicates"] == 1 and counts["applied"] == 0
    assert fs.window_cells(AS_OF) == {"P": {"A": (3_600_000, 1)}}
    assert fs.flags(AS_OF) == {"P": ["network_lost", "single_point_of_failure"]}


def test_stale_as_of_and_retention() -> None:
    fs = FragilityState()
    fs.apply([act("old", "P", "A", "2026-11-01T10:00:00Z", 60)])
    fs.apply([act("new", "P", "B", "2026-11-30T10:00:00Z", 60)])  # horizon = 11-03
    assert fs.window_cells(AS_OF) == {"P": {"B": (3_600_000, 1)}}
    assert fs.apply([act("late", "P", "A", "2026-11-02T10:00:00Z", 60)])["too_old"] == 1
    with pytest.raises(StaleAsOfError):
        fs.flags(datetime(2026, 11, 29, tzinfo=UTC))


def test_snapshot_round_trip() -> None:
    fs = FragilityState(window_days=20, lost_days=10, spof_percent=80)
    docs = [link("P", "A", "join", "2026-10-01T00:00:00Z"),
            act("x", "P", "A", "2026-11-20T10:00:00Z", 60),
            act("y", "Q", "B", "2026-11-21T10:00:00Z", 60.5),
            link("Q", "B", "leave", "2026-11-22T00:00:00Z")]
    fs.apply(docs)
    data = fs.snapshot()
    back = FragilityState.restore(data)
    assert back.snapshot() == data
    assert back.flags(AS_OF) == fs.flags(AS_OF)
    assert back.top_share(AS_OF) == fs.top_share(AS_OF)
    assert back.apply(docs)["duplicates"] == 2
    assert (back.window_days, back.lost_days, back.spof_percent) == (20, 10, 80)
    with pytest.raises(SnapshotError):
        FragilityState.restore(b"CMCARERFRAGILITY\x01\x00garbage")


_START = datetime(2026, 10, 1, tzinfo=UTC)


@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 60 * 1440),
                  st.sampled_from([1, 30, 700]), st.sampled_from(["act", "join", "leave"])),
        min_size=1, max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_order_and_redelivery_do_not_matter(events: list, seed: int) -> None:
    docs = []
    for i, (p, c, minute, m, what) in enumerate(events):
        at = (_START + timedelta(minutes=minute)).isoformat()
        docs.append(act(f"a{i}", f"P{p}", f"C{c}", at, m) if what == "act"
                    else link(f"P{p}", f"C{c}", what, at))
    as_of = _START + timedelta(days=61)
    a = FragilityState()
    a.apply(docs)
    rng = random.Random(seed)
    shuffled = docs + rng.sample(docs, k=len(docs) // 2)
    rng.shuffle(shuffled)
    b = FragilityState()
    for i in range(0, len(shuffled), 3):
        b.apply(shuffled[i:i + 3])
    assert b.flags(as_of) == a.flags(as_of)
    assert b.top_share(as_of) == a.top_share(as_of)
    assert b.window_cells(as_of) == a.window_cells(as_of)
    # reference: direct sums over the 28-day window from the distinct events
    d = (as_of.date() - datetime(1970, 1, 1).date()).days
    ref: dict[str, dict[str, int]] = {}
    for doc in docs:
        if isinstance(doc, CarerActivity):
            day = (doc.started_at.date() - datetime(1970, 1, 1).date()).days
            if d - 27 <= day <= d:
                cell = ref.setdefault(doc.patient_id, {})
                cell[doc.carer_id] = cell.get(doc.carer_id, 0) + round(doc.duration_minutes * 60000)
    assert {p: {c: v[0] for c, v in cs.items()} for p, cs in a.window_cells(as_of).items()} == ref
