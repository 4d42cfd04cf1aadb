"""A single-node KRaft Apache Kafka broker run from the official jars on Maven Central.

Development machines and CI have Java 17+ and Maven but no Docker engine and no access to the
Apache download mirrors, so the broker is assembled from the same jars the release tarball ships:
``org.apache.kafka:kafka_2.13`` with its runtime closure plus a log4j2 backend (Kafka's POM leaves
the SLF4J binding out; without it the broker logs nothing and readiness cannot be observed).

Layout of the project-local, git-ignored state folder (``.kafka/`` by default)::

    .kafka/jars-<version>/   every runtime jar (Maven's copy-dependencies output)
    .kafka/data/             KRaft log dirs (formatted once)
    .kafka/logs/server.log   broker log; readiness is the line "Kafka Server started"
    .kafka/broker.pid        pid of the running broker

An optional TLS listener (:class:`BrokerTLS`: PEM certificate and key, so no keytool is needed) serves
clients over ``SSL``, next to the plain-text one or instead of it; the controller listener stays plain
text on 127.0.0.1. Without it the broker is configured exactly as before.

:class:`LocalCluster` runs N such nodes instead (each a combined broker and controller, one static
3-voter quorum for three nodes, replication factor min(3, N) and ``min.insync.replicas`` min(2, RF)),
for fail-over tests and users who want replicated topics: :func:`up_cluster`, :func:`down_cluster`,
:func:`start` and :func:`kill` of single nodes, :func:`cluster_status`. Its nodes share the jar cache
above (a symlink per node) and keep their own data, logs and pid file under the cluster's home.

Every function is idempotent: ``up`` on a running broker returns at once, ``down`` on a stopped one
does nothing. Failures raise :class:`BrokerError` with an actionable message (missing Java or Maven,
port in use, broker exited; the log path is always included).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import MonitorError

KAFKA_VERSION = "4.1.2"
LOG4J_VERSION = "2.25.3"  # the log4j2 release Kafka 4.1.2 ships with
READY_LINE = "Kafka Server started"


class BrokerError(MonitorError):
    """The local broker could not be provisioned, started or stopped."""


@dataclass(frozen=True)
class BrokerTLS:
    """A TLS (``SSL``) client listener of the local broker.

    ``certfile`` is the broker's certificate chain and ``keyfile`` its private key, both PEM; the key
    must be an unencrypted PKCS#8 key (``-----BEGIN PRIVATE KEY-----``; convert others with
    ``openssl pkcs8 -topk8 -nocrypt``). The certificate should name 127.0.0.1 (clients verify the
    host name by default). ``cafile`` (PEM) is the broker's truststore: the CA of the peers it
    connects to itself and, with ``client_auth``, the CA every client certificate must be signed by
    (mutual TLS). ``plaintext=False`` drops the plain-text client listener: TLS is then the only way in.
    """

    port: int
    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    client_auth: bool = False
    plaintext: bool = True

    def __post_init__(self) -> None:
        if self.client_auth and self.cafile is None:
            raise BrokerError("client_auth (mutual TLS) needs cafile, the CA of the client certificates")


@dataclass(frozen=True)
class LocalBroker:
    """Where a local broker lives and listens. Ports bind 127.0.0.1 only."""

    home: Path
    port: int = 9092  # the PLAINTEXT listener (none when tls.plaintext is False)
    controller_port: int = 0  # 0: port + 10000 (9093 is Alertmanager's default port)
    version: str = KAFKA_VERSION
    tls: BrokerTLS | None = None  # an SSL client listener too (or only)

    def __post_init__(self) -> None:
        if not self.controller_port:
            object.__setattr__(self, "controller_port", self.port + 10000)

    @property
    def bootstrap(self) -> str:
        """The address clients bootstrap from: the plain-text listener's, or the TLS one's when
        that is the only client listener."""
        return f"127.0.0.1:{self.client_ports[0]}"

    @property
    def client_ports(self) -> list[int]:
        """Ports of the client listeners (plain text first)."""
        if self.tls is None:
            return [self.port]
        return ([self.port] if self.tls.plaintext else []) + [self.tls.port]

    @property
    def jar_dir(self) -> Path:
        return self.home / f"jars-{self.version}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"


_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.coproduction-monitor</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def _properties_value(text: str) -> str:
    """``text`` as one line of a Java properties file (newlines escaped)."""
    return text.strip().replace("\\", "\\\\").replace("\r", "").replace("\n", "\\n")


def _tls_properties(broker: LocalBroker) -> dict[str, str]:
    """Listener and ``ssl.*`` settings of a broker with a TLS listener (PEM key store, inline)."""
    tls = broker.tls
    assert tls is not None
    try:
        chain = tls.certfile.read_text()
        key = tls.keyfile.read_text()
    except OSError as exc:
        raise BrokerError(f"cannot read the broker's TLS certificate or key: {exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in chain:
        raise BrokerError(f"{tls.certfile} holds no PEM certificate")
    if "-----BEGIN PRIVATE KEY-----" not in key:
        raise BrokerError(
            f"{tls.keyfile} is not an unencrypted PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----), the "
            f"only kind Kafka reads inline; convert it: openssl pkcs8 -topk8 -nocrypt -in {tls.keyfile}"
        )
    listeners = ([f"PLAINTEXT://127.0.0.1:{broker.port}"] if tls.plaintext else []) + [
        f"SSL://127.0.0.1:{tls.port}"
    ]
    props = {
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{broker.controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "inter.broker.listener.name": "PLAINTEXT" if tls.plaintext else "SSL",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.certificate.chain": _properties_value(chain),
        "ssl.keystore.key": _properties_value(key),
        "ssl.client.auth": "required" if tls.client_auth else "none",
    }
    if tls.cafile is not None:
        props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls.cafile.resolve())})
    return props


def _server_properties(broker: LocalBroker) -> str:
    text = _plain_server_properties(broker)
    if broker.tls is None:
        return text
    tls = _tls_properties(broker)
    lines = []
    for line in text.split("\n"):
        name = line.split("=", 1)[0]
        if name in tls:
            line = f"{name}={tls.pop(name)}"
        lines.append(line)
    return "\n".join(lines[:-1] + [f"{k}={v}" for k, v in tls.items()] + [""])


def _plain_server_properties(broker: LocalBroker) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{broker.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{broker.port},CONTROLLER://127.0.0.1:{broker.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={broker.data_dir.resolve()}",
            "num.partitions=8",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=168",
            "message.max.bytes=16777216",
            "",
        ]
    )


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(
            f"'{tool}' is not on PATH: the local broker needs Java 17+ and Maven "
            "(Debian: apt-get install openjdk-17-jre-headless maven), "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster"
        )
    return path


def fetch_jars(broker: LocalBroker) -> Path:
    """Download the broker's runtime jars into ``broker.jar_dir`` (once; cached)."""
    marker = broker.jar_dir / ".complete"
    if marker.exists():
        return broker.jar_dir
    mvn = _require("mvn")
    broker.home.mkdir(parents=True, exist_ok=True)
    pom = broker.home / f"pom-{broker.version}.xml"
    pom.write_text(_POM.format(kafka=broker.version, log4j=LOG4J_VERSION))
    tmp = broker.home / f"jars-{broker.version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        [
            mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={tmp.resolve()}",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BrokerError(
            f"Maven could not fetch Kafka {broker.version} jars (exit {proc.returncode}):\n"
            + (proc.stdout + proc.stderr)[-3000:]
        )
    shutil.rmtree(broker.jar_dir, ignore_errors=True)
    tmp.rename(broker.jar_dir)
    marker.write_text(broker.version)
    return broker.jar_dir


