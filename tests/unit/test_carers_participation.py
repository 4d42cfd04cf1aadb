"""Who takes part: active carers per 100 patients and adherence by group, Gini across carers.

Hand example, as of 2026-11-30 (window 11-03 .. 11-30)::

    patient  quintile region  activities in the window          partition
    P1       1        north   C1 60 min, C2 120 min             0
    P2       1        south   C1 30 min                         1
    P3       3        north   C1 30 min                         0
    P4       5        south   C3 600 min (C4 100 min on 11-02: outside)  1
    P5       5        north   -                                 1
    PX       (never registered) C9 45 min                       1

    quintile 1: 2 patients, carers {C1, C2} -> 100 per 100; pairs 3; 210 min -> 105 min/patient
    quintile 3: 1 patient,  carers {C1}     -> 100 per 100; pairs 1;  30 min
    quintile 5: 2 patients, carers {C3}     ->  50 per 100; pairs 1; 600 min -> 300 min/patient
    north: 3 patients, {C1, C2} -> 66.67;  south: 2 patients, {C1, C3} -> 100
    carers' minutes: C1 120, C2 120, C3 600, C9 45 -> Gini = 3330 / (2 * 4**2 * 221.25)
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inequality.gini import Gini

from monitor.carers import (
    CarersState,
    ParticipationSummary,
    participation_measures,
    participation_summary,
)
from monitor.contract.models import CarerActivity, Patient
from monitor.core import equity_reference as reference

AS_OF = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def act(aid: str, patient: str, carer: str, started_at: str, minutes: float) -> CarerActivity:
    return CarerActivity(activity_id=aid, patient_id=patient, carer_id=carer, kind="visit",
                         started_at=started_at, duration_minutes=minutes)


def patient(pid: str, quintile: int, region: str) -> Patient:
    return Patient(patient_id=pid, region=region, deprivation_quintile=quintile, age_band="65-74")


PATIENTS = [patient("P1", 1, "north"), patient("P2", 1, "south"), patient("P3", 3, "north"),
            patient("P4", 5, "south"), patient("P5", 5, "north")]
ACTIVITIES = [
    act("a1", "P1", "C1", "2026-11-10T09:00:00Z", 60),
    act("a2", "P1", "C2", "2026-11-03T00:00:00Z", 120),
    act("a3", "P2", "C1", "2026-11-20T09:00:00Z", 30),
    act("a4", "P3", "C1", "2026-11-30T09:00:00Z", 30),
    act("a5", "P4", "C3", "2026-11-15T09:00:00Z", 600),
    act("a6", "P4", "C4", "2026-11-02T23:59:00Z", 100),
    act("a7", "PX", "C9", "2026-11-29T09:00:00Z", 45),
]
PART0 = {"P1", "P3"}
ADHERENCE = {"deprivation_quintile": {1: (80, 100), 3: (45, 50), 5: (95, 100)},
             "region": {"north": (150, 200), "south": (0, 0)}}


def _state(docs: list) -> CarersState:
    s = CarersState()
    s.apply(docs)
    return s


def _close(got: float | None, want: float, rel: float = 1e-9) -> bool:
    if math.isnan(want):
        return got is None
    return got is not None and math.isclose(got, want, rel_tol=rel, abs_tol=1e-12)


def _assert_matches_reference(got: dict, est: list[float], pop: list[float], *, ordered: bool,
                              sii: str) -> None:
    want = reference.grouped_measures(est, pop, order=[1, 3, 5] if ordered else None,
                                      favourable=True, scale=100, sii_method=sii)
    bad = {m: (got[m], want[m]) for m in want if not _close(got[m], want[m])}
    assert not bad


@pytest.fixture(scope="module")
def whole() -> CarersState:
    return _state(PATIENTS + ACTIVITIES)


def test_group_indicators_by_hand(whole: CarersState) -> None:
    out = participation_measures(whole.participation(AS_OF), ADHERENCE)
    q = out["groups"]["deprivation_quintile"]
    assert q["1"] == {"patients": 2, "active_carers": 2, "active_pairs": 3,
                      "active_carers_per_100_patients": 100.0,
                      "care_minutes_per_patient_28d": 105.0, "pct_readings_received": 80.0}
    assert (q["3"]["active_carers"], q["3"]["care_minutes_per_patient_28d"]) == (1, 30.0)
    assert q["5"]["active_carers_per_100_patients"] == 50.0
    assert q["5"]["care_minutes_per_patient_28d"] == 300.0
    assert q["3"]["pct_readings_received"] == 90.0
    r = out["groups"]["region"]
    assert r["north"]["active_carers"] == 2 and r["north"]["patients"] == 3
    assert r["north"]["active_carers_per_100_patients"] == pytest.approx(200 / 3, rel=1e-15)
    assert r["south"]["active_carers"] == 2 and r["south"]["active_pairs"] == 2
    assert r["south"]["pct_readings_received"] is None  # nothing expected


def test_heat_measures_match_the_reference(whole: CarersState) -> None:
    eq = participation_measures(whole.participation(AS_OF), ADHERENCE)["equity"]
    q = eq["deprivation_quintile"]
    _assert_matches_reference(q["active_carers_per_100_patients"], [100, 100, 50], [2, 1, 2],
                              ordered=True, sii="linear")
    _assert_matches_reference(q["care_minutes_per_patient_28d"], [105, 30, 300], [2, 1, 2],
                              ordered=True, sii="linear")
    _assert_matches_reference(q["pct_readings_received"], [80, 90, 95], [2, 1, 2], ordered=True,
                              sii="logit")
    # ordered, favourable: D = most advantaged (q5) - most disadvantaged (q1)
    assert q["active_carers_per_100_patients"]["D"] == -50.0
    assert q["active_carers_per_100_patients"]["R"] == 0.5
    assert q["active_carers_per_100_patients"]["BGV"] is None  # ordered: no BGV
    reg = eq["region"]
    _assert_matches_reference(reg["active_carers_per_100_patients"], [200 / 3, 100], [3, 2],
                              ordered=False, sii="linear")
    assert reg["active_carers_per_100_patients"]["D"] == pytest.approx(100 - 200 / 3)
    assert reg["active_carers_per_100_patients"]["ACI"] is None
    # only one region has an expectation: a single subgroup gives no measure
    assert all(v is None for v in reg["pct_readings_received"].values())


def test_gini_of_care_minutes_across_carers(whole: CarersState) -> None:
    ind = participation_measures(whole.participation(AS_OF))["individual"]
    g = ind["care_minutes_28d_per_carer"]
    assert g["gini"] == pytest.approx(3330 / (2 * 16 * 221.25), rel=1e-12)
    assert g["gini"] == pytest.approx(Gini(np.array([45.0, 120, 120, 600])).g, rel=1e-12)
    assert g["gini"] == pytest.approx(reference.gini_pairwise([45, 120, 120, 600]), rel=1e-12)
    assert "lorenz_p" not in g
    assert "pct_readings_received" not in participation_measures(
        whole.participation(AS_OF))["equity"]["region"]


def test_two_partitions_merge_to_the_whole(whole: CarersState) -> None:
    p0 = _state([d for d in PATIENTS + ACTIVITIES if d.patient_id in PART0])
    p1 = _state([d for d in PATIENTS + ACTIVITIES if d.patient_id not in PART0])
    parts = [p0.participation(AS_OF), p1.participation(AS_OF)]
    # C1 is active in both partitions and in quintile 1 of partition 1 only ...
    assert parts[0].groups["deprivation_quintile"]["1"].active_carers == 2
    assert parts[1].groups["deprivation_quintile"]["1"].active_carers == 1
    merged = ParticipationSummary.merge(*parts)
    # ... so summing per-partition carer counts (3) would be wrong; the union gives 2
    assert merged.groups["deprivation_quintile"]["1"].active_carers == 2
    assert merged == whole.participation(AS_OF)
    assert participation_measures(merged, ADHERENCE) == participation_measures(
        whole.participation(AS_OF), ADHERENCE)


def test_summary_serialises_and_refuses_mixed_days(whole: CarersState) -> None:
    s = whole.participation(AS_OF)
    assert ParticipationSummary.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    later = whole.participation(AS_OF + timedelta(days=1))
    with pytest.raises(ValueError):
        ParticipationSummary.merge(s, later)
    # from a plain window mapping too (as the pipeline could pass)
    cells = whole.fragility.window_cells(AS_OF)
    assert participation_summary(cells, whole.patients, AS_OF) == s


def test_no_activity_gives_null_measures() -> None:
    s = _state(PATIENTS).participation(AS_OF)
    out = participation_measures(s)
    assert out["groups"]["region"]["north"]["active_carers_per_100_patients"] == 0.0
    assert all(v is None for v in out["individual"]["care_minutes_28d_per_carer"].values())


# ------------------------------------------------------------------------------------------
# merge of partitions == the whole == direct computation (hypothesis)
# ------------------------------------------------------------------------------------------

_START = datetime(2026, 10, 1, tzinfo=UTC)
_REGIONS = ["east", "north", "west"]


@st.composite
def populations(draw: st.DrawFn) -> tuple[list[Patient], list[CarerActivity]]:
    n_pat = draw(st.integers(1, 8))
    pats = [patient(f"P{i}", draw(st.integers(1, 5)), draw(st.sampled_from(_REGIONS)))
            for i in range(n_pat)]
    acts = []
    for i in range(draw(st.integers(0, 30))):
        acts.append(act(
            f"a{i}", f"P{draw(st.integers(0, n_pat))}",  # P{n_pat} is never registered
            f"C{draw(st.integers(0, 5))}",
            (_START + timedelta(minutes=draw(st.integers(0, 60 * 1440)))).isoformat(),
            draw(st.sampled_from([0.25, 1, 45, 700, 1440])),
        ))
    return pats, acts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pop=populations(), n_parts=st.integers(1, 4), adherence_seed=st.integers(0, 1000))
def test_merge_equals_whole_and_direct(pop: tuple[list[Patient], list[CarerActivity]],
                                       n_parts: int, adherence_seed: int) -> None:
    pats, acts = pop
    as_of = _START + timedelta(days=60)
    docs = pats + acts
    whole = _state(docs).participation(as_of)
    parts = [_state([d for d in docs if int(d.patient_id[1:]) % n_parts == k]).participation(as_of)
             for k in range(n_parts)]
    merged = ParticipationSummary.merge(*parts)
    assert merged == whole
    adherence = {"deprivation_quintile": {q: ((q * adherence_seed) % 97, 100) for q in range(1, 6)}}
    got = participation_measures(merged, adherence)
    want = participation_measures(whole, adherence)
    _assert_same(got, want)
    # direct from the event set
    first = (as_of - timedelta(days=27)).date()
    active = {(a.patient_id, a.carer_id) for a in acts if first <= a.started_at.date() <= as_of.date()}
    for dim in ("deprivation_quintile", "region"):
        for g, stats in whole.groups[dim].items():
            members = {p.patient_id for p in pats if str(getattr(p, dim)) == g}
            assert stats.patients == len(members)
            assert stats.active_pairs == sum(1 for p, _ in active if p in members)
            carers = {c for p, c in active if p in members}
            assert got["groups"][dim][g]["active_carers"] == len(carers)
            ms = sum(round(a.duration_minutes * 60000) for a in acts
                     if a.patient_id in members and first <= a.started_at.date() <= as_of.date())
            assert stats.care_ms == ms
    per_carer: dict[str, float] = {}
    for a in acts:
        if first <= a.started_at.date() <= as_of.date():
            per_carer[a.carer_id] = per_carer.get(a.carer_id, 0) + a.duration_minutes
    gini = got["individual"]["care_minutes_28d_per_carer"]["gini"]
    if per_carer:
        assert gini == pytest.approx(reference.gini_pairwise(list(per_carer.values())), rel=1e-9)
    else:
        assert gini is None


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, float) and isinstance(b, float):
        assert a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    else:
        assert a == b
