"""Soak: a worker under a steady load for minutes keeps its memory flat (issue 14).

Readings of a constant, registered population are produced at a fixed rate (default 5,000 readings
per second for 600 s; ``BENCH_SOAK_RATE``, ``BENCH_SOAK_SECONDS``) while the worker consumes them.
The worker's resident set size (RSS, MiB, from ``/proc/<pid>/status``) is sampled every 5 s;
reported: RSS after the first minute and at the end, their ratio (the target is <= 1.10), readings
processed, the achieved production rate and the consumer lag at the end (messages produced minus
readings the worker accounted for). Wall-clock numbers depend on the machine; the ratio is the
result.

Event time is compressed: ``measured_at`` runs from ``seconds`` x ``COMPRESSION`` before the start
up to the present (10 simulated days per wall-clock minute), so every event-time window - the
7-day exact de-duplication table, the 28-day activity window - reaches its steady size within the
first minute. At real time a steady 5,000 readings/s would fill the 7-day duplicate window with 3
billion events (by design it holds every event of the window, ~20 B each): growth over 10 minutes
would be that window filling, not a leak. (A first run at real time: 308.9 -> 397.0 MiB.)
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from bench.bench_e2e import Worker, _deployment, _produce, _registrations, ready
from bench.results import merge_section
from monitor.kafka.partitioning import partition_for

COMPRESSION = 14_400
"""Simulated seconds per wall-clock second (10 days a minute)."""


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(rate: int, seconds: float, patients: int = 20_000) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    env, settings = _deployment("soak")
    pids = [f"S{i}" for i in range(patients)]
    _produce(settings, _registrations(pids))
    w = Worker(env)
    w.start()
    samples: list[tuple[float, float]] = []

    async def run() -> tuple[int, float]:
        prod = AIOKafkaProducer(**settings.aiokafka_config(), linger_ms=5, acks=1)
        await prod.start()
        topic = settings.topics.name("readings")
        t0 = time.perf_counter()
        event0 = time.time() - seconds * COMPRESSION  # measured_at reaches the present at the end
        next_sample = t0
        sent = 0
        try:
            while (now := time.perf_counter()) - t0 < seconds:
                due = int((now - t0) * rate)
                while sent < due:  # catch up to the schedule in one burst
                    pid = pids[sent % patients]
                    doc = {"reading_id": f"{pid}-{sent}", "patient_id": pid, "device_id": "d",
                           "kind": "glucose", "value": 5.0 + (sent % 30) / 10, "unit": "mmol/L",
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                               min(time.time(), event0 + (now - t0) * COMPRESSION)))}
                    await prod.send(topic, key=pid.encode(), value=json.dumps(doc).encode(),
                                    partition=partition_for(pid, settings.partitions))
                    sent += 1
                if now >= next_sample:
                    samples.append((now - t0, _rss_mib(w.proc.pid)))  # type: ignore[union-attr]
                    next_sample += 5.0
                await asyncio.sleep(0.01)
            await prod.flush()
        finally:
            await prod.stop()
        return sent, sent / (time.perf_counter() - t0)

    try:
        w.wait(ready)
        sent, achieved = asyncio.run(run())
        processed = w.get("/summary")["readings"]
        rss_end = _rss_mib(w.proc.pid)  # type: ignore[union-attr]
    finally:
        w.stop()
    after_1min = next((r for t, r in samples if t >= 60), samples[-1][1] if samples else float("nan"))
    return {"target_rate_per_s": rate, "seconds": seconds, "patients": patients,
            "achieved_rate_per_s": round(achieved), "readings_sent": sent, "readings_processed": processed,
            "lag_at_end": sent - processed, "rss_mib_after_1_min": round(after_1min, 1),
            "rss_mib_at_end": round(rss_end, 1), "rss_ratio_end_to_1_min": round(rss_end / after_1min, 3),
            "event_time_compression": COMPRESSION,
            "note": "worker RSS under a steady load of a constant registered population; event time "
                    "10 days per wall minute so every window is at its steady size after 1 min"}


def main() -> None:
    rate = int(os.environ.get("BENCH_SOAK_RATE", "5000"))
    seconds = float(os.environ.get("BENCH_SOAK_SECONDS", "600"))
    merge_section("soak", soak(rate, seconds))


if __name__ == "__main__":
    main()
