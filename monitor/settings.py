"""One frozen, validated settings object. The environment is read here and nowhere else.

Every field can be set with an environment variable: the upper-case field name with the prefix
``MONITOR_`` (for example ``MONITOR_WEB_PORT``), except the Kafka connection settings, which use the
standard ``KAFKA_`` names (``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``, and the TLS trust settings
``KAFKA_SSL_CAFILE``, ``KAFKA_SSL_CERTFILE``, ``KAFKA_SSL_KEYFILE``, ``KAFKA_SSL_KEY_PASSWORD``,
``KAFKA_SSL_CHECK_HOSTNAME``). Secrets are ``SecretStr`` and never appear in ``repr`` or logs.
Invalid values raise a ``ValidationError`` at start-up that names the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PARTITIONS = 8
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


class Topics(BaseSettings):
    """Topic names (all carry the common prefix ``MONITOR_TOPIC_PREFIX``)."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_TOPIC_", frozen=True, extra="ignore")

    prefix: str = ""
    readings: str = "readings"
    carer_activity: str = "carer-activity"
    care_network: str = "care-network"
    patients: str = "patients"
    alerts: str = "alerts"
    alert_actions: str = "alert-actions"
    credentials: str = "credentials"
    flags: str = "flags"
    equity: str = "equity"
    dead_letters: str = "dead-letters"
    checkpoints: str = "checkpoints"
    equity_partials: str = "equity-partials"

    def name(self, key: str) -> str:
        return f"{self.prefix}{getattr(self, key)}"

    @property
    def inputs(self) -> dict[str, str]:
        """Input topic name -> the contract document type it carries."""
        return {
            self.name("readings"): "reading",
            self.name("carer_activity"): "carer_activity",
            self.name("care_network"): "care_link",
            self.name("patients"): "patient",
        }

    @property
    def compacted(self) -> set[str]:
        return {self.name(k) for k in ("care_network", "patients", "checkpoints", "equity_partials",
                                       "credentials")}

    @property
    def single_partition(self) -> set[str]:
        """Topics with one partition: the merge point's input and the population snapshot."""
        return {self.name("equity_partials"), self.name("equity"), self.name("alert_actions"),
                self.name("credentials")}

    def all(self) -> list[str]:
        keys = ["readings", "carer_activity", "care_network", "patients", "alerts", "alert_actions",
                "credentials", "flags",
                "equity", "dead_letters", "checkpoints", "equity_partials"]
        return [self.name(k) for k in keys]


