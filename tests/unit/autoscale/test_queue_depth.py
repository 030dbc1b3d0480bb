"""Parsing recorded RabbitMQ management API answers; URL derivation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from creditstream.autoscale.queue_depth import (
    MANAGEMENT_SOURCE,
    ManagementApiReader,
    QueueDepthError,
    management_url_from_amqp,
    parse_management_queue,
    vhost_of,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rabbitmq"


def load(name: str) -> dict[str, object]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def test_quorum_queue_counts_ready_plus_unacked() -> None:
    # Recorded from RabbitMQ 3.10.8: 30 published, one consumer holding 10 unacked (prefetch 10).
    depth = parse_management_queue(load("queue_quorum_with_unacked.json"))
    assert (depth.ready, depth.unacked, depth.messages) == (20, 10, 30)
    assert depth.consumers == 1
    assert depth.source == MANAGEMENT_SOURCE
    assert depth.ack_rate == 0.0


def test_fresh_queue_without_statistics_is_unknown_not_zero() -> None:
    with pytest.raises(QueueDepthError, match="no statistics"):
        parse_management_queue(load("queue_quorum_fresh.json"))


@pytest.mark.parametrize(
    ("amqp_url", "expected"),
    [
        pytest.param(
            "amqp://guest:guest@localhost:5672/",
            "http://guest:guest@localhost:15672/",
            id="default-vhost",
        ),
        pytest.param(
            "amqp://u:p%40ss@rabbit:5672/prod",
            "http://u:p%40ss@rabbit:15672/prod",
            id="quoted-password-and-vhost",
        ),
        pytest.param("amqps://u:p@rabbit:5671/", "https://u:p@rabbit:15672/", id="tls"),
        pytest.param("amqp://u:p@rabbit/v", "http://u:p@rabbit:15672/v", id="no-port"),
        pytest.param(
            "amqp://guest:guest@localhost:5674/", "http://guest:guest@localhost:15674/", id="node-b"
        ),
    ],
)
def test_management_url_from_amqp(amqp_url: str, expected: str) -> None:
    assert management_url_from_amqp(amqp_url) == expected


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        pytest.param("amqp://g:g@h:5672/", "/", id="slash"),
        pytest.param("amqp://g:g@h:5672", "/", id="empty"),
        pytest.param("amqp://g:g@h:5672/%2Fdemo", "/demo", id="quoted"),
        pytest.param("http://g:g@h:15672/prod", "prod", id="named"),
    ],
)
def test_vhost_of(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_reader_hides_credentials_in_endpoint() -> None:
    reader = ManagementApiReader("http://user:secret@rabbit:15672/", "q")
    assert reader.endpoint == "http://rabbit:15672"
    assert reader.vhost == "/"


def test_unreachable_api_raises_queue_depth_error() -> None:
    reader = ManagementApiReader("http://guest:guest@127.0.0.1:1/", "q", timeout_s=0.5)
    with pytest.raises(QueueDepthError, match="unreachable"):
        reader.read()
