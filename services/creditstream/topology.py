"""RabbitMQ topology, declared idempotently by producers and consumers alike."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pika
import pika.exceptions

from creditstream.broker import connection_parameters_list

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

    from creditstream.settings import Settings

log = logging.getLogger(__name__)

REQUEST_ROUTING_KEY: Final = "score"
REASON_HEADER: Final = "x-creditstream-reason"
DETAIL_HEADER: Final = "x-creditstream-detail"
INDEX_HEADER: Final = "x-creditstream-record-index"
SOURCE_HEADER: Final = "x-creditstream-source-message-id"
# Publish time in integer microseconds since the epoch (AMQP tables have no float type).
SENT_AT_HEADER: Final = "x-creditstream-sent-at-us"
# Scoring attempts before this delivery (set when a message goes through the retry queue).
ATTEMPT_HEADER: Final = "x-creditstream-attempt"
# Where a request comes from: live (default), synthetic (the producer's generated records) or
# smoke-test; stored with each prediction so queries and the results stream can leave them out.
RESULT_SOURCE_HEADER: Final = "x-creditstream-result-source"
RESULT_SOURCES: Final = ("live", "synthetic", "smoke-test")
# On a retry copy the consumer republished: the original publishing account (user_id).
PUBLISHER_HEADER: Final = "x-creditstream-publisher"
PUBLISHER_SIGNATURE_HEADER: Final = "x-creditstream-publisher-signature"
PRECONDITION_FAILED: Final = 406


class SharedTopologyError(ValueError):
    """A teardown was asked to delete an exchange or queue under its default (shared) name."""


class TopologyMismatchError(RuntimeError):
    """The broker already has an exchange or queue of that name with other arguments."""


@dataclass(frozen=True)
class Topology:
    """Names and arguments of every exchange and queue creditstream uses."""

    requests_exchange: str
    requests_queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    predictions_exchange: str
    delivery_limit: int
    initial_group_size: int | None = None
    retry_delay_ms: int = 1000
    dead_letter_max_bytes: int = 256 * 1024 * 1024
    dead_letter_max_messages: int = 1_000_000
    declare_topology: bool = True
    results_stream: str = ""
    results_stream_max_bytes: int = 1_000_000_000
    results_stream_max_age: str = "7D"
    results_stream_segment_bytes: int = 100_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        """Read the names from the settings object."""
        return cls(
            requests_exchange=settings.requests_exchange,
            requests_queue=settings.requests_queue,
            dead_letter_exchange=settings.dead_letter_exchange,
            dead_letter_queue=settings.dead_letter_queue,
            predictions_exchange=settings.predictions_exchange,
            delivery_limit=settings.delivery_limit,
            initial_group_size=settings.quorum_initial_group_size,
            retry_delay_ms=settings.retry_delay_ms,
            dead_letter_max_bytes=settings.dead_letter_max_bytes,
            dead_letter_max_messages=settings.dead_letter_max_messages,
            declare_topology=settings.declare_topology,
            results_stream=settings.results_stream,
            results_stream_max_bytes=settings.results_stream_max_bytes,
            results_stream_max_age=settings.results_stream_max_age,
            results_stream_segment_bytes=settings.results_stream_segment_bytes,
        )

    @property
    def retry_queue(self) -> str:
        """Where a message whose scoring failed waits before it returns to the requests queue.

        NOTE: the delay is in the name: queue arguments cannot change in place, so another
        delay is another queue (an old one drains itself into the requests queue).
        """
        return retry_queue_name(self.requests_queue, self.retry_delay_ms)

    def retry_queue_arguments(self) -> dict[str, Any]:
        """The broker holds each message retry_delay_ms, then dead-letters it back."""
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": self.retry_delay_ms,
            # NOTE: back through the default exchange to this requests queue only: through the
            # requests exchange, every other queue bound with the same key would get a copy.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.requests_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **self._replication_arguments(),
        }

    def requests_queue_arguments(self) -> dict[str, Any]:
        """Quorum queue: the broker counts deliveries, so a poison message cannot loop forever.

        NOTE: a classic queue only has a `redelivered` flag, so poison control would need a
        consumer-side retry counter that dies with the consumer; the quorum queue's
        x-delivery-limit is enforced by the broker even when a message crashes its consumer.
        """
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_queue,
            **self._replication_arguments(),
            # NOTE: at-least-once: a message past the delivery limit leaves the queue only
            # once the dead-letter queue confirmed it (the default, at-most-once, drops it when
            # the dead-letter queue cannot take it). RabbitMQ requires reject-publish with it.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        """Quorum queue bounded in bytes; a full one refuses publishes (nack) instead of dropping.

        NOTE: reject-publish is the overflow at-least-once dead-lettering needs: the broker
        keeps a message it cannot dead-letter, and the consumer's confirmed publish is nacked,
        so nothing is lost silently and the queue cannot grow past its bound.
        """
        return {
            "x-queue-type": "quorum",
            "x-max-length-bytes": self.dead_letter_max_bytes,
            # NOTE: the byte bound counts bodies only, so the number is bounded too.
            "x-max-length": self.dead_letter_max_messages,
            "x-overflow": "reject-publish",
            **self._replication_arguments(),
        }

    def results_stream_arguments(self) -> dict[str, Any]:
        """Stream queue: an append-only, replayable log of prediction events, kept by size+age."""
        return {
            "x-queue-type": "stream",
            "x-max-length-bytes": self.results_stream_max_bytes,
            "x-max-age": self.results_stream_max_age,
            "x-stream-max-segment-size-bytes": self.results_stream_segment_bytes,
        }

    def _replication_arguments(self) -> dict[str, Any]:
        """Members of each quorum queue (unset: every node of the cluster)."""
        if self.initial_group_size is None:
            return {}
        return {"x-quorum-initial-group-size": self.initial_group_size}

    def declare(self, channel: BlockingChannel) -> None:
        """Declare every exchange, queue and binding; safe to repeat (same arguments)."""
        try:
            self._declare(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            raise TopologyMismatchError(
                f"{exc.reply_text}. An exchange or queue already exists with other settings "
                f"(e.g. {self.requests_queue!r} with another x-delivery-limit or queue type). "
                "Queue arguments cannot change in place: drain and delete the queue "
                "(rabbitmqctl delete_queue NAME), or set CREDITSTREAM_REQUESTS_QUEUE to a new "
                "name, or keep the old value of CREDITSTREAM_DELIVERY_LIMIT. A requests queue "
                "declared before x-dead-letter-strategy=at-least-once and "
                "x-overflow=reject-publish were added needs the same: drain it (stop the "
                "producers, let the old consumers empty it) and delete it."
            ) from exc

    def _declare_requests_queue(self, channel: BlockingChannel) -> None:
        """Declare the requests queue; accept one declared before the at-least-once arguments.

        NOTE: a refused declare closes its channel, so it is tried on channels of its own.
        """
        arguments = self.requests_queue_arguments()
        connection = channel.connection
        attempt = connection.channel()
        try:
            attempt.queue_declare(self.requests_queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED or not any(
                name in exc.reply_text for name in _ADDED_REQUESTS_ARGUMENTS
            ):
                raise
            previous = {k: v for k, v in arguments.items() if k not in _ADDED_REQUESTS_ARGUMENTS}
            fallback = connection.channel()
            # any other difference raises here (406: TopologyMismatchError)
            fallback.queue_declare(self.requests_queue, durable=True, arguments=previous)
            fallback.close()
            log.warning(
                "requests queue %r was declared by an earlier creditstream without "
                "x-dead-letter-strategy=at-least-once: messages past the delivery limit are "
                "dead-lettered at-most-once (dropped if the dead-letter queue cannot take them). "
                "Drain and delete the queue (or move to a new CREDITSTREAM_REQUESTS_QUEUE) to "
                "upgrade.",
                self.requests_queue,
            )
        finally:
            if attempt.is_open:
                attempt.close()

    def _declare_dead_letter_queue(self, channel: BlockingChannel) -> None:
        """Declare the dead-letter queue; accept one declared before its bounds (an upgrade).

        NOTE: queue arguments cannot change in place and a refused declare closes its channel,
        so it is tried on a channel of its own; an older queue is used as it is, with a warning
        (bound it with a policy: max-length-bytes, max-length, overflow reject-publish).
        """
        connection = channel.connection
        attempt = connection.channel()
        try:
            attempt.queue_declare(
                self.dead_letter_queue, durable=True, arguments=self.dead_letter_queue_arguments()
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED or not any(
                name in exc.reply_text for name in _ADDED_DEAD_LETTER_ARGUMENTS
            ):
                raise
            fallback = connection.channel()
            fallback.queue_declare(self.dead_letter_queue, passive=True)
            fallback.close()
            log.warning(
                "dead-letter queue %r was declared without creditstream's bounds "
                "(x-max-length-bytes, x-max-length, x-overflow reject-publish) or with other "
                "values: it is used as it is. Bound it with a policy (rabbitmqctl set_policy "
                '... \'{"max-length-bytes": N, "max-length": M, "overflow": '
                '"reject-publish"}\' --apply-to queues), or move to a new '
                "CREDITSTREAM_DEAD_LETTER_QUEUE.",
                self.dead_letter_queue,
            )
        finally:
            if attempt.is_open:
                attempt.close()

    def _declare(self, channel: BlockingChannel) -> None:
        if not self.declare_topology:
            # NOTE: least privilege: the bootstrap declared everything; a passive declare needs
            # no permission and still fails clearly (404) when something is missing.
            for exchange in (
                self.requests_exchange,
                self.dead_letter_exchange,
                self.predictions_exchange,
            ):
                channel.exchange_declare(exchange, passive=True)
            for queue in (self.requests_queue, self.dead_letter_queue, self.retry_queue):
                channel.queue_declare(queue, passive=True)
            return
        channel.exchange_declare(self.requests_exchange, exchange_type="direct", durable=True)
        channel.exchange_declare(self.dead_letter_exchange, exchange_type="fanout", durable=True)
        channel.exchange_declare(self.predictions_exchange, exchange_type="fanout", durable=True)
        self._declare_dead_letter_queue(channel)
        channel.queue_bind(self.dead_letter_queue, self.dead_letter_exchange)
        self._declare_requests_queue(channel)
        channel.queue_bind(
            self.requests_queue, self.requests_exchange, routing_key=REQUEST_ROUTING_KEY
        )
        channel.queue_declare(
            self.retry_queue, durable=True, arguments=self.retry_queue_arguments()
        )
        if self.results_stream:
            self._declare_results_stream(channel.connection)

    def _declare_results_stream(self, connection: Any) -> None:
        """The stream bound to the predictions exchange (without it, the fanout exchange
        confirms every event and drops it).

        NOTE: on a channel of its own: a stream declared earlier with other retention is
        refused (PRECONDITION_FAILED closes the channel); that must not stop anyone serving.
        Retention cannot change in place: the stream keeps its own, with a warning (change it
        with a RabbitMQ policy: max-age, max-length-bytes, stream-max-segment-size-bytes).
        """
        stream = connection.channel()
        try:
            stream.queue_declare(
                self.results_stream, durable=True, arguments=self.results_stream_arguments()
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            log.warning(
                "results stream %s exists with other retention (%s); keeping it: change "
                "retention with a policy (max-age, max-length-bytes), or use a new stream name",
                self.results_stream,
                exc.reply_text,
            )
            stream = connection.channel()
            stream.queue_declare(self.results_stream, passive=True)
        stream.queue_bind(self.results_stream, self.predictions_exchange)
        stream.close()


# Requests-queue arguments added after the first release: a queue declared without them
# keeps working (with a warning); any other difference is a TopologyMismatchError.
_ADDED_REQUESTS_ARGUMENTS: Final = ("x-dead-letter-strategy", "x-overflow")
# Dead-letter-queue bounds (issue 15): an older or differently bounded queue is used as it is.
_ADDED_DEAD_LETTER_ARGUMENTS: Final = ("x-max-length-bytes", "x-max-length", "x-overflow")


def retry_queue_name(requests_queue: str, delay_ms: int) -> str:
    """The retry queue of a requests queue for one delay."""
    return f"{requests_queue}.retry-{delay_ms}ms"


def isolated_names(prefix: str) -> dict[str, str]:
    """Settings overrides giving a run (demo, bench scenario, test) its own exchanges and queues."""
    return {
        "requests_exchange": f"{prefix}.requests",
        "requests_queue": f"{prefix}.requests",
        "dead_letter_exchange": f"{prefix}.dead",
        "dead_letter_queue": f"{prefix}.dead",
        "predictions_exchange": f"{prefix}.predictions",
        "results_stream": f"{prefix}.results",
        "stage_prefix": f"{prefix}.stage",
    }


def default_names() -> dict[str, str]:
    """The settings' default exchange and queue names: the ones deployments share."""
    from creditstream.settings import Settings

    fields = Settings.model_fields
    return {name: str(fields[name].default) for name in isolated_names("")}


