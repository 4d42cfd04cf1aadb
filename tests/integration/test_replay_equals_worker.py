"""One answer from one code path: the same documents through ``replay`` and through the live worker
(real broker, real worker process) give identical per-patient state, flags, alerts and equity.

The worker reads four topics and a fetch interleaves them in any order, while a file is one
sequence. So the documents go in by type, one topic after the other (registry, care network,
carers' activities, readings; each in file order), and the replay reads the same lines in the
same order, spread over the worker's partitions by the producers' partitioner: every partition
then applies the same sequence in both drivers. The worker's wall-clock timer is set to an hour
(it evaluates only at the event-time ticks, as replay does) and its partial summaries go to the
merge point every second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaProducer

from monitor.kafka.admin import ensure_topics
from monitor.kafka.partitioning import partition_for
from monitor.pipeline import BatchResult
from monitor.replay import replay_pipeline
from monitor.simulate import TOPIC_OF, SimConfig, generate
from monitor.stream.merge import population_snapshot

from .conftest import WorkerProcess, read_records, settings_from

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 1, tzinfo=UTC)
PHASES = (("patient",), ("care_link",), ("carer_activity",), ("reading", "gateway_batch"))


def _eventually(get: Callable[[], Any], want: Any, timeout_s: float = 90.0) -> Any:
    """``get()`` once it equals ``want`` (outputs are still in flight right after the inputs are
    accounted for), else its last value."""
    deadline = time.monotonic() + timeout_s
    got = get()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.5)
        got = get()
    return got


def test_replay_and_worker_give_the_same_answer(env: dict[str, str], tmp_path: Any) -> None:
    env = {**env, "MONITOR_FLAG_INTERVAL_S": "3600", "MONITOR_EQUITY_INTERVAL_S": "1",
           "MONITOR_IDLE_AFTER_S": "3600"}
    settings = settings_from(env)
    ensure_topics(settings)
    parts = settings.partitions
    docs = [(t, d) for t, d in generate(SimConfig(patients=60, days=4, seed=5, end=END, invalid_rate=0.0))]
    ordered = [(t, d) for phase in PHASES for t, d in docs if t in phase]
    lines = [json.dumps({"type": t, **d}, separators=(",", ":")) for t, d in ordered]

    results: list[BatchResult] = []
    pipe, _ = replay_pipeline(lines, partitions=parts, final_tick=False, on_result=results.append)
    want_flags = sorted(json.dumps(f.model_dump(mode="json"), sort_keys=True)
                        for r in results for f in r.flags)
    want_alerts = sorted(json.dumps(a.to_json(), sort_keys=True) for r in results for a in r.alerts)
    assert want_flags and want_alerts and not any(r.dead_letters for r in results)  # not vacuous

    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    producer = KafkaProducer(**settings.kafka_python_config(), acks="all")
    try:
        sent = 0
        for phase in PHASES:
            for t, d in ordered:
                if t not in phase:
                    continue
                pid = d["patient_id"] if "patient_id" in d else d["readings"][0]["patient_id"]
                key = f"{pid}|{d['carer_id']}" if t == "care_link" else pid
                producer.send(settings.topics.name(TOPIC_OF[t]), key=key.encode(),
                              value=json.dumps(d, separators=(",", ":")).encode(),
                              partition=partition_for(pid, parts))
                sent += 1
            producer.flush()
            worker.wait_inputs(sent, timeout_s=180)  # the next topic only once this one is applied
        token = env["MONITOR_API_TOKEN"]

        # per-patient state, the flags as published, the open alerts
        assert worker.get("/patients/state", token=token)["patients"] == pipe.patient_report()
        assert worker.get("/patients/unsupported", token=token)["patients"] == pipe.flagged_patients()
        assert worker.get("/patients/alerts", token=token)["alerts"] == pipe.open_alerts()

        # every flag transition and every alert event, as published on the topics
        def published(topic: str, keep: Callable[[dict[str, Any]], bool]) -> list[str]:
            recs = read_records(settings, settings.topics.name(topic))
            return sorted(json.dumps(doc, sort_keys=True) for doc in (json.loads(r.value) for r in recs)
                          if keep(doc))

        assert _eventually(lambda: published("flags", lambda d: "flag_id" in d), want_flags) == want_flags
        assert _eventually(lambda: published("alerts", lambda d: True), want_alerts) == want_alerts

        # the population's equity at the merge point
        latest = {p: st.support.partial_summary(as_of=pipe.effective_time(st))
                  for p, st in pipe.partitions.items() if st.support.watermark_s is not None}
        snap = population_snapshot(latest, parts)
        assert snap is not None and snap["partitions_reported"] == parts
        want = json.loads(json.dumps({k: snap[k] for k in ("as_of_day", "partitions_reported", "groups",
                                                            "equity")}))

        def equity() -> dict[str, Any]:
            got = worker.get("/equity")
            return {k: got.get(k) for k in want}

        assert _eventually(equity, want) == want
    finally:
        producer.close()
        worker.stop()
