"""Fixtures for integration tests against a real Kafka broker.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` when set (``make test`` sets it after starting the local
broker); otherwise this session starts the project's local broker and stops it at the end. Every test
gets its own topic prefix and consumer group, so tests never see each other's messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from monitor.kafka import local
from monitor.kafka.admin import ensure_topics
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


#: Topics of test deployments (``env`` and the recovery tests' ``deployment``): ``t<tag>-<name>``,
#: and faust's own topics of their apps (``monitor-<name>-<tag>-...``); tags from :func:`new_tag`.
TEST_TOPIC = re.compile(r"^(?:t([0-9a-f]{8,10})-|monitor-[a-z0-9]+-([0-9a-f]{8,10})-)")
SESSION_TAGS: set[str] = set()


def new_tag(length: int = 10) -> str:
    """A fresh deployment tag (topic prefix, app id), remembered for the clean-up."""
    tag = uuid.uuid4().hex[:length]
    SESSION_TAGS.add(tag)
    return tag


def drop_test_topics(bootstrap: str, *, leftovers: bool) -> int:
    """Delete this session's test topics from the project's own local broker, and with
    ``leftovers`` (the broker was started for this run, so no other run uses it) those of
    earlier, interrupted sessions too: without this, a long-lived checkout's broker holds
    thousands of partitions and starts slower every run. Returns the number of topics deleted."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-cleanup")
    try:
        names = []
        for t in admin.list_topics():
            m = TEST_TOPIC.match(t)
            if m and (leftovers or (m.group(1) or m.group(2)) in SESSION_TAGS):
                names.append(t)
        names.sort()
        for i in range(0, len(names), 200):
            admin.delete_topics(names[i:i + 200], timeout_ms=60_000)
        return len(names)
    finally:
        admin.close()


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        if os.environ.get("MONITOR_BROKER_IS_LOCAL"):  # the local broker, via .ci/with-broker.sh
            drop_test_topics(configured, leftovers=bool(os.environ.get("MONITOR_BROKER_STARTED")))
        return
    broker = local.LocalBroker(ROOT / ".kafka")
    started = not local.status(broker)["running"]
    local.up(broker)
    try:
        yield broker.bootstrap
        drop_test_topics(broker.bootstrap, leftovers=started)
    finally:
        if started:
            local.down(broker)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """Environment of one isolated monitor deployment (topics, app id, port, data dir)."""
    return deployment_env(bootstrap, tmp_path)


def deployment_env(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """:func:`env` for fixtures of a wider scope."""
    tag = new_tag()
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "KAFKA_"))}
    e.update({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MONITOR_TOPIC_PREFIX": f"t{tag}-",
        "MONITOR_APP_ID": f"monitor-test-{tag}",
        "MONITOR_WEB_PORT": str(free_port()),
        "MONITOR_DATA_DIR": str(tmp_path / "worker"),
        "MONITOR_FLAG_INTERVAL_S": "1",
        "MONITOR_API_TOKEN": "test-token-" + tag,
        "MONITOR_LOG_LEVEL": "WARNING",
        "MONITOR_OLDEST_READING_DAYS": "3650",  # fixtures are dated; the horizon is tested in units
        # ... and would all be backfill (recorded, never paged); lateness is tested in units and in
        # test_worker_e2e's poison test, which sets its own
        "MONITOR_LATE_WINDOW_S": str(3650 * 86_400),
    })
    if os.environ.get("MONITOR_BROKER_IS_LOCAL") or not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        e["MONITOR_LOCAL_BROKER"] = "1"
    return e