def shared_names(settings: Settings) -> list[str]:
    """The settings' exchange and queue names that are a default name (of any of the fields)."""
    defaults = set(default_names().values())
    return sorted({getattr(settings, field) for field in default_names()} & defaults)


def refuse_shared_names(settings: Settings, doing: str) -> None:
    """Raise SharedTopologyError when any exchange or queue name is a default one."""
    shared = shared_names(settings)
    if shared:
        raise SharedTopologyError(f"refusing to {doing} the shared default names {shared}")


def declare_topology(settings: Settings) -> None:
    """Declare the settings' exchanges and queues on a short-lived connection."""
    connection = pika.BlockingConnection(
        connection_parameters_list(settings, name="creditstream-setup")
    )
    try:
        Topology.from_settings(settings).declare(connection.channel())
    finally:
        connection.close()


def delete_topology(settings: Settings) -> None:
    """Delete the settings' queues and exchanges (best effort: for isolated runs and tests).

    Raises SharedTopologyError, deleting nothing, when any name is a default one (in whichever
    field): those belong to every deployment on the broker, never to one run.
    """
    refuse_shared_names(settings, "delete")
    try:
        connection = pika.BlockingConnection(
            connection_parameters_list(settings, name="creditstream-teardown")
        )
    except pika.exceptions.AMQPError as exc:
        log.warning("could not connect to delete queues %s: %s", settings.requests_queue, exc)
        return
    try:
        retry = retry_queue_name(settings.requests_queue, settings.retry_delay_ms)
        for queue in (
            settings.requests_queue,
            settings.dead_letter_queue,
            retry,
            settings.results_stream,
        ):
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().queue_delete(queue)
        for exchange in (
            settings.requests_exchange,
            settings.dead_letter_exchange,
            settings.predictions_exchange,
        ):
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().exchange_delete(exchange)
    finally:
        with contextlib.suppress(Exception):
            connection.close()
