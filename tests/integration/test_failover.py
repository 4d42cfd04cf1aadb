"""Broker fail-over on a private 3-node KRaft cluster: nothing lost, nothing duplicated.

A cluster of three combined broker+controller nodes (:class:`monitor.kafka.local.LocalCluster`,
replication factor 3, ``min.insync.replicas`` 2) is started in the test's tmp folder on ports of its
own; the shared broker (``KAFKA_BOOTSTRAP_SERVERS``, 127.0.0.1:9092) is never used. One worker runs
against it while the simulator publishes a population, paced over about a minute. Mid-stream the node
leading the consumer-offsets partition (the worker's group coordinator) is killed with SIGKILL, then,
once the cluster has fenced it, a second node is killed for a few seconds: with one replica left in
sync (and no controller quorum) a write with acks=all must not succeed, and must succeed once that
node is back. Both nodes are restarted. Then:

* every generated document is on its input topic exactly once (byte-identical values, per topic);
* the worker accounted for every input (``/summary`` inputs = messages generated);
* no flag, alert or dead letter was emitted twice;
* the per-patient state and the equity snapshot equal those of a reference worker that processed the
  same input topics afterwards, on the healthy cluster (its own consumer group and output topics).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from monitor.kafka import local
from monitor.kafka.admin import ensure_topics
from monitor.settings import Settings, Topics
from monitor.simulate import TOPIC_OF, SimConfig, generate, publish
from tests.integration.conftest import (
    ROOT,
    WorkerProcess,
    deployment_env,
    new_tag,
    read_records,
    settings_from,
)
from tests.integration.test_recovery_and_scaleout import (
    assert_no_output_twice,
    final_state,
    read_all,
    wait_all,
    wait_checkpointed,
    worker_env,
)

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 1, tzinfo=UTC)
CFG = SimConfig(patients=150, days=10, seed=33, end=END, invalid_rate=0.01)
PUBLISH_S = 50.0  # wall-clock seconds the simulated days are spread over
HELD_S = 8.0  # seconds the second node stays down (writes must not succeed meanwhile)


def free_base_port(cluster_of: int = 3, step: int = 100, offset: int = 10000) -> int:
    """A base port whose cluster ports (clients and controllers) are all free right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - step * cluster_of)
        ports = [base + step * i + o for i in range(cluster_of) for o in (0, offset)]
        if all(_bindable(p) for p in ports):
            return base
    raise RuntimeError("no free ports for a local cluster")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[local.LocalCluster]:
    c = local.LocalCluster(tmp_path / "kafka", brokers=3, base_port=free_base_port(),
                           jars=ROOT / ".kafka", heap_mb=384)
    try:
        local.up_cluster(c, timeout_s=150)
        yield c
    finally:
        for i in c.node_ids:  # throw-away data: no controlled shutdown needed
            local.kill(c, i, signal.SIGKILL)


def expected_inputs(settings: Settings) -> dict[str, Counter[bytes]]:
    """Input topic -> the values :func:`publish` writes for CFG (a multiset: each once)."""
    out: dict[str, Counter[bytes]] = {t: Counter() for t in settings.topics.inputs}
    for typ, doc in generate(CFG):
        if typ.startswith("invalid:"):
            out[settings.topics.name(typ.split(":", 1)[1])][doc["raw"].encode()] += 1
        else:
            out[settings.topics.name(TOPIC_OF[typ])][json.dumps(doc, separators=(",", ":")).encode()] += 1
    return out


def partitions_of(admin: KafkaAdminClient, topics: list[str]) -> list[dict[str, Any]]:
    return [p for t in admin.describe_topics(topics) for p in t["partitions"]]


def wait_fenced(admin: KafkaAdminClient, topics: list[str], node_id: int, timeout_s: float = 60) -> float:
    """Seconds until ``node_id`` is in no ISR of ``topics`` (the controller fenced it)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if all(node_id not in p["isr"] for p in partitions_of(admin, topics)):
                return time.monotonic() - t0
        except Exception:  # metadata from a node that just went away: ask again
            pass
        time.sleep(0.5)
    raise AssertionError(f"node {node_id} still in an ISR {timeout_s} s after it was killed")


def wait_in_sync(admin: KafkaAdminClient, topics: list[str], replicas: int, timeout_s: float = 90) -> float:
    """Seconds until every partition of ``topics`` has ``replicas`` replicas in sync."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if all(len(p["isr"]) == replicas for p in partitions_of(admin, topics)):
                return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not every partition has {replicas} replicas in sync after {timeout_s} s")


