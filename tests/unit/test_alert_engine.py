"""Episode lifecycle of the alert engine: open, de-duplicate, re-notify, resolve, escalate, recover.

Timelines in comments: ``t0`` is 2024-03-04 08:00 UTC; ``[g 2.5]`` is a glucose reading of 2.5 mmol/L.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.alerts.engine import AlertConfig, AlertEngine, AlertEvent, AlertStateError, alert_id_for
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


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def reading(
    value: float | None,
    at: datetime,
    *,
    kind: str = "glucose",
    rid: str | None = None,
    patient: str = "p1",
    systolic: float | None = None,
    diastolic: float | None = None,
    late: bool = False,
) -> CanonicalReading:
    return CanonicalReading(
        reading_id=rid,
        patient_id=patient,
        device_id="d1",
        gateway_id=None,
        kind=kind,
        value=value,
        systolic=systolic,
        diastolic=diastolic,
        unit=UNIT[kind],
        original_unit=UNIT[kind],
        original_code=None,
        measured_at=at,
        source="native",
        late=late,
    )


def patient(pid: str = "p1", **kwargs: object) -> Patient:
    return Patient(patient_id=pid, region="north", deprivation_quintile=1, age_band="70-79", **kwargs)


def engine(**config: object) -> AlertEngine:
    return AlertEngine(AlertConfig(**config), clock=lambda: T0)  # type: ignore[arg-type]


def summary(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.rule, e.notification, e.severity) for e in events]


# --- open, duplicates, resolve ----------------------------------------------------------------


def test_opens_on_the_triggering_reading() -> None:
    eng = engine()
    eng.on_patient(patient())
    (ev,) = eng.on_readings([reading(2.5, T0, rid="r1")])
    assert (ev.rule, ev.notification, ev.status, ev.severity) == (
        "glucose_very_low",
        "firing",
        "firing",
        "critical",
    )
    assert ev.opened_at == T0 and ev.event_at == T0 and ev.resolved_at is None
    assert ev.value == 2.5 and ev.threshold == 3.0 and ev.unit == "mmol/L"
    assert ev.unsupported is False and ev.region == "north" and ev.kind == "glucose"
    assert ev.alert_id == alert_id_for("p1", "glucose_very_low", "glucose", T0)
    data = ev.to_json()
    assert data["opened_at"] == "2024-03-04T08:00:00Z" and data["resolved_at"] is None


def test_normal_reading_opens_nothing() -> None:
    assert engine().on_readings([reading(6.0, T0)]) == []


def test_duplicates_and_repeats_of_the_same_reading_never_notify_twice() -> None:
    eng = engine()
    first = reading(2.5, T0, rid="r1")
    assert len(eng.on_readings([first, first])) == 1  # duplicated inside a batch
    assert eng.on_readings([first]) == []  # redelivered later
    assert eng.on_readings([reading(2.5, T0)]) == []  # same content, no id (another uploader)
    assert eng.on_readings([reading(2.5, T0, rid="r1-copy")]) == []  # same content, another id
    # a newer low reading while firing: still the same episode, no new notification
    assert eng.on_readings([reading(2.4, T0 + minutes(5), rid="r2")]) == []
    (row,) = eng.episodes()
    assert row["status"] == "firing" and row["notifications"] == 1 and row["value"] == 2.4


def test_resolves_on_the_next_normal_reading() -> None:
    eng = engine()
    (opened,) = eng.on_readings([reading(2.5, T0, rid="r1")])
    (resolved,) = eng.on_readings([reading(5.5, T0 + minutes(20), rid="r2")])
    assert resolved.notification == "resolved" and resolved.status == "resolved"
    assert resolved.alert_id == opened.alert_id and resolved.opened_at == T0
    assert resolved.resolved_at == T0 + minutes(20) and resolved.value == 5.5
    # the duplicate of the triggering reading now is old: no new episode
    assert eng.on_readings([reading(2.5, T0, rid="r1")]) == []
    assert [r["status"] for r in eng.episodes()] == ["resolved"]


def test_warning_band_stays_open_while_glucose_falls_into_the_critical_band() -> None:
    # t0 [g 3.5] low opens; +10 [g 2.8] very low opens, low keeps firing; +20 [g 3.5] very low resolves;
    # +30 [g 4.2] low resolves
    eng = engine()
    assert summary(eng.on_readings([reading(3.5, T0)])) == [("glucose_low", "firing", "warning")]
    assert summary(eng.on_readings([reading(2.8, T0 + minutes(10))])) == [
        ("glucose_very_low", "firing", "critical")
    ]
    assert summary(eng.on_readings([reading(3.5, T0 + minutes(20))])) == [
        ("glucose_very_low", "resolved", "critical")
    ]
    assert summary(eng.on_readings([reading(4.2, T0 + minutes(30))])) == [
        ("glucose_low", "resolved", "warning")
    ]


def test_blood_pressure_components_are_separate_episodes() -> None:
    eng = engine()
    evs = eng.on_readings([reading(None, T0, kind="blood_pressure", systolic=185, diastolic=125)])
    assert sorted(e.rule for e in evs) == ["bp_diastolic_high", "bp_systolic_high"]
    evs = eng.on_readings(
        [reading(None, T0 + minutes(5), kind="blood_pressure", systolic=185, diastolic=100)]
    )
    assert summary(evs) == [("bp_diastolic_high", "resolved", "critical")]


# --- late, backfilled and replayed readings ---------------------------------------------------


def test_a_backfilled_reading_is_recorded_never_paged() -> None:
    # late=True: received more than the late window (1 h) after it was measured (set at intake)
    eng = engine()
    assert eng.on_readings([reading(6.0, T0 + minutes(60), rid="new")]) == []
    (ev,) = eng.on_readings([reading(2.5, T0, rid="backfill", late=True)])
    assert (ev.rule, ev.notification, ev.status, ev.severity, ev.late) == (
        "glucose_very_low", "recorded", "resolved", "critical", True)
    assert ev.opened_at == ev.resolved_at == ev.event_at == T0
    assert ev.alert_id == alert_id_for("p1", "glucose_very_low", "glucose", T0)
    assert eng.episodes() == []  # no live episode, nothing to re-notify
    assert eng.tick(T0 + timedelta(hours=5)) == []
    # another kind is independent
    assert summary(eng.on_readings([reading(135, T0, kind="heart_rate")])) == [
        ("heart_rate_very_high", "firing", "critical")
    ]


def test_an_out_of_order_live_reading_fires_marked_late() -> None:
    # received within the late window but older than the latest glucose already seen
    eng = engine()
    assert eng.on_readings([reading(6.0, T0 + minutes(60), rid="new")]) == []
    (ev,) = eng.on_readings([reading(2.5, T0, rid="older")])
    assert (ev.rule, ev.notification, ev.status, ev.late, ev.opened_at) == (
        "glucose_very_low", "firing", "firing", True, T0)
    assert ev.to_json()["late"] is True
    # an older normal reading does not resolve it; a newer one does (an in-order event: late=False)
    assert eng.on_readings([reading(6.0, T0 + minutes(30), rid="older-normal")]) == []
    (res,) = eng.on_readings([reading(6.0, T0 + minutes(90), rid="newer")])
    assert (res.notification, res.alert_id, res.late) == ("resolved", ev.alert_id, False)
    # redelivered after the episode resolved: covered by it, nothing new
    assert eng.on_readings([reading(2.5, T0, rid="older")]) == []


def test_an_older_normal_reading_does_not_resolve() -> None:
    eng = engine()
    eng.on_readings([reading(2.5, T0 + minutes(60))])
    assert eng.on_readings([reading(6.0, T0)]) == []
    assert [r["status"] for r in eng.episodes()] == ["firing"]


def test_backfill_batch_records_its_old_readings_and_pages_only_on_live_ones() -> None:
    # a gateway reconnects at t0+6h and uploads 6 hours at once: a hypo 3 hours ago, normal since;
    # everything measured more than 1 h before the upload is late (backfill)
    upload = T0 + timedelta(hours=6)

    def at(i: int, value: float) -> CanonicalReading:
        t = T0 + minutes(5 * i)
        return reading(value, t, rid=f"r{i}", late=upload - t > timedelta(hours=1))

    batch = [at(i, 6.0 if i != 36 else 2.4) for i in range(72)]
    eng = engine()
    evs = eng.on_readings(list(reversed(batch)))
    assert [(e.notification, e.opened_at) for e in evs] == [("recorded", T0 + timedelta(hours=3))]
    assert eng.episodes() == []
    # ... and when the newest of the upload is low (live), exactly one episode opens
    eng2 = engine()
    batch[-1] = reading(2.4, batch[-1].measured_at, rid="last")
    evs = eng2.on_readings(batch)
    assert summary(evs) == [("glucose_very_low", "recorded", "critical"),
                            ("glucose_very_low", "firing", "critical")]
    assert evs[1].opened_at == batch[-1].measured_at and evs[1].late is False


def test_a_fast_device_clock_does_not_silence_a_real_low() -> None:
    # issue 13: a normal glucose stamped 9 min 59 s in the future (within the accepted 10 min skew),
    # then a real 1.9 mmol/L measured a minute ago, both received now (neither late)
    now = T0
    eng = engine()
    assert eng.on_readings([reading(6.0, now + timedelta(minutes=9, seconds=59), rid="fast")]) == []
    (ev,) = eng.on_readings([reading(1.9, now - minutes(1), rid="real")])
    got = (ev.rule, ev.notification, ev.severity, ev.late)
    assert got == ("glucose_very_low", "firing", "critical", True)
    assert ev.opened_at == now - minutes(1)
    # both in one call: the low fires too (in the other order the newer normal then resolves it)
    rs = {"fast": reading(6.0, now + timedelta(minutes=9, seconds=59), rid="fast"),
          "real": reading(1.9, now - minutes(1), rid="real")}
    got = summary(engine().on_readings([rs["fast"], rs["real"]]))
    assert got == [("glucose_very_low", "firing", "critical")]
    assert summary(engine().on_readings([rs["real"], rs["fast"]])) == [
        ("glucose_very_low", "firing", "critical"), ("glucose_very_low", "resolved", "critical")]
    # repeating it does not silence the patient: each real low after a resolution pages again
    eng = engine()
    for k in range(3):
        t = now + timedelta(hours=k)
        eng.on_readings([reading(6.0, t + timedelta(minutes=9, seconds=59), rid=f"fast{k}")])
        evs = eng.on_readings([reading(1.9, t - minutes(1), rid=f"real{k}")])
        assert summary(evs) == [("glucose_very_low", "firing", "critical")]
        eng.on_readings([reading(6.0, t + minutes(20), rid=f"normal{k}")])  # a newer normal resolves


def test_equal_time_readings_open_but_never_resolve_whatever_the_order() -> None:
    low, normal = reading(2.5, T0, rid="a"), reading(6.0, T0, rid="b")
    for order in ([low, normal], [normal, low]):
        eng = engine()
        for r in order:
            eng.on_readings([r])
        assert [(r["rule"], r["status"]) for r in eng.episodes()] == [("glucose_very_low", "firing")]


def test_stale_reading_opens_nothing_when_configured() -> None:
    eng = engine(stale_after=timedelta(hours=2))
    eng.tick(T0 + timedelta(hours=5))
    assert eng.on_readings([reading(2.5, T0 + timedelta(hours=2))]) == []  # 3 h behind the clock
    assert len(eng.on_readings([reading(2.5, T0 + timedelta(hours=4))])) == 1


# --- re-notification --------------------------------------------------------------------------


def test_renotifies_after_the_repeat_interval_only_while_firing() -> None:
    eng = engine(repeat_interval=minutes(30))
    eng.on_readings([reading(2.5, T0)])
    assert eng.tick(T0 + minutes(29)) == []
    (ev,) = eng.tick(T0 + minutes(30))
    assert (ev.notification, ev.status, ev.event_at) == ("renotify", "firing", T0 + minutes(30))
    assert eng.tick(T0 + minutes(45)) == []  # counted from the last notification
    assert [e.notification for e in eng.tick(T0 + minutes(60))] == ["renotify"]
    eng.on_readings([reading(2.5, T0 + minutes(65), rid="again")])  # still low: no notification
    eng.on_readings([reading(6.0, T0 + minutes(70))])
    assert eng.tick(T0 + minutes(120)) == []
    assert eng.tick(T0 + minutes(600)) == []


def test_tick_rejects_naive_time_and_never_runs_backwards() -> None:
    eng = engine(repeat_interval=minutes(30))
    with pytest.raises(ValueError, match="timezone-aware"):
        eng.tick(datetime(2024, 3, 4, 9, 0))
    eng.on_readings([reading(2.5, T0)])
    assert len(eng.tick(T0 + minutes(40))) == 1
    assert eng.tick(T0 + minutes(10)) == []  # clock went back: treated as T0+40


def test_tick_accepts_any_offset_and_uses_utc() -> None:
    eng = engine(repeat_interval=minutes(30))
    eng.on_readings([reading(2.5, T0)])
    cet = timezone(timedelta(hours=1))
    (ev,) = eng.tick(datetime(2024, 3, 4, 9, 30, tzinfo=cet))  # = 08:30 UTC
    assert ev.event_at == T0 + minutes(30) and ev.event_at.tzinfo is UTC


# --- compound risk ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "value", "rule", "severity", "unsupported"),
    [
        (set(), 3.5, "glucose_low", "warning", False),
        ({"support_lapsed"}, 3.5, "glucose_low", "critical", True),
        ({"no_support_network"}, 2.5, "glucose_very_low", "emergency", True),
        ({"single_carer"}, 2.5, "glucose_very_low", "critical", False),
    ],
)
def test_compound_risk_raises_severity_one_level(
    flags: set[str], value: float, rule: str, severity: str, unsupported: bool
) -> None:
    eng = engine()
    (ev,) = eng.on_readings([reading(value, T0)], {"p1": flags, "other": {"no_support_network"}})
    assert (ev.rule, ev.severity, ev.unsupported) == (rule, severity, unsupported)


def test_patient_losing_support_while_firing_is_escalated_once() -> None:
    eng = engine(repeat_interval=timedelta(hours=1))
    eng.on_readings([reading(2.5, T0)], {})
    (ev,) = eng.tick(T0 + minutes(5), {"p1": {"support_lapsed"}})
    assert (ev.notification, ev.severity, ev.escalated_from, ev.unsupported) == (
        "renotify",
        "emergency",
        "critical",
        True,
    )
    assert eng.tick(T0 + minutes(10), {"p1": {"support_lapsed"}}) == []
    assert eng.tick(T0 + minutes(20), {}) == []  # never de-escalated within an episode
    (res,) = eng.on_readings([reading(6.0, T0 + minutes(30))], {})
    assert (res.notification, res.severity, res.unsupported) == ("resolved", "emergency", True)


# --- missed readings on a clock ---------------------------------------------------------------


def test_missed_readings_fire_from_the_clock_and_resolve_when_data_returns() -> None:
    # plan: 4 glucose a day = every 6 h; alert after 12 h without a glucose reading
    eng = engine(repeat_interval=timedelta(hours=4))
    eng.on_patient(patient(monitoring_plan={"glucose": 4}))
    eng.on_readings([reading(6.0, T0)])
    assert eng.tick(T0 + timedelta(hours=11, minutes=59)) == []
    (ev,) = eng.tick(T0 + timedelta(hours=13))
    assert (ev.rule, ev.kind, ev.notification, ev.severity) == (
        "missed_readings",
        "glucose",
        "firing",
        "warning",
    )
    assert ev.opened_at == T0 + timedelta(hours=12)  # when the gap began, not when the tick came
    assert ev.threshold == 12.0 and ev.value == 13.0 and ev.unit == "h"
    assert eng.tick(T0 + timedelta(hours=14)) == []  # no new input, no second page
    (res,) = eng.on_readings([reading(6.2, T0 + timedelta(hours=15))])
    assert (res.rule, res.notification, res.resolved_at) == (
        "missed_readings",
        "resolved",
        T0 + timedelta(hours=15),
    )
    assert eng.tick(T0 + timedelta(hours=20)) == []


def test_missed_readings_without_any_reading_count_from_registration() -> None:
    eng = engine()
    eng.on_patient(patient(monitoring_plan={"body_weight": 1, "glucose": 2}, registered_at=T0))
    assert eng.tick(T0 + timedelta(hours=23)) == []
    (ev,) = eng.tick(T0 + timedelta(hours=24))  # glucose: 2/day -> 12 h interval -> 24 h
    assert (ev.kind, ev.opened_at) == ("glucose", T0 + timedelta(hours=24))
    evs = eng.tick(T0 + timedelta(hours=48))  # weight: daily -> 48 h (glucose: no re-notification)
    assert sorted((e.kind, e.notification) for e in evs) == [("body_weight", "firing")]
    (ev,) = [e for e in evs if e.notification == "firing"]
    assert (ev.kind, ev.opened_at, ev.threshold) == ("body_weight", T0 + timedelta(hours=48), 48.0)


def test_missed_readings_stay_open_when_only_old_data_returns() -> None:
    eng = engine()
    eng.on_patient(patient(monitoring_plan={"glucose": 4}))
    eng.on_readings([reading(6.0, T0)])
    assert len(eng.tick(T0 + timedelta(hours=30))) == 1
    # a reading from 20 h ago arrives late: newer than the last one, but the gap is still > 12 h
    assert eng.on_readings([reading(6.0, T0 + timedelta(hours=10))]) == []
    assert [r["status"] for r in eng.episodes()] == ["firing"]


def test_missed_readings_resolve_when_the_kind_leaves_the_plan_and_use_the_override() -> None:
    eng = engine()
    eng.on_patient(patient(monitoring_plan={"spo2": 1}, thresholds={"missed_readings": 3.0}))
    eng.on_readings([reading(97, T0, kind="spo2")])
    assert eng.tick(T0 + timedelta(hours=71)) == []
    assert summary(eng.tick(T0 + timedelta(hours=72))) == [("missed_readings", "firing", "warning")]
    eng.on_patient(patient(monitoring_plan={}))
    assert summary(eng.tick(T0 + timedelta(hours=73))) == [("missed_readings", "resolved", "warning")]


def test_missed_readings_of_an_unsupported_patient_are_critical() -> None:
    eng = engine()
    eng.on_patient(patient(monitoring_plan={"glucose": 4}, registered_at=T0))
    (ev,) = eng.tick(T0 + timedelta(hours=12), {"p1": {"no_support_network"}})
    assert (ev.severity, ev.unsupported) == ("critical", True)


# --- weight gain and per-patient thresholds through the engine -------------------------------


@pytest.mark.parametrize(
    ("previous", "gap", "now", "fires"),
    [
        (80.0, timedelta(days=3), 82.0, True),
        (80.0, timedelta(days=3), 81.9, False),
        (80.0, timedelta(days=4), 82.0, False),
        (80.0, timedelta(hours=12), 82.5, True),
    ],
)
def test_weight_gain_within_three_days(previous: float, gap: timedelta, now: float, fires: bool) -> None:
    eng = engine()
    eng.on_readings([reading(previous, T0, kind="body_weight")])
    evs = eng.on_readings([reading(now, T0 + gap, kind="body_weight")])
    assert [e.rule for e in evs] == (["weight_gain"] if fires else [])
    if fires:
        assert evs[0].value == pytest.approx(now - previous) and evs[0].threshold == 2.0


def test_weight_gain_uses_a_backfilled_baseline_but_never_fires_on_it() -> None:
    eng = engine()
    eng.on_readings([reading(82.0, T0 + timedelta(days=2), kind="body_weight")])
    assert eng.on_readings([reading(80.0, T0, kind="body_weight", late=True)]) == []  # baseline only
    (ev,) = eng.on_readings([reading(82.1, T0 + timedelta(days=2, hours=6), kind="body_weight")])
    assert ev.rule == "weight_gain" and ev.value == pytest.approx(2.1)


def test_per_patient_threshold_override() -> None:
    eng = engine()
    eng.on_patient(patient(thresholds={"heart_rate_high": 100.0}))
    eng.on_patient(patient("p2"))
    evs = eng.on_readings(
        [reading(105, T0, kind="heart_rate"), reading(105, T0, kind="heart_rate", patient="p2")]
    )
    assert [(e.patient_id, e.rule, e.threshold) for e in evs] == [("p1", "heart_rate_high", 100.0)]


# --- identity and recovery --------------------------------------------------------------------


def _scenario(eng: AlertEngine) -> list[AlertEvent]:
    eng.on_patient(patient(monitoring_plan={"glucose": 4}))
    events = eng.on_readings([reading(3.5, T0, rid="a"), reading(120, T0, kind="heart_rate", rid="b")])
    events += eng.tick(T0 + timedelta(hours=1))
    events += eng.on_readings([reading(6.0, T0 + timedelta(hours=2), rid="c")])
    events += eng.tick(T0 + timedelta(hours=20))
    return events


def test_alert_ids_are_stable_across_runs_and_tick_cadences() -> None:
    first, second = _scenario(engine()), _scenario(engine())
    assert [e.to_json() for e in first] == [e.to_json() for e in second]
    # a third run ticking more often opens the missed_readings episode with the same id
    eng = engine()
    eng.on_patient(patient(monitoring_plan={"glucose": 4}))
    eng.on_readings([reading(3.5, T0, rid="a"), reading(120, T0, kind="heart_rate", rid="b")])
    eng.on_readings([reading(6.0, T0 + timedelta(hours=2), rid="c")])
    ids = [
        e.alert_id
        for hour in range(3, 21)
        for e in eng.tick(T0 + timedelta(hours=hour))
        if e.rule == "missed_readings"
    ]
    assert ids[:1] == [e.alert_id for e in first if e.rule == "missed_readings"][:1]
    assert len(set(e.alert_id for e in first)) == 3  # glucose_low, heart_rate_high, missed_readings


def test_snapshot_restore_then_duplicate_sends_nothing() -> None:
    eng = engine(repeat_interval=minutes(30))
    eng.on_patient(patient(monitoring_plan={"glucose": 24}))
    trigger = reading(2.5, T0, rid="r1")
    eng.on_readings([trigger])
    eng.tick(T0 + minutes(20))
    blob = eng.snapshot()

    restarted = engine(repeat_interval=minutes(30))
    restarted.restore(blob)
    assert restarted.snapshot() == blob
    assert restarted.on_readings([trigger]) == []  # redelivered after the restart
    assert restarted.tick(T0 + minutes(25)) == []  # last notification survived the restart
    assert summary(restarted.tick(T0 + minutes(30))) == [("glucose_very_low", "renotify", "critical")]
    assert restarted.episodes() == eng.episodes() or restarted.episodes()[0]["notifications"] == 2
    (res,) = restarted.on_readings([reading(6.0, T0 + minutes(40))])
    assert res.alert_id == alert_id_for("p1", "glucose_very_low", "glucose", T0)


def test_restore_rejects_malformed_snapshots_and_keeps_state() -> None:
    eng = engine()
    eng.on_readings([reading(2.5, T0)])
    before = eng.snapshot()
    for bad in (b"not json", b'{"version": 99}', b'{"version": 1}', b"\xff\xfe"):
        with pytest.raises(AlertStateError):
            eng.restore(bad)
    assert eng.snapshot() == before


def test_episodes_lists_every_field() -> None:
    eng = engine()
    eng.on_patient(patient())
    eng.on_readings([reading(2.5, T0)])
    (row,) = eng.episodes()
    assert {
        "alert_id",
        "patient_id",
        "rule",
        "kind",
        "severity",
        "status",
        "unsupported",
        "value",
        "threshold",
        "unit",
        "opened_at",
        "resolved_at",
        "region",
    } <= row.keys()
    assert row["region"] == "north" and row["status"] == "firing"


def test_resolved_episodes_are_kept_for_retain_resolved_or_forever_when_none() -> None:
    # t0 [g 2.5] opens, t0+10min [g 6.0] resolves; then ticks 30 days later
    kept, pruned = engine(retain_resolved=None), engine(retain_resolved=timedelta(days=7))
    for eng in (kept, pruned):
        eng.on_patient(patient())
        eng.on_readings([reading(2.5, T0)])
        eng.on_readings([reading(6.0, T0 + minutes(10))])
        eng.tick(T0 + timedelta(days=30))
    assert pruned.episodes() == []
    (row,) = kept.episodes()
    assert (row["rule"], row["status"]) == ("glucose_very_low", "resolved")
    assert row["resolved_at"] == "2024-03-04T08:10:00Z"
    again = engine(retain_resolved=None)
    again.restore(kept.snapshot())
    assert again.episodes() == kept.episodes()


# --- property: order and duplication ----------------------------------------------------------

VALUES = {
    "glucose": [2.9, 3.0, 3.5, 3.9, 6.0, 13.9, 14.0, 22.2, 22.3],
    "heart_rate": [40, 41, 50, 51, 110, 111, 130, 131],
}
reading_specs = st.tuples(
    st.sampled_from(["p1", "p2"]),
    st.sampled_from(["glucose", "heart_rate"]),
    st.integers(min_value=0, max_value=12),  # minute offset: many equal times on purpose
    st.integers(min_value=0, max_value=8),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(reading_specs, min_size=1, max_size=25),
    data=st.data(),
)
def test_permutations_and_duplicates_never_double_open_and_mark_out_of_order_firings(specs, data) -> None:  # type: ignore[no-untyped-def]
    base = [
        reading(VALUES[kind][i % len(VALUES[kind])], T0 + minutes(m), kind=kind, patient=pid, rid=f"r{n}")
        for n, (pid, kind, m, i) in enumerate(specs)
    ]
    stream = data.draw(st.lists(st.sampled_from(base), min_size=len(base), max_size=3 * len(base)))
    stream = data.draw(st.permutations(stream + base))  # every reading at least once
    flags = data.draw(st.sampled_from([{}, {"p1": {"support_lapsed"}}]))

    eng = engine(repeat_interval=minutes(5))
    open_keys: set[tuple[str, str, str]] = set()
    latest: dict[tuple[str, str], datetime] = {}
    for i, r in enumerate(stream):  # one reading per call: how batches are cut does not matter
        key = (r.patient_id, r.kind)
        before = latest.get(key)
        latest[key] = max(before or r.measured_at, r.measured_at)
        events = eng.on_readings([r], flags)
        events += eng.tick(T0 + minutes(i), flags)
        for ev in events:
            key3 = (ev.patient_id, ev.rule, ev.kind)
            if ev.notification == "firing":
                assert key3 not in open_keys, "a second open episode for the same patient and rule"
                open_keys.add(key3)
                if ev.event_at != ev.opened_at:
                    continue  # missed_readings (from a tick)
                # fired on this reading: marked late exactly when it is older than the latest seen
                assert ev.opened_at == r.measured_at
                assert ev.late == (before is not None and r.measured_at < before)
            elif ev.notification == "resolved":
                assert key3 in open_keys
                assert ev.resolved_at is not None and ev.resolved_at >= (before or ev.resolved_at)
                open_keys.discard(key3)
            else:
                assert key3 in open_keys and ev.notification == "renotify"
    assert {
        (r["patient_id"], r["rule"], r["kind"]) for r in eng.episodes() if r["status"] == "firing"
    } == open_keys
    # feeding everything again (redelivery) changes nothing
    assert eng.on_readings(stream, flags) == []
    assert eng.on_readings(list(reversed(base)), flags) == []


def test_an_escalation_at_the_time_of_a_renotification_has_its_own_event_id() -> None:
    # t0 [g 2.5] fires; tick t0+1h re-notifies; a second tick at the same instant (the watermark
    # did not move) sees the patient unsupported and escalates: a different notification, which
    # consumers that drop redelivered events by event_id must not drop
    eng = engine(repeat_interval=timedelta(hours=1))
    (fired,) = eng.on_readings([reading(2.5, T0)], {})
    (renotified,) = eng.tick(T0 + timedelta(hours=1), {})
    (escalated,) = eng.tick(T0 + timedelta(hours=1), {"p1": {"support_lapsed"}})
    assert (renotified.notification, renotified.escalated_from) == ("renotify", None)
    assert (escalated.notification, escalated.escalated_from) == ("renotify", "critical")
    assert escalated.event_at == renotified.event_at
    assert len({fired.event_id, renotified.event_id, escalated.event_id}) == 3


FLAG_CHOICES = [{}, {"p1": {"support_lapsed"}}, {"p2": {"no_support_network"}},
                {"p1": {"single_carer"}, "p2": {"support_lapsed"}}]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(reading_specs, min_size=1, max_size=25),
    steps=st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0, 0, 1, 5, 30]),
                             st.integers(0, len(FLAG_CHOICES) - 1)), min_size=1, max_size=12),
)
def test_no_two_notifications_share_an_event_id(specs, steps) -> None:  # type: ignore[no-untyped-def]
    """Whatever the batching, the tick times (repeated instants included) and the support flags
    over time, every notification the engine emits has a distinct ``event_id``."""
    stream = [
        reading(VALUES[kind][i % len(VALUES[kind])], T0 + minutes(m), kind=kind, patient=pid, rid=f"r{n}")
        for n, (pid, kind, m, i) in enumerate(specs)
    ]
    eng = engine(repeat_interval=minutes(5))
    now = T0
    start = 0
    events: list[AlertEvent] = []
    for take, advance, f in steps:
        flags = FLAG_CHOICES[f]
        events += eng.on_readings(stream[start:start + take], flags)
        start += take
        now += minutes(advance)
        events += eng.tick(now, flags)
    events += eng.on_readings(stream[start:], {})
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))


def test_no_re_notification_by_default_only_transitions() -> None:
    """Without a repeat interval a firing episode produces no event until it changes (Alertmanager
    repeats the page); an escalation is still an event."""
    eng = engine()
    eng.on_readings([reading(2.5, T0)])
    assert [e.notification for e in eng.tick(T0 + timedelta(days=3))] == []
    (ev,) = eng.tick(T0 + timedelta(days=3, hours=1), {"p1": ["no_support_network"]})
    assert (ev.notification, ev.escalated_from, ev.severity) == ("renotify", "critical", "emergency")
    assert eng.tick(T0 + timedelta(days=9), {"p1": ["no_support_network"]}) == []
