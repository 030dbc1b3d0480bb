"""Broker connection edge: parameters (TLS included) and connecting with backoff."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

import pika
import pika.exceptions
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)

# What "the broker is (temporarily) not there" looks like to pika.
BROKER_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosedByBroker,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    ConnectionError,
    OSError,
)


def connection_parameters(settings: Settings, *, name: str) -> pika.URLParameters:
    """pika parameters from the AMQP URL; amqps:// verifies the server with the CA bundle."""
    params = pika.URLParameters(settings.amqp_url.get_secret_value())
    params.heartbeat = settings.heartbeat_s
    params.blocked_connection_timeout = 300
    # NOTE: the queue name in the connection name lets operators (and fault tests) find and
    # close exactly one deployment's connections in `rabbitmqctl list_connections`.
    params.client_properties = {
        "connection_name": f"{name}:{settings.requests_queue}",
        "product": "creditstream",
    }
    if params.ssl_options is not None or settings.amqp_url.get_secret_value().startswith("amqps"):
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        params.ssl_options = pika.SSLOptions(context, params.host)
    return params


def connect(
    settings: Settings, *, name: str, wait_s: float | None = None
) -> pika.BlockingConnection:
    """A BlockingConnection, retried with jittered exponential backoff up to `wait_s` seconds.

    `wait_s=None` uses settings.broker_wait_s; 0 means one attempt.
    """
    params = connection_parameters(settings, name=name)
    budget = settings.broker_wait_s if wait_s is None else wait_s
    retrying = Retrying(
        retry=retry_if_exception_type(BROKER_DOWN_ERRORS),
        wait=wait_exponential_jitter(multiplier=0.2, max=settings.reconnect_max_s),
        stop=stop_after_delay(budget),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    if budget == 0:
        return pika.BlockingConnection(params)
    for attempt in retrying:
        with attempt:
            return pika.BlockingConnection(params)
    raise AssertionError("unreachable")  # pragma: no cover
