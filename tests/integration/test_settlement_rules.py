"""The failure-rule table of tests/settlement_rules.py on the real broker: a real consumer (its
store wrapped to inject refusals and outages, its model to fail on demand) settles each rule's
messages as the fake channel does in tests/unit/core/test_settlement.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pika
import pytest

from creditstream.consumer import Consumer
from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from creditstream.topology import REASON_HEADER, REQUEST_ROUTING_KEY, Topology
from tests.helpers import AMQP_URL, ready_in_queue, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import drain_dead_letters
from tests.settlement_rules import RULES, FaultyStore, FlakyScorer, Rule

pytestmark = pytest.mark.integration


def _publish(settings: Settings, rule: Rule) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        Topology.from_settings(settings).declare(channel)
        channel.confirm_delivery()
        for body, message_id in rule.messages:
            channel.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(
                    content_type="application/json", delivery_mode=2, message_id=message_id
                ),
            )
    finally:
        connection.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_failure_rules_on_the_real_broker(
    rule: Rule, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(batch_timeout_ms=200, reconnect_max_s=0.5, retry_delay_ms=200)
    store = FaultyStore(
        ResultsStore.from_settings(settings), transient_failures=rule.store_transient_failures
    )
    scorer = FlakyScorer(OnnxScorer.from_settings(settings), rule.scoring_failures_before_success)
    consumer = Consumer(settings, scorer, store)  # type: ignore[arg-type]
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
        _publish(settings, rule)
        dead = drain_dead_letters(settings, expected=sum(rule.dead.values()), timeout=30)
        wait_until(
            lambda: len(stored_rows(settings)) >= len(rule.stored),
            timeout=30,
            message="records stored",
        )
        time.sleep(0.5)  # anything extra would show up now
        extra = drain_dead_letters(settings, expected=1, timeout=0.5)
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.inner.dispose()
    assert not thread.is_alive()
    assert ready_in_queue(settings) == 0, "every delivery acked (none returned at stop)"
    assert sorted(r for _, r, _ in stored_rows(settings)) == sorted(rule.stored)
    assert Counter(h[REASON_HEADER] for h, _ in dead) == rule.dead and not extra
    assert consumer.metrics.retried._value.get() >= rule.returned_at_least
    assert consumer.metrics.store_errors._value.get() >= rule.store_transient_failures
