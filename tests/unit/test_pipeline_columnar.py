"""The columnar intake changes no answer: the pipeline with ``columnar=True`` gives exactly what the
per-message path (``columnar=False``) gives - state snapshots, counts, dead letters, alerts, flags -
on simulated traffic with invalid messages, duplicates, resends, out-of-order and unusual shapes.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.kafka.partitioning import partition_for
from monitor.pipeline import Pipeline, RawRecord
from monitor.simulate import TOPIC_OF, SimConfig, generate

END = datetime(2026, 10, 20, tzinfo=UTC)
NOW = END + timedelta(hours=1)
EXPECTED = {"readings": "reading", "carer_activity": "carer_activity", "care_network": "care_link",
            "patients": "patient"}
PARTITIONS = 3


def clock() -> datetime:
    return NOW


def _tricky(rng: random.Random, pid: str, i: int) -> list[bytes]:
    """Readings the scanner must decline or get exactly right."""
    t = (END - timedelta(hours=rng.randint(0, 200), seconds=rng.randint(0, 59))).strftime("%Y-%m-%dT%H:%M:%S")
    base = {"reading_id": f"x{i}", "patient_id": pid, "device_id": "d", "kind": "glucose", "value": 5.5,
            "unit": "mmol/L", "measured_at": t + "Z"}
    low = dict(base, reading_id=f"low{i}",
               value=rng.choice([2.1, 3.0, 3.9, 3.8999996, 3.8999994, 4.0, 13.9, 13.9000004, 25.0, 7.5]))
    return [
        json.dumps(base).encode(),
        json.dumps(base).encode(),  # the same reading twice
        json.dumps(dict(base, value=6.1)).encode(),  # same id, other value
        json.dumps(dict(base, reading_id=f"y{i}")).encode(),  # other id, same content
        json.dumps(low).encode(),
        json.dumps(dict(base, reading_id=f"o{i}", measured_at=t + "+02:00")).encode(),
        json.dumps(dict(base, reading_id=f"e{i}", device_id="d\u00e9")).encode(),  # escaped string
        json.dumps(dict(base, reading_id=f"m{i}", value=99, unit="mg/dL")).encode(),
        json.dumps(dict(base, reading_id=f"f{i}", measured_at="2027-01-01T00:00:00Z")).encode(),
        json.dumps({k: v for k, v in base.items() if k != "value"} | {
            "reading_id": f"bp{i}", "kind": "blood_pressure", "unit": "mm[Hg]",
            "systolic": rng.choice([118, 185.5, 90]), "diastolic": rng.choice([70, 121, 60.5])}).encode(),
        json.dumps({"gateway_id": "g", "sent_at": t + "Z",
                    "readings": [dict(base, reading_id=f"b{i}-{k}", value=4.0 + k) for k in range(5)]
                    + [dict(base, reading_id=f"b{i}-0")]}).encode(),  # a duplicate inside the batch
        b'{"reading_id": "broken"',
    ]


def records(seed: int, patients: int = 60) -> list[RawRecord]:
    rng = random.Random(seed)
    out: list[tuple[str, str, bytes]] = []
    for typ, doc in generate(SimConfig(patients=patients, days=8, seed=seed, end=END, invalid_rate=0.03)):
        if typ.startswith("invalid:"):
            out.append((typ.split(":", 1)[1], "P0", doc["raw"].encode()))
            continue
        pid = doc["patient_id"] if "patient_id" in doc else doc["readings"][0]["patient_id"]
        out.append((TOPIC_OF[typ], pid, json.dumps(doc, separators=(",", ":")).encode()))
    for k in range(5):  # registered patients with their own thresholds
        pid = f"T{k}"
        out.append(("patients", pid, json.dumps({
            "patient_id": pid, "region": "north", "deprivation_quintile": 1 + k, "age_band": "65-74",
            "monitoring_plan": {"glucose": 4},
            "thresholds": {"glucose_low": 5.0, "glucose_high": 7.0}}).encode()))
    for i in range(40):
        pid = f"P{rng.randrange(patients)}" if i % 4 else f"T{i % 5}"
        out.extend(("readings", pid, raw) for raw in _tricky(rng, pid, i))
    rng.shuffle(out)  # out of order, interleaved
    offsets: dict[tuple[str, int], int] = {}
    recs = []
    for topic, pid, raw in out:
        p = partition_for(pid, PARTITIONS)
        o = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        recs.append(RawRecord(raw, topic, p, o))
    return recs


def run(recs: list[RawRecord], chunk: int, columnar: bool) -> dict[str, Any]:
    pipe = Pipeline(clock=clock, columnar=columnar)
    dead, alerts = [], []
    for i in range(0, len(recs), chunk):
        batch = recs[i : i + chunk]
        result = pipe.ingest(batch, EXPECTED)
        if i % (3 * chunk) == 0:
            result2 = pipe.ingest(batch, EXPECTED)  # a redelivery: skipped by offset
            assert not result2.dead_letters and not result2.alerts
        dead.extend(d.model_dump(mode="json") for d in result.dead_letters)
        alerts.extend(a.to_dict() if hasattr(a, "to_dict") else repr(a) for a in result.alerts)
    ticks = [pipe.tick_partition(pipe.partitions[p]) for p in sorted(pipe.partitions)]
    return {"dead": dead, "alerts": alerts,
            "flags": [repr(f) for t in ticks for f in t.flags],
            "tick_alerts": [repr(a) for t in ticks for a in t.alerts],
            "counts": pipe.counts.to_dict(),
            "snapshots": {p: st.snapshot() for p, st in pipe.partitions.items()},
            "report": pipe.patient_report()}


@pytest.mark.parametrize(("seed", "chunk"), [(1, 3), (2, 50), (3, 400), (4, 5000)])
def test_columnar_intake_gives_the_same_answers(seed: int, chunk: int) -> None:
    recs = records(seed)
    want = run(recs, chunk, columnar=False)
    got = run(recs, chunk, columnar=True)
    assert got["counts"] == want["counts"]
    assert got["dead"] == want["dead"]
    assert got["alerts"] == want["alerts"]
    assert got["flags"] == want["flags"] and got["tick_alerts"] == want["tick_alerts"]
    assert got["report"] == want["report"]
    assert got["snapshots"] == want["snapshots"]
    assert want["alerts"] and want["dead"] and want["counts"]["readings"] > 500  # not vacuous


def test_a_fetch_of_only_bad_messages_changes_the_same_state() -> None:
    """Dead letters only: no document, so no arrival time either (as the per-message path)."""
    bad = [RawRecord(b'{"reading_id": "broken"', "readings", 0, i) for i in range(3)]
    for columnar in (False, True):
        pipe = Pipeline(clock=clock, columnar=columnar)
        result = pipe.ingest(bad, EXPECTED)
        assert len(result.dead_letters) == 3
        assert pipe.partitions[0].last_arrival is None