def read_records(settings: Settings, topic: str, *, partitions: int | None = None) -> list[Any]:
    """Every record of ``topic`` (all its partitions, from the beginning) up to its end offsets
    at the call, as kafka-python records (``partition``, ``offset``, ``key``, ``value``);
    ``partitions``: the partition count the topic must have."""
    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=None, enable_auto_commit=False)
    try:
        # kafka-python answers an empty set when its metadata request has not brought the topic
        # back yet (seen once in CI, under the unit tests' load, for a topic that existed): ask again
        deadline = time.monotonic() + 30
        while not (found := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(found or [])]
        assert partitions is None or len(tps) == partitions
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, batch in consumer.poll(timeout_ms=1000).items():
                records.extend(r for r in batch if r.offset < end[tp])
        return records
    finally:
        consumer.close()


def settings_from(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    s = settings_from(env)
    ensure_topics(s)
    return s


def start_child(command: str, env: dict[str, str], log: Path, probe: Any,
                timeout_s: float) -> subprocess.Popen[bytes]:
    """``coproduction-monitor <command>`` as a child process (own session, output to ``log``),
    returned once ``probe()`` stops raising OSError; RuntimeError with the log's end otherwise."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", command], env=env, cwd=ROOT,
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited with {proc.returncode}; log:\n{log.read_text()[-3000:]}")
        try:
            probe()
            return proc
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{command} did not start; log:\n{log.read_text()[-3000:]}")


class WorkerProcess:
    """A ``coproduction-monitor worker`` child process with its own port and data dir."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.base = f"http://127.0.0.1:{env['MONITOR_WEB_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the worker and wait for its web server. Generous: the first worker of a fresh
        clone compiles every numba kernel (no cache yet), slow on a loaded CI machine."""
        self.proc = start_child("worker", self.env, self.log, lambda: self.get("/health"), timeout_s)

    def get(self, path: str, token: str | None = None, timeout_s: float = 30.0) -> Any:
        """GET a worker endpoint (JSON, or text for /metrics). A busy worker (a batch, a
        checkpoint, first-call JIT compilation) may answer slowly on a loaded machine."""
        req = urllib.request.Request(self.base + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read()
            return json.loads(body) if path != "/metrics" else body.decode()

    def wait_inputs(self, n: int, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        summary: dict[str, Any] = {}
        while time.monotonic() < deadline:
            summary = self.get("/summary")
            if summary["inputs"] >= n:
                return summary
            time.sleep(0.3)
        raise AssertionError(f"worker accounted for {summary.get('inputs')} of {n} inputs")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last commit or checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker(env: dict[str, str], settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(env, tmp_path / "worker.log")
    w.start()
    try:
        yield w
    finally:
        w.stop()


class NotifierProcess(WorkerProcess):
    """A ``coproduction-monitor notify`` child process (the alerts topic to Alertmanager); its
    metrics port is ``MONITOR_NOTIFY_PORT`` of ``env`` (set here when missing)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__({**env, "MONITOR_NOTIFY_PORT": env.get("MONITOR_NOTIFY_PORT") or str(free_port())},
                         log)

    def start(self, timeout_s: float = 60.0) -> None:
        self.proc = start_child("notify", self.env, self.log, self.metrics, timeout_s)

    def metrics(self) -> dict[str, float]:
        """Its Prometheus metrics as ``{name{labels}: value}`` (comments left out)."""
        url = f"http://127.0.0.1:{self.env['MONITOR_NOTIFY_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


@contextlib.asynccontextmanager
async def running_intake(settings: Settings, *, credentials: Any = None) -> AsyncIterator[str]:
    """The HTTP intake (real aiohttp server, real AsyncPublisher; with ``credentials``, a
    :class:`~monitor.credentials.CredentialRegistry` following the credentials topic) on a free
    port of 127.0.0.1; yields its base URL and stops it (publisher flushed) on exit."""
    from aiohttp import web

    from monitor.intake.http import create_intake_app
    from monitor.intake.serve import attach_credentials, attach_publisher
    from monitor.kafka.publisher import AsyncPublisher

    publisher = AsyncPublisher(settings)
    app = create_intake_app(settings, publisher, credentials=credentials)
    attach_publisher(app, publisher)
    if credentials is not None:
        attach_credentials(app, settings, credentials)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
