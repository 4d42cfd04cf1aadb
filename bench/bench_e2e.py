"""End-to-end throughput, alert latency and recovery of the worker against the real broker.

Sections written to ``bench/results.json``:

* ``e2e_single`` / ``e2e_batched``: readings per second through one worker (from partition
  assignment until its state reflects every reading), a raw aiokafka ``getmany`` loop draining the
  same topic in the same run, and their ratio. The input is produced before the worker starts, so
  the producer's speed is not measured.
* ``alert_latency_ms``: produce -> ``alerts`` topic, p50/p99, at a fixed rate.
* ``recovery_s``: seconds from a restarted worker's start until it has restored its partitions'
  checkpoints and answers with the full state, for the number of patients given.

Needs ``KAFKA_BOOTSTRAP_SERVERS`` (``make bench`` starts the local broker). Sizes are modest so a run
takes a few minutes on 2 cores; pass larger ones through the environment (``BENCH_E2E_READINGS``,
``BENCH_RECOVERY_PATIENTS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from bench.results import merge_section
from monitor.kafka.admin import ensure_topics
from monitor.kafka.partitioning import partition_for
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(name: str) -> tuple[dict[str, str], Settings]:
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update({
        "MONITOR_TOPIC_PREFIX": f"bench{tag}-", "MONITOR_APP_ID": f"bench-{name}-{tag}",
        "MONITOR_WEB_PORT": str(_free_port()), "MONITOR_DATA_DIR": tempfile.mkdtemp(),
        "MONITOR_API_TOKEN": "bench", "MONITOR_LOG_LEVEL": "WARNING", "MONITOR_FLAG_INTERVAL_S": "1",
        "MONITOR_IDLE_AFTER_S": "86400", "MONITOR_OLDEST_READING_DAYS": "3650",
    })
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ensure_topics(settings)
    return env, settings


def ready(w: Worker) -> bool:
    """The worker holds partitions and has restored every one assigned to it."""
    health = w.get("/health")
    return bool(health["partitions"]) and health.get("restoring_partitions", 0) == 0


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.base = f"http://127.0.0.1:{env['MONITOR_WEB_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor", "worker"], env=self.env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def get(self, path: str) -> Any:
        req = urllib.request.Request(self.base + path, headers={"Authorization": "Bearer bench"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def wait(self, predicate: Any, timeout_s: float = 600) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate(self):
                    return time.monotonic()
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the worker did not get there in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)


def _reading(pid: str, i: int, value: float = 6.0) -> dict[str, Any]:
    return {"reading_id": f"{pid}-{i}", "patient_id": pid, "device_id": "d", "kind": "glucose",
            "value": value, "unit": "mmol/L",
            "measured_at": f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"}


def _registrations(pids: Any) -> list[tuple[str, str, bytes]]:
    """Registry messages for ``pids``: events of unregistered patients are held, not applied."""
    return [("patients", pid, json.dumps({"patient_id": pid, "region": "bench", "age_band": "65-74",
                                          "deprivation_quintile": 1 + i % 5}).encode())
            for i, pid in enumerate(pids)]


def _produce(settings: Settings, messages: list[tuple[str, str, bytes]]) -> None:
    """Write the input before a measurement (aiokafka record batches per partition: fast enough
    for millions of messages; its speed is not part of any result)."""
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        prod = AIOKafkaProducer(**settings.aiokafka_config(), max_request_size=8 * 1024 * 1024,
                                acks=1, linger_ms=20)
        await prod.start()
        try:
            parts = settings.partitions
            batches: dict[tuple[str, int], Any] = {}
            pending = []
            for topic, pid, value in messages:
                key = (settings.topics.name(topic), partition_for(pid, parts))
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = prod.create_batch()
                if batch.append(key=pid.encode(), value=value, timestamp=None) is None:
                    batch.close()
                    pending.append(await prod.send_batch(batch, key[0], partition=key[1]))
                    batch = batches[key] = prod.create_batch()
                    batch.append(key=pid.encode(), value=value, timestamp=None)
            for (topic, partition), batch in batches.items():
                batch.close()
                pending.append(await prod.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*pending)
        finally:
            await prod.stop()

    asyncio.run(run())


async def _raw_drain(settings: Settings, topic: str, n: int) -> float:
    """Seconds a raw aiokafka ``getmany`` loop takes to drain ``n`` messages (assigned, no group)."""
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.name(topic), p) for p in range(settings.partitions)]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begins[tp])
        seen = 0
        t0 = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            seen += sum(len(v) for v in batch.values())
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def throughput(name: str, readings: int, batch: int) -> dict[str, Any]:
    env, settings = _deployment(name)
    patients = max(1, readings // 20)
    msgs: list[tuple[str, str, bytes]] = []
    per = [[] for _ in range(patients)]  # type: list[list[dict[str, Any]]]
    for i in range(readings):
        per[i % patients].append(_reading(f"B{i % patients}", i // patients))
    messages = 0
    for p, rs in enumerate(per):
        pid = f"B{p}"
        if batch == 1:
            msgs.extend(("readings", pid, json.dumps(r).encode()) for r in rs)
        else:
            for k in range(0, len(rs), batch):
                doc = {"gateway_id": "g", "sent_at": "2026-10-30T00:00:00Z", "readings": rs[k:k + batch]}
                msgs.append(("readings", pid, json.dumps(doc).encode()))
    messages = len(msgs)
    _produce(settings, _registrations(f"B{p}" for p in range(patients)) + msgs)
    raw_s = asyncio.run(_raw_drain(settings, "readings", messages))
    w = Worker(env)
    w.start()
    try:
        t0 = w.wait(ready)  # from a ready worker: start-up and restores are not throughput
        t1 = w.wait(lambda x: x.get("/summary")["readings"] >= readings)
    finally:
        w.stop()
    rate = readings / (t1 - t0)
    raw_rate = readings / raw_s
    return {"readings": readings, "messages": messages, "readings_per_batch": batch,
            "readings_per_s": round(rate), "raw_aiokafka_per_s": round(raw_rate),
            "ratio": round(rate / raw_rate, 4),
            "note": "raw = aiokafka getmany draining the same messages; per-reading rate for both"}


def alert_latency(rate: int = 5000, seconds: float = 10.0) -> dict[str, Any]:
    """Produce readings at a fixed rate (1 % of them hypoglycaemia in a new patient) while a
    consumer reads the alerts topic; latency = arrival of the ``firing`` alert at that consumer -
    the moment its reading was handed to the producer (one process, one clock, aiokafka both)."""
    from aiokafka import AIOKafkaProducer

    env, settings = _deployment("latency")
    n = int(rate * seconds)
    _produce(settings, _registrations([f"N{i}" for i in range(5000)] + [f"L{i}" for i in range(0, n, 100)]))
    w = Worker(env)
    w.start()
    arrived: dict[str, float] = {}
    sent_at: dict[str, float] = {}

    async def consume(done: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(settings.topics.name("alerts"), bootstrap_servers=settings.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    fetch_max_wait_ms=5)
        await consumer.start()
        try:
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=20)
                now = time.perf_counter()
                for recs in batch.values():
                    for rec in recs:
                        doc = json.loads(rec.value)
                        if doc["notification"] == "firing":
                            arrived.setdefault(doc["patient_id"], now)
        finally:
            await consumer.stop()

    async def run() -> float:
        done = asyncio.Event()
        reader = asyncio.create_task(consume(done))
        await asyncio.sleep(3)  # the reader is assigned its partitions
        prod = AIOKafkaProducer(**settings.aiokafka_config(), linger_ms=1)
        await prod.start()
        topic = settings.topics.name("readings")
        t_start = time.perf_counter()
        for i in range(n):
            low = i % 100 == 0  # 1 % of readings are hypoglycaemia in a new patient
            pid = f"L{i}" if low else f"N{i % 5000}"
            doc = _reading(pid, i, 2.5 if low else 6.0)
            doc["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            await prod.send(topic, key=pid.encode(), value=json.dumps(doc).encode(),
                            partition=partition_for(pid, settings.partitions))
            if low:
                sent_at[pid] = time.perf_counter()
            delay = t_start + (i + 1) / rate - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)
        await prod.flush()
        achieved = n / (time.perf_counter() - t_start)
        deadline = time.monotonic() + 60
        while len(arrived) < len(sent_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        done.set()
        await reader
        await prod.stop()
        return achieved

    try:
        w.wait(ready)
        achieved = asyncio.run(run())
    finally:
        w.stop()
    lat = sorted((arrived[p] - t) * 1000 for p, t in sent_at.items() if p in arrived)
    return {"p50": round(statistics.median(lat), 1) if lat else None,
            "p99": round(lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
            "alerts": len(lat), "expected_alerts": len(sent_at), "target_rate_per_s": rate,
            "achieved_rate_per_s": round(achieved),
            "note": "produce() call -> firing alert read from the alerts topic by a concurrent consumer"}


def recovery(patients: int) -> dict[str, Any]:
    env, settings = _deployment("recovery")
    _produce(settings, _registrations(f"R{i}" for i in range(patients)) + [
        ("readings", f"R{i}", json.dumps(_reading(f"R{i}", 0)).encode())
                        for i in range(patients)])
    # a restarted worker keeps its identity (static membership, as a StatefulSet pod would): it
    # takes its partitions back at once instead of after the dead member's session timeout
    w = Worker({**env, "MONITOR_CHECKPOINT_INTERVAL_S": "2", "MONITOR_INSTANCE_ID": "bench-recovery-0"})
    w.start()
    t_ingest = time.monotonic()
    w.wait(lambda x: x.get("/summary")["readings"] >= patients, timeout_s=1800)
    ingest_s = time.monotonic() - t_ingest
    # every partition checkpointed after the last reading: state and offsets are all durable
    w.wait(lambda x: x.get("/health")["dirty_partitions"] == 0, timeout_s=600)
    w.stop(signal.SIGKILL)
    t0 = time.monotonic()
    w.start()
    try:
        t1 = w.wait(lambda x: x.get("/summary")["readings"] >= patients, timeout_s=600)
        health = w.get("/health")
    finally:
        w.stop()
    return {"seconds": round(t1 - t0, 2), "patients": patients, "restored_partitions": health["restored"],
            "first_ingest_s": round(ingest_s, 1),
            "note": "SIGKILL after every partition is checkpointed, restart, restore every partition "
                    "checkpoint until /summary shows every reading; includes process start and JIT load"}


def main() -> None:
    readings = int(os.environ.get("BENCH_E2E_READINGS", "200000"))
    merge_section("e2e_single", throughput("single", readings, 1))
    merge_section("e2e_batched", throughput("batched", readings * 2, 50))
    merge_section("alert_latency_ms", alert_latency())
    merge_section("recovery_s", recovery(int(os.environ.get("BENCH_RECOVERY_PATIENTS", "1000000"))))


if __name__ == "__main__":
    main()
