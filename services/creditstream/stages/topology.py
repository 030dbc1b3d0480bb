"""Names of the staged pipeline: one exchange + quorum queue per stage, declared like requests.

Stage S reads queue `<stage_prefix>.S`, bound to exchange `<stage_prefix>.S`; the stage before
it publishes there. Each stage queue is declared by `Topology` (the fused path's code), so it has
the same quorum type, delivery limit and dead-letter exchange as the requests queue. The shadow
score stage's queue is bound to the score exchange too: features are computed once and fanned
out to both models.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final, Literal

import pika
import pika.exceptions

from creditstream.broker import connection_parameters
from creditstream.topology import (
    REQUEST_ROUTING_KEY,
    Topology,
    refuse_shared_names,
    retry_queue_name,
)

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

    from creditstream.settings import Settings

log = logging.getLogger(__name__)

Stage = Literal["preprocess", "features", "score"]
STAGES: Final[tuple[Stage, ...]] = ("preprocess", "features", "score")
NEXT: Final[dict[str, Stage | None]] = {
    "preprocess": "features",
    "features": "score",
    "score": None,
}
STAGE_HEADER: Final = "x-creditstream-stage"
TRACE_HEADER: Final = "x-creditstream-trace"
SHADOW_SUFFIX: Final = ".shadow"
# A shadow score stage stores under `shadow:<model version>` (and request ids `<id>|<version>`).
SHADOW_VERSION_PREFIX: Final = "shadow:"


def stage_exchange(settings: Settings, stage: str, *, shadow: bool = False) -> str:
    """The exchange the stage before `stage` publishes to (the shadow's: its retries only)."""
    return f"{settings.stage_prefix}.{stage}" + (SHADOW_SUFFIX if shadow else "")


def stage_queue(settings: Settings, stage: str, *, shadow: bool = False) -> str:
    """The queue `stage` consumes (the shadow score stage has its own)."""
    return f"{settings.stage_prefix}.{stage}" + (SHADOW_SUFFIX if shadow else "")


def stage_settings(settings: Settings, stage: str, *, shadow: bool = False) -> Settings:
    """The settings as a stage sees them: its queue and exchange in the requests fields.

    NOTE: everything that reads `requests_*` (topology, connection names that fault tests and
    operators look for, the fused consumer reused by the score stage) then works on the stage.
    """
    # NOTE: the shadow has an exchange of its own, where its retry queue dead-letters back;
    # with the score exchange there, a shadow retry would reach the champion too (which would
    # publish and reply again), and the reverse. bind_shadow() adds the fan-out binding.
    return settings.model_copy(
        update={
            "requests_exchange": stage_exchange(settings, stage, shadow=shadow),
            "requests_queue": stage_queue(settings, stage, shadow=shadow),
        }
    )


def bind_shadow(channel: BlockingChannel, settings: Settings) -> None:
    """Declare the shadow score queue and bind it to the score exchange too (the fan-out)."""
    Topology.from_settings(stage_settings(settings, "score", shadow=True)).declare(channel)
    channel.queue_bind(
        stage_queue(settings, "score", shadow=True),
        stage_exchange(settings, "score"),
        routing_key=REQUEST_ROUTING_KEY,
    )


def declare_stages(settings: Settings, *, shadow: bool = False) -> None:
    """Declare every stage's exchange and queue (and the shadow queue if asked)."""
    connection = pika.BlockingConnection(connection_parameters(settings, name="creditstream-setup"))
    try:
        channel = connection.channel()
        for stage in STAGES:
            Topology.from_settings(stage_settings(settings, stage)).declare(channel)
        if shadow:
            bind_shadow(channel, settings)
    finally:
        connection.close()


def delete_stages(settings: Settings) -> None:
    """Delete the stages' queues and exchanges (isolated runs only: defaults are refused)."""
    refuse_shared_names(settings, "delete")
    if settings.stage_prefix == type(settings).model_fields["stage_prefix"].default:
        raise ValueError(f"refusing to delete the shared stage prefix {settings.stage_prefix!r}")
    connection = pika.BlockingConnection(
        connection_parameters(settings, name="creditstream-teardown")
    )
    try:
        for stage in STAGES:
            queues = [stage_queue(settings, stage)]
            if stage == "score":
                queues.append(stage_queue(settings, stage, shadow=True))
            for queue in queues:
                for name in (queue, retry_queue_name(queue, settings.retry_delay_ms)):
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        connection.channel().queue_delete(name)
            for shadow in (False, True) if stage == "score" else (False,):
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.channel().exchange_delete(
                        stage_exchange(settings, stage, shadow=shadow)
                    )
    finally:
        with contextlib.suppress(Exception):
            connection.close()
