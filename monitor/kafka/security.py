"""Kafka transport security: the TLS context of every client and the worker's faust credentials.

faust takes the protocol from its credentials object: :class:`faust.auth.SSLCredentials` gives
``SSL``, :class:`faust.auth.SASLCredentials` ``SASL_PLAINTEXT`` - or ``SASL_SSL`` when it carries an
SSL context - and no credentials plain text. Building them from the same settings as every other
client keeps the worker from silently falling back to plain text (it did: ``SASL_SSL`` connected
as ``SASL_PLAINTEXT`` and ``SSL`` as ``PLAINTEXT``).
"""

from __future__ import annotations

import ssl
from typing import Any

from monitor.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the ``SSL``/``SASL_SSL`` protocols, ``None`` for the plain-text ones.

    The broker's certificate is verified against ``KAFKA_SSL_CAFILE`` (the system's CAs when unset)
    and its host name checked unless ``KAFKA_SSL_CHECK_HOSTNAME`` is false; ``KAFKA_SSL_CERTFILE`` and
    ``KAFKA_SSL_KEYFILE`` (with ``KAFKA_SSL_KEY_PASSWORD`` for an encrypted key) are the client's
    certificate for mutual TLS. Every client uses a context built here: aiokafka's
    (:meth:`Settings.aiokafka_config`), the worker's faust clients (:func:`faust_credentials`) and
    kafka-python's (:meth:`Settings.kafka_python_config`, via :func:`kafka_python_ssl_context`).
    """
    if not settings.uses_tls:
        return None
    from aiokafka.helpers import create_ssl_context

    context = create_ssl_context(
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        password=settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None,
    )
    # the certificate is always verified (CERT_REQUIRED); only the host name check is optional
    context.check_hostname = settings.ssl_check_hostname
    return context


def kafka_python_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """:func:`ssl_context` for kafka-python clients: the same trust and checks, at most TLS 1.2.

    kafka-python (2.3) closes a connection that becomes readable while it has no request in flight
    ("Socket EVENT_READ without in-flight-requests"). Over TLS 1.3 the broker sends its session
    tickets just after the handshake, when kafka-python's connections to the brokers it learnt from
    the metadata are still idle, so about every second such connection was dropped (the topic admin,
    the simulator and the worker's start-up failed at random). TLS 1.2 has no post-handshake
    messages; Kafka enables TLS 1.2 and 1.3 by default. aiokafka and faust keep TLS 1.3.
    """
    context = ssl_context(settings)
    if context is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def faust_credentials(settings: Settings) -> Any:
    """faust ``broker_credentials`` for ``settings`` (``None``: plain text, no SASL).

    Raises ``RuntimeError`` if the credentials would make faust connect with another protocol than
    ``KAFKA_SECURITY_PROTOCOL`` (a guard against faust changing how it derives the protocol).
    """
    from faust.auth import SASLCredentials, SSLCredentials

    context = ssl_context(settings)
    credentials: Any = None
    if settings.security_protocol.startswith("SASL_"):
        credentials = SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        credentials = SSLCredentials(context)
    protocol = credentials.protocol.value if credentials is not None else "PLAINTEXT"
    if protocol != settings.security_protocol:
        raise RuntimeError(
            f"faust would connect with {protocol}, not KAFKA_SECURITY_PROTOCOL={settings.security_protocol}"
        )
    return credentials
