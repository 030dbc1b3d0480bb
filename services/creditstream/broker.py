"""Broker connection edge: parameters (TLS included) and connecting with backoff."""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential_jitter,
)

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# What "the broker is (temporarily) not there" looks like to pika.
BROKER_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosedByBroker,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    ConnectionError,
    OSError,
    # NOTE: what pika raises for a node that accepts TCP but never answers AMQP (a paused or
    # overloaded node: AMQPConnectorStackTimeout), or a handshake cut short; not an
    # AMQPConnectionError, so it must be named to be retried.
    AMQPConnectorException,
)

# Seconds one node gets to complete TCP + TLS + AMQP handshake before the next one is tried.
CONNECT_TIMEOUT_S = 5.0


class ConnectInterrupted(Exception):
    """The stop event was set while waiting for the broker (e.g. SIGTERM at start-up)."""


def interruptible_sleep(stop: threading.Event, tick_s: float = 0.05) -> Callable[[float], None]:
    """A sleep for tenacity that returns early once `stop` is set.

    NOTE: it polls `is_set()` instead of calling `stop.wait()`: the event is set from signal
    handlers, and a handler calling Event.set() while this thread holds the event's internal
    lock (inside Event.wait) would deadlock.
    """

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, tick_s))

    return sleep


def _parameters(settings: Settings, url: str, *, name: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = settings.heartbeat_s
    params.blocked_connection_timeout = 300
    # NOTE: a list is tried in order within one attempt; pika's pause between its entries
    # (retry_delay, 2 s by default) would delay failing over to a live node.
    params.retry_delay = 0.1
    # NOTE: pika's defaults (10 s socket, 15 s stack) would hold a client for 15 s on a paused
    # node before it tries a live one.
    params.socket_timeout = CONNECT_TIMEOUT_S
    params.stack_timeout = CONNECT_TIMEOUT_S
    # NOTE: the queue name in the connection name lets operators (and fault tests) find and
    # close exactly one deployment's connections in `rabbitmqctl list_connections`.
    params.client_properties = {
        "connection_name": f"{name}:{settings.requests_queue}",
        "product": "creditstream",
    }
    if params.ssl_options is not None or url.startswith("amqps"):
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        params.ssl_options = pika.SSLOptions(context, params.host)
    return params


def connection_parameters_list(settings: Settings, *, name: str) -> list[pika.URLParameters]:
    """pika parameters for every AMQP URL (cluster node), in order; TLS as for one URL."""
    return [_parameters(settings, url, name=name) for url in settings.amqp_urls]


def connection_parameters(settings: Settings, *, name: str, index: int = 0) -> pika.URLParameters:
    """pika parameters of one AMQP URL, the `index`-th of the list (modulo its length).

    amqps:// verifies the server with the CA bundle. A caller reconnecting with one
    parameter set at a time (the producer's SelectConnection) passes its attempt count as
    `index`, so it moves on to the next node after each failure.
    """
    urls = settings.amqp_urls
    return _parameters(settings, urls[index % len(urls)], name=name)


def rotated(items: Sequence[T], start: int) -> list[T]:
    """items starting at `start` (modulo their count), wrapping around."""
    if not items:
        return []
    start %= len(items)
    return [*items[start:], *items[:start]]


def connect(
    settings: Settings,
    *,
    name: str,
    wait_s: float | None = None,
    stop: threading.Event | None = None,
) -> pika.BlockingConnection:
    """A BlockingConnection, retried with jittered exponential backoff up to `wait_s` seconds.

    With several AMQP URLs (a cluster), one attempt tries every node in turn, each for at
    most CONNECT_TIMEOUT_S; attempts start at a random node and then move on by one, so
    clients spread over the nodes and a dead node is not always tried first. `wait_s=None`
    uses settings.broker_wait_s; 0 means one attempt. Setting `stop` ends the wait by raising
    ConnectInterrupted: at once between nodes and backoff sleeps, after at most
    CONNECT_TIMEOUT_S when a node's handshake is in progress.
    """
    params = connection_parameters_list(settings, name=name)
    start = random.randrange(len(params))  # NOTE: spreads clients over the nodes
    attempts = 0
    budget = settings.broker_wait_s if wait_s is None else wait_s
    stop = stop or threading.Event()

    def attempt_once() -> pika.BlockingConnection:
        nonlocal attempts
        if stop.is_set():
            raise ConnectInterrupted(f"stopped while connecting to the broker ({name})")
        order = rotated(params, start + attempts)
        attempts += 1
        failure: BaseException | None = None
        for node in order:
            if stop.is_set():
                raise ConnectInterrupted(f"stopped while connecting to the broker ({name})")
            try:
                connection = pika.BlockingConnection(node)
            except BROKER_DOWN_ERRORS as exc:
                failure = exc
                if len(order) > 1:
                    log.info("broker node %s:%s unreachable: %r", node.host, node.port, exc)
                continue
            if len(order) > 1:
                log.info("connected to the broker at %s:%s", node.host, node.port)
            return connection
        assert failure is not None
        raise failure

    if budget == 0:
        return attempt_once()
    retrying = Retrying(
        retry=retry_if_exception_type(BROKER_DOWN_ERRORS),
        wait=wait_exponential_jitter(multiplier=0.2, max=settings.reconnect_max_s),
        stop=stop_after_delay(budget) | stop_when_event_set(stop),
        sleep=interruptible_sleep(stop),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                return attempt_once()
    except BROKER_DOWN_ERRORS as exc:
        if stop.is_set():
            raise ConnectInterrupted(f"stopped while connecting to the broker ({name})") from exc
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def account_of(channel: Any) -> str:
    """The broker user a channel's connection logged in as ("" when not known)."""
    params = getattr(getattr(channel.connection, "_impl", None), "params", None)
    return str(getattr(getattr(params, "credentials", None), "username", "") or "")
