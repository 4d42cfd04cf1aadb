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
