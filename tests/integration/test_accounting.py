"""Every input is accounted for: processed + dead-lettered = N, duplicates counted once."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from monitor.kafka.partitioning import partition_for

pytestmark = pytest.mark.integration


def reading(rid: str, pid: str, minute: int, **kw: object) -> dict:
    doc = {"reading_id": rid, "patient_id": pid, "device_id": "d", "kind": "heart_rate",
           "value": 70 + minute % 20, "unit": "/min", "measured_at": f"2026-10-30T08:{minute:02d}:00Z"}
    doc.update(kw)
    return doc


def test_mixed_stream_is_fully_accounted_for(settings, worker):
    prod = KafkaProducer(**settings.kafka_python_config())
    sent = 0
    bad: dict[str, int] = {}

    def send(topic: str, pid: str, value: bytes) -> None:
        nonlocal sent
        prod.send(settings.topics.name(topic), key=pid.encode(), value=value,
                  partition=partition_for(pid, settings.partitions))
        sent += 1

    patients = [f"ACC-{i}" for i in range(20)]
    for pid in patients:
        send("patients", pid, json.dumps({"patient_id": pid, "region": "east", "deprivation_quintile": 3,
                                          "age_band": "45-64",
                                          "monitoring_plan": {"heart_rate": 2}}).encode())
    good_readings = 0
    for pid in patients:
        for m in range(10):  # 10 single readings each
            send("readings", pid, json.dumps(reading(f"{pid}-r{m}", pid, m)).encode())
            good_readings += 1
        batch = {"gateway_id": f"g-{pid}", "sent_at": "2026-10-30T09:00:00Z",
                 "readings": [reading(f"{pid}-b{m}", pid, 30 + m) for m in range(5)]}
        send("readings", pid, json.dumps(batch).encode())
        good_readings += 5
    duplicates = 0
    for pid in patients[:5]:  # the same readings again, from a second uploader / a retry
        send("readings", pid, json.dumps(reading(f"{pid}-r0", pid, 0)).encode())
        duplicates += 1
    cases = [
        ("readings", b"{not json", "malformed_json"),
        ("readings", json.dumps(reading("n1", "ACC-0", 1, measured_at="2026-10-30T08:01:00")).encode(),
         "naive_timestamp"),
        ("readings", json.dumps(reading("k1", "ACC-0", 1, kind="ketones")).encode(), "unknown_kind"),
        ("readings", json.dumps(reading("u1", "ACC-0", 1, value=700)).encode(), "implausible_value"),
        ("carer_activity", json.dumps({"activity_id": "x", "patient_id": "ACC-1", "carer_id": "c",
                                       "kind": "visit", "started_at": "2026-10-30T08:00:00Z",
                                       "duration_minutes": 0}).encode(), "invalid_duration"),
        ("care_network", b"\x00\xff", "not_utf8"),
    ]
    for topic, raw, reason in cases:
        send(topic, "ACC-0", raw)
        bad[reason] = bad.get(reason, 0) + 1
    prod.flush()
    prod.close()

    summary = worker.wait_inputs(sent)
    assert summary["inputs"] == sent
    processed = sum(summary["processed"].values())
    message_level = {r: n for r, n in bad.items() if r != "implausible_value"}
    assert processed + sum(message_level.values()) == sent
    assert summary["dead_letters"] == bad
    assert summary["duplicates"] == duplicates
    time.sleep(2)
    state = worker.get("/patients/state", token=worker.env["MONITOR_API_TOKEN"])["patients"]
    assert sum(p["readings_received_7d"] for pid, p in state.items() if pid in patients) == good_readings

    consumer = KafkaConsumer(settings.topics.name("dead_letters"), **settings.kafka_python_config(),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    reasons: dict[str, int] = {}
    for r in consumer:
        d = json.loads(r.value)
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    consumer.close()
    assert reasons == bad
