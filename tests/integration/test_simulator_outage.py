"""Broker outages while the simulator publishes: it delivers everything or says how much it did not.

Each test runs its own single-node broker (in ``tmp_path``, on free ports; only the cached jars of
``.kafka/`` are shared) and stops it: the suite's shared broker is never stopped. The population is
paced (``speed``) so that publication is still going on when the broker goes away; a simulated day
takes ``day_wall_s`` wall-clock seconds (per test), its events run from about 07:00 to 20:00.

* a 20 s outage (then a restart) is ridden out: every generated message is on the topics exactly
  once (end offsets, and every record read back) and ``publish`` reports nothing undelivered;
* an outage longer than the delivery deadline: the CLI exits 3 and reports as undelivered exactly
  the messages the topics lack. A 150 s outage is longer than that only with a deadline under
  150 s (the default, 300 s, rides it out like the 20 s one); to keep the test short the deadline
  here is 15 s (``--delivery-timeout 15``) and the broker stays down until the CLI has exited.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from monitor.kafka import local
from monitor.kafka.admin import ensure_topics
from monitor.kafka.partitioning import partition_for
from monitor.settings import Settings
from monitor.simulate import TOPIC_OF, SimConfig, generate, publish
from tests.integration.conftest import ROOT, deployment_env, free_port, read_records, settings_from

pytestmark = pytest.mark.integration

INPUTS = ("patients", "care_network", "readings", "carer_activity")
END = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[local.LocalBroker]:
    """A private broker of this test only; stopped at the end whatever the test did to it."""
    jars = local.fetch_jars(local.LocalBroker(ROOT / ".kafka"))  # the shared cache: never started here
    home = tmp_path / "kafka"
    home.mkdir()
    (home / jars.name).symlink_to(jars.resolve(), target_is_directory=True)
    b = local.LocalBroker(home, port=free_port(), controller_port=free_port())
    local.up(b, timeout_s=60)
    try:
        yield b
    finally:
        local.down(b)  # this broker only (its own pid file)


def deployment(b: local.LocalBroker, tmp_path: Path) -> tuple[dict[str, str], Settings]:
    env = deployment_env(b.bootstrap, tmp_path)
    env.pop("MONITOR_LOCAL_BROKER", None)
    settings = settings_from(env)
    ensure_topics(settings)
    return env, settings


def expected(cfg: SimConfig, settings: Settings) -> dict[tuple[str, int], list[bytes]]:
    """The values the simulator publishes, per (topic, partition) in generation order."""
    out: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for typ, doc in generate(cfg):
        pid = doc["patient_id"] if "patient_id" in doc else doc["readings"][0]["patient_id"]
        out[(settings.topics.name(TOPIC_OF[typ]), partition_for(pid, settings.partitions))].append(
            json.dumps(doc, separators=(",", ":")).encode())
    return out


def on_topics(settings: Settings) -> dict[str, int]:
    """Records on each input topic: the sum of its partitions' end offsets (fresh topics)."""
    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=None)
    try:
        counts = {}
        for key in INPUTS:
            name = settings.topics.name(key)
            tps = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or [])]
            counts[key] = sum(consumer.end_offsets(tps).values())
        return counts
    finally:
        consumer.close()


