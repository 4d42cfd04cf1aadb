"""Kafka transport security: every client (kafka-python, aiokafka, the worker's faust clients) gets the
protocol of ``KAFKA_SECURITY_PROTOCOL`` and the same TLS trust; ``SSL``/``SASL_SSL`` never becomes plain
text; secrets never show in ``repr``/``str``. The local broker's TLS listener configuration.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from monitor.kafka import local
from monitor.kafka.security import faust_credentials, ssl_context
from monitor.settings import Settings

SASL_SECRET = "sasl-s3cret-value"
KEY_SECRET = "key-s3cret-value"
SASL = {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "monitor",
        "KAFKA_SASL_PASSWORD": SASL_SECRET}
PROTOCOLS = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith(("KAFKA_", "MONITOR_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b1:9093,b2:9093")
    return monkeypatch


def settings_for(monkeypatch: pytest.MonkeyPatch, protocol: str, **env: str) -> Settings:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    for name, value in ({**SASL, **env} if protocol.startswith("SASL_") else env).items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA and a client certificate with an encrypted key (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    run("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=monitor unit-test CA")
    run("req", "-x509", *ec, "-keyout", "client.key", "-out", "client.pem", "-days", "2",
        "-subj", "/CN=monitor-client", "-passout", f"pass:{KEY_SECRET}")
    return {"ca": d / "ca.pem", "ca_key": d / "ca.key", "cert": d / "client.pem", "key": d / "client.key"}


def faust_protocol(credentials: object) -> str:
    return "PLAINTEXT" if credentials is None else credentials.protocol.value  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_client_gets_the_configured_protocol(clean_env, protocol):
    s = settings_for(clean_env, protocol)
    kp, ak, creds = s.kafka_python_config(), s.aiokafka_config(), faust_credentials(s)
    assert kp["security_protocol"] == ak["security_protocol"] == protocol
    assert faust_protocol(creds) == protocol
    # what faust's aiokafka driver really passes to its consumer and producer
    auth = credentials_to_aiokafka_auth(creds, None)
    assert auth["security_protocol"] == protocol
    tls = protocol in ("SSL", "SASL_SSL")
    assert s.uses_tls is tls
    if tls:
        for ctx in (ak["ssl_context"], auth["ssl_context"], ssl_context(s), kp["ssl_context"]):
            assert isinstance(ctx, ssl.SSLContext)
            assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
            assert ctx.get_ca_certs() == ssl.create_default_context().get_ca_certs()  # system CAs
        # kafka-python drops idle connections that receive TLS 1.3 session tickets: TLS 1.2 for it
        assert kp["ssl_context"].maximum_version == ssl.TLSVersion.TLSv1_2
        assert ak["ssl_context"].maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    else:
        assert "ssl_context" not in ak and ssl_context(s) is None
        assert auth.get("ssl_context") is None
        assert not any(k.startswith("ssl_") for k in kp)
    if protocol.startswith("SASL_"):
        assert kp["sasl_mechanism"] == ak["sasl_mechanism"] == creds.mechanism.value == "SCRAM-SHA-512"
        assert kp["sasl_plain_password"] == ak["sasl_plain_password"] == auth["sasl_plain_password"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_worker_app_connects_with_the_configured_protocol(clean_env, protocol):
    from monitor.stream.app import create_app

    s = settings_for(clean_env, protocol)
    app = create_app(s)
    auth = app.producer._settings_auth()  # the consumer uses the same credentials and function
    assert auth["security_protocol"] == protocol
    assert credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context) == auth
    assert (auth.get("ssl_context") is not None) == (protocol in ("SSL", "SASL_SSL"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_secrets_never_show(clean_env, pki, protocol):
    tls = {"KAFKA_SSL_CAFILE": str(pki["ca"]), "KAFKA_SSL_CERTFILE": str(pki["cert"]),
           "KAFKA_SSL_KEYFILE": str(pki["key"]), "KAFKA_SSL_KEY_PASSWORD": KEY_SECRET}
    s = settings_for(clean_env, protocol, **(tls if protocol in ("SSL", "SASL_SSL") else {}))
    creds = faust_credentials(s)
    shown = [repr(s), str(s), s.model_dump_json(), repr(creds), str(creds)]
    if creds is not None:
        shown.append(repr(vars(creds).get("context", vars(creds).get("ssl_context"))))
    for text in shown:
        assert SASL_SECRET not in text and KEY_SECRET not in text


def test_tls_trust_and_client_certificate_reach_every_client(clean_env, pki):
    s = settings_for(clean_env, "SASL_SSL", KAFKA_SSL_CAFILE=str(pki["ca"]),
                     KAFKA_SSL_CERTFILE=str(pki["cert"]), KAFKA_SSL_KEYFILE=str(pki["key"]),
                     KAFKA_SSL_KEY_PASSWORD=KEY_SECRET)
    contexts = [s.aiokafka_config()["ssl_context"], faust_credentials(s).ssl_context,
                s.kafka_python_config()["ssl_context"]]
    for ctx in contexts:
        subjects = [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]
        assert subjects == [{"commonName": "monitor unit-test CA"}]  # this CA only, no system CAs
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_hostname_check_can_be_turned_off_but_not_verification(clean_env, pki):
    s = settings_for(clean_env, "SSL", KAFKA_SSL_CAFILE=str(pki["ca"]), KAFKA_SSL_CHECK_HOSTNAME="false")
    for ctx in (s.aiokafka_config()["ssl_context"], faust_credentials(s).context,
                s.kafka_python_config()["ssl_context"]):
        assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_wrong_key_password_fails_at_once(clean_env, pki):
    s = settings_for(clean_env, "SSL", KAFKA_SSL_CERTFILE=str(pki["cert"]), KAFKA_SSL_KEYFILE=str(pki["key"]),
                     KAFKA_SSL_KEY_PASSWORD="wrong")
    with pytest.raises(ssl.SSLError):
        s.aiokafka_config()
    with pytest.raises(ssl.SSLError):
        s.kafka_python_config()


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_without_a_tls_protocol_are_refused(clean_env, pki, protocol):
    with pytest.raises(ValidationError, match="KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL"):
        settings_for(clean_env, protocol, KAFKA_SSL_CAFILE=str(pki["ca"]))


def test_incomplete_or_missing_tls_files_are_refused(clean_env, pki, tmp_path):
    with pytest.raises(ValidationError, match="KAFKA_SSL_CAFILE"):
        settings_for(clean_env, "SSL", KAFKA_SSL_CAFILE=str(tmp_path / "missing.pem"))
    clean_env.delenv("KAFKA_SSL_CAFILE")
    with pytest.raises(ValidationError, match="KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"):
        settings_for(clean_env, "SSL", KAFKA_SSL_CERTFILE=str(pki["cert"]))


# --- the local broker's TLS listener --------------------------------------------------------------

def java_properties(text: str) -> dict[str, str]:
    """The subset of java.util.Properties parsing the broker configuration uses."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            out[name] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return out


