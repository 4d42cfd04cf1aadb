"""Simulator -> Kafka -> worker -> flag events on Kafka, against the real broker."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer

from monitor.simulate import SimConfig, generate, publish

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 1, tzinfo=UTC)


def expected_unsupported(cfg: SimConfig) -> dict[str, dict]:
    """Registered patients with no carer registered at the end and no carer activity at all.

    The simulated period (10 days) is shorter than the 28-day activity window, so any activity of
    the period makes its carer active as of the watermark.
    """
    patients: dict[str, dict] = {}
    links: dict[str, dict[str, str]] = {}
    active: set[str] = set()
    for typ, doc in generate(cfg):
        if typ == "patient":
            patients[doc["patient_id"]] = doc
        elif typ == "care_link":
            links.setdefault(doc["patient_id"], {})[doc["carer_id"]] = doc["action"]
        elif typ == "carer_activity":
            active.add(doc["patient_id"])
    return {
        pid: doc for pid, doc in patients.items()
        if pid not in active and "join" not in links.get(pid, {}).values()
    }


def consume(settings, topic: str, stop, timeout_s: float = 60.0) -> list[dict]:
    consumer = KafkaConsumer(topic, **settings.kafka_python_config(), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    out: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not stop(out):
            for rec in consumer:
                out.append(json.loads(rec.value))
                if stop(out):
                    break
    finally:
        consumer.close()
    return out


def test_simulated_population_flags_patients_without_support(settings, worker):
    cfg = SimConfig(patients=150, days=10, seed=7, end=END, invalid_rate=0.0)
    expected = expected_unsupported(cfg)
    assert 10 < len(expected) < 100, "the simulation should give a few unsupported patients"

    counts = publish(cfg, settings, progress=False)
    summary = worker.wait_inputs(sum(counts.values()))
    assert summary["dead_letters"] == {}
    assert summary["processed"]["Patient"] == 150

    def current(events: list[dict]) -> dict[str, dict]:
        """The latest transition per patient decides (a flag raised on partial input may clear)."""
        last: dict[str, dict] = {}
        for f in events:
            if f["flag"] == "no_support_network":
                last[f["patient_id"]] = f
        return {pid: f for pid, f in last.items() if f["status"] == "raised"}

    time.sleep(2.5)  # two more timer evaluations after the worker has everything
    flags = consume(settings, settings.topics.name("flags"),
                    lambda got: set(current(got)) == set(expected))
    raised = current(flags)
    assert set(raised) == set(expected)
    for pid, f in raised.items():
        assert f["flag"] == "no_support_network"
        assert f["region"] == expected[pid]["region"]
        assert f["deprivation_quintile"] == expected[pid]["deprivation_quintile"]
    assert len({f["flag_id"] for f in flags}) == len(flags), "a flag event was published twice"

    # the coordinator's view: the metric and the token-protected patient list agree
    metrics = worker.get("/metrics")
    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("monitor_patients_without_support{"))
    assert total == len(expected)
    listed = worker.get("/patients/unsupported", token=worker.env["MONITOR_API_TOKEN"])
    assert {row["patient_id"] for row in listed["patients"]
            if "no_support_network" in row["flags"]} == set(expected)
    for pid in expected:  # no patient identifier in any metric
        assert pid not in metrics


def test_patient_endpoint_needs_token(worker):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as exc:
        worker.get("/patients/unsupported")
    assert exc.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as exc:
        worker.get("/patients/unsupported", token="wrong")
    assert exc.value.code == 401


BAD_INPUTS = [
    ("readings", b'{"reading_id": "r1", "patient_id": ', "malformed_json"),
    ("readings", b'{"reading_id":"r2","patient_id":"P1","device_id":"d","kind":"glucose","value":5.0,'
                 b'"unit":"mmol/L","measured_at":"2026-10-30T08:00:00"}', "naive_timestamp"),
    ("readings", b'{"reading_id":"r3","patient_id":"P1","device_id":"d","kind":"ketones","value":0.4,'
                 b'"unit":"mmol/L","measured_at":"2026-10-30T08:00:00Z"}', "unknown_kind"),
    ("carer_activity", b'{"activity_id":"a1","patient_id":"P1","carer_id":"C1","kind":"visit",'
                       b'"started_at":"2026-10-30T08:00:00Z","duration_minutes":-15}', "invalid_duration"),
    ("care_network", b"\xff\xfe not utf-8", "not_utf8"),
]


def test_bad_input_is_dead_lettered_counted_and_the_worker_keeps_running(settings, worker):
    prod = KafkaProducer(**settings.kafka_python_config())
    prod.send(settings.topics.name("patients"), key=b"P1", value=json.dumps(
        {"patient_id": "P1", "region": "north", "deprivation_quintile": 2, "age_band": "65-74"}).encode())
    for topic_key, raw, _ in BAD_INPUTS:
        prod.send(settings.topics.name(topic_key), key=b"P1", value=raw)
    good = (b'{"reading_id":"ok-1","patient_id":"P1","device_id":"d","kind":"glucose","value":5.0,'
            b'"unit":"mmol/L","measured_at":"2026-10-30T08:00:00Z"}')
    prod.send(settings.topics.name("readings"), key=b"P1", value=good)
    prod.flush()
    prod.close()

    summary = worker.wait_inputs(len(BAD_INPUTS) + 2)
    assert worker.alive()
    assert summary["readings"] == 1
    assert summary["dead_letters"] == {reason: 1 for _, _, reason in BAD_INPUTS}

    dead = consume(settings, settings.topics.name("dead_letters"),
                   lambda got: len(got) >= len(BAD_INPUTS))
    by_reason = {d["reason"]: d for d in dead}
    assert set(by_reason) == {reason for _, _, reason in BAD_INPUTS}
    for topic_key, raw, reason in BAD_INPUTS:
        d = by_reason[reason]
        assert d["topic"] == settings.topics.name(topic_key)
        assert d["offset"] >= 0 and d["partition"] >= 0
        if d["encoding"] == "utf-8":
            assert d["original"].encode() == raw
        else:
            import base64

            assert base64.b64decode(d["original"]) == raw

    metrics = worker.get("/metrics")
    for _, _, reason in BAD_INPUTS:
        assert f'monitor_dead_letters_total{{reason="{reason}"}} 1.0' in metrics

    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "monitor", "dead-letters", "--latest", "2"], env=worker.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["counts"] == {reason: 1 for _, _, reason in BAD_INPUTS}
    assert len(shown["latest"]) == 2


def test_carer_overload_is_decided_across_partitions(settings, worker):
    """2100 minutes in one ISO week, split over two patients on different partitions: no single
    partition sees 35 hours, the merge point does, and notifies exactly once."""
    from monitor.kafka.partitioning import partition_for

    pids = ["OVL-1"]
    pids.append(next(f"OVL-{i}" for i in range(2, 100)
                     if partition_for(f"OVL-{i}", settings.partitions)
                     != partition_for("OVL-1", settings.partitions)))
    prod = KafkaProducer(**settings.kafka_python_config())
    n = 0
    for pid in pids:
        prod.send(settings.topics.name("patients"), key=pid.encode(),
                  partition=partition_for(pid, settings.partitions),
                  value=json.dumps({"patient_id": pid, "region": "coast", "deprivation_quintile": 1,
                                    "age_band": "85+"}).encode())
        n += 1
    for day in range(5):  # Mon 2026-10-26 .. Fri: 2 x 5 x 210 = 2100 minutes
        for pid in pids:
            act = {"activity_id": f"{pid}-{day}", "patient_id": pid, "carer_id": "CARER-X",
                   "kind": "personal_care", "started_at": f"2026-10-{26 + day}T09:00:00Z",
                   "duration_minutes": 210}
            prod.send(settings.topics.name("carer_activity"), key=pid.encode(),
                      partition=partition_for(pid, settings.partitions), value=json.dumps(act).encode())
            n += 1
    prod.flush()
    prod.close()
    worker.wait_inputs(n)
    notes = consume(settings, settings.topics.name("flags"),
                    lambda got: any(f.get("notification") == "carer_overload" for f in got), timeout_s=30)
    time.sleep(3)
    notes = [f for f in consume(settings, settings.topics.name("flags"), lambda got: False, timeout_s=3)
             if f.get("notification") == "carer_overload"]
    assert [(f["carer_id"], f["week"], f["minutes"]) for f in notes] == [("CARER-X", "2026-W44", 2100)]
    snapshot = worker.get("/equity")
    assert snapshot["carers"]["weeks"]["2026-W44"]["overloaded"] == 1
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "monitor", "carers", "ledger", "--week", "2026-W44",
                          "--format", "json"], env=worker.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["carer_id"], row["minutes"], row["patients"], row["overload"]) == ("CARER-X", 2100, 2, True)


def test_report_from_the_live_equity_topic(settings, worker, tmp_path):
    import subprocess
    import sys

    cfg = SimConfig(patients=120, days=7, seed=3, end=END)
    worker.wait_inputs(sum(publish(cfg, settings, progress=False).values()))
    snaps = consume(settings, settings.topics.name("equity"),
                    lambda got: bool(got) and got[-1]["partitions_reported"] == settings.partitions)
    assert snaps and snaps[-1]["equity"]["deprivation_quintile"]["pct_covered"]["SII"] is not None
    out = subprocess.run([sys.executable, "-m", "monitor", "report", "--out", str(tmp_path / "r")],
                         env=worker.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    html = tmp_path / "r" / "index.html"
    assert out.stdout.strip() == str(html) and html.exists()
    pngs = list((tmp_path / "r").glob("*.png"))
    assert len(pngs) >= 3 and all(p.stat().st_size > 1000 for p in pngs)
    text = html.read_text()
    assert all(p.name in text for p in pngs)


def test_poison_messages_do_not_stop_the_worker(settings, worker):
    """A 5,000-digit number and 1 MB of ``\\x01`` on ``readings``, then valid messages: the worker
    dead-letters the two (capped: a 4,096-byte prefix, the length and SHA-256) and goes on. On the
    old code the first raised ValueError out of the pipeline and the second made a 6 MB dead letter
    the producer refused; either stopped every worker that took the partition."""
    import hashlib
    from datetime import timedelta

    now = datetime.now(UTC)
    big_number = (b'{"reading_id":"big","patient_id":"PZ","device_id":"d","kind":"glucose","value":'
                  + b"9" * 5000 + b',"unit":"mmol/L","measured_at":"' + now.isoformat().encode() + b'"}')
    ones = b"\x01" * 1_000_000
    low = json.dumps({"reading_id": "low-1", "patient_id": "PZ", "device_id": "d", "kind": "glucose",
                      "value": 2.0, "unit": "mmol/L",
                      "measured_at": (now - timedelta(minutes=1)).isoformat()}).encode()
    patient = json.dumps({"patient_id": "PZ", "region": "north", "deprivation_quintile": 3,
                          "age_band": "65-74"}).encode()
    prod = KafkaProducer(**settings.kafka_python_config(), max_request_size=2_000_000)
    prod.send(settings.topics.name("patients"), key=b"PZ", value=patient).get(timeout=30)
    for raw in (big_number, ones, low):
        prod.send(settings.topics.name("readings"), key=b"PZ", value=raw).get(timeout=30)
    prod.close()

    summary = worker.wait_inputs(4)
    assert worker.alive()
    assert summary["readings"] == 1 and sum(summary["dead_letters"].values()) == 2
    dead = consume(settings, settings.topics.name("dead_letters"), lambda got: len(got) >= 2)
    by_size = {d["original_bytes"]: d for d in dead}
    assert set(by_size) == {len(big_number), len(ones)}
    cut = by_size[len(ones)]
    assert cut["original_sha256"] == hashlib.sha256(ones).hexdigest()
    assert len(cut["original"]) == 4096 and cut["original"] == "\x01" * 4096
    assert by_size[len(big_number)]["original_sha256"] == hashlib.sha256(big_number).hexdigest()
    alerts = consume(settings, settings.topics.name("alerts"), lambda got: len(got) >= 1)
    assert [(a["rule"], a["notification"]) for a in alerts] == [("glucose_very_low", "firing")]
