"""The engine's tick visits only what is due, and ticks exactly as the reference engine does.

:class:`monitor.alerts.reference.ReferenceAlertEngine` keeps the tick of older releases (every
patient, planned kind and open episode visited on every call); :class:`AlertEngine` keeps
deadlines in heaps (:mod:`monitor.alerts.timers`). The property drives both with the same random
patients (plans, threshold overrides including a ``missed_readings`` factor of zero or one that
pushes the deadline past year 9999, ``registered_at`` absent, past or future), readings (objects
and columnar slices, live, late and out of order), support flags changing between calls (patients
becoming unsupported and back, as dicts and as a lazy mapping), ticks at increasing, equal and
earlier times, snapshots and restarts, and requires identical events, snapshot bytes, episodes
and firing lists. All times are aware UTC; nothing here measures time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.alerts.engine import AlertConfig, AlertEngine
from monitor.alerts.reference import ReferenceAlertEngine
from monitor.contract.models import Patient
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import ReadingSlice, scan_readings

T0 = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)
PATIENTS = ["p1", "p2", "p3", "p4"]
UNIT = {"glucose": "mmol/L", "heart_rate": "/min", "spo2": "%", "body_weight": "kg",
        "blood_pressure": "mm[Hg]"}
VALUES = {
    "glucose": [2.0, 3.5, 6.0, 6.0, 14.5, 25.0],
    "heart_rate": [35.0, 70.0, 70.0, 120.0, 140.0],
    "spo2": [88.0, 92.0, 97.0, 97.0],
    "body_weight": [80.0, 81.0, 83.5],
}
PLANS = [{}, {"glucose": 24.0}, {"glucose": 4.0, "heart_rate": 2.0}, {"spo2": 1.0, "glucose": 12.0},
         {"heart_rate": 0.5}, {"glucose": 1.0, "spo2": 3.0, "heart_rate": 24.0}]
OVERRIDES: list[dict[str, float] | None] = [
    None, None, {"missed_readings": 1.0}, {"missed_readings": 0.0}, {"missed_readings": 3.5},
    {"missed_readings": 1e8}, {"missed_readings": 0.5, "glucose_high": 10.0},
]
FLAG_SETS: list[list[str]] = [[], ["support_lapsed"], ["no_support_network"], ["low_participation"],
                              ["low_participation", "support_lapsed"]]


class LazyFlags(Mapping[str, list[str]]):
    """A read-only flags view like the pipeline's: absent patients raise ``KeyError`` inside
    ``get``, iteration yields only the patients with flags."""

    def __init__(self, flags: dict[str, list[str]]) -> None:
        self._flags = {p: f for p, f in flags.items() if f}

    def __getitem__(self, patient_id: str) -> list[str]:
        return list(self._flags[patient_id])

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._flags))

    def __len__(self) -> int:
        return len(self._flags)


@st.composite
def flag_maps(draw: Any) -> Mapping[str, Any] | None:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return None
    flags = {p: draw(st.sampled_from(FLAG_SETS)) for p in draw(st.lists(st.sampled_from(PATIENTS)))}
    if choice == 1:
        return LazyFlags(flags)
    if choice == 2:  # more keys than patients with open episodes: looked up patient by patient
        flags.update({f"other{i}": ["support_lapsed"] for i in range(12)})
    return flags


PLANNED = ["glucose", "glucose", "heart_rate", "spo2"]
OFFSETS = [-1440, -600, -180, -60, -30, -10, 0, 0, 0, 5, 30, 90, None]
"""Minutes from the current tick time at which a reading is measured (``None``: anywhere)."""


def measured(offset: int | None, absolute: int, now: datetime) -> datetime:
    return T0 + timedelta(minutes=30 * absolute) if offset is None else now + timedelta(minutes=offset)


@st.composite
def readings(draw: Any) -> tuple[Any, ...]:
    """A reading, measured relative to the tick time when it is applied (see :func:`reading`)."""
    pid = draw(st.sampled_from(PATIENTS))
    kind = draw(st.sampled_from([*PLANNED, *PLANNED, "body_weight", "blood_pressure"]))
    value = systolic = diastolic = None
    if kind == "blood_pressure":
        systolic = draw(st.sampled_from([120.0, 185.0, 95.0]))
        diastolic = draw(st.sampled_from([80.0, 125.0]))
    else:
        value = draw(st.sampled_from(VALUES[kind]))
    return (draw(st.sampled_from([None, "a", "b", "c"])), pid, kind, value, systolic, diastolic,
            draw(st.sampled_from(OFFSETS)), draw(st.integers(-6, 150)),
            draw(st.sampled_from([False, False, False, True])))


def reading(spec: tuple[Any, ...], now: datetime) -> CanonicalReading:
    rid, pid, kind, value, systolic, diastolic, offset, absolute, late = spec
    return CanonicalReading(
        reading_id=rid, patient_id=pid, device_id="d1", gateway_id=None, kind=kind, value=value,
        systolic=systolic, diastolic=diastolic, unit=UNIT[kind], original_unit=UNIT[kind],
        original_code=None, measured_at=measured(offset, absolute, now), source="native", late=late)


@st.composite
def slice_specs(draw: Any) -> tuple[list[tuple[Any, ...]], int]:
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(PLANNED))
        rows.append((draw(st.sampled_from(["s1", "s2", "s3"])), draw(st.sampled_from(PATIENTS)), kind,
                     draw(st.sampled_from(VALUES[kind])), draw(st.sampled_from(OFFSETS)),
                     draw(st.integers(-6, 150))))
    return rows, draw(st.sampled_from([0, 5, 3000]))


def slices(spec: tuple[list[tuple[Any, ...]], int], now: datetime) -> list[Any]:
    """Columnar slices of clean readings (the engine's quiet-group path moves streams itself)."""
    rows, delay = spec
    docs = [{"reading_id": rid, "patient_id": pid, "device_id": "d:1", "kind": kind, "value": value,
             "unit": UNIT[kind], "measured_at": measured(offset, absolute, now).replace(
                 second=0, microsecond=0).isoformat().replace("+00:00", "Z")}
            for rid, pid, kind, value, offset, absolute in rows]
    latest = max(datetime.fromisoformat(d["measured_at"]) for d in docs)
    spans, cols = scan_readings([json.dumps(d).encode() for d in docs],
                                received_at=latest + timedelta(minutes=delay), oldest=timedelta(days=400))
    return [ReadingSlice(cols, span[1], span[2]) for span in spans if span is not None]


REGISTERED = [None, T0 - timedelta(hours=1), T0 + timedelta(hours=3), T0 - timedelta(days=2)]
PATIENT = st.tuples(st.sampled_from(PATIENTS), st.sampled_from(PLANS), st.sampled_from(OVERRIDES),
                    st.sampled_from(REGISTERED))
MINUTES = [0, 0, 10, 20, 30, 60, 60, 120, 180, 360, 720, 1440, -60]
TICK_STEP = st.tuples(st.just("tick"), st.sampled_from(MINUTES), flag_maps())
STEP = st.one_of(
    st.tuples(st.just("readings"), st.lists(readings(), max_size=6), flag_maps()),
    st.tuples(st.just("slices"), slice_specs(), flag_maps()),
    TICK_STEP, TICK_STEP, TICK_STEP,
    st.tuples(st.just("patient"), PATIENT),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("restore")),
    st.tuples(st.just("restore_in_place")),
    st.tuples(st.just("read")),
)


