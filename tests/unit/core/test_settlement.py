"""Settlement: the pure policy, the failure-rule table on a fake channel, and a stateful test of
deliveries, redeliveries, faults and restarts (hypothesis)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from creditstream.batcher import MicroBatch
from creditstream.codec import Rejection
from creditstream.consumer import Consumer, Settler
from creditstream.settings import Settings
from creditstream.settlement import (
    SCORING_FAILED,
    STORE_REJECTED,
    Ack,
    BatchOutcome,
    DeadLetter,
    Delivery,
    Hold,
    Policy,
    PublishPredictions,
    Reply,
    Requeue,
    Retry,
    Store,
    StoreErrorKind,
    StoreResult,
    bisect_refused,
    settle,
)
from creditstream.store import classify_store_error
from creditstream.topology import REASON_HEADER, SOURCE_HEADER
from tests.fake_broker import ChannelLost, FakeBroker, FakeChannel, Message
from tests.settlement_rules import (
    POISON_LIMIT_BAL,
    REFUSED_PREFIX,
    RULES,
    ConstantScorer,
    FaultyStore,
    FlakyScorer,
    MemoryStore,
    Rule,
    good,
)

pytestmark = pytest.mark.unit

BAD = Rejection("out-of-range", "PAY_0=11", 1, {"ID": 1})


# --- the pure policy --------------------------------------------------------------------------
def test_scored_records_are_stored_before_anything_else() -> None:
    outcome = BatchOutcome((Delivery(1, "a", 2, (BAD,)), Delivery(2, "b", 0, (BAD,))))
    assert settle(outcome) == [Store((1,))]


def test_after_commit_dead_letters_then_publish_reply_ack() -> None:
    outcome = BatchOutcome(
        (Delivery(1, "a", 2, (BAD,), reply_to="r"), Delivery(2, "b", 0, (BAD,))),
        store=StoreResult(committed=True),
    )
    assert settle(outcome) == [
        DeadLetter(1, BAD),
        DeadLetter(2, BAD),
        PublishPredictions((1,)),
        Reply(1),
        Ack((1, 2)),
    ]


def test_transient_store_error_holds_everything_and_backs_off() -> None:
    deliveries = (Delivery(1, "a", 1, (BAD,)), Delivery(2, "b", 1))
    policy = Policy(hold_base_s=0.2, hold_max_s=1.0)
    delays = [
        settle(BatchOutcome(deliveries, store=StoreResult(transient="down", failures=n)), policy)
        for n in (1, 2, 3, 10)
    ]
    assert delays == [[Hold(d, "down")] for d in (0.2, 0.4, 0.8, 1.0)]


def test_transient_store_error_while_stopping_requeues_and_dead_letters_nothing() -> None:
    deliveries = (Delivery(1, "a", 1, (BAD,)), Delivery(2, "b", 0, (BAD,)))
    outcome = BatchOutcome(deliveries, store=StoreResult(transient="down"), stopping=True)
    assert settle(outcome) == [Requeue(1), Requeue(2)]


def test_scoring_failure_is_retried_with_growing_delay_and_publishes_nothing() -> None:
    deliveries = (Delivery(1, "a", 1, (BAD,), attempt=3), Delivery(2, "b", 1, reply_to="r"))
    outcome = BatchOutcome(deliveries, frozenset({1}), StoreResult(committed=True))
    policy = Policy(retry_delay_s=2.0, delivery_limit=5)
    assert settle(outcome, policy) == [
        Retry(1, 2.0, 4),
        PublishPredictions((2,)),
        Reply(2),
        Ack((2,)),
    ]


def test_scoring_failing_up_to_the_delivery_limit_dead_letters_the_whole_body_once() -> None:
    deliveries = (Delivery(1, "a", 2, (BAD,), attempt=4), Delivery(2, "b", 1))
    outcome = BatchOutcome(deliveries, frozenset({1}), StoreResult(committed=True))
    actions = settle(outcome, Policy(delivery_limit=5))
    assert [type(a) for a in actions] == [DeadLetter, PublishPredictions, Ack]
    assert isinstance(actions[0], DeadLetter) and actions[0].rejection.reason == SCORING_FAILED
    assert actions[0].rejection.index is None and actions[2] == Ack((1, 2))


def test_refused_records_are_dead_lettered_and_a_fully_refused_delivery_publishes_nothing() -> None:
    refused = Rejection(STORE_REJECTED, "NUL", 0, {"ID": "a\x00"})
    outcome = BatchOutcome(
        (Delivery(1, "a", 1), Delivery(2, "b", 2)),
        store=StoreResult(committed=True, refused={1: (refused,), 2: (refused,)}),
    )
    assert settle(outcome) == [
        DeadLetter(1, refused),
        DeadLetter(2, refused),
        PublishPredictions((2,)),
        Ack((1, 2)),
    ]


def test_bisect_finds_each_refused_item_and_writes_the_rest() -> None:
    written: list[int] = []

    def write(items: Any) -> int:
        if any(i % 7 == 3 for i in items):
            raise DataError("INSERT", None, ValueError("bad"))
        written.extend(items)
        return len(items)

    items = list(range(40))
    inserted, refused = bisect_refused(write, items, lambda e: isinstance(e, DataError))
    assert [items[i] for i, _ in refused] == [3, 10, 17, 24, 31, 38]
    assert sorted(written) == [i for i in items if i % 7 != 3] and inserted == 34


def test_bisect_lets_a_transient_error_through() -> None:
    def write(_items: Any) -> int:
        raise OperationalError("INSERT", None, ConnectionError("down"))

    with pytest.raises(OperationalError):
        bisect_refused(write, [1, 2], lambda e: isinstance(e, DataError))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (DataError("s", None, ValueError("NUL")), StoreErrorKind.PERMANENT),
        (IntegrityError("s", None, ValueError("dup")), StoreErrorKind.PERMANENT),
        (
            StatementError("s", "s", None, UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x")),
            StoreErrorKind.PERMANENT,
        ),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"), StoreErrorKind.PERMANENT),
        (OperationalError("s", None, ConnectionError("refused")), StoreErrorKind.TRANSIENT),
        (TypeError("a bug, not a record"), StoreErrorKind.TRANSIENT),
        (TimeoutError("pool"), StoreErrorKind.TRANSIENT),
    ],
)
def test_store_errors_are_classified(error: BaseException, kind: StoreErrorKind) -> None:
    assert classify_store_error(error) is kind


# --- the failure-rule table on a fake channel ---------------------------------------------------
def make_consumer(store: Any, scorer: Any, delivery_limit: int = 20) -> Consumer:
    settings = Settings(
        database_url="sqlite://", http_port=0, delivery_limit=delivery_limit, batch_size=64
    )
    return Consumer(settings, scorer, store)


def flush_once(consumer: Consumer, settler: Settler, broker: FakeBroker, n: int) -> None:
    """Deliver up to n messages as one batch and settle it."""
    batch = MicroBatch(consumer.settings.batch_size)
    for method, props, body in broker.deliver(n):
        settler.received(method.delivery_tag)
        consumer._accept(batch, method, props, body)
    if batch:
        consumer._flush(settler, batch)


def run_on_fake(rule: Rule) -> tuple[MemoryStore, FakeBroker, Consumer]:
    memory = MemoryStore()
    store = FaultyStore(memory, transient_failures=rule.store_transient_failures)
    scorer = FlakyScorer(ConstantScorer(), rule.scoring_failures_before_success)
    consumer = make_consumer(store, scorer)
    broker = FakeBroker()
    broker.durable = lambda m: durable(memory, broker, m)
    for body, message_id in rule.messages:
        broker.publish(body, message_id)
    channel = FakeChannel(broker)
    settler = consumer._settler(channel, channel)  # type: ignore[arg-type]
    for _ in range(50):
        if not broker.ready:
            break
        flush_once(consumer, settler, broker, n=len(rule.messages))
    return memory, broker, consumer


def durable(memory: MemoryStore, broker: FakeBroker, message: Message) -> bool:
    """Stored, or a copy in the retry queue, or the whole message dead-lettered (scoring kept
    failing) before the ack."""
    return (
        stored_before_ack(memory, message)
        or any(m.retry_of is message for m in broker.messages)
        or any(
            h[REASON_HEADER] == SCORING_FAILED and h[SOURCE_HEADER] == message.message_id
            for h, _, _ in broker.dead_letters
        )
    )


def stored_before_ack(memory: MemoryStore, message: Message) -> bool:
    """Every record of the message that the store can take is stored."""
    try:
        payload = json.loads(message.body)
    except ValueError:
        return True
    records = payload if isinstance(payload, list) else [payload]
    stored = set(memory.record_ids())
    return all(
        str(r.get("ID")) in stored
        for r in records
        if isinstance(r, dict)
        and not str(r.get("ID")).startswith(REFUSED_PREFIX)
        and r.keys() == good("x").keys()
        and r.get("SEX") in (1, 2)
        and r.get("PAY_0", 0) <= 8
    )


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_failure_rules_on_a_fake_channel(rule: Rule) -> None:
    memory, broker, consumer = run_on_fake(rule)
    assert not broker.violations
    assert not broker.ready and not broker.unacked, "every delivery settled"
    assert all(m.acked == 1 for m in broker.messages), "each message acked exactly once"
    assert sorted(memory.record_ids()) == sorted(rule.stored)
    assert Counter(h[REASON_HEADER] for h, _, _ in broker.dead_letters) == rule.dead
    returned = broker.retried + sum(m.deliveries - 1 for m in broker.messages)
    assert returned >= rule.returned_at_least
    assert consumer.metrics.store_errors._value.get() >= rule.store_transient_failures


# --- stateful: deliveries, redeliveries, faults, restarts -------------------------------------
class SettlementMachine(RuleBasedStateMachine):
    """Random sequences through the real Consumer/Settler code and the pure policy."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryStore()
        self.store = FaultyStore(self.memory)
        self.scorer = FlakyScorer(ConstantScorer(), 0)
        self.broker = FakeBroker(delivery_limit=4)
        self.broker.durable = lambda m: durable(self.memory, self.broker, m)
        self.consumer = make_consumer(self.store, self.scorer, delivery_limit=4)
        self.restart()
        self.next_id = 0
        self.expected_stored: set[str] = set()
        self.good_ids: dict[str, set[str]] = {}
        self.expected_dead: Counter[str] = Counter()
        self.poisoned: set[str] = set()

    def restart(self) -> None:
        self.channel = FakeChannel(self.broker)
        self.settler = self.consumer._settler(self.channel, self.channel)  # type: ignore[arg-type]

    def _id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    @rule(n_good=st.integers(0, 3), bad=st.booleans(), refused=st.booleans())
    def publish(self, n_good: int, bad: bool, refused: bool) -> None:
        records = []
        for _ in range(n_good):
            record_id = self._id()
            records.append(good(record_id))
            self.expected_stored.add(record_id)
        if bad:
            records.append(good(self._id(), SEX=7))
        if refused:
            records.append(good(REFUSED_PREFIX + self._id()))
        if not records:
            body = b"not json"
            reason_count = 1
        else:
            body = json.dumps(records[0] if len(records) == 1 else records).encode()
            reason_count = int(bad) + int(refused)
        message = self.broker.publish(body, f"msg-{self._id()}")
        self.expected_dead[message.message_id] = reason_count
        self.good_ids[message.message_id] = {str(r["ID"]) for r in records[:n_good]}

    @rule()
    def publish_poison(self) -> None:
        message = self.broker.publish(
            json.dumps(good(self._id(), LIMIT_BAL=POISON_LIMIT_BAL)).encode(), f"p-{self._id()}"
        )
        self.poisoned.add(message.message_id)

    @rule(failures=st.integers(1, 3))
    def model_fault(self, failures: int) -> None:
        self.scorer.failures_left += failures

    @rule(failures=st.integers(1, 3))
    def store_outage(self, failures: int) -> None:
        self.store.transient_left += failures

    @precondition(lambda self: self.broker.ready)
    @rule(n=st.integers(1, 6))
    def deliver_and_settle(self, n: int) -> None:
        flush_once(self.consumer, self.settler, self.broker, n)
        assert not self.broker.unacked, "every delivery of the batch settled (one action each)"

    @precondition(lambda self: self.broker.ready)
    @rule(n=st.integers(1, 6), fail_after=st.integers(0, 6))
    def crash_mid_settlement(self, n: int, fail_after: int) -> None:
        self.channel.fail_after = self.channel.operations + fail_after
        with contextlib.suppress(ChannelLost):
            flush_once(self.consumer, self.settler, self.broker, n)
        self.broker.crash()
        self.restart()

    @precondition(lambda self: self.broker.ready)
    @rule(n=st.integers(1, 6), outage=st.booleans())
    def stop_then_start_again(self, n: int, outage: bool) -> None:
        """SIGTERM (during a store outage or not): settle or return what is in hand, restart."""
        if outage:
            self.store.transient_left += 1
        self.consumer._stop.set()
        self.broker.stopping = True
        try:
            flush_once(self.consumer, self.settler, self.broker, n)
            assert not self.broker.unacked, "stopping settles or returns every delivery"
        finally:
            self.broker.stopping = False
            self.consumer._stop.clear()
        self.store.transient_left = 0
        self.broker.crash()
        self.restart()

    @rule()
    def restart_between_batches(self) -> None:
        self.broker.crash()
        self.restart()

    @invariant()
    def nothing_acked_early_or_twice(self) -> None:
        assert not self.broker.violations, self.broker.violations

    def teardown(self) -> None:
        # Faults over: drain everything, then the books must balance.
        self.scorer.failures_left = 0
        self.store.transient_left = 0
        self.broker.crash()
        self.restart()
        while self.broker.ready:
            flush_once(self.consumer, self.settler, self.broker, 8)
        assert not self.broker.violations, self.broker.violations
        assert not self.broker.unacked
        for message in self.broker.messages:
            settled = message.acked + int(message.dead_by_broker)
            assert settled == 1, f"{message.message_id} settled {settled} times"
        # The delivery limit counts every return (crashes too): what the broker dead-lettered
        # is in its dead-letter queue, whole; everything else must be stored.
        by_broker = {m.message_id for m in self.broker.messages if m.dead_by_broker}
        in_dead_queue = {i for mid in by_broker for i in self.good_ids.get(mid, set())}
        stored = set(self.memory.record_ids())
        lost = self.expected_stored - stored - in_dead_queue
        assert not lost, f"good records neither stored nor dead-lettered: {sorted(lost)}"
        per_source = Counter(
            h["x-creditstream-source-message-id"] for h, _, _ in self.broker.dead_letters
        )
        distinct = {
            (h["x-creditstream-source-message-id"], mid) for h, _, mid in self.broker.dead_letters
        }
        for message in self.broker.messages:
            if message.message_id in self.poisoned or message.dead_by_broker:
                continue
            want = self.expected_dead[message.message_id]
            got = {mid for source, mid in distinct if source == message.message_id}
            assert len(got) == want, f"{message.message_id}: {len(got)} dead letters, want {want}"
            # Published again only when a crash took the delivery between publish and ack.
            limit = want * (1 + message.dead_letters_published_then_lost)
            assert per_source[message.message_id] <= limit


TestSettlementMachine = SettlementMachine.TestCase
TestSettlementMachine.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
