"""Settings, simulator, metrics collector and the CLI surface."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from monitor.cli import build_parser
from monitor.kafka.partitioning import partition_for
from monitor.metrics.collectors import registry_for
from monitor.pipeline import Pipeline, iter_records
from monitor.settings import Settings
from monitor.simulate import SimConfig, generate, write_ndjson

END = datetime(2026, 11, 1, tzinfo=UTC)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b1:9092,b2:9092")
    monkeypatch.setenv("MONITOR_TOPIC_PREFIX", "prod-")
    monkeypatch.setenv("MONITOR_WEB_PORT", "7001")
    s = Settings()
    assert s.kafka_python_config()["bootstrap_servers"] == ["b1:9092", "b2:9092"]
    assert s.topics.name("dead_letters") == "prod-dead-letters"
    assert s.web_port == 7001 and not s.uses_local_broker


def test_sasl_needs_credentials_and_hides_the_password(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "monitor")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    s = Settings()
    assert "s3cret" not in repr(s)
    assert s.kafka_python_config()["sasl_plain_password"] == "s3cret"


def test_invalid_port_is_rejected(monkeypatch):
    monkeypatch.setenv("MONITOR_WEB_PORT", "70000")
    with pytest.raises(ValidationError):
        Settings()


def test_simulator_is_deterministic_and_has_a_social_gradient():
    cfg = SimConfig(patients=3000, days=3, seed=11, end=END)
    a, b = io.StringIO(), io.StringIO()
    write_ndjson(cfg, a)
    write_ndjson(cfg, b)
    assert a.getvalue() == b.getvalue()
    patients, joined = {}, set()
    for typ, doc in generate(cfg):
        if typ == "patient":
            patients[doc["patient_id"]] = doc["deprivation_quintile"]
        elif typ == "care_link":
            joined.add(doc["patient_id"])
    n = Counter(patients.values())
    without = Counter(q for pid, q in patients.items() if pid not in joined)
    share = {q: without[q] / n[q] for q in n}
    assert share[1] > share[3] > share[5]
    assert 0.2 < share[1] < 0.4 and share[5] < 0.1


def test_simulator_rejects_naive_end():
    with pytest.raises(ValueError):
        SimConfig(end=datetime(2026, 1, 1)).end_time()


def test_partitioning_matches_kafkas_default_partitioner():
    from kafka.partitioner.default import DefaultPartitioner

    for pid in ["P001-0000001", "patient-42", "Ä"]:
        parts = list(range(8))
        assert partition_for(pid, 8) == DefaultPartitioner()(pid.encode(), parts, parts)


def test_metrics_have_no_patient_identifiers():
    lines = io.StringIO()
    write_ndjson(SimConfig(patients=50, days=2, seed=2, end=END), lines)
    p = Pipeline()
    by_type = {"reading": [], "gateway_batch": [], "carer_activity": [], "care_link": [], "patient": []}
    for line in lines.getvalue().splitlines():
        by_type[json.loads(line)["type"]].append(line.encode())
    for typ, values in by_type.items():
        p.ingest(iter_records(values, typ), {t: t for t in by_type})
    p.flag_transitions()
    text = generate_latest(registry_for(p)).decode()
    assert "monitor_readings_ingested_total" in text
    for pid in p.patient_report():
        assert pid not in text
    assert "monitor_documents_processed_total{type=\"Patient\"} 50.0" in text


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = list(sub.choices)
    assert {"kafka", "worker", "simulate", "demo", "schemas", "replay", "equity", "decode"} <= set(names)
    for name in names + ["equity grouped", "equity individual"]:
        out = subprocess.run([sys.executable, "-m", "monitor", *name.split(), "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "usage: coproduction-monitor" in out.stdout


def test_kafka_up_without_java_is_a_clear_error(monkeypatch, tmp_path):
    from monitor.kafka import local

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(local.BrokerError, match="Java 17"):
        local.up(local.LocalBroker(tmp_path / "k", port=1))


def test_equity_cli_prints_heat_measures():
    out = subprocess.run([sys.executable, "-m", "monitor", "equity", "grouped",
                          "tests/data/equity/healthequal_ordered.csv", "--ordered"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    # healthequal tests/testthat/test-sii.R, test-aci.R (published values)
    assert result["SII"] == pytest.approx(44.44502, rel=1e-6)
    assert result["ACI"] == pytest.approx(7.3284202, rel=1e-6)
    assert result["BGV"] is None  # a non-ordered measure on an ordered dimension
