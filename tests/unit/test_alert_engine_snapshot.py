"""Snapshots of the alert engine: version 2 (columnar), version 1 still restored, bad input rejected.

The random streams of ``test_alert_engine_fastpath`` (several patients and kinds, duplicates by id
and by content, equal times, backfill, weights, overrides, support flags, ticks) are fed to an
engine that never restarts and to one that restarts (snapshot, restore into a new engine) at
random points; they must give identical events, episodes and snapshots. All times are aware UTC.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.alerts.engine import AlertConfig, AlertEngine, AlertStateError
from monitor.alerts.reference import ReferenceAlertEngine, snapshot_v1
from monitor.alerts.snapshot import SNAPSHOT_VERSION
from monitor.contract.models import Patient
from monitor.intake.canonical import CanonicalReading
from tests.unit.test_alert_engine_fastpath import FLAGS, PATIENTS, STEP, T0, UNIT, readings


def _clock() -> Any:
    return T0


def _apply(eng: AlertEngine, step: tuple[Any, ...]) -> Any:
    """Run one step; return what it returned (events), or ``None`` for steps with no result."""
    if step[0] == "readings":
        return eng.on_readings(step[1], step[2])
    if step[0] == "tick":
        return eng.tick(T0 + timedelta(minutes=step[1] * 5), step[2])
    if step[0] == "patient":
        _, pid, overrides, plan = step
        eng.on_patient(
            Patient(
                patient_id=pid,
                region="north",
                deprivation_quintile=1,
                age_band="70-79",
                monitoring_plan=plan,
                thresholds=overrides,
                registered_at=T0 - timedelta(hours=1),
            )
        )
    return None


def _config(stale: timedelta | None) -> AlertConfig:
    return AlertConfig(repeat_interval=timedelta(minutes=20), stale_after=stale)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, max_size=25), stale=st.sampled_from([None, timedelta(minutes=30)]),
       fast=st.booleans())
def test_restarting_from_a_snapshot_changes_nothing(steps, stale, fast) -> None:  # type: ignore[no-untyped-def]
    config = _config(stale)
    engine = AlertEngine if fast else ReferenceAlertEngine
    steady = engine(config, clock=_clock)
    restarted = engine(config, clock=_clock)
    for step in steps:
        if step[0] in ("restore", "snapshot"):
            blob = restarted.snapshot()
            assert blob == steady.snapshot()
            assert json.loads(blob)["version"] == SNAPSHOT_VERSION == 2
            if step[0] == "restore":
                restarted = engine(config, clock=_clock)
                restarted.restore(blob)
                assert restarted.snapshot() == blob
            continue
        assert _apply(restarted, step) == _apply(steady, step)
    assert restarted.snapshot() == steady.snapshot()
    assert restarted.episodes() == steady.episodes()
    assert restarted.firing() == steady.firing()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, max_size=25), stale=st.sampled_from([None, timedelta(minutes=30)]))
def test_a_version_1_snapshot_restores_to_the_same_behaviour(steps, stale) -> None:  # type: ignore[no-untyped-def]
    config = _config(stale)
    steady = AlertEngine(config, clock=_clock)
    restarted = AlertEngine(config, clock=_clock)
    for step in steps:
        if step[0] in ("restore", "snapshot"):
            old = snapshot_v1(restarted)
            assert old == snapshot_v1(steady)
            assert json.loads(old)["version"] == 1
            restarted = AlertEngine(config, clock=_clock)
            restarted.restore(old)  # an engine of an older release wrote this
            assert snapshot_v1(restarted) == old
            # and the version-2 snapshot of that state survives a restart of its own
            again = AlertEngine(config, clock=_clock)
            again.restore(restarted.snapshot())
            assert again.snapshot() == restarted.snapshot()
            restarted = again
            continue
        assert _apply(restarted, step) == _apply(steady, step)
    assert snapshot_v1(restarted) == snapshot_v1(steady)
    assert restarted.episodes() == steady.episodes()
    assert restarted.firing() == steady.firing()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(readings(), min_size=1, max_size=10), min_size=1, max_size=4),
       data=st.data())
def test_redelivery_after_a_restart_is_recognised(batches, data) -> None:  # type: ignore[no-untyped-def]
    steady, restarted = AlertEngine(clock=_clock), AlertEngine(clock=_clock)
    flags = data.draw(FLAGS)
    seen = []
    for batch in batches:
        assert restarted.on_readings(batch, flags) == steady.on_readings(batch, flags)
        seen.extend(batch)
        blob = restarted.snapshot()
        restarted = AlertEngine(clock=_clock)
        restarted.restore(blob)
        again = data.draw(st.permutations(seen))[: data.draw(st.integers(0, len(seen)))]
        assert restarted.on_readings(again, flags) == steady.on_readings(again, flags)
    assert restarted.snapshot() == steady.snapshot()


def _busy_engine() -> AlertEngine:
    eng = AlertEngine(clock=_clock)
    for pid in PATIENTS:
        eng.on_patient(Patient(patient_id=pid, region="r", deprivation_quintile=2, age_band="50-59",
                               monitoring_plan={"glucose": 24.0}, thresholds={"glucose_low": 4.5},
                               registered_at=T0 - timedelta(hours=30)))
    def r(pid: str, kind: str, minutes: int, value: float | None, rid: str | None,
          bp: tuple[float, float] | None = None) -> CanonicalReading:
        return CanonicalReading(reading_id=rid, patient_id=pid, device_id="d", gateway_id=None, kind=kind,
                                value=value, systolic=bp[0] if bp else None, diastolic=bp[1] if bp else None,
                                unit=UNIT[kind], original_unit=UNIT[kind], original_code=None,
                                measured_at=T0 + timedelta(minutes=minutes), source="native")

    eng.on_readings([
        r("p1", "glucose", 0, 2.5, "a"), r("p1", "glucose", 0, 2.6, None), r("p2", "glucose", 5, 6.0, "b"),
        r("p2", "body_weight", 0, 80.0, None), r("p2", "body_weight", 60, 83.0, "w"),
        r("p3", "blood_pressure", 10, None, "c", (190.0, 95.0)),
    ])
    eng.tick(T0 + timedelta(hours=30))
    return eng


MUTATIONS = [
    ("drop", ("streams", "latest")),
    ("drop", ("streams", "kinds")),
    ("drop", ("patients", "plan")),
    ("drop", ("open",)),
    ("drop", ("watermark",)),
    ("append", ("streams", "latest"), 5),
    ("append", ("streams", "readings"), 1),
    ("append", ("streams", "kind"), 0),
    ("append", ("streams", "reading_id"), "x"),
    ("append", ("streams", "value"), 1.0),
    ("append", ("streams", "weighted"), 0),
    ("append", ("streams", "hashed"), 0),
    ("append", ("patients", "region"), "r"),
    ("append", ("patients", "patient_id"), "p9"),
    ("set", ("streams", "latest"), "soon"),
    ("set", ("streams", "kind"), {"0": 1}),
    ("set", ("patients", "overrides"), 3),
    ("set", ("watermark",), "2024-03-04T08:00:00Z"),
    ("set", ("watermark",), 10**30),
    ("set", ("streams",), []),
    ("set", ("version",), "2"),
    ("item", ("streams", "latest"), "2024"),
    ("item", ("streams", "kind"), 99),
    ("item", ("streams", "kind"), -1),
    ("item", ("streams", "readings"), -1),
    ("item", ("streams", "readings"), True),
    ("item", ("streams", "value"), "6.0"),
    ("item", ("streams", "reading_id"), 7),
    ("item", ("streams", "weight_at"), [1.5]),
    ("item", ("streams", "weight_kg"), ["80"]),
    ("append", ("streams", "hashes"), ["ab"]),
    ("hashes", ("streams",), [0], [[3]]),
    ("hashes", ("streams",), [99], [["ab"]]),
    ("hashes", ("streams",), [-1], [["ab"]]),
    ("hashes", ("streams",), [0], ["ab"]),
    ("item", ("streams", "patient_id"), None),
    ("item", ("patients", "plan"), {"glucose": "often"}),
    ("item", ("patients", "plan_seen_at"), {"glucose": "2024-03-04"}),
    ("item", ("patients", "registered_at"), 1.5),
    ("duplicate", ("streams",)),
]


def _mutate(state: dict[str, Any], mutation: tuple[Any, ...]) -> None:
    op, path, *arg = mutation
    *parents, last = path
    target = state
    for name in parents:
        target = target[name]
    if op == "drop":
        del target[last]
    elif op == "append":
        target[last].append(arg[0])
    elif op == "set":
        target[last] = arg[0]
    elif op == "item":
        target[last][0] = arg[0]
    elif op == "hashes":
        target[last]["hashed"], target[last]["hashes"] = arg
    else:  # the first stream twice (every column of the first stream repeated)
        s = target[last]
        s["patient_id"].append(s["patient_id"][0])
        s["kind"].append(s["kind"][0])
        s["latest"].append(s["latest"][0])
        s["readings"].append(0)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: f"{m[0]}-{'.'.join(m[1])}")
def test_malformed_version_2_snapshots_raise_and_keep_the_state(mutation: tuple[Any, ...]) -> None:
    eng = _busy_engine()
    before = eng.snapshot()
    state = json.loads(before)
    assert state["streams"]["weighted"] and state["streams"]["hashed"] == []  # mutations below apply
    _mutate(state, mutation)
    with pytest.raises(AlertStateError):
        eng.restore(json.dumps(state).encode())
    assert eng.snapshot() == before


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_truncated_or_corrupted_version_2_bytes_raise(data) -> None:  # type: ignore[no-untyped-def]
    eng = _busy_engine()
    before = eng.snapshot()
    cut = data.draw(st.integers(0, len(before) - 1))
    with pytest.raises(AlertStateError):
        eng.restore(before[:cut])
    garbage = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(AlertStateError):
        eng.restore(before[:cut] + b"\xff" + garbage)  # never UTF-8
    assert eng.snapshot() == before


def test_snapshots_are_deterministic_and_restore_keeps_hashes_of_version_1() -> None:
    eng = _busy_engine()
    blob = eng.snapshot()
    assert blob == eng.snapshot()
    state = json.loads(blob)
    assert state["version"] == 2
    assert set(state["streams"]) >= {"patient_id", "kind", "kinds", "latest", "readings", "reading_id"}
    # keys known only as hashes (from a version-1 snapshot) are carried as hashes
    old = AlertEngine(clock=_clock)
    old.restore(snapshot_v1(eng))
    v2 = json.loads(old.snapshot())
    assert v2["streams"]["hashed"] and not v2["streams"]["reading_id"]
    again = AlertEngine(clock=_clock)
    again.restore(old.snapshot())
    assert again.snapshot() == old.snapshot()
    assert snapshot_v1(again) == snapshot_v1(eng)