class Settings(BaseSettings):
    """Settings of every command. See the configuration table in the README."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", frozen=True, extra="ignore")

    bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL")
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_MECHANISM")
    )
    sasl_username: str | None = Field(default=None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME"))
    sasl_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD")
    )
    # TLS (KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL): the broker's certificate is verified against
    # ssl_cafile (a PEM bundle; unset: the system's CAs) and, by default, its host name; a client
    # certificate and key (PEM) are presented for mutual TLS when both are set
    ssl_cafile: FilePath | None = Field(default=None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE"))
    ssl_certfile: FilePath | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE")
    )
    ssl_keyfile: FilePath | None = Field(default=None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE"))
    ssl_key_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_KEY_PASSWORD")
    )
    ssl_check_hostname: bool = Field(
        default=True, validation_alias=AliasChoices("KAFKA_SSL_CHECK_HOSTNAME")
    )
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=1024)
    replication_factor: int | None = Field(default=None, ge=1, le=7)

    app_id: str = "coproduction-monitor"
    # static group membership (KIP-345): a restarted worker with the same id takes its partitions
    # back at once instead of after the session timeout; unique per worker, stable across restarts
    instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    data_dir: Path = Path(".state/worker")
    api_token: SecretStr | None = None
    local_kafka_home: Path = Path(".kafka")
    local_kafka_port: int = Field(default=9092, ge=1, le=65535)
    flag_interval_s: float = Field(default=5.0, gt=0)
    # how often each partition's partial summary goes to the merge point (the equity snapshot)
    equity_interval_s: float = Field(default=5.0, gt=0)
    # the event-time grid of evaluations: flags and alert timers are also evaluated whenever a
    # partition's events cross a multiple of it (UTC), as the offline replay does (one answer)
    tick_every_s: int = Field(default=3600, ge=60, le=86_400)
    # the notifier posts every firing alert to Alertmanager again this often (wall clock): shorter
    # than Alertmanager's resolve_timeout (3 h in deploy/alertmanager.yml), and the longest a
    # restarted Alertmanager (alerts in memory only) waits for the firing alerts
    alert_repost_s: float = Field(default=300.0, ge=1, le=3600)
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
    max_poll_records: int = Field(default=10_000, ge=1, le=1_000_000)
    session_timeout_s: float = Field(default=10.0, ge=6, le=300)
    idle_after_s: float = Field(default=60.0, gt=0)
    oldest_reading_days: float = Field(default=30.0, gt=0)
    # clock-skew tolerance: an event time (any topic) later than its receive time + this is
    # dead-lettered future_timestamp; no event moves a watermark further (see the README)
    max_clock_skew_s: float = Field(default=600.0, ge=0, le=86_400)
    # late window: a reading received longer than this after it was measured is backfill, recorded
    # by the alert engine but never paged; one received within it pages even when out of order
    late_window_s: float = Field(default=3600.0, gt=0, le=3650 * 86_400)
    # events of a patient not (yet) registered are held this long for the registration, then
    # dead-lettered unknown_patient; at most unknown_patient_cap events are held per partition
    unknown_patient_grace_s: float = Field(default=86_400.0, ge=0, le=30 * 86_400)
    unknown_patient_cap: int = Field(default=10_000, ge=0, le=10_000_000)
    # most items (readings, Bundle entries, documents) one intake request may hold (413 above)
    intake_max_items: int = Field(default=10_000, ge=1, le=1_000_000)
    # the notifier (coproduction-monitor notify) posts the alerts topic to this Alertmanager
    alertmanager_url: str | None = None
    # the notifier's consumer group (default: "<app_id>-notifier") and its metrics port
    notify_group_id: str | None = Field(default=None, min_length=1, max_length=249)
    notify_port: int = Field(default=6067, ge=1, le=65535)
    # one round of the notifier's retries (exponential backoff) before it reads the events again;
    # short enough to keep its consumer-group membership alive (max.poll.interval: 300 s)
    notify_retry_window_s: float = Field(default=20.0, ge=1, le=120)
    # an unacknowledged critical / emergency alert goes to tier 2 after this long (wall clock,
    # from its publication); 0 = never
    escalate_critical_s: float = Field(default=1800.0, ge=0)
    escalate_emergency_s: float = Field(default=900.0, ge=0)
    # the link in each alert (Alertmanager's generatorURL); {alert_id} is replaced
    alert_link_template: str = "http://127.0.0.1:6066/alerts/{alert_id}"
    # each alert's runbook_url annotation; {rule} is replaced (the worker serves /runbooks/<rule>)
    runbook_url_template: str = "http://127.0.0.1:6066/runbooks/{rule}"
    # Nightscout sites of the intake (/ns/<site>/api/v1/...): site -> patient and secret hash
    nightscout_sites_file: Path | None = None
    intake_host: str = "127.0.0.1"
    intake_port: int = Field(default=8088, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    topics: Topics = Field(default_factory=Topics)

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        """An empty (or blank) MONITOR_API_TOKEN means "unset" everywhere: patient-level endpoints
        and the intake answer 403, never accept an empty bearer token."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.security_protocol.startswith("SASL_"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    "KAFKA_SECURITY_PROTOCOL=SASL_* needs KAFKA_SASL_MECHANISM, "
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
        return self

    @model_validator(mode="after")
    def _tls_consistent(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE are set together (mutual TLS)")
        if self.ssl_key_password is not None and self.ssl_keyfile is None:
            raise ValueError("KAFKA_SSL_KEY_PASSWORD is set but KAFKA_SSL_KEYFILE is not")
        files = {"KAFKA_SSL_CAFILE": self.ssl_cafile, "KAFKA_SSL_CERTFILE": self.ssl_certfile,
                 "KAFKA_SSL_KEYFILE": self.ssl_keyfile}
        given = [name for name, value in files.items() if value is not None]
        if given and not self.uses_tls:
            # TLS material without a TLS protocol is a half-done TLS set-up: refuse it rather than
            # connect in plain text
            raise ValueError(
                f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={self.security_protocol} does "
                "not use TLS; set KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
            )
        return self

    @property
    def uses_tls(self) -> bool:
        """True for the ``SSL`` and ``SASL_SSL`` protocols."""
        return self.security_protocol in TLS_PROTOCOLS

    @property
    def uses_local_broker(self) -> bool:
        """True when no cluster is configured and the project's own broker is used."""
        return not self.bootstrap_servers

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"127.0.0.1:{self.local_kafka_port}"

    def kafka_python_config(self) -> dict[str, object]:
        """Connection keyword arguments for kafka-python clients (TLS context for SSL protocols)."""
        cfg: dict[str, object] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            # the same trust as every other client (KAFKA_SSL_*), capped at TLS 1.2 (see
            # kafka_python_ssl_context); kafka-python ignores its ssl_cafile etc. when given a context
            from monitor.kafka.security import kafka_python_ssl_context

            cfg["ssl_context"] = kafka_python_ssl_context(self)
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return cfg

    @property
    def escalate_after(self) -> dict[str, float]:
        """Severity -> seconds without acknowledgement before tier 2 (the notifier's)."""
        pairs = (("critical", self.escalate_critical_s), ("emergency", self.escalate_emergency_s))
        return {severity: s for severity, s in pairs if s > 0}

    @property
    def notify_group(self) -> str:
        """The notifier's consumer group (its committed offsets are what reached Alertmanager)."""
        return self.notify_group_id or f"{self.app_id}-notifier"

    def aiokafka_config(self) -> dict[str, object]:
        """Connection keyword arguments for aiokafka clients (TLS context for SSL protocols)."""
        cfg: dict[str, object] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            from monitor.kafka.security import ssl_context

            cfg["ssl_context"] = ssl_context(self)
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return cfg


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides, for tests) into a validated Settings."""
    return Settings(**overrides)  # type: ignore[arg-type]
