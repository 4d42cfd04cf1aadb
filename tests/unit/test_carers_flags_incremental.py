"""The incremental ``FragilityState.flags`` against a full scan of every patient (the code it replaced).

Random activities (duplicates, tiny durations that round to 0 ms, late and too-old ones), care links
(joins and leaves, at the same instant too), patients and as-of times (mostly non-decreasing, with
same-day repeats, jumps past the window and steps back to the watermark day), snapshots restored
midway: the flags must equal the reference at every call.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from monitor.carers import NETWORK_LOST, SINGLE_POINT_OF_FAILURE, CarersState, FragilityState
from monitor.carers.state import CarersConfig
from monitor.contract.models import CareLink, CarerActivity
from monitor.core.state import StaleAsOfError
from monitor.core.timeutil import day_of

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def reference_flags(fs: FragilityState, as_of: datetime | int) -> dict[str, list[str]]:
    """The full scan ``FragilityState.flags`` was before it became incremental (verbatim rules)."""
    d = fs._as_of_day(as_of)
    out: dict[str, list[str]] = {}
    for pid, carers in fs.window_cells(d).items():
        total = sum(ms for ms, _ in carers.values())
        top = max(ms for ms, _ in carers.values())
        single = sum(1 for _, n in carers.values() if n) == 1
        if single or 100 * top >= fs.spof_percent * total:
            out.setdefault(pid, []).append(SINGLE_POINT_OF_FAILURE)
    first = d - fs.lost_days + 1
    for pid, pairs in fs._links.items():
        if not pairs or any(not leave for _, leave in pairs.values()):
            continue
        last_leave_day = day_of(max(t for t, _ in pairs.values()))
        if first <= last_leave_day <= d:
            out.setdefault(pid, []).append(NETWORK_LOST)
    return {pid: sorted(fl) for pid, fl in sorted(out.items())}


def _random_docs(rng: random.Random, clock: datetime, n_patients: int, n_carers: int,
                 seq: list[int]) -> list[CarerActivity | CareLink]:
    docs: list[CarerActivity | CareLink] = []
    for _ in range(rng.choice([0, 1, 2, 5, 12])):
        pid = f"P{rng.randrange(n_patients)}"
        back = rng.choice([0, 0, 0, 1, 3, 10, 27, 28, 40])  # late, on the horizon, too old
        t = clock - timedelta(days=back, seconds=rng.randrange(86_400))
        if rng.random() < 0.6:
            seq[0] += 1
            aid = f"a{rng.randrange(seq[0])}" if rng.random() < 0.15 else f"a{seq[0]}"  # dup ids
            minutes = rng.choice([0.000001, 1, 5, 30, 90, 240, rng.uniform(0, 600)])
            docs.append(CarerActivity(activity_id=aid, patient_id=pid,
                                      carer_id=f"C{rng.randrange(n_carers)}", kind="visit",
                                      started_at=t, duration_minutes=minutes))
        else:
            if rng.random() < 0.3:  # a join and a leave at the same instant: the leave wins
                t = t.replace(second=0, microsecond=0, minute=0)
            docs.append(CareLink(patient_id=pid, carer_id=f"C{rng.randrange(n_carers)}",
                                 relationship="friend", action=rng.choice(["join", "leave", "leave"]),
                                 effective_at=t))
    rng.shuffle(docs)
    return docs


def _drive(seed: int, steps: int, config: CarersConfig) -> int:
    rng = random.Random(seed)
    n_patients = rng.choice([1, 3, 8, 20])
    n_carers = rng.choice([1, 2, 4])
    state = CarersState(config)
    clock = T0
    as_of = T0
    seq = [0]
    checked = 0
    for _ in range(steps):
        clock += rng.choice([timedelta(0), timedelta(hours=1), timedelta(hours=7),
                             timedelta(days=1), timedelta(days=3), timedelta(days=config.window_days),
                             timedelta(days=config.window_days + 5)])
        docs = _random_docs(rng, clock, n_patients, n_carers, seq)
        if docs:
            state.apply(docs)
        if rng.random() < 0.05:
            state = CarersState.restore(state.snapshot())
        fs = state.fragility
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            wm = fs.watermark_day
            r = rng.random()
            if r < 0.08 and wm is not None:  # before the watermark day: both refuse
                stale = datetime.fromtimestamp((wm - 1) * 86_400 + 3600, UTC)
                with pytest.raises(StaleAsOfError):
                    state.patient_flags(stale)
                with pytest.raises(StaleAsOfError):
                    reference_flags(fs, stale)
                continue
            if r < 0.18 and wm is not None:  # back to the watermark day (allowed)
                at = datetime.fromtimestamp(wm * 86_400 + rng.randrange(86_400), UTC)
            else:
                at = max(as_of, clock) + rng.choice([timedelta(0), timedelta(minutes=30),
                                                     timedelta(hours=5), timedelta(days=1),
                                                     timedelta(days=9)])
                as_of = at
            want = reference_flags(fs, at)
            got = state.patient_flags(at)
            assert got == want, (seed, at)
            assert fs.flags(day_of(int(at.timestamp()))) == want
            checked += 1
    return checked


@pytest.mark.parametrize("seed", range(40))
def test_incremental_flags_equal_the_full_scan(seed: int) -> None:
    assert _drive(seed, 120, CarersConfig()) > 0


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("window_days", "lost_days", "spof_percent"),
                         [(1, 1, 100), (3, 2, 50), (7, 30, 90)])
def test_incremental_flags_equal_the_full_scan_other_windows(
        seed: int, window_days: int, lost_days: int, spof_percent: int) -> None:
    cfg = CarersConfig(window_days=window_days, lost_days=lost_days, spof_percent=spof_percent)
    assert _drive(1000 + seed, 80, cfg) > 0


def test_the_answer_is_a_new_dict_each_call() -> None:
    fs = FragilityState()
    fs.apply([
        CarerActivity(activity_id="a", patient_id="P", carer_id="C", kind="visit",
                      started_at=T0, duration_minutes=30),
        CareLink(patient_id="Q", carer_id="C", relationship="friend", action="leave",
                 effective_at=T0),
    ])
    first = fs.flags(T0)
    assert first == {"P": [SINGLE_POINT_OF_FAILURE], "Q": [NETWORK_LOST]}
    first["P"].append("x")
    first.pop("Q")
    assert fs.flags(T0) == {"P": [SINGLE_POINT_OF_FAILURE], "Q": [NETWORK_LOST]}


def test_the_cache_follows_applies_between_calls_of_the_same_day() -> None:
    fs = FragilityState()
    at = T0 + timedelta(hours=20)
    fs.apply([CarerActivity(activity_id="a", patient_id="P", carer_id="A", kind="visit",
                            started_at=T0, duration_minutes=60)])
    assert fs.flags(at) == {"P": [SINGLE_POINT_OF_FAILURE]}
    fs.apply([CarerActivity(activity_id="b", patient_id="P", carer_id="B", kind="visit",
                            started_at=T0 + timedelta(hours=1), duration_minutes=60)])
    assert fs.flags(at) == {}
    fs.apply([CareLink(patient_id="P", carer_id="A", relationship="friend", action="leave",
                       effective_at=T0 + timedelta(hours=2))])
    assert fs.flags(at) == {"P": [NETWORK_LOST]}
    fs.apply([CareLink(patient_id="P", carer_id="B", relationship="friend", action="join",
                       effective_at=T0 + timedelta(hours=3))])
    assert fs.flags(at) == {}
    # the activities leave the window 28 days later; the B link stays a join
    assert fs.flags(T0 + timedelta(days=28)) == {}
    assert fs.flags(T0 + timedelta(days=27)) == {}
