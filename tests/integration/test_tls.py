"""TLS end to end: a private local broker whose only client listener is ``SSL``, with certificates
made here (a throwaway CA and a server certificate for 127.0.0.1/localhost, ``openssl``).

With ``KAFKA_SECURITY_PROTOCOL=SSL`` and ``KAFKA_SSL_CAFILE`` the topic admin (kafka-python), the
simulator's producer (kafka-python), the worker's faust consumer and producer and its checkpoint store
(aiokafka) and the HTTP intake's publisher (aiokafka) all work over it; plain-text clients - the worker's
faust clients before ``faust_credentials`` connected like that - and clients that do not trust the
broker's CA are refused. The shared test broker is not touched: this broker has its own home, ports
and process, and only the jars are shared (the cached ``.kafka/jars-*``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, NoBrokersAvailable

from monitor.kafka import local
from monitor.kafka.admin import ensure_topics
from monitor.kafka.checkpoints import CheckpointStore
from monitor.settings import Settings
from monitor.simulate import SimConfig, generate, publish
from tests.integration.conftest import (
    ROOT,
    WorkerProcess,
    free_port,
    read_records,
    running_intake,
    settings_from,
)

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 1, tzinfo=UTC)
CFG = SimConfig(patients=60, days=4, seed=5, end=END, invalid_rate=0.0)

_CA_EXT = """[req]
distinguished_name = dn
[dn]
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_SERVER_EXT = """subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed (127.0.0.1 and localhost; PKCS#8 key) and an unrelated
    second CA. EC P-256 keys: fast to make."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.cnf").write_text(_CA_EXT)
    (d / "server.ext").write_text(_SERVER_EXT)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    for name in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=monitor test {name}", "-config", "ca.cnf", "-extensions", "ext")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        "-config", "ca.cnf")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2",
        "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    return {"ca": d / "ca.pem", "other_ca": d / "other-ca.pem", "cert": d / "server.pem",
            "key": d / "server.key"}


class TLSBroker:
    def __init__(self, broker: local.LocalBroker, pki: dict[str, Path], tmp: Path) -> None:
        self.broker, self.pki, self.tmp = broker, pki, tmp

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The environment of one monitor deployment on this broker, over TLS."""
        tag = uuid.uuid4().hex[:10]
        e = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "KAFKA_"))}
        e.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(self.pki["ca"]),
            "MONITOR_TOPIC_PREFIX": f"t{tag}-",
            "MONITOR_APP_ID": f"monitor-tls-{tag}",
            "MONITOR_WEB_PORT": str(free_port()),
            "MONITOR_DATA_DIR": str(self.tmp / name),
            "MONITOR_FLAG_INTERVAL_S": "1",
            "MONITOR_CHECKPOINT_INTERVAL_S": "1",
            "MONITOR_API_TOKEN": "test-token-" + tag,
            "MONITOR_LOG_LEVEL": "WARNING",
            "MONITOR_OLDEST_READING_DAYS": "3650",
            "MONITOR_LATE_WINDOW_S": str(3650 * 86_400),
        })
        e.update(extra)
        return e


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSBroker]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = make_pki(tmp / "pki")
    shared = local.LocalBroker(ROOT / ".kafka")  # only its jar cache is used: never started or stopped
    jars = local.fetch_jars(shared)
    home = tmp / "kafka"
    home.mkdir()
    (home / jars.name).symlink_to(jars.resolve(), target_is_directory=True)
    tls = local.BrokerTLS(port=free_port(), certfile=pki["cert"], keyfile=pki["key"], cafile=pki["ca"],
                          plaintext=False)
    broker = local.LocalBroker(home, port=free_port(), controller_port=free_port(), tls=tls)
    assert broker.home != shared.home and broker.pid_file != shared.pid_file
    try:
        local.up(broker, timeout_s=90)
        yield TLSBroker(broker, pki, tmp)
    finally:
        local.down(broker)  # this broker only (its own pid file)


def wait_writable(settings: Settings, counts: dict[str, int]) -> None:
    """Until the broker hosts every partition of the new topics (a fresh broker creates their logs a
    moment after their metadata shows; a produce request in between fails NOT_LEADER). End-offset
    requests fail the same way and the consumer retries them until they succeed."""
    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=None, request_timeout_ms=30_000)
    try:
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        assert len(consumer.end_offsets(tps)) == len(tps)
    finally:
        consumer.close()


def wait_checkpointed(w: WorkerProcess, timeout_s: float = 60) -> dict[str, Any]:
    """Until the worker owns partitions and has checkpointed every one (its input acknowledged)."""
    deadline = time.monotonic() + timeout_s
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = w.get("/health")
        if health["partitions"] and not health["dirty_partitions"] and health["checkpoints_written"]:
            return health
        time.sleep(0.3)
    raise AssertionError(f"not every partition was checkpointed: {health}")


def post_readings(settings: Settings, readings: list[dict[str, Any]]) -> tuple[int, Any]:
    """The HTTP intake (real aiohttp server, real AsyncPublisher over TLS): POST ``readings``."""
    assert settings.api_token is not None
    headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}

    async def go() -> tuple[int, Any]:
        async with running_intake(settings) as base, aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/readings", json=readings, headers=headers) as resp:
                return resp.status, await resp.json()

    return asyncio.run(go())


