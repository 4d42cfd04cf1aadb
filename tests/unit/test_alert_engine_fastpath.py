"""The fast path of ``AlertEngine.on_readings`` is the reference path, only cheaper.

The engine skips hashing duplicate keys and evaluating rules when they cannot matter; these
properties feed the same random streams (several patients and kinds, values on and around
thresholds, bounded readings, duplicates by id and by content, equal times, backfill, threshold
overrides, support flags, ticks, snapshot/restore) to a default engine and to the reference engine
(:class:`monitor.alerts.reference.ReferenceAlertEngine`, no shortcut) and require identical events
and identical snapshot bytes.
All times are aware UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.alerts.engine import AlertConfig, AlertEngine
from monitor.alerts.reference import ReferenceAlertEngine
from monitor.alerts.rules import RULES, any_holds, checks_for, effective_thresholds, evaluate
from monitor.contract.models import Patient
from monitor.intake.canonical import CanonicalReading

T0 = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)
UNIT = {
    "glucose": "mmol/L",
    "heart_rate": "/min",
    "spo2": "%",
    "body_weight": "kg",
    "body_temperature": "Cel",
    "respiratory_rate": "/min",
    "blood_pressure": "mm[Hg]",
}
PATIENTS = ["p1", "p2", "p3"]
KINDS = ["glucose", "blood_pressure", "body_weight", "heart_rate", "spo2"]
NEAR = [0.0, 1e-7, -1e-7, 4e-7, -4e-7, 5e-7, -5e-7, 6e-7, -6e-7, 1e-6, -1e-6, 1e-5, -1e-5, 0.1, -0.1]
BASE = {
    "glucose": [3.0, 3.9, 13.9, 22.2, 6.0, 2.0, 30.0],
    "heart_rate": [40.0, 50.0, 110.0, 131.0, 70.0],
    "spo2": [91.0, 93.0, 97.0],
    "body_weight": [80.0, 81.0, 82.0, 83.0, 84.5],
    "systolic": [90.0, 120.0, 180.0, 200.0],
    "diastolic": [70.0, 120.0, 130.0],
}
OVERRIDES: list[dict[str, float] | None] = [
    None,
    {"glucose_low": 4.5, "glucose_very_low": 3.5},
    {"glucose_high": 10.0, "heart_rate_high": 100.0, "weight_gain": 1.0},
    {"bp_systolic_high": 160.0, "spo2_low": 95.0, "missed_readings": 1.0},
    {"glucose_low": 3.9000004, "glucose_very_high": 2e6},
]


def near(base: list[float]) -> st.SearchStrategy[float]:
    return st.builds(lambda b, d: b + d, st.sampled_from(base), st.sampled_from(NEAR))


@st.composite
def readings(draw: Any) -> CanonicalReading:
    pid = draw(st.sampled_from(["p1", "p1", "p1", *PATIENTS]))  # mostly one stream: more collisions
    kind = draw(st.sampled_from(["glucose", "glucose", *KINDS]))
    value = systolic = diastolic = None
    if kind == "blood_pressure":
        systolic = draw(near(BASE["systolic"]))
        diastolic = draw(st.one_of(near(BASE["diastolic"]), st.none()))
    else:
        value = draw(st.one_of(near(BASE[kind]), st.just(float("nan")))) if draw(st.booleans()) else None
        if value is None and draw(st.booleans()):
            value = draw(near(BASE[kind]))
    bounded = draw(st.sampled_from([None, None, "low", "high"])) if kind == "glucose" else None
    rid = draw(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f"])))
    return CanonicalReading(
        reading_id=rid,
        patient_id=pid,
        device_id="d1",
        gateway_id=None,
        kind=kind,
        value=value,
        systolic=systolic,
        diastolic=diastolic,
        unit=UNIT[kind],
        original_unit=UNIT[kind],
        original_code=None,
        measured_at=T0 + timedelta(minutes=draw(st.integers(0, 8)) * 10),  # many equal times
        source="native",
        bounded=bounded,
    )


FLAGS = st.sampled_from([None, {}, {"p1": {"support_lapsed"}}, {"p2": ["no_support_network"], "p3": []}])
STEP = st.one_of(
    st.tuples(st.just("readings"), st.lists(readings(), max_size=10), FLAGS),
    st.tuples(st.just("tick"), st.integers(0, 30), FLAGS),
    st.tuples(
        st.just("patient"),
        st.sampled_from(PATIENTS),
        st.sampled_from(OVERRIDES),
        st.sampled_from([{}, {"glucose": 24.0}, {"glucose": 48.0, "body_weight": 1.0}]),
    ),
    st.tuples(st.just("restore")),
    st.tuples(st.just("snapshot")),
)


def engines(config: AlertConfig) -> tuple[AlertEngine, AlertEngine]:
    def clock() -> datetime:
        return T0

    return AlertEngine(config, clock=clock), ReferenceAlertEngine(config, clock=clock)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(STEP, max_size=25),
    stale=st.sampled_from([None, timedelta(minutes=30)]),
)
def test_fast_path_gives_the_events_and_snapshots_of_the_reference_path(steps, stale) -> None:  # type: ignore[no-untyped-def]
    config = AlertConfig(repeat_interval=timedelta(minutes=20), stale_after=stale)
    fast, full = engines(config)
    for step in steps:
        if step[0] == "readings":
            _, batch, flags = step
            assert fast.on_readings(batch, flags) == full.on_readings(batch, flags)
        elif step[0] == "tick":
            _, minute, flags = step
            now = T0 + timedelta(minutes=minute * 5)
            assert fast.tick(now, flags) == full.tick(now, flags)
        elif step[0] == "patient":
            _, pid, overrides, plan = step
            p = Patient(
                patient_id=pid,
                region="north",
                deprivation_quintile=1,
                age_band="70-79",
                monitoring_plan=plan,
                thresholds=overrides,
                registered_at=T0 - timedelta(hours=1),
            )
            fast.on_patient(p)
            full.on_patient(p)
        elif step[0] == "snapshot":
            assert fast.snapshot() == full.snapshot()
        else:  # a restart in the middle: both continue from the (identical) snapshot
            blob = full.snapshot()
            assert fast.snapshot() == blob
            fast, full = engines(config)
            fast.restore(blob)
            full.restore(blob)
    assert fast.snapshot() == full.snapshot()
    assert fast.episodes() == full.episodes()
    assert fast.firing() == full.firing()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(readings(), min_size=1, max_size=12), min_size=1, max_size=6),
    data=st.data(),
)
def test_redelivery_and_reordering_agree_with_the_reference_path(batches, data) -> None:  # type: ignore[no-untyped-def]
    fast, full = engines(AlertConfig())
    for p in PATIENTS:
        patient = Patient(patient_id=p, region="r", deprivation_quintile=2, age_band="50-59",
                          thresholds=data.draw(st.sampled_from(OVERRIDES)))
        fast.on_patient(patient)
        full.on_patient(patient)
    flags = data.draw(FLAGS)
    seen: list[CanonicalReading] = []
    for batch in batches:
        assert fast.on_readings(batch, flags) == full.on_readings(batch, flags)
        seen.extend(batch)
        again = data.draw(st.permutations(seen))[: data.draw(st.integers(0, len(seen)))]
        assert fast.on_readings(again, flags) == full.on_readings(again, flags)
    assert fast.snapshot() == full.snapshot()


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([k for k in UNIT if k != "blood_pressure"] + ["blood_pressure"]),
    base=st.sampled_from([r.threshold for r in RULES] + [0.0, 5.0, 100.0, 3e6]),
    delta=st.one_of(st.sampled_from(NEAR), st.floats(-1e-4, 1e-4), st.floats(-50, 50)),
    other=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    bounded=st.sampled_from([None, "low", "high"]),
    baseline=st.one_of(st.none(), st.floats(-5, 5)),
    overrides=st.sampled_from(OVERRIDES),
)
def test_any_holds_is_any_evaluation_holding(kind, base, delta, other, bounded, baseline, overrides) -> None:  # type: ignore[no-untyped-def]
    x = base + delta
    thresholds, _ = effective_thresholds(overrides)
    values: dict[str, Any] = {"value": x, "systolic": x, "diastolic": other}
    if kind == "body_weight":
        values["value"] = x + (baseline or 0.0)
    for th in (thresholds, None):
        expected = any(e.holds for e in evaluate(kind, bounded=bounded, thresholds=th,
                                                 weight_baseline=baseline, **values))
        got = any_holds(checks_for(kind, th), bounded=bounded, weight_baseline=baseline, **values)
        assert got == expected, (kind, values, bounded, baseline, th)
    assert not any_holds(checks_for("glucose"), value=math.nan)