def _pid(broker: LocalBroker) -> int | None:
    try:
        pid = int(broker.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # a zombie or a recycled pid is not our broker
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"kafka.Kafka" in cmdline else None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def status(broker: LocalBroker) -> dict[str, object]:
    """Running state, pid, bootstrap address and log path of the local broker."""
    pid = _pid(broker)
    st: dict[str, object] = {
        "running": pid is not None and port_open("127.0.0.1", broker.client_ports[0]),
        "pid": pid,
        "bootstrap_servers": broker.bootstrap,
        "log": str(broker.log_file),
        "version": broker.version,
    }
    if broker.tls is not None:
        st["ssl_bootstrap_servers"] = f"127.0.0.1:{broker.tls.port}"
    return st


def _java_cmd(broker: LocalBroker, *args: str, heap: str) -> list[str]:
    java = _require("java")
    return [
        java, heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={(broker.home / 'log4j2.properties').resolve()}",
        f"-Dkafka.logs.dir={broker.log_dir.resolve()}",
        "-cp", f"{broker.jar_dir.resolve()}/*", *args,
    ]


def up(broker: LocalBroker, *, timeout_s: float = 90.0) -> dict[str, object]:
    """Start the broker if it is not running and wait until it logs that it started.

    Raises :class:`BrokerError` when Java/Maven are missing, the port is taken by something else,
    or the broker does not become ready within ``timeout_s`` seconds.
    """
    ports = broker.client_ports
    if _pid(broker) is not None and port_open("127.0.0.1", ports[0]):
        return status(broker)
    for port in ports:
        if port_open("127.0.0.1", port):
            raise BrokerError(
                f"127.0.0.1:{port} is in use by another process; stop it or set "
                "KAFKA_BOOTSTRAP_SERVERS to that cluster"
            )
    _require("java")
    fetch_jars(broker)
    broker.log_dir.mkdir(parents=True, exist_ok=True)
    broker.data_dir.mkdir(parents=True, exist_ok=True)
    props = broker.home / "server.properties"
    if broker.tls is not None:  # the file holds the TLS private key: readable by the owner only
        props.touch(mode=0o600)
        props.chmod(0o600)
    props.write_text(_server_properties(broker))
    (broker.home / "log4j2.properties").write_text(_LOG4J2)
    cluster_file = broker.home / "cluster.id"
    if not cluster_file.exists():
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cluster_file.write_text("A" + raw[1:] if raw.startswith("-") else raw)
    fmt = subprocess.run(
        _java_cmd(broker, "kafka.tools.StorageTool", "format", "-t",
                  cluster_file.read_text().strip(), "-c", str(props), "-g", heap="-Xmx256m"),
        capture_output=True,
        text=True,
    )
    if fmt.returncode != 0:
        raise BrokerError(f"formatting Kafka storage failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
    offset = broker.log_file.stat().st_size if broker.log_file.exists() else 0
    stdout = open(broker.log_dir / "stdout.log", "ab")
    proc = subprocess.Popen(
        _java_cmd(broker, "kafka.Kafka", str(props), heap="-Xmx768m"),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    broker.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(
                f"the broker exited with code {proc.returncode}; see {broker.log_file} "
                f"and {broker.log_dir / 'stdout.log'}"
            )
        if broker.log_file.exists():
            with open(broker.log_file, "rb") as fh:
                fh.seek(offset)
                if READY_LINE.encode() in fh.read() and all(port_open("127.0.0.1", p) for p in ports):
                    return status(broker)
        time.sleep(0.25)
    raise BrokerError(f"the broker was not ready after {timeout_s:.0f} s; see {broker.log_file}")


def down(broker: LocalBroker, *, timeout_s: float = 30.0) -> bool:
    """Stop the broker with SIGTERM (controlled shutdown), SIGKILL after ``timeout_s``.

    Returns True when a running broker was stopped, False when none was running.
    """
    pid = _pid(broker)
    if pid is None:
        broker.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _pid(broker) is None:
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    broker.pid_file.unlink(missing_ok=True)
    return True


# --- a local multi-node cluster -----------------------------------------------------------------

#: Seconds a broker of a :class:`LocalCluster` may go without heartbeating the controller quorum
#: before it is fenced (its replicas leave every ISR). Kafka's default is 9 s; shorter makes
#: fail-over visible sooner on a development machine.
CLUSTER_SESSION_TIMEOUT_MS = 6000
#: Milliseconds a follower may lag before its leader drops it from the ISR (Kafka's default: 30 s).
CLUSTER_REPLICA_LAG_MS = 10_000


@dataclass(frozen=True)
class LocalCluster:
    """A cluster of ``brokers`` KRaft nodes on 127.0.0.1, each a combined broker and controller.

    Every node is a voter of one static controller quorum (``controller.quorum.voters``): the
    metadata quorum survives the loss of a minority of nodes (one of three). Node ids are 1..N;
    node ``i`` keeps its state in ``home/node-<i>`` and listens for clients on ``base_port +
    port_step * (i - 1)`` (9092, 9192, 9292 by default: 9093 is Alertmanager's port) and for the
    quorum on that port + ``controller_offset``. The runtime jars are not copied: each node's
    ``jars-<version>`` is a symlink to the cache in ``jars`` (the single broker's home, ``.kafka``,
    by default the cluster home), which :func:`fetch_jars` fills once.

    Durability settings: topics default to replication factor ``min(3, brokers)`` and
    ``min.insync.replicas`` ``min(2, RF)``, internal topics (consumer offsets, transaction state,
    share-group state) too; unclean leader election is off. With acks=all an acknowledged write is
    then on at least two nodes, and while fewer than two replicas of a partition are in sync its
    writes are refused with a retriable error (NOT_ENOUGH_REPLICAS, or a timeout while the quorum
    is lost), so a retrying producer pauses instead of losing data. ``heap_mb`` is each JVM's
    maximum heap in MiB.
    """

    home: Path
    brokers: int = 3
    base_port: int = 9092
    port_step: int = 100
    controller_offset: int = 10000
    version: str = KAFKA_VERSION
    jars: Path | None = None  # folder holding jars-<version>/ (the cache); None: home
    heap_mb: int = 384

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise BrokerError(f"a cluster needs at least one broker, not {self.brokers}")
        ports = [p for i in self.node_ids for p in (self.client_port(i), self.controller_port(i))]
        if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
            raise BrokerError(f"the cluster's ports overlap or are out of range: {sorted(ports)}")

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.brokers + 1))

    def client_port(self, node_id: int) -> int:
        return self.base_port + self.port_step * (node_id - 1)

    def controller_port(self, node_id: int) -> int:
        return self.client_port(node_id) + self.controller_offset

    def node(self, node_id: int) -> LocalBroker:
        """Node ``node_id`` (1-based) as a :class:`LocalBroker`: its home, ports, log and pid file."""
        if node_id not in self.node_ids:
            raise BrokerError(f"no node {node_id} in a cluster of {self.brokers}")
        return LocalBroker(self.home / f"node-{node_id}", port=self.client_port(node_id),
                           controller_port=self.controller_port(node_id), version=self.version)

    @property
    def nodes(self) -> list[LocalBroker]:
        return [self.node(i) for i in self.node_ids]

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated (``KAFKA_BOOTSTRAP_SERVERS``)."""
        return ",".join(f"127.0.0.1:{self.client_port(i)}" for i in self.node_ids)

    @property
    def replication_factor(self) -> int:
        return min(3, self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        return min(2, self.replication_factor)

    @property
    def jar_cache(self) -> LocalBroker:
        """The broker whose ``jar_dir`` is the cluster's jar cache (for :func:`fetch_jars`)."""
        return LocalBroker(self.jars or self.home, version=self.version)

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster.id"


def _cluster_server_properties(cluster: LocalCluster, node_id: int) -> str:
    """``server.properties`` of node ``node_id`` of ``cluster`` (plain text listeners only)."""
    node = cluster.node(node_id)
    voters = ",".join(f"{i}@127.0.0.1:{cluster.controller_port(i)}" for i in cluster.node_ids)
    rf, isr = cluster.replication_factor, cluster.min_insync_replicas
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={node.data_dir.resolve()}",
            "num.partitions=8",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            "unclean.leader.election.enable=false",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=1",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            f"broker.session.timeout.ms={CLUSTER_SESSION_TIMEOUT_MS}",
            "broker.heartbeat.interval.ms=1000",
            f"replica.lag.time.max.ms={CLUSTER_REPLICA_LAG_MS}",
            "num.network.threads=2",
            "num.io.threads=4",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=168",
            "message.max.bytes=16777216",
            "",
        ]
    )


