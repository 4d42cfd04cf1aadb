"""The driver-agnostic pipeline: accounting, dead letters, flags as of event time."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

from monitor.pipeline import Pipeline, RawRecord

T0 = datetime(2026, 10, 1, tzinfo=UTC)
EXPECTED = {"r": "reading", "a": "carer_activity", "n": "care_link", "p": "patient"}


def fixed_clock() -> datetime:
    return datetime(2026, 11, 1, 12, tzinfo=UTC)


_offsets: dict[str, int] = {}


def rec(topic: str, obj: object, offset: int | None = None) -> RawRecord:
    """A record of partition 0 with the next offset of its topic (or the given one)."""
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    if offset is None:
        offset = _offsets[topic] = _offsets.get(topic, -1) + 1
    return RawRecord(raw, topic, 0, offset)


def patient(pid: str, q: int = 1) -> dict:
    return {"patient_id": pid, "region": "north", "deprivation_quintile": q, "age_band": "65-74"}


def activity(aid: str, pid: str, carer: str, t: datetime) -> dict:
    return {"activity_id": aid, "patient_id": pid, "carer_id": carer, "kind": "visit",
            "started_at": t.isoformat(), "duration_minutes": 30}


def link(pid: str, carer: str, action: str, t: datetime) -> dict:
    return {"patient_id": pid, "carer_id": carer, "relationship": "friend", "action": action,
            "effective_at": t.isoformat()}


def test_every_input_is_processed_or_dead_lettered():
    p = Pipeline(clock=fixed_clock)
    records = [rec("p", patient("P1"), 0), rec("r", b"{oops", 1), rec("a", b"\xff", 2),
               RawRecord(None, "n", 0, 3), rec("a", activity("a1", "P1", "C1", T0), 4)]
    result = p.ingest(records, EXPECTED)
    assert p.counts.inputs == len(records)
    assert sum(p.counts.processed.values()) == 2
    assert dict(p.counts.dead_letters) == {"malformed_json": 1, "not_utf8": 1, "empty_message": 1}
    by_reason = {d.reason: d for d in result.dead_letters}
    assert by_reason["not_utf8"].encoding == "base64"
    assert base64.b64decode(by_reason["not_utf8"].original) == b"\xff"
    assert by_reason["malformed_json"].original == "{oops"
    assert by_reason["malformed_json"].offset == 1 and by_reason["malformed_json"].topic == "r"
    assert by_reason["malformed_json"].received_at == fixed_clock()


def test_no_support_network_flag_follows_links_and_the_28_day_window():
    p = Pipeline(clock=fixed_clock, reported_flags=("no_support_network",))
    p.ingest([rec("p", patient("P1")), rec("p", patient("P2", 5))], EXPECTED)
    assert p.flag_transitions() == []  # no event time yet: nothing evaluated
    p.ingest([rec("a", activity("a1", "P1", "C1", T0)), rec("n", link("P2", "C9", "join", T0))], EXPECTED)
    assert p.flag_transitions() == []  # both supported
    # day-resolution windows (monitor.core.state): an activity 27 days before the as-of day is
    # inside the 28-day window, 28 days before is outside
    p.ingest([rec("n", link("P2", "C9", "leave", T0 + timedelta(days=27)))], EXPECTED)
    events = p.flag_transitions()
    assert [(e.patient_id, e.status) for e in events] == [("P2", "raised")]
    p.ingest([rec("r", reading("x1", "P1", T0 + timedelta(days=28)))], EXPECTED)
    events = p.flag_transitions()
    assert [(e.patient_id, e.flag, e.status) for e in events] == [("P1", "no_support_network", "raised")]
    assert events[0].deprivation_quintile == 1
    assert p.flag_transitions() == []  # transitions only, not repeated
    p.ingest([rec("a", activity("a2", "P1", "C1", T0 + timedelta(days=28)))], EXPECTED)
    (cleared,) = p.flag_transitions()
    assert (cleared.patient_id, cleared.status) == ("P1", "cleared")
    assert p.unsupported_by_quintile() == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1}


def reading(rid: str, pid: str, t: datetime) -> dict:
    return {"reading_id": rid, "patient_id": pid, "device_id": "d", "kind": "spo2", "value": 97,
            "unit": "%", "measured_at": t.isoformat()}


def test_one_day_inside_the_window_keeps_the_carer_active():
    p = Pipeline(clock=fixed_clock, reported_flags=("no_support_network",))
    p.ingest([rec("p", patient("P1")), rec("a", activity("a1", "P1", "C1", T0)),
              rec("r", reading("x", "P1", T0 + timedelta(days=27, hours=23)))], EXPECTED)
    assert p.flag_transitions() == []


def test_redelivered_offsets_are_skipped_and_state_survives_a_snapshot():
    from monitor.pipeline import PartitionState

    p = Pipeline(clock=fixed_clock)
    batch = [RawRecord(json.dumps(patient("P1")).encode(), "p", 3, 0),
             RawRecord(json.dumps(activity("a1", "P1", "C1", T0)).encode(), "a", 3, 0),
             RawRecord(b"{bad", "a", 3, 1)]
    p.ingest(batch, EXPECTED)
    restored = Pipeline(clock=fixed_clock)
    restored.adopt(PartitionState.restore(p.partitions[3].snapshot()))
    restored.ingest(batch, EXPECTED)  # at-least-once: the same records again
    assert restored.counts.inputs == 3
    assert restored.patient_report() == p.patient_report()
    assert restored.partitions[3].offsets == {"p": 0, "a": 1}


def test_flag_ids_are_deterministic_and_distinct():
    def run() -> list[str]:
        p = Pipeline(clock=fixed_clock)
        p.ingest([rec("p", patient("P1")), rec("p", patient("P2")),
                  rec("n", link("P1", "C1", "leave", T0))], EXPECTED)  # a timed event, no carer
        return [e.flag_id for e in p.flag_transitions()]

    a, b = run(), run()
    assert a == b and len(set(a)) == len(a) >= 2  # P1 also has network_lost (a carer left)
    assert all("P1" not in i and "P2" not in i for i in a)


def test_duplicate_activity_is_applied_once():
    p = Pipeline(clock=fixed_clock)
    a = activity("a1", "P1", "C1", T0)
    p.ingest([rec("p", patient("P1")), rec("a", a), rec("a", a)], EXPECTED)  # two deliveries
    report = p.patient_report()["P1"]
    assert report["active_carers_28d"] == 1 and report["care_minutes_7d"] == 30
    assert p.counts.processed["CarerActivity"] == 2  # both accounted for; state counts it once


def test_missed_readings_fire_from_the_timer_with_no_new_input():
    """Readings stop; only the wall clock moves: after the idle time the evaluation time advances."""
    now = [datetime(2026, 10, 1, 9, tzinfo=UTC)]
    p = Pipeline(clock=lambda: now[0], idle_after=timedelta(minutes=1))
    plan = {**patient("P1"), "monitoring_plan": {"glucose": 4}}  # every 6 h; missed after 12 h
    p.ingest([rec("p", plan), rec("a", activity("a1", "P1", "C1", T0)),
              rec("r", {"reading_id": "g1", "patient_id": "P1", "device_id": "d", "kind": "glucose",
                        "value": 6.0, "unit": "mmol/L", "measured_at": T0.isoformat()})], EXPECTED)
    assert [a for a in p.tick().alerts if a.rule == "missed_readings"] == []
    now[0] += timedelta(hours=11)
    assert [a for a in p.tick().alerts if a.rule == "missed_readings"] == []
    now[0] += timedelta(hours=2)  # 13 h without a glucose reading, and no input at all
    (missed,) = [a for a in p.tick().alerts if a.rule == "missed_readings"]
    assert (missed.patient_id, missed.kind, missed.status) == ("P1", "glucose", "firing")
    assert p.tick().alerts == []  # no second notification for the same episode


def test_warm_up_runs_every_stage():
    from monitor.pipeline import warm_up

    warm_up()  # raises if any stage (ingest, tick, snapshot/restore, equity) is broken


def test_a_flag_raised_cleared_and_raised_again_on_one_day_has_three_ids():
    """A flag that flips back within one UTC day is two transitions: each has its own id (an id
    from the day of the evaluation repeated the first raise's, and the worker's restore then
    suppressed, or a consumer deduplicating by id dropped, the second raise)."""
    p = Pipeline(clock=fixed_clock)
    p.ingest([rec("p", patient("P1")), rec("n", link("P1", "C1", "join", T0))], EXPECTED)
    p.flag_transitions()
    seen = []
    for hour, carer, action in ((8, "C1", "leave"), (10, "C2", "join"), (12, "C2", "leave")):
        p.ingest([rec("n", link("P1", carer, action, T0 + timedelta(hours=hour)))], EXPECTED)
        seen += [(e.flag, e.status, e.flag_id) for e in p.flag_transitions() if e.flag == "network_lost"]
    assert [(f, s) for f, s, _ in seen] == [("network_lost", "raised"), ("network_lost", "cleared"),
                                           ("network_lost", "raised")]
    assert len({i for _, _, i in seen}) == 3
