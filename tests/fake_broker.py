"""A fake broker and channel for unit tests of settlement: it checks the rules as they happen.

It is no stand-in for RabbitMQ in integration tests (those use the real broker); it lets the
settlement table and the stateful test run thousands of sequences in seconds, and it checks at
each ack that the delivery's records are already in the store ("never acked before durable").
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pika

from creditstream.topology import ATTEMPT_HEADER, REASON_HEADER, SOURCE_HEADER


class ChannelLost(ConnectionError):
    """The fake connection died (a crash injected between two channel operations)."""


@dataclass
class Message:
    """One message in the fake queue."""

    body: bytes
    message_id: str
    reply_to: str | None = None
    deliveries: int = 0
    acked: int = 0
    dead_by_broker: bool = False
    dead_letters_published_then_lost: int = 0
    dead_letters_this_delivery: int = 0
    attempt: int = 0
    retry_of: Message | None = None
    retry_queue: str = ""


@dataclass
class FakeBroker:
    """A queue with a delivery limit; deliveries, acks, nacks and publishes are recorded."""

    delivery_limit: int = 20
    durable: Callable[[Message], bool] = lambda _m: True
    ready: deque[Message] = field(default_factory=deque)
    unacked: dict[int, Message] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    dead_letters: list[tuple[dict[str, Any], bytes, str]] = field(default_factory=list)
    predictions: list[bytes] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    retried: int = 0
    stopping: bool = False  # set by a test while its consumer is stopping
    violations: list[str] = field(default_factory=list)
    _tags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def publish(self, body: bytes, message_id: str, reply_to: str | None = None) -> Message:
        message = Message(body, message_id, reply_to)
        assert all(m.message_id != message_id for m in self.messages), "unique ids"
        self.messages.append(message)
        self.ready.append(message)
        return message

    def retry(self, body: bytes, props: pika.BasicProperties, retry_queue: str) -> None:
        """A copy published to the retry queue: after the delay it is a new message."""
        original = next(m for m in reversed(self.messages) if m.message_id == props.message_id)
        copy = Message(body, original.message_id, original.reply_to, retry_of=original)
        copy.attempt = int((props.headers or {})[ATTEMPT_HEADER])
        copy.retry_queue = retry_queue
        self.messages.append(copy)
        self.ready.append(copy)
        self.retried += 1

    def deliver(self, n: int) -> list[tuple[Any, pika.BasicProperties, bytes]]:
        """Up to n ready messages as (method, properties, body), as pika hands them over."""
        out = []
        while self.ready and len(out) < n:
            message = self.ready.popleft()
            tag = next(self._tags)
            self.unacked[tag] = message
            method = SimpleNamespace(delivery_tag=tag, redelivered=message.deliveries > 0)
            headers: dict[str, Any] = (
                {"x-delivery-count": message.deliveries} if message.deliveries else {}
            )
            if message.attempt:
                headers[ATTEMPT_HEADER] = message.attempt
                headers["x-death"] = [{"queue": message.retry_queue, "reason": "expired"}]
            props = pika.BasicProperties(
                content_type="application/json",
                message_id=message.message_id,
                reply_to=message.reply_to,
                correlation_id=message.message_id if message.reply_to else None,
                headers=headers,
            )
            message.deliveries += 1
            message.dead_letters_this_delivery = 0
            out.append((method, props, message.body))
        return out

    def crash(self) -> None:
        """The consumer's connection dies: every unacked delivery goes back to the queue."""
        for _tag, message in sorted(self.unacked.items()):
            if message.dead_letters_this_delivery:
                message.dead_letters_published_then_lost += 1
            self._return(message)
        self.unacked.clear()

    def _return(self, message: Message) -> None:
        if message.deliveries > self.delivery_limit:
            message.dead_by_broker = True
        else:
            self.ready.append(message)

    # --- what the channel does --------------------------------------------------------------
    def ack(self, tag: int, multiple: bool) -> None:
        tags = [t for t in self.unacked if t <= tag] if multiple else [tag]
        if tag not in self.unacked:
            self.violations.append(f"ack of unknown or settled delivery {tag}")
        for t in tags:
            message = self.unacked.pop(t, None)
            if message is None:
                continue
            if not self.durable(message):
                self.violations.append(f"{message.message_id} acked before its results are durable")
            message.acked += 1
            if message.acked > 1:
                self.violations.append(f"{message.message_id} acked twice")

    def nack(self, tag: int, requeue: bool) -> None:
        if not self.stopping:
            self.violations.append(f"delivery {tag} returned by a nack outside a stop")
        message = self.unacked.pop(tag, None)
        if message is None:
            self.violations.append(f"nack of unknown or settled delivery {tag}")
            return
        if requeue:
            self._return(message)
        else:
            message.dead_by_broker = True


class FakeChannel:
    """The subset of pika's BlockingChannel the consumer's Settler uses."""

    def __init__(self, broker: FakeBroker, fail_after: int | None = None) -> None:
        self.broker = broker
        self.fail_after = fail_after
        self.operations = 0
        self.connection = SimpleNamespace(sleep=lambda _s: None)

    def _operation(self) -> None:
        self.operations += 1
        if self.fail_after is not None and self.operations > self.fail_after:
            raise ChannelLost("injected connection loss")

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._operation()
        self.broker.ack(delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self._operation()
        self.broker.nack(delivery_tag, requeue)

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        self._operation()
        headers = (properties.headers if properties else None) or {}
        if REASON_HEADER in headers:
            message_id = properties.message_id if properties else ""
            self.broker.dead_letters.append((headers, body, message_id or ""))
            for message in self.broker.messages:
                if message.message_id == headers.get(SOURCE_HEADER):
                    message.dead_letters_this_delivery += 1
        elif exchange == "" and ".retry-" in routing_key:
            assert properties is not None
            self.broker.retry(body, properties, routing_key)
        elif exchange == "":
            self.broker.replies.append((routing_key, body))
        else:
            self.broker.predictions.append(body)
