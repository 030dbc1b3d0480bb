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
        )

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
                "name, or keep the old value of CREDITSTREAM_DELIVERY_LIMIT."
            ) from exc

    def _declare(self, channel: BlockingChannel) -> None:
        channel.exchange_declare(self.requests_exchange, exchange_type="direct", durable=True)
        channel.exchange_declare(self.dead_letter_exchange, exchange_type="fanout", durable=True)
        channel.exchange_declare(self.predictions_exchange, exchange_type="fanout", durable=True)
        channel.queue_declare(
            self.dead_letter_queue,
            durable=True,
            arguments={"x-queue-type": "quorum", **self._replication_arguments()},
        )
        channel.queue_bind(self.dead_letter_queue, self.dead_letter_exchange)
        channel.queue_declare(
            self.requests_queue, durable=True, arguments=self.requests_queue_arguments()
        )
        channel.queue_bind(
            self.requests_queue, self.requests_exchange, routing_key=REQUEST_ROUTING_KEY
        )


def isolated_names(prefix: str) -> dict[str, str]:
    """Settings overrides giving a run (demo, bench scenario, test) its own exchanges and queues."""
    return {
        "requests_exchange": f"{prefix}.requests",
        "requests_queue": f"{prefix}.requests",
        "dead_letter_exchange": f"{prefix}.dead",
        "dead_letter_queue": f"{prefix}.dead",
        "predictions_exchange": f"{prefix}.predictions",
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
        for queue in (settings.requests_queue, settings.dead_letter_queue):
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
