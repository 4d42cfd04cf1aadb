"""The broker stops while the simulator publishes and the worker consumes (issue 14).

One private broker (the fixture of ``test_simulator_outage``) is stopped for ``OUTAGE_S`` seconds
in the middle of a paced publication, then restarted. Required, and checked: the simulator delivers
every message (its default deadline, 300 s, outlasts the outage); the worker resumes by itself and
accounts for every input exactly once; no flag or alert id appears twice; checkpoints are written
again within a minute of the broker's return; the final per-patient state, equity, raised flags and
the reading-rule alerts equal those of a reference worker that reads the same input afterwards
without an outage. (Timer-driven notifications - missed readings, re-notifications, escalations -
follow the wall clock and are not compared.) The 150 s outage runs with
``MONITOR_LONG_FAULT_TESTS=1`` (4-5 minutes; last run: passed in 257 s, first checkpoint 1.6 s
after the broker's return).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.kafka import local
from monitor.simulate import SimConfig, publish
from tests.integration.conftest import WorkerProcess, read_records, settings_from
from tests.integration.test_failover import raised_flags, reference_env
from tests.integration.test_recovery_and_scaleout import (
    assert_no_output_twice,
    final_state,
    wait_all,
    wait_checkpointed,
    worker_env,
)
from tests.integration.test_simulator_outage import END, broker, deployment  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

CFG = SimConfig(patients=120, days=8, seed=44, end=END, invalid_rate=0.01)
PUBLISH_S = 30.0  # wall-clock seconds the simulated days are spread over


def reading_alerts(settings: Any) -> set[tuple[str, str]]:
    """(alert_id, rule) of every episode a reading opened (not the timers' missed readings)."""
    out = set()
    for r in read_records(settings, settings.topics.name("alerts")):
        doc = json.loads(r.value)
        if doc["notification"] in ("firing", "recorded") and doc["rule"] != "missed_readings":
            out.add((doc["alert_id"], doc["rule"]))
    return out


@pytest.mark.timeout(420)
@pytest.mark.parametrize("outage_s", [20, pytest.param(150, marks=pytest.mark.skipif(
    not os.environ.get("MONITOR_LONG_FAULT_TESTS"),
    reason="4-5 min: set MONITOR_LONG_FAULT_TESTS=1 (make test stays under 20 min without it)"))])
def test_the_worker_rides_out_a_broker_outage(broker: local.LocalBroker, tmp_path: Path,  # noqa: F811
                                              outage_s: float) -> None:
    env, settings = deployment(broker, tmp_path)
    env.update({"MONITOR_IDLE_AFTER_S": "86400", "MONITOR_CHECKPOINT_INTERVAL_S": "1",
                "MONITOR_SESSION_TIMEOUT_S": "10"})
    worker = WorkerProcess(worker_env(env, tmp_path, 1), tmp_path / "worker.log")
    worker.start()
    published: dict[str, Any] = {}

    def run_publish() -> None:
        try:
            published["result"] = publish(CFG, settings, speed=CFG.days * 86_400 / PUBLISH_S, progress=False)
        except BaseException as exc:  # reported by the main thread
            published["error"] = exc

    try:
        publisher = threading.Thread(target=run_publish, name="publish", daemon=True)
        publisher.start()
        time.sleep(PUBLISH_S * 0.3)
        local.down(broker)
        time.sleep(outage_s)
        local.up(broker, timeout_s=90)
        back = time.monotonic()
        written = worker.get("/health")["checkpoints_written"]
        while worker.get("/health")["checkpoints_written"] == written and time.monotonic() - back < 60:
            time.sleep(0.5)
        resumed_s = time.monotonic() - back
        assert worker.get("/health")["checkpoints_written"] > written, "no checkpoint within a minute"
        publisher.join(timeout=200)
        assert not publisher.is_alive() and "error" not in published, published.get("error")
        result = published["result"]
        assert result.complete, result.loss_report()
        sent = sum(result.values())
        wait_all([worker], sent, timeout_s=120)
        wait_checkpointed(worker)
        assert worker.alive()
        summary = worker.get("/summary")
        patients, equity = final_state([worker], settings)
    finally:
        worker.stop()
    print(f"outage {outage_s} s: first checkpoint {resumed_s:.1f} s after the broker was back")
    assert summary["inputs"] == sent
    assert_no_output_twice(settings)

    ref_env = reference_env(env, settings, tmp_path)
    ref_settings = settings_from(ref_env)
    from monitor.kafka.admin import ensure_topics

    ensure_topics(ref_settings)
    reference = WorkerProcess(ref_env, tmp_path / "reference.log")
    reference.start()
    try:
        wait_all([reference], sent, timeout_s=120)
        ref_patients, ref_equity = final_state([reference], ref_settings)
    finally:
        reference.stop()
    assert patients == ref_patients
    assert equity["equity"] == ref_equity["equity"] and equity["groups"] == ref_equity["groups"]
    assert raised_flags(settings) == raised_flags(ref_settings)
    alerts = reading_alerts(settings)
    assert alerts and alerts == reading_alerts(ref_settings)