def patient(pid: str, plan: dict[str, float], overrides: dict[str, float] | None,
            registered_at: datetime | None) -> Patient:
    return Patient(patient_id=pid, region="north", deprivation_quintile=3, age_band="60-69",
                   monitoring_plan=plan, thresholds=overrides, registered_at=registered_at)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(PATIENT, min_size=1, max_size=4),
    steps=st.lists(STEP, min_size=1, max_size=50),
    repeat=st.sampled_from([None, timedelta(minutes=20), timedelta(hours=1), timedelta(minutes=90)]),
    retain=st.sampled_from([None, timedelta(hours=2), timedelta(days=1)]),
    stale=st.sampled_from([None, timedelta(minutes=30)]),
    start=st.integers(-2, 4),
)
def test_tick_gives_the_events_and_state_of_the_reference_tick(  # type: ignore[no-untyped-def]
    initial, steps, repeat, retain, stale, start,
) -> None:
    config = AlertConfig(repeat_interval=repeat, retain_resolved=retain, stale_after=stale)

    def engines() -> tuple[AlertEngine, AlertEngine]:
        return AlertEngine(config, clock=lambda: T0), ReferenceAlertEngine(config, clock=lambda: T0)

    fast, ref = engines()
    for spec in initial:
        fast.on_patient(patient(*spec))
        ref.on_patient(patient(*spec))
    now = T0 + timedelta(hours=start)
    for step in steps:
        if step[0] in ("readings", "slices"):
            _, spec, flags = step
            batch = [reading(r, now) for r in spec] if step[0] == "readings" else slices(spec, now)
            assert fast.on_readings(batch, flags) == ref.on_readings(batch, flags)
        elif step[0] == "tick":
            _, minutes, flags = step
            now += timedelta(minutes=minutes)  # equal, increasing and (clamped) earlier times
            assert fast.tick(now, flags) == ref.tick(now, flags)
        elif step[0] == "patient":
            p = patient(*step[1])
            fast.on_patient(p)
            ref.on_patient(p)
        elif step[0] == "snapshot":
            assert fast.snapshot() == ref.snapshot()
        elif step[0] == "read":
            assert fast.episodes() == ref.episodes()
            assert fast.firing() == ref.firing()
        else:  # a restart (fresh engines, or the same ones) continuing from the same snapshot
            blob = ref.snapshot()
            assert fast.snapshot() == blob
            if step[0] == "restore":
                fast, ref = engines()
            fast.restore(blob)
            ref.restore(blob)
    assert fast.snapshot() == ref.snapshot()
    assert fast.episodes() == ref.episodes()
    assert fast.firing() == ref.firing()
    # and one more tick long after everything: every deadline comes due
    late = now + timedelta(days=3)
    assert fast.tick(late, {"p1": ["support_lapsed"]}) == ref.tick(late, {"p1": ["support_lapsed"]})
    assert fast.snapshot() == ref.snapshot()