def _cluster_id(cluster: LocalCluster) -> str:
    """The cluster's id (created once, shared by every node's storage format)."""
    if not cluster.cluster_id_file.exists():
        cluster.home.mkdir(parents=True, exist_ok=True)
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cluster.cluster_id_file.write_text("A" + raw[1:] if raw.startswith("-") else raw)
    return cluster.cluster_id_file.read_text().strip()


def _prepare_node(cluster: LocalCluster, node_id: int) -> subprocess.Popen[str] | None:
    """Write node ``node_id``'s configuration and link its jars; start formatting its storage
    when it was never formatted (the returned process; None when there is nothing to format)."""
    node = cluster.node(node_id)
    node.log_dir.mkdir(parents=True, exist_ok=True)
    node.data_dir.mkdir(parents=True, exist_ok=True)
    cache = cluster.jar_cache.jar_dir.resolve()
    if node.jar_dir.is_symlink() and node.jar_dir.resolve() != cache:
        node.jar_dir.unlink()
    if not node.jar_dir.exists():
        node.jar_dir.symlink_to(cache, target_is_directory=True)
    props = node.home / "server.properties"
    props.write_text(_cluster_server_properties(cluster, node_id))
    (node.home / "log4j2.properties").write_text(_LOG4J2)
    if (node.data_dir / "meta.properties").exists():
        return None
    return subprocess.Popen(
        _java_cmd(node, "kafka.tools.StorageTool", "format", "-t", _cluster_id(cluster),
                  "-c", str(props), "-g", heap="-Xmx256m"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )


def _launch_node(cluster: LocalCluster, node_id: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start node ``node_id``'s JVM (configured and formatted): (process, log offset at start)."""
    node = cluster.node(node_id)
    offset = node.log_file.stat().st_size if node.log_file.exists() else 0
    with open(node.log_dir / "stdout.log", "ab") as stdout:
        proc = subprocess.Popen(
            _java_cmd(node, "kafka.Kafka", str(node.home / "server.properties"),
                      heap=f"-Xmx{cluster.heap_mb}m"),
            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    node.pid_file.write_text(str(proc.pid))
    return proc, offset


def _wait_ready(cluster: LocalCluster, started: dict[int, tuple[subprocess.Popen[bytes], int]],
                timeout_s: float) -> None:
    """Until every started node logged that it started and listens; raises :class:`BrokerError`
    when one exits or is not ready within ``timeout_s`` seconds."""
    waiting = dict(started)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for node_id, (proc, offset) in list(waiting.items()):
            node = cluster.node(node_id)
            if proc.poll() is not None:
                raise BrokerError(f"node {node_id} exited with code {proc.returncode}; see "
                                  f"{node.log_file} and {node.log_dir / 'stdout.log'}")
            if node.log_file.exists():
                with open(node.log_file, "rb") as fh:
                    fh.seek(offset)
                    if READY_LINE.encode() in fh.read() and port_open("127.0.0.1", node.port):
                        del waiting[node_id]
        if not waiting:
            return
        if time.monotonic() > deadline:
            logs = ", ".join(str(cluster.node(i).log_file) for i in waiting)
            raise BrokerError(f"node(s) {sorted(waiting)} not ready after {timeout_s:.0f} s; see {logs}")
        time.sleep(0.25)


def start(cluster: LocalCluster, *node_ids: int, timeout_s: float = 120.0) -> dict[str, object]:
    """Start the given nodes of ``cluster`` (all when none are given) that are not running, and
    wait until each has joined (logged that it started, listens on its client port).

    Nodes are launched together: a node of a multi-node quorum only finishes starting once a
    majority of the voters is up. Restarting a killed node reuses its data (no re-format).
    Idempotent. Raises :class:`BrokerError` when Java or Maven is missing, a port is taken by
    another process, a node exits, or the nodes are not ready within ``timeout_s`` seconds.
    Returns :func:`cluster_status`.
    """
    ids = list(node_ids) or cluster.node_ids
    todo = [i for i in ids if _pid(cluster.node(i)) is None]
    for i in todo:
        node = cluster.node(i)
        for port in (node.port, node.controller_port):
            if port_open("127.0.0.1", port):
                raise BrokerError(f"127.0.0.1:{port} (node {i}) is in use by another process; stop it "
                                  "or choose other ports")
    if todo:
        _require("java")
        fetch_jars(cluster.jar_cache)
        formats = {i: _prepare_node(cluster, i) for i in todo}
        for i, fmt in formats.items():
            if fmt is None:
                continue
            out, _ = fmt.communicate()
            if fmt.returncode != 0:
                raise BrokerError(f"formatting the storage of node {i} failed:\n{out[-3000:]}")
        _wait_ready(cluster, {i: _launch_node(cluster, i) for i in todo}, timeout_s)
    return cluster_status(cluster)


def up_cluster(cluster: LocalCluster, *, timeout_s: float = 120.0) -> dict[str, object]:
    """Start every node of ``cluster`` (see :func:`start`)."""
    return start(cluster, timeout_s=timeout_s)


def kill(cluster: LocalCluster, node_id: int, sig: int = signal.SIGKILL, *, timeout_s: float = 30.0) -> bool:
    """Send ``sig`` to node ``node_id`` (SIGKILL by default: a crash, nothing flushed or handed
    over) and wait up to ``timeout_s`` seconds until it is gone. Returns False when it was not
    running; raises :class:`BrokerError` when it outlives the wait."""
    node = cluster.node(node_id)
    pid = _pid(node)
    if pid is None:
        return False
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while _pid(node) is not None:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (else a zombie until we exit)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            raise BrokerError(f"node {node_id} (pid {pid}) still runs {timeout_s:.0f} s after signal {sig}")
        time.sleep(0.05)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def down_cluster(cluster: LocalCluster, *, timeout_s: float = 30.0) -> int:
    """Stop every running node: SIGTERM to all at once (each shuts down in a controlled way while
    the quorum still stands), SIGKILL to those still running after ``timeout_s`` seconds.
    Returns the number of nodes that were running."""
    running = {n.home: (n, pid) for n in cluster.nodes if (pid := _pid(n)) is not None}
    for _, pid in running.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_pid(n) is not None for n, _ in running.values()) and time.monotonic() < deadline:
        for _, pid in running.values():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.2)
    for node, pid in running.values():
        if _pid(node) is not None:
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        node.pid_file.unlink(missing_ok=True)
    return len(running)


def cluster_status(cluster: LocalCluster) -> dict[str, object]:
    """Per-node :func:`status` and the cluster's bootstrap string; ``running``: every node is."""
    nodes = {str(i): status(cluster.node(i)) for i in cluster.node_ids}
    return {
        "running": all(n["running"] for n in nodes.values()),
        "brokers": cluster.brokers,
        "bootstrap_servers": cluster.bootstrap,
        "replication_factor": cluster.replication_factor,
        "min_insync_replicas": cluster.min_insync_replicas,
        "version": cluster.version,
        "nodes": nodes,
    }
