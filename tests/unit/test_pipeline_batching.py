"""The answer does not depend on how records are cut into batches (issue 13, item 3).

The same Kafka records (simulated fortnight with live, late and backfilled readings, Kafka receive
timestamps, duplicates and out-of-order delivery) are fed to a pipeline in batches of 1, 7, 50 and
10,000 records and at random cut points: alerts, dead letters, flags, counts, per-patient metrics
and alert episodes must be identical. On the old code the alert engine skipped every reading older
than the newest of its kind *in its batch*, so batches of 50 opened more alerts than batches of
10,000 (``test_batch_size_changes_nothing`` failed: 736 vs 201 in the issue's replay).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.kafka.partitioning import partition_for
from monitor.pipeline import Pipeline, RawRecord
from monitor.simulate import TOPIC_OF, SimConfig, event_time, generate

END = datetime(2026, 10, 20, tzinfo=UTC)
EXPECTED = {"readings": "reading", "carer_activity": "carer_activity", "care_network": "care_link",
            "patients": "patient"}
PARTITIONS = 2


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def records(seed: int = 7, patients: int = 120) -> list[RawRecord]:
    """Records stamped with a receive time: most minutes after the event, some hours after
    (backfill), in receive order with local shuffles (several producers); 3 % resent."""
    rng = random.Random(seed)
    rows: list[tuple[datetime, str, str, bytes]] = []
    registry: list[tuple[str, str, bytes]] = []
    for typ, doc in generate(SimConfig(patients=patients, days=6, seed=seed, end=END)):
        pid = doc["patient_id"] if "patient_id" in doc else doc["readings"][0]["patient_id"]
        raw = json.dumps(doc, separators=(",", ":")).encode()
        at = event_time(typ, doc)
        if at is None:  # the registry: before everything
            registry.append((TOPIC_OF[typ], pid, raw))
            continue
        delay = timedelta(hours=rng.uniform(1.5, 6)) if rng.random() < 0.1 else \
            timedelta(seconds=rng.uniform(1, 900))
        rows.append((at + delay, TOPIC_OF[typ], pid, raw))
        if rng.random() < 0.03:
            rows.append((at + delay + timedelta(seconds=5), TOPIC_OF[typ], pid, raw))  # a resend
    start = END - timedelta(days=6)
    rows.sort(key=lambda r: r[0])
    for i in range(0, len(rows) - 3, 4):  # producers race: neighbours swap
        if rng.random() < 0.3:
            rows[i], rows[i + 2] = rows[i + 2], rows[i]
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for at, topic, pid, raw in [(start, *r) for r in registry] + rows:
        p = partition_for(pid, PARTITIONS)
        o = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        out.append(RawRecord(raw, topic, p, o, _ms(at)))
    return out


RECORDS = records()
NOW = END + timedelta(hours=8)


def run(cuts: list[int]) -> dict[str, Any]:
    """Ingest RECORDS cut at ``cuts`` (sorted positions), then one tick."""
    pipe = Pipeline(clock=lambda: NOW)
    alerts, dead = [], []
    bounds = [0, *cuts, len(RECORDS)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        result = pipe.ingest(RECORDS[a:b], EXPECTED)
        alerts.extend(json.dumps(e.to_json(), sort_keys=True) for e in result.alerts)
        dead.extend(d.model_dump_json() for d in result.dead_letters)
    tick = pipe.tick()
    return {
        "alerts": sorted(alerts),
        "dead": sorted(dead),
        "flags": sorted(f.model_dump_json() for f in tick.flags),
        "tick_alerts": sorted(json.dumps(e.to_json(), sort_keys=True) for e in tick.alerts),
        "counts": pipe.counts.to_dict(),
        "report": pipe.patient_report(),
        "episodes": sorted(json.dumps(e, sort_keys=True) for st_ in pipe.partitions.values()
                           for e in st_.alerts.episodes()),
    }


def fixed(size: int) -> list[int]:
    return list(range(size, len(RECORDS), size))


WHOLE = run([])


def test_batch_size_changes_nothing() -> None:
    for size in (1, 7, 50, 10_000):
        got = run(fixed(size))
        for key in WHOLE:
            assert got[key] == WHOLE[key], (size, key)


def test_the_comparison_is_not_vacuous() -> None:
    notes = [json.loads(a)["notification"] for a in WHOLE["alerts"]]
    assert "firing" in notes and "recorded" in notes  # live and backfilled episodes both occur
    assert notes.count("firing") >= 10 and notes.count("resolved") >= 10
    assert WHOLE["counts"]["readings"] > 2000 and WHOLE["flags"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(RECORDS) - 1), max_size=40))
def test_any_cut_points_change_nothing(cuts: list[int]) -> None:
    assert run(sorted(set(cuts))) == WHOLE