class CountingFlags(Mapping[str, list[str]]):
    """Flags that count the lookups made through them."""

    def __init__(self, flags: dict[str, list[str]]) -> None:
        self.flags, self.gets, self.iterated = flags, 0, 0

    def __getitem__(self, patient_id: str) -> list[str]:
        self.gets += 1
        return self.flags[patient_id]

    def __iter__(self) -> Iterator[str]:
        self.iterated += 1
        return iter(self.flags)

    def __len__(self) -> int:
        return len(self.flags)


def test_a_tick_with_nothing_due_looks_at_nothing() -> None:
    """Many registered patients with plans and fresh readings, no open episode: a tick before any
    deadline looks up no patient's flags and opens nothing; the first tick past the deadlines
    opens exactly the missed kinds, in key order, like the reference."""
    fast, ref = AlertEngine(), ReferenceAlertEngine()
    ids = [f"p{i:03d}" for i in range(200)]
    for pid in ids:
        p = patient(pid, {"glucose": 4.0}, None, T0 - timedelta(days=1))
        fast.on_patient(p)
        ref.on_patient(p)
    batch = [CanonicalReading(reading_id=f"r{pid}", patient_id=pid, device_id=None, gateway_id=None,
                              kind="glucose", value=6.0, systolic=None, diastolic=None, unit="mmol/L",
                              original_unit="mmol/L", original_code=None, measured_at=T0, source="native")
             for pid in ids]
    assert fast.on_readings(batch) == ref.on_readings(batch) == []
    flags = CountingFlags({pid: ["low_participation"] for pid in ids})
    for hour in (1, 2, 6, 11):  # the allowed gap is 2 x 6 h
        now = T0 + timedelta(hours=hour)
        assert fast.tick(now, flags) == ref.tick(now, flags) == []
    ref_gets = flags.gets
    flags.gets = 0
    for hour in (1, 2, 6, 11):
        assert fast.tick(T0 + timedelta(hours=hour), flags) == []
    assert flags.gets == 0 and ref_gets >= 4 * len(ids)
    now = T0 + timedelta(hours=12)
    events = fast.tick(now, flags)
    assert events == ref.tick(now, flags)
    assert [e.patient_id for e in events] == ids and {e.notification for e in events} == {"firing"}
    assert fast.snapshot() == ref.snapshot()
    # the next tick: every patient has a calm open episode; their flags are looked at once each
    later = now + timedelta(minutes=10)
    flags.gets = 0
    assert fast.tick(later, flags) == []
    assert flags.gets <= len(ids)
    assert ref.tick(later, flags) == []


def test_an_episode_opened_between_ticks_escalates_on_the_next_tick() -> None:
    """A reading opens an episode without flags; the tick's flags say the patient is unsupported:
    the tick escalates it, though the patient's flags did not change between the two ticks."""
    fast, ref = AlertEngine(), ReferenceAlertEngine()
    flags = {"p1": ["support_lapsed"]}
    assert fast.tick(T0, flags) == ref.tick(T0, flags) == []
    high = CanonicalReading(reading_id="x", patient_id="p1", device_id=None, gateway_id=None,
                            kind="glucose", value=25.0, systolic=None, diastolic=None, unit="mmol/L",
                            original_unit="mmol/L", original_code=None,
                            measured_at=T0 + timedelta(minutes=5), source="native")
    opened = fast.on_readings([high])
    assert opened == ref.on_readings([high]) and opened[0].unsupported is False
    now = T0 + timedelta(minutes=10)
    events = fast.tick(now, flags)
    assert events == ref.tick(now, flags)
    assert [(e.notification, e.unsupported, e.escalated_from) for e in events] == [
        ("renotify", True, opened[0].severity)]
    assert fast.snapshot() == ref.snapshot()
