"""An output the broker refuses holds back the input that caused it (issue 14), on the real broker.

The alerts topic is made to refuse writes (``max.message.bytes`` = 64, smaller than any alert) while
a dangerous reading arrives. On the old code faust's send failed, was only logged, and the
checkpoint and the input's acknowledgement went ahead: the alert was lost for good
(``test_a_refused_alert_is_delivered_once_the_topic_accepts_it`` found no alert after the topic
was restored, and the input committed). Now the input stays uncommitted until the alert is
acknowledged, and the alert arrives exactly once when the topic accepts writes again.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from monitor.kafka.admin import admin_client, committed_offsets
from monitor.kafka.partitioning import partition_for
from tests.integration.conftest import WorkerProcess, read_records

pytestmark = pytest.mark.integration


def set_topic_config(settings, topic: str, configs: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    admin = admin_client(settings)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        admin.close()


@pytest.mark.timeout(180)
def test_a_refused_alert_is_delivered_once_the_topic_accepts_it(env, settings, tmp_path) -> None:
    env = {**env, "MONITOR_CHECKPOINT_INTERVAL_S": "1"}
    alerts_topic = settings.topics.name("alerts")
    readings_topic = settings.topics.name("readings")
    p = partition_for("PD", settings.partitions)
    set_topic_config(settings, alerts_topic, {"max.message.bytes": "64"})
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        now = datetime.now(UTC)
        prod = KafkaProducer(**settings.kafka_python_config())
        prod.send(settings.topics.name("patients"), key=b"PD", partition=p, value=json.dumps(
            {"patient_id": "PD", "region": "north", "deprivation_quintile": 1, "age_band": "75-84"}).encode())
        prod.send(readings_topic, key=b"PD", partition=p, value=json.dumps(
            {"reading_id": "dur-1", "patient_id": "PD", "device_id": "d", "kind": "glucose", "value": 2.1,
             "unit": "mmol/L", "measured_at": (now - timedelta(minutes=1)).isoformat()}).encode())
        prod.flush()
        prod.close()
        worker.wait_inputs(2)
        time.sleep(6)  # several checkpoint rounds (1 s apart) while the alert is refused
        committed = committed_offsets(settings, env["MONITOR_APP_ID"], [(readings_topic, p)])
        assert committed[(readings_topic, p)] == 0  # the reading is not acknowledged
        assert read_records(settings, alerts_topic) == []
        assert worker.alive()

        set_topic_config(settings, alerts_topic, {"max.message.bytes": "1048588"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            committed = committed_offsets(settings, env["MONITOR_APP_ID"], [(readings_topic, p)])
            if committed[(readings_topic, p)] == 1:
                break
            time.sleep(0.5)
        assert committed[(readings_topic, p)] == 1  # acknowledged once the alert was
        alerts = [json.loads(r.value) for r in read_records(settings, alerts_topic)]
        firing = [(a["patient_id"], a["rule"]) for a in alerts if a["notification"] == "firing"]
        assert firing == [("PD", "glucose_very_low")]  # delivered, once
        # (the patient has no carer: the next timer escalates the episode, a renotify of its own)
        assert len({a["event_id"] for a in alerts}) == len(alerts)
    finally:
        worker.stop()