def per_topic(counts: dict[str, int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for typ, n in counts.items():
        out[TOPIC_OF[typ]] += n
    return {key: out.get(key, 0) for key in INPUTS}


@pytest.mark.timeout(120)
def test_broker_down_20_s_mid_publication_everything_is_delivered_once(broker, tmp_path):
    """Stopped in the middle of the first day's events (requests may be in flight), down for 20 s,
    restarted: every message lands once, and (no re-send by the simulator) in order per partition."""
    day_wall_s = 10.0
    cfg = SimConfig(patients=150, days=2, seed=21, end=END)
    _, settings = deployment(broker, tmp_path)
    want = expected(cfg, settings)
    total = sum(len(v) for v in want.values())
    outage: dict[str, Any] = {}

    def stop_for_20_s() -> None:
        time.sleep(0.55 * day_wall_s)  # about 13:00 on the first day: events are being sent
        outage["before"] = sum(on_topics(settings).values())
        outage["stopped"] = time.monotonic()
        local.down(broker)
        time.sleep(20.0)
        outage["restarting"] = time.monotonic()
        local.up(broker, timeout_s=60)
        outage["up"] = time.monotonic()

    thread = threading.Thread(target=stop_for_20_s, daemon=True)
    t0 = time.monotonic()
    thread.start()
    result = publish(cfg, settings, speed=86_400 / day_wall_s, progress=False, delivery_timeout_s=90)
    took = time.monotonic() - t0
    thread.join(timeout=70)
    assert not thread.is_alive() and "up" in outage
    print(f"published {result.total_delivered} of {total} in {took:.1f} s; broker down from "
          f"{outage['stopped'] - t0:.1f} s to {outage['up'] - t0:.1f} s with {outage['before']} on the "
          f"topics; re-sent {result.resent}")

    assert 0 < outage["before"] < total  # the outage began mid-publication
    assert took >= outage["up"] - t0 - 1.0  # publish waited for the broker to come back
    assert result.complete and result.undelivered == {} and not result.stopped
    assert result.total_delivered == total
    assert on_topics(settings) == per_topic(result.delivered)  # exactly what was generated: no duplicate
    for key in INPUTS:
        name = settings.topics.name(key)
        got: dict[int, list[bytes]] = defaultdict(list)
        for rec in sorted(read_records(settings, name), key=lambda r: (r.partition, r.offset)):
            got[rec.partition].append(rec.value)
        for (topic, partition), values in want.items():
            if topic != name:
                continue
            if result.resent == 0:  # the client's own retries keep the order (idempotent producer)
                assert got[partition] == values, (name, partition)
            else:
                assert Counter(got[partition]) == Counter(values), (name, partition)
        assert sum(len(v) for v in got.values()) == sum(len(v) for (t, _), v in want.items() if t == name)


@pytest.mark.timeout(120)
def test_broker_gone_past_the_deadline_cli_exits_3_with_the_undelivered_count(broker, tmp_path):
    """The broker is stopped once the registry (patients, care links) is on the topics, in the quiet
    gap before the first day's events (07:00 of a 24 s day; only the first reading goes out with the
    registry, as the simulator sends each event once the one before it is due), and stays down until
    the CLI has exited; then it is restarted to count what the topics hold. Stopping when no request
    is in flight makes the expected count exact (a request cut off in flight may have been written
    without its acknowledgement, which the simulator must count as undelivered)."""
    day_wall_s = 24.0
    cfg = SimConfig(patients=150, days=1, seed=22, end=END)
    env, settings = deployment(broker, tmp_path)
    generated = Counter(typ for typ, _ in generate(cfg))
    total = sum(generated.values())
    registry = {"patients": generated["patient"], "care_network": generated["care_link"]}

    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "simulate", "--patients", str(cfg.patients), "--days", "1",
         "--seed", str(cfg.seed), "--end", "2026-11-01T00:00:00Z", "--speed", str(86_400 / day_wall_s),
         "--delivery-timeout", "15"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        while True:  # the registry is sent at once, the other events from about 7 s later
            counts = on_topics(settings)
            if all(counts[k] >= n for k, n in registry.items()) or proc.poll() is not None:
                break
            assert time.monotonic() - t0 < 30, counts
            time.sleep(0.2)
        before = sum(counts.values())
        local.down(broker)
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=75)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    exited = time.monotonic()
    local.up(broker, timeout_s=60)
    held = on_topics(settings)
    print(f"CLI exit {proc.returncode} {exited - stopped:.1f} s after the broker stopped with {before} "
          f"on the topics; topics now {held}; stderr: {err.strip()[-400:]}")

    assert proc.returncode == 3, err[-2000:]
    m = re.search(r"([\d,]+) of ([\d,]+) messages were NOT delivered", err)
    assert m, err[-2000:]
    undelivered, reported_total = (int(g.replace(",", "")) for g in m.groups())
    on_topic = sum(held.values())
    assert reported_total == total
    assert 0 < on_topic < total
    assert undelivered == total - on_topic  # everything is either on a topic or counted
    delivered = json.loads(out)
    assert sum(delivered.values()) == on_topic and per_topic(delivered) == held
    assert not re.search(r"P\d{3}-\d{7}", out + err)  # counts only: no patient id