def reference_env(env: dict[str, str], settings: Settings, tmp: Path) -> dict[str, str]:
    """A second deployment reading ``settings``' input topics, with its own group and outputs."""
    tag = new_tag(8)
    e = worker_env(env, tmp, 99)
    e.update({"MONITOR_APP_ID": f"monitor-ref-{tag}", "MONITOR_TOPIC_PREFIX": ""})
    inputs = {"readings", "carer_activity", "care_network", "patients"}
    for key, field in Topics.model_fields.items():
        if key == "prefix":
            continue
        e[f"MONITOR_TOPIC_{key.upper()}"] = (settings.topics.name(key) if key in inputs
                                             else f"r{tag}-{field.default}")
    return e


@pytest.mark.timeout(420)
def test_two_broker_crashes_lose_and_duplicate_nothing(cluster: local.LocalCluster, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    env = deployment_env(cluster.bootstrap, tmp_path)
    env.pop("MONITOR_LOCAL_BROKER", None)  # a private cluster: nothing to clean up on the shared one
    env.update({"MONITOR_IDLE_AFTER_S": "86400", "MONITOR_CHECKPOINT_INTERVAL_S": "1",
                "MONITOR_MAX_POLL_RECORDS": "200"})
    settings = settings_from(env)
    assert settings.bootstrap == cluster.bootstrap
    ensure_topics(settings)
    inputs = sorted(settings.topics.inputs)
    probe_topic = settings.topics.prefix + "probe"
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap.split(","), client_id="failover-test")
    try:
        admin.create_topics([NewTopic(probe_topic, 1, 3, topic_configs={"min.insync.replicas": "2"})])
        for p in partitions_of(admin, [*settings.topics.all(), probe_topic]):
            assert len(p["replicas"]) == 3, p
        assert topic_config(admin, inputs, "min.insync.replicas") == dict.fromkeys(inputs, "2")

        worker = WorkerProcess(worker_env(env, tmp_path, 1), tmp_path / "worker.log")
        worker.start()
        timings["setup_s"] = time.monotonic() - t_start
        probe = KafkaProducer(bootstrap_servers=cluster.bootstrap.split(","), acks="all",
                              enable_idempotence=True, retries=2**31 - 1, delivery_timeout_ms=180_000,
                              request_timeout_ms=5_000, max_block_ms=60_000)
        try:
            probe.send(probe_topic, b"before").get(timeout=60)

            published: dict[str, Any] = {}

            def run_publish() -> None:
                speed = CFG.days * 86_400 / PUBLISH_S
                try:
                    published["result"] = publish(CFG, settings, speed=speed, progress=False)
                except BaseException as exc:  # reported by the main thread
                    published["error"] = exc

            publisher = threading.Thread(target=run_publish, name="publish", daemon=True)
            t_pub = time.monotonic()
            publisher.start()

            time.sleep(PUBLISH_S * 0.25)
            (coordinator,) = partitions_of(admin, ["__consumer_offsets"])
            first = coordinator["leader"]  # the worker's group coordinator goes first
            second = min(i for i in cluster.node_ids if i != first)
            assert local.kill(cluster, first, signal.SIGKILL)
            timings["first_killed_at_s"] = time.monotonic() - t_pub
            timings["first_fenced_after_s"] = wait_fenced(admin, inputs, first)
            probe.send(probe_topic, b"one-node-down").get(timeout=60)  # two in sync: writes go on

            time.sleep(max(0.0, PUBLISH_S * 0.5 - (time.monotonic() - t_pub)))
            assert local.kill(cluster, second, signal.SIGKILL)
            t_second = time.monotonic()
            timings["second_killed_at_s"] = t_second - t_pub
            paused = probe.send(probe_topic, b"two-nodes-down")
            while time.monotonic() - t_second < HELD_S:
                assert not paused.is_done or paused.failed(), \
                    "a write with acks=all succeeded with one replica in sync"
                time.sleep(0.2)
            assert not paused.is_done, f"the write failed instead of pausing: {paused.exception!r}"
            t_restart = time.monotonic()
            local.start(cluster, second, timeout_s=120)
            timings["second_restart_s"] = time.monotonic() - t_restart
            paused.get(timeout=120)  # resumes, and succeeds, once two replicas are in sync again
            timings["write_paused_s"] = time.monotonic() - t_second
            timings["resumed_after_restart_s"] = time.monotonic() - t_restart

            t_restart = time.monotonic()
            local.start(cluster, first, timeout_s=120)
            timings["first_restart_s"] = time.monotonic() - t_restart
            assert worker.alive(), f"the worker died; log:\n{worker.log.read_text()[-3000:]}"

            publisher.join(timeout=240)
            assert not publisher.is_alive(), "publication did not finish"
            timings["publish_s"] = time.monotonic() - t_pub
        finally:
            probe.close(timeout=10)
        assert "error" not in published, published.get("error")
        result = published["result"]
        assert result.complete, result.loss_report()
        sent = sum(result.values())
        timings["all_in_sync_after_s"] = wait_in_sync(admin, [*inputs, probe_topic], 3)
    finally:
        admin.close()

    # the reference reads the same input, on the healthy cluster, while the worker drains
    ref_env = reference_env(env, settings, tmp_path)
    ref_settings = settings_from(ref_env)
    ensure_topics(ref_settings)
    reference = WorkerProcess(ref_env, tmp_path / "reference.log")
    reference.start()
    try:
        wait_all([worker], sent, timeout_s=180)
        wait_checkpointed(worker)
        patients, equity = final_state([worker], settings)
        summary = worker.get("/summary")
        assert worker.alive()
        wait_all([reference], sent, timeout_s=180)
        ref_patients, ref_equity = final_state([reference], ref_settings)
    finally:
        worker.stop()
        reference.stop()
    timings["total_s"] = time.monotonic() - t_start
    print("failover timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))

    want = expected_inputs(settings)
    assert sent == sum(sum(c.values()) for c in want.values())
    for topic, values in want.items():  # every message on its topic, exactly once
        got = Counter(r.value for r in read_records(settings, topic))
        missing, extra = sum((values - got).values()), sum((got - values).values())
        assert got == values, f"{topic}: {missing} messages missing, {extra} extra records"
    assert [r.value for r in read_records(settings, probe_topic)] == [
        b"before", b"one-node-down", b"two-nodes-down"]

    assert summary["inputs"] == sent  # every input accounted for exactly once
    assert_no_output_twice(settings)
    dead = read_all(settings, settings.topics.name("dead_letters"))
    keys = [(d["topic"], d["partition"], d["offset"], d["reason"], d["detail"]) for d in dead]
    assert len(keys) == len(set(keys)), "a dead letter was emitted twice"
    assert len(dead) == sum(summary["dead_letters"].values())

    assert patients == ref_patients
    assert equity["equity"] == ref_equity["equity"] and equity["groups"] == ref_equity["groups"]
    raised = raised_flags(settings)
    assert raised and raised == raised_flags(ref_settings)


def raised_flags(settings: Settings) -> set[tuple[str, str]]:
    """The (patient, flag) pairs whose last transition on the flags topic raised the flag.

    Only the end state is compared: which transient flags were raised and cleared on the way
    depends on how the input was batched (a paced live stream, or the whole topic at once)."""
    last = {}
    records = read_records(settings, settings.topics.name("flags"))
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        doc = json.loads(r.value)
        last[(doc["patient_id"], doc["flag"])] = doc["status"]
    return {k for k, status in last.items() if status == "raised"}


def topic_config(admin: KafkaAdminClient, topics: list[str], name: str) -> dict[str, str | None]:
    """Topic -> the value of its config ``name`` (kafka-python DescribeConfigs responses)."""
    responses = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    out: dict[str, str | None] = {}
    for response in responses:
        for _error, _message, _type, topic, entries in response.resources:
            out[topic] = next((e[1] for e in entries if e[0] == name), None)
    return out