async def load_checkpoints(settings: Settings) -> dict[int, int]:
    """partition -> sequence number of its newest checkpoint (the checkpoint store, aiokafka)."""
    store = CheckpointStore(settings, settings.topics.name("checkpoints"))
    try:
        found = {p: await store.load(p) for p in range(settings.partitions)}
    finally:
        await store.stop()
    return {p: got[0] for p, got in found.items() if got is not None}


@pytest.mark.timeout(170)
def test_worker_intake_and_checkpoints_over_tls(tls_broker: TLSBroker) -> None:
    env = tls_broker.env("worker")
    settings = settings_from(env)
    assert settings.security_protocol == "SSL" and settings.ssl_cafile == tls_broker.pki["ca"]

    # (a) topic administration (kafka-python)
    counts = ensure_topics(settings)
    assert set(counts) == set(settings.topics.all())
    wait_writable(settings, counts)

    # (b) simulated input over TLS (kafka-python), consumed by the worker (faust, aiokafka)
    sent = sum(publish(CFG, settings, progress=False).values())
    worker = WorkerProcess(env, tls_broker.tmp / "worker.log")
    worker.start()
    try:
        worker.wait_inputs(sent, timeout_s=90)

        # (c) the HTTP intake publishes over TLS (aiokafka), and the worker sees it
        patient = next(doc["patient_id"] for typ, doc in generate(CFG) if typ == "patient")
        stamp = (datetime.now(UTC) - timedelta(minutes=20)).replace(microsecond=0)
        readings = [{"reading_id": f"tls-{i}", "patient_id": patient, "device_id": "meter-1",
                     "kind": "glucose", "value": 5.0 + i, "unit": "mmol/L",
                     "measured_at": (stamp + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")}
                    for i in range(3)]
        status, answer = post_readings(settings, readings)
        assert status == 202, answer
        assert (answer["accepted"], answer["rejected"]) == (3, 0)
        summary = worker.wait_inputs(sent + 3, timeout_s=30)
        assert summary["inputs"] == sent + 3 and summary["dead_letters"] == {}
        assert summary["processed"]["Patient"] == CFG.patients

        # checkpoints written by the worker's store over TLS, read back over TLS
        health = wait_checkpointed(worker)
        assert worker.alive()
    finally:
        worker.stop()
    assert sorted(health["partitions"]) == list(range(settings.partitions))
    checkpoints = asyncio.run(load_checkpoints(settings))
    assert sorted(checkpoints) == list(range(settings.partitions)), checkpoints
    on_topic = read_records(settings, settings.topics.name("checkpoints"), partitions=settings.partitions)
    assert {r.partition for r in on_topic} == set(range(settings.partitions))
    on_readings = read_records(settings, settings.topics.name("readings"))
    assert {x["reading_id"] for x in readings} <= {json.loads(r.value).get("reading_id") for r in on_readings}


def _kafka_python_admin(**config: Any) -> None:
    admin = KafkaAdminClient(client_id="tls-test", request_timeout_ms=5000,
                             api_version_auto_timeout_ms=5000, **config)
    try:
        admin.list_topics()
    finally:
        admin.close()


def _aiokafka_producer(**config: Any) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(request_timeout_ms=5000, **config)
        try:
            await asyncio.wait_for(producer.start(), 20)
        finally:
            await producer.stop()

    asyncio.run(go())


@pytest.mark.timeout(120)
def test_plain_text_and_untrusted_clients_are_refused(tls_broker: TLSBroker) -> None:
    good = settings_from(tls_broker.env("refusals"))
    wrong_ca = settings_from(tls_broker.env("refusals", KAFKA_SSL_CAFILE=str(tls_broker.pki["other_ca"])))
    bootstrap = [tls_broker.broker.bootstrap]

    # control: the same clients connect with the right CA
    _kafka_python_admin(**good.kafka_python_config())
    _aiokafka_producer(**good.aiokafka_config())

    # plain text against the TLS listener: kafka-python, aiokafka, and the worker's faust clients as
    # they connected before faust_credentials (no credentials: faust chooses PLAINTEXT)
    t0 = time.monotonic()
    with pytest.raises(NoBrokersAvailable):
        _kafka_python_admin(bootstrap_servers=bootstrap, security_protocol="PLAINTEXT")
    with pytest.raises(KafkaConnectionError):
        _aiokafka_producer(bootstrap_servers=bootstrap, security_protocol="PLAINTEXT")
    old_worker = credentials_to_aiokafka_auth(None, None)
    assert old_worker == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(KafkaConnectionError):
        _aiokafka_producer(bootstrap_servers=bootstrap, **old_worker)

    # TLS, but the broker's certificate is not signed by the configured CA
    with pytest.raises((NoBrokersAvailable, ssl.SSLError, KafkaError)):
        _kafka_python_admin(**wrong_ca.kafka_python_config())
    with pytest.raises((KafkaConnectionError, ssl.SSLError)):
        _aiokafka_producer(**wrong_ca.aiokafka_config())
    assert time.monotonic() - t0 < 90
