"""Settlement policy (pure): from what happened to a batch, the actions that settle it.

The consumer decodes, scores and stores; this module decides, and the consumer only executes
(creditstream.consumer.Settler). `settle(outcome)` is called until it returns no `Store`:

1. nothing stored yet and records scored → `[Store(tags)]`;
2. the store failed for a transient reason → `[Hold(delay)]` (keep every delivery unacked,
   readiness red, try again), or, when stopping, `Requeue` every delivery (the broker gives
   them to the next consumer);
3. the store committed (or there was nothing to store) → per delivery, in order: its dead letters
   (codec rejections and records the database refused, reason `store-rejected`), then one
   `PublishPredictions`, the `Reply`s, and the `Ack`s; a delivery whose scoring failed gets a
   `Retry` (a broker-enforced delay) and publishes nothing yet.

Rules this encodes (checked by tests/unit/core/test_settlement.py, the same table on the real
broker in tests/integration/test_settlement_rules.py, and a stateful hypothesis test):
- no Ack before the Store of its records committed;
- dead letters are published when their delivery is acked, not before (a requeued, held or
  retried delivery publishes none, so a redelivery does not repeat them); still at-least-once:
  a failure between a dead letter's confirm and the ack publishes it again on redelivery, under
  the same message id (`<message_id>#dead<index>` or `#dead-body`), for de-duplication;
- every delivery gets exactly one Ack, Retry or Requeue per settlement;
- nothing is dropped silently: every record is stored, dead-lettered, or its delivery returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeVar

from creditstream.codec import Rejection

STORE_REJECTED: Final = "store-rejected"
SCORING_FAILED: Final = "scoring-failed"
T = TypeVar("T")


class StoreErrorKind(Enum):
    """How a failed results-store transaction is treated."""

    TRANSIENT = "transient"  # connection, timeout, serialization: hold the batch and retry
    PERMANENT = "permanent"  # data, integrity, encoding, too long: this record never fits


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as the policy sees it."""

    tag: int
    message_id: str
    n_records: int
    rejections: tuple[Rejection, ...] = ()
    reply_to: str | None = None
    attempt: int = 0  # deliveries before this one (x-delivery-count or the retry header)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What the store did with the batch's predictions.

    `committed`: the transaction(s) committed; `refused` maps a delivery tag to the records the
    database refused permanently (found by bisecting). `transient` is set (and `committed`
    False) when the store could not be reached; `failures` counts consecutive ones.
    """

    committed: bool = False
    refused: Mapping[int, tuple[Rejection, ...]] = field(default_factory=dict)
    transient: str | None = None
    failures: int = 0


NOT_STORED: Final = StoreResult()


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Everything the policy needs about one batch."""

    deliveries: tuple[Delivery, ...]
    scoring_failed: frozenset[int] = frozenset()
    store: StoreResult = NOT_STORED
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of the rules (from settings)."""

    retry_delay_s: float = 1.0
    hold_base_s: float = 0.2
    hold_max_s: float = 10.0
    delivery_limit: int = 20

    def hold_delay(self, failures: int) -> float:
        """Pause before retrying a store that failed transiently `failures` times in a row."""
        return min(self.hold_base_s * 2 ** min(max(failures - 1, 0), 30), self.hold_max_s)


# --- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Store:
    """Write the predictions of these deliveries in one transaction (bisect on refusal)."""

    tags: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep every delivery of the batch unacked; retry the store after `delay_s`."""

    delay_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Publish (confirmed, mandatory) one rejected record or body of a delivery."""

    tag: int
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class PublishPredictions:
    """Publish the stored predictions of these deliveries as one event."""

    tags: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the caller waiting on reply_to."""

    tag: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Settle these deliveries as done."""

    tags: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Retry:
    """Send a delivery whose scoring failed to the retry queue (it comes back after `delay_s`,
    enforced by the broker, as attempt `attempt`), then ack it."""

    tag: int
    delay_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Requeue:
    """Return a delivery to the queue at once (stopping with the batch unstored)."""

    tag: int


Action = Store | Hold | DeadLetter | PublishPredictions | Reply | Ack | Retry | Requeue


def settle(outcome: BatchOutcome, policy: Policy = Policy()) -> list[Action]:
    """The actions for this outcome (see the module docstring)."""
    scored = [d for d in outcome.deliveries if d.n_records and d.tag not in outcome.scoring_failed]
    store = outcome.store
    if scored and not store.committed:
        if store.transient is None:
            return [Store(tuple(d.tag for d in scored))]
        if not outcome.stopping:
            return [Hold(policy.hold_delay(store.failures), store.transient)]
        return [Requeue(d.tag) for d in outcome.deliveries]
    actions: list[Action] = []
    acked: list[int] = []
    for delivery in outcome.deliveries:
        rejections = list(delivery.rejections)
        if delivery.tag in outcome.scoring_failed:
            if delivery.attempt + 1 < policy.delivery_limit:
                actions.append(Retry(delivery.tag, policy.retry_delay_s, delivery.attempt + 1))
                continue
            # NOTE: the whole body, once: its other records are not scored either.
            rejections = [
                Rejection(
                    SCORING_FAILED,
                    f"scoring failed {delivery.attempt + 1} times (delivery limit "
                    f"{policy.delivery_limit})",
                )
            ]
        for rejection in (*rejections, *store.refused.get(delivery.tag, ())):
            actions.append(DeadLetter(delivery.tag, rejection))
        acked.append(delivery.tag)
    published = tuple(d.tag for d in scored if len(store.refused.get(d.tag, ())) < d.n_records)
    if published:
        actions.append(PublishPredictions(published))
    actions.extend(Reply(d.tag) for d in outcome.deliveries if d.reply_to and d.tag in acked)
    if acked:
        actions.append(Ack(tuple(acked)))
    return actions


def refused_by_delivery(
    refused: Sequence[tuple[int, Rejection]],
) -> dict[int, tuple[Rejection, ...]]:
    """Group (delivery tag, rejection) pairs found by bisecting the store write."""
    grouped: dict[int, list[Rejection]] = {}
    for tag, rejection in refused:
        grouped.setdefault(tag, []).append(rejection)
    return {tag: tuple(items) for tag, items in grouped.items()}


def bisect_refused(
    write: Callable[[Sequence[T]], int],
    items: Sequence[T],
    is_permanent: Callable[[Exception], bool],
) -> tuple[int, list[tuple[int, Exception]]]:
    """Write `items`; when the write is refused permanently, split it until the refused items
    are alone. Returns (rows written, [(position, error)] of the refused items).

    A transient error propagates (the caller holds the whole batch and tries again later;
    the halves already written are not written twice: the store is idempotent).
    """
    if not items:
        return 0, []
    try:
        return write(items), []
    except Exception as exc:
        if not is_permanent(exc):
            raise
        if len(items) == 1:
            return 0, [(0, exc)]
    middle = len(items) // 2
    left, left_refused = bisect_refused(write, items[:middle], is_permanent)
    right, right_refused = bisect_refused(write, items[middle:], is_permanent)
    return left + right, left_refused + [(middle + i, e) for i, e in right_refused]
