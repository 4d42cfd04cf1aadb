"""Property tests of the support core: numba == reference, order independence, exact merges, recovery.

Events are drawn as small canonical tuples over few patients, carers, days and ids, so that
duplicates, window boundaries and same-instant care links occur often.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.contract.models import CareLink, CarerActivity, Patient, Reading
from monitor.core.batch import batch_from_documents
from monitor.core.reference import ReferenceSupport
from monitor.core.state import SupportConfig, SupportState
from monitor.core.summary import PartialSummary
from monitor.equity import equity_from_summary

BASE = datetime(2025, 3, 1, tzinfo=UTC)
PATIENTS = [f"p{i}" for i in range(6)]
CARERS = [f"c{i}" for i in range(4)]
REGIONS = ["north", "south", "east"]
BANDS = ["18-64", "65-74", "75+"]

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

activity = st.tuples(
    st.just("activity"), st.integers(0, 5), st.integers(0, 3), st.integers(0, 80),
    st.integers(0, 86399), st.sampled_from([0.5, 1.0, 15.0, 30.25, 1440.0]), st.integers(0, 40),
)
link = st.tuples(
    st.just("link"), st.integers(0, 5), st.integers(0, 3), st.integers(0, 80),
    st.sampled_from([0, 3600, 43200]), st.sampled_from(["join", "leave"]),
)
reading = st.tuples(
    st.just("reading"), st.integers(0, 5), st.integers(0, 80), st.integers(0, 86399),
    st.integers(0, 40),
)
patient = st.tuples(
    st.just("patient"), st.integers(0, 5), st.sampled_from(REGIONS), st.integers(1, 5),
    st.sampled_from(BANDS), st.sampled_from([{}, {"glucose": 4.0}, {"glucose": 0.5, "spo2": 1.0}]),
    st.sampled_from([None, 0, 5]),
)
events = st.lists(st.one_of(activity, link, reading, patient), min_size=1, max_size=60)


def _at(day: int, second: int) -> datetime:
    return BASE + timedelta(days=day, seconds=second)


def to_doc(ev: tuple[Any, ...]) -> Any:
    """A canonical tuple -> a contract document. Ids depend on the id index only, so two tuples
    with the same id index are re-deliveries of one event (same content)."""
    kind = ev[0]
    if kind == "activity":
        _, p, c, day, sec, minutes, ident = ev
        # the content of an activity is a function of its id, as for a real re-delivery
        rng = random.Random(ident)
        p, c, day, sec = rng.randrange(6), rng.randrange(4), rng.randrange(81), rng.randrange(86400)
        minutes = rng.choice([0.5, 1.0, 15.0, 30.25, 1440.0])
        return CarerActivity(
            activity_id=f"a{ident}", patient_id=PATIENTS[p], carer_id=CARERS[c], kind="visit",
            started_at=_at(day, sec), duration_minutes=minutes,
        )
    if kind == "link":
        _, p, c, day, sec, action = ev
        return CareLink(patient_id=PATIENTS[p], carer_id=CARERS[c], relationship="friend",
                        action=action, effective_at=_at(day, sec))
    if kind == "reading":
        _, p, day, sec, ident = ev
        rng = random.Random(1000 + ident)
        p, day, sec = rng.randrange(6), rng.randrange(81), rng.randrange(86400)
        return Reading(reading_id=f"r{ident}", patient_id=PATIENTS[p], device_id="d1",
                       kind="glucose", value=5.0, unit="mmol/L", measured_at=_at(day, sec))
    _, p, region, q, band, plan, reg_day = ev
    return Patient(patient_id=PATIENTS[p], region=region, deprivation_quintile=q, age_band=band,
                   monitoring_plan=plan,
                   registered_at=None if reg_day is None else _at(reg_day, 0))


# Ids from a tiny alphabet shared by every patient and kind, so that two patients (or two kinds
# of one patient) reuse an id in almost every example: a duplicate is the same (patient, kind,
# id), so the content of an event is a function of that triple (a re-delivery has the same
# content) and events that only share the id are different events.
SHARED_KINDS = [("glucose", "mmol/L", 5.0), ("heart_rate", "/min", 70.0), ("spo2", "%", 97.0)]
shared_activity = st.tuples(st.just("activity"), st.integers(0, 5), st.integers(0, 2))
shared_reading = st.tuples(st.just("reading"), st.integers(0, 5), st.integers(0, 2),
                           st.integers(0, 2))
shared_events = st.lists(st.one_of(shared_activity, shared_reading, link, patient), min_size=1,
                         max_size=60)


def shared_doc(ev: tuple[Any, ...]) -> Any:
    """A shared-id tuple -> a contract document (links and patients as :func:`to_doc`)."""
    if ev[0] == "activity":
        _, p, ident = ev
        rng = random.Random(f"a/{p}/{ident}")  # content = f(patient, id)
        return CarerActivity(
            activity_id=str(ident), patient_id=PATIENTS[p], carer_id=CARERS[rng.randrange(4)],
            kind="visit", started_at=_at(rng.randrange(10), rng.randrange(86400)),
            duration_minutes=rng.choice([0.5, 1.0, 15.0, 30.25, 600.0, 1440.0]))
    if ev[0] == "reading":
        _, p, kind, ident = ev
        rng = random.Random(f"r/{p}/{kind}/{ident}")  # content = f(patient, kind, id)
        name, unit, value = SHARED_KINDS[kind]
        return Reading(reading_id=str(ident), patient_id=PATIENTS[p], device_id="d1",
                       kind=name, value=value, unit=unit,
                       measured_at=_at(rng.randrange(10), rng.randrange(86400)))
    return to_doc(ev)


def distinct_sums(docs: list[Any], as_of_s: int, coverage_days: int = 7) -> dict[str, tuple[int, int]]:
    """The oracle of the sums, independent of any hash: per patient id, (care ms, readings) of
    the distinct (patient, "activity", id) / (patient, kind, id) in the coverage window."""
    today = as_of_s // 86400
    seen: dict[tuple[str, str, str], Any] = {}
    for d in docs:
        if isinstance(d, CarerActivity):
            seen.setdefault((d.patient_id, "activity", d.activity_id), d)
        elif isinstance(d, Reading):
            seen.setdefault((d.patient_id, str(d.kind.value), d.reading_id), d)
    out: dict[str, tuple[int, int]] = {}
    for (pid, kind, _), d in seen.items():
        t = d.started_at if kind == "activity" else d.measured_at
        if not 0 <= today - int(t.timestamp()) // 86400 < coverage_days:
            continue
        ms, n = out.get(pid, (0, 0))
        out[pid] = (ms + round(d.duration_minutes * 60_000), n) if kind == "activity" else (ms, n + 1)
    return out


def run_core(docs: list[Any], splits: list[int], config: SupportConfig | None = None) -> SupportState:
    state = SupportState(config)
    start = 0
    for end in [*sorted(set(splits)), len(docs)]:
        if end > start:
            state.apply(batch_from_documents(state, docs[start:end]))
            start = end
    return state


def core_view(state: SupportState, as_of_s: int) -> dict[str, Any]:
    ev = state.evaluate(as_of_s)
    out = {}
    for i, pid in enumerate(ev.patient_ids):
        out[pid] = {**ev.patient(i), **ev.last_times(i), "covered": bool(ev.covered[i]),
                    "registered": int(ev.registered_carers[i])}
    return out


@SETTINGS
@given(events, st.lists(st.integers(0, 60), max_size=4), st.integers(0, 40),
       st.integers(0, 86399))
def test_numba_core_equals_reference(evs, splits, extra_days, extra_s):
    docs = [to_doc(e) for e in evs]
    state = SupportState()
    ref = ReferenceSupport()
    start = 0
    for end in [*sorted(set(splits)), len(docs)]:
        if end > start:
            batch = batch_from_documents(state, docs[start:end])
            state.apply(batch)
            ref.apply(batch)
            start = end
    assert state.watermark_s == ref.watermark_s
    as_of = (state.watermark_s or 0) + extra_days * 86400 + extra_s
    ev = state.evaluate(as_of)
    expected = ref.evaluate(as_of)
    assert set(expected) == set(range(state.n_patients))
    for slot, want in expected.items():
        got = ev.patient(slot)
        for key in got:
            assert got[key] == want[key], (key, slot)
        assert bool(ev.covered[slot]) == want["covered"]
        assert int(ev.registered_carers[slot]) == want["registered_carers"]
        last_c = int(ev.last_contact_s[slot])
        assert (None if last_c < -(2**62) else last_c) == want["last_contact_s"]
    summary = state.partial_summary(ev)
    assert {d: dict(g) for d, g in summary.groups.items()} == ref.group_counts(as_of)


@SETTINGS
@given(shared_events, st.randoms(use_true_random=False), st.lists(st.integers(0, 60), max_size=4),
       st.integers(0, 3), st.integers(0, 86399))
def test_shared_ids_numba_core_equals_reference_and_counts_per_patient_and_kind(
        evs, rnd, splits, extra_days, extra_s):
    """Ids reused across patients and kinds, re-delivered at random places and batch splits:
    numba == reference on every metric, and both count each distinct (patient, kind, id) once."""
    docs = [shared_doc(e) for e in evs]
    docs += rnd.sample(docs, k=min(len(docs), 5))  # exact re-deliveries
    rnd.shuffle(docs)
    state = SupportState()
    ref = ReferenceSupport()
    start = 0
    for end in [*sorted(set(splits)), len(docs)]:
        if end > start:
            batch = batch_from_documents(state, docs[start:end])
            state.apply(batch)
            ref.apply(batch)
            start = end
    as_of = (state.watermark_s or 0) + extra_days * 86400 + extra_s
    ev = state.evaluate(as_of)
    expected = ref.evaluate(as_of)
    assert set(expected) == set(range(state.n_patients))
    for slot, want in expected.items():
        got = ev.patient(slot)
        assert got == {key: want[key] for key in got}, slot
        assert bool(ev.covered[slot]) == want["covered"]
    oracle = distinct_sums(docs, as_of)
    for slot, pid in enumerate(ev.patient_ids):
        assert (int(ev.care_ms[slot]), int(ev.readings_received[slot])) == oracle.get(pid, (0, 0))
    assert {d: dict(g) for d, g in state.partial_summary(ev).groups.items()} == \
        ref.group_counts(as_of)
    restored = SupportState.restore(state.snapshot())
    restored.apply(batch_from_documents(restored, docs))  # everything again, after a restore
    assert core_view(restored, as_of) == core_view(state, as_of)


@SETTINGS
@given(events, st.randoms(use_true_random=False), st.lists(st.integers(0, 60), max_size=4),
       st.integers(0, 30))
def test_any_permutation_and_batching_gives_the_same_result(evs, rnd, splits, extra_days):
    docs = [to_doc(e) for e in evs]
    shuffled = list(docs)
    rnd.shuffle(shuffled)
    # re-deliver a random sample once more, at random places
    redelivered = shuffled + rnd.sample(docs, k=min(len(docs), 5))
    rnd.shuffle(redelivered)
    a = run_core(docs, [])
    b = run_core(redelivered, splits)
    assert a.watermark_s == b.watermark_s
    as_of = (a.watermark_s or 0) + extra_days * 86400
    assert core_view(a, as_of) == core_view(b, as_of)
    assert a.partial_summary(as_of=as_of) == b.partial_summary(as_of=as_of)


@SETTINGS
@given(events, st.integers(2, 4), st.randoms(use_true_random=False))
def test_partial_summaries_of_k_workers_merge_exactly(evs, k, rnd):
    docs = [to_doc(e) for e in evs]
    single = run_core(docs, [])
    as_of = single.watermark_s or 0
    worker_of = {p: rnd.randrange(k) for p in PATIENTS}
    workers = [SupportState() for _ in range(k)]
    for doc in docs:
        pids = {r.patient_id for r in doc.readings} if hasattr(doc, "readings") else {doc.patient_id}
        (pid,) = pids
        w = workers[worker_of[pid]]
        w.apply(batch_from_documents(w, [doc]))
    parts = [w.partial_summary(as_of=as_of) for w in workers]
    merged = parts[0]
    for part in parts[1:]:
        merged = PartialSummary.merge(merged, part)
    whole = single.partial_summary(as_of=as_of)
    assert merged == whole
    assert PartialSummary.from_dict(merged.to_dict()) == whole
    eq_merged = equity_from_summary(merged)
    eq_whole = equity_from_summary(whole)
    _assert_close(eq_merged, eq_whole)


def _assert_close(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), (a, b)
    else:
        assert a == b


@SETTINGS
@given(events, st.integers(0, 60), st.integers(0, 20))
def test_snapshot_restore_round_trip_mid_stream(evs, cut, extra_days):
    docs = [to_doc(e) for e in evs]
    cut = min(cut, len(docs))
    uninterrupted = run_core(docs, [cut])
    first = run_core(docs[:cut], [])
    restored = SupportState.restore(first.snapshot())
    if cut < len(docs):
        restored.apply(batch_from_documents(restored, docs[cut:]))
    as_of = (uninterrupted.watermark_s or 0) + extra_days * 86400
    assert core_view(restored, as_of) == core_view(uninterrupted, as_of)
    assert restored.partial_summary(as_of=as_of) == uninterrupted.partial_summary(as_of=as_of)
    assert restored.snapshot() == SupportState.restore(restored.snapshot()).snapshot()


@SETTINGS
@given(events, st.integers(0, 20))
def test_non_default_windows_match_reference(evs, extra_days):
    config = SupportConfig(coverage_days=3, active_days=10, lapse_days=5)
    docs = [to_doc(e) for e in evs]
    state = SupportState(config)
    ref = ReferenceSupport(config)
    batch = batch_from_documents(state, docs)
    state.apply(batch)
    ref.apply(batch)
    as_of = (state.watermark_s or 0) + extra_days * 86400
    ev = state.evaluate(as_of)
    for slot, want in ref.evaluate(as_of).items():
        assert ev.patient(slot) == {k: want[k] for k in ev.patient(slot)}


def test_growth_of_every_table_keeps_the_state():
    """Many patients and pairs and events force several rehashes; compare with the reference."""
    rng = np.random.default_rng(7)
    state = SupportState()
    state.add_patients(3000)
    state.add_carers(500)
    ref = ReferenceSupport()
    from monitor.core.batch import EventBatch

    next_id = 1
    for b in range(6):
        n = 4000
        cols = {
            "activity_patient": rng.integers(0, 3000, n),
            "activity_carer": rng.integers(0, 500, n),
            "activity_start_s": (20_000 + b * 2 + rng.integers(0, 10, n)) * 86400
            + rng.integers(0, 86400, n),
            "activity_minutes": rng.integers(1, 120, n).astype(float),
            "activity_id_hash": np.arange(next_id, next_id + n, dtype=np.uint64),
            "link_patient": rng.integers(0, 3000, n // 4),
            "link_carer": rng.integers(0, 500, n // 4),
            "link_t": (20_000 + rng.integers(0, 20, n // 4)) * 86400,
            "link_action": rng.choice([-1, 1], n // 4),
            "reading_patient": rng.integers(0, 3000, n),
            "reading_kind": np.zeros(n),
            "reading_t": (20_000 + b * 2 + rng.integers(0, 10, n)) * 86400,
            "reading_id_hash": np.arange(10**9 + next_id, 10**9 + next_id + n, dtype=np.uint64),
        }
        next_id += n
        # re-deliver a quarter of the events of this batch (exact copies, shuffled)
        again = rng.permutation(n)[: n // 4]
        for prefix in ("activity", "reading"):
            for key in [k for k in cols if k.startswith(prefix)]:
                cols[key] = np.concatenate((cols[key], cols[key][again]))
        batch = EventBatch.from_columns(**cols)
        state.apply(batch)
        ref.apply(batch)
    as_of = state.watermark_s
    assert as_of is not None
    ev = state.evaluate(as_of)
    want = ref.evaluate(as_of)
    for slot in want:
        assert ev.patient(slot) == {k: want[slot][k] for k in ev.patient(slot)}


@SETTINGS
@given(st.lists(st.tuples(st.integers(-2, 6), st.integers(-2, 5), st.sampled_from(
    [0.0, -1.0, 0.5, 1440.0, 1440.5, math.nan, math.inf]), st.integers(0, 3)), max_size=6),
    st.lists(st.tuples(st.integers(-1, 6), st.integers(-1, 5), st.sampled_from([-2, -1, 0, 1]),
                       st.sampled_from([0, 2**62 - 1, 2**62, -(2**62)])), max_size=4),
    st.lists(st.tuples(st.integers(-1, 6), st.integers(0, 2)), max_size=4))
def test_batch_validation_kernel_agrees_with_numpy(acts, lnks, reads):
    """One-pass range checks (scan_batch) == the numpy predicates; the latest time is the max."""
    from monitor.core.batch import EventBatch

    b = EventBatch.from_columns(
        activity_patient=[a[0] for a in acts], activity_carer=[a[1] for a in acts],
        activity_start_s=[100 * i for i in range(len(acts))],
        activity_minutes=[a[2] for a in acts], activity_id_hash=[a[3] for a in acts],
        link_patient=[x[0] for x in lnks], link_carer=[x[1] for x in lnks],
        link_action=[x[2] for x in lnks], link_t=[x[3] for x in lnks],
        reading_patient=[r[0] for r in reads], reading_kind=[0] * len(reads),
        reading_t=[7 * i for i in range(len(reads))], reading_id_hash=[r[1] for r in reads])
    m = b.activity_minutes
    valid = (all(0 <= x < 5 for x in np.concatenate(
                (b.activity_patient, b.link_patient, b.reading_patient)))
             and all(0 <= x < 4 for x in np.concatenate((b.activity_carer, b.link_carer)))
             and bool(np.all(np.isfinite(m)) and np.all(m > 0) and np.all(m <= 1440))
             and bool(np.all(np.abs(b.link_action) == 1))
             and bool(np.all(b.activity_id_hash != 0) and np.all(b.reading_id_hash != 0))
             and bool(np.all(np.abs(b.link_t) < 2**62)))
    try:
        t_max = b.check(5, 4)
    except ValueError:
        assert not valid
    else:
        assert valid
        times = b.times()
        assert t_max == (int(times.max()) if times.size else None)