def test_local_broker_without_tls_is_plain_text_only(tmp_path):
    broker = local.LocalBroker(tmp_path, port=19092)
    props = java_properties(local._server_properties(broker))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:29092"
    assert not any(k.startswith("ssl.") for k in props)
    assert "SSL" not in props["listener.security.protocol.map"]
    assert broker.bootstrap == "127.0.0.1:19092" and broker.client_ports == [19092]


@pytest.mark.parametrize("plaintext", [True, False])
def test_local_broker_tls_listener(tmp_path, pki, plaintext):
    key = tmp_path / "server.key"  # the broker reads unencrypted PKCS#8 keys only
    shutil.copy(pki["ca_key"], key)
    tls = local.BrokerTLS(port=19443, certfile=pki["ca"], keyfile=key, cafile=pki["ca"], plaintext=plaintext)
    broker = local.LocalBroker(tmp_path, port=19092, controller_port=19093, tls=tls)
    props = java_properties(local._server_properties(broker))
    clients = (["PLAINTEXT://127.0.0.1:19092"] if plaintext else []) + ["SSL://127.0.0.1:19443"]
    assert props["listeners"] == ",".join([*clients, "CONTROLLER://127.0.0.1:19093"])
    assert props["advertised.listeners"] == ",".join(clients)
    assert props["inter.broker.listener.name"] == ("PLAINTEXT" if plaintext else "SSL")
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["ssl.keystore.type"] == "PEM" and props["ssl.client.auth"] == "none"
    assert props["ssl.keystore.certificate.chain"] == pki["ca"].read_text().strip()
    assert props["ssl.keystore.key"] == key.read_text().strip()
    assert props["ssl.truststore.location"] == str(pki["ca"].resolve())
    assert broker.bootstrap == ("127.0.0.1:19092" if plaintext else "127.0.0.1:19443")


def test_local_broker_refuses_keys_it_cannot_read(tmp_path, pki):
    tls = local.BrokerTLS(port=19443, certfile=pki["cert"], keyfile=pki["key"])  # encrypted key
    with pytest.raises(local.BrokerError, match="PKCS#8"):
        local._server_properties(local.LocalBroker(tmp_path, tls=tls))
    with pytest.raises(local.BrokerError, match="cafile"):
        local.BrokerTLS(port=19443, certfile=pki["cert"], keyfile=pki["key"], client_auth=True)
