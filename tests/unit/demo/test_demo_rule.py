"""The demo's rule (chart values + demo overrides) on a scripted burst: the twin's side of latency.

The management API shows a burst 5-10 s after its first publish (collect_statistics_interval);
what the rule adds on top is its own: the poll that notices the reading, the HPA sync that adds
replicas for the backlog, the publish rate that keeps them while the producer runs, and the
cooldown that takes them to zero before the next burst.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from creditstream.autoscale.rule import KedaHpaAutoscaler, QueueSample
from creditstream.demo.load import DEFAULT_BURST_RATE, LoadProfile
from creditstream.demo.values import load_demo_values

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SEEN_AT = 12.3  # first management API reading of the burst (not on a poll or sync boundary)
BACKLOG = 3_000.0  # messages that reading shows: the cold start's backlog
CAUGHT_UP_AT = SEEN_AT + 5  # next statistics sample: the consumers have drained it
RATE_GONE_AT = 45.0  # one statistics sample after the producer stopped


def reading(t: float) -> QueueSample:
    """The management API during one burst at the demo's rate."""
    if t < SEEN_AT or t >= RATE_GONE_AT:
        return QueueSample(messages=0.0, publish_rate=0.0)
    messages = BACKLOG if t < CAUGHT_UP_AT else 0.0
    return QueueSample(messages=messages, publish_rate=DEFAULT_BURST_RATE)


def run(
    sample: Callable[[float], QueueSample], until: float, tick: float = 0.5
) -> list[tuple[float, int]]:
    """(t, desired) of the demo's rule ticked like the demo ticks it."""
    config = load_demo_values([], "q.demo").autoscaling
    rule = KedaHpaAutoscaler(config, created_at=0.0)
    desired, trace, t = 0, [], 0.0
    while t <= until:
        desired, _ = rule.step(t, sample(t), desired)
        trace.append((t, desired))
        t = round(t + tick, 3)
    return trace


def test_the_first_reading_wakes_a_consumer_within_a_second() -> None:
    first = next(t for t, desired in run(reading, 60) if desired >= 1)
    assert first - SEEN_AT <= 1.0


def test_the_backlog_adds_replicas_at_the_next_hpa_sync() -> None:
    config = load_demo_values([], "q.demo").autoscaling
    wanted = min(math.ceil(BACKLOG / config.value), 1 + 4)  # the chart's scaleUp: +4 pods / 15 s
    trace = run(reading, 60)
    reached = next(t for t, desired in trace if desired >= wanted)
    assert reached - SEEN_AT <= config.polling_interval_s + config.hpa_sync_period_s


def test_the_publish_rate_holds_replicas_until_the_producer_stops() -> None:
    config = load_demo_values([], "q.demo").autoscaling
    assert config.message_rate is not None
    floor = math.ceil(DEFAULT_BURST_RATE / config.message_rate)
    during = [desired for t, desired in run(reading, 60) if SEEN_AT + 1 <= t < RATE_GONE_AT]
    assert min(during) >= floor


def test_replicas_are_back_at_zero_before_the_next_burst() -> None:
    pause = LoadProfile().pause_s  # the next burst starts this long after the producer exited
    trace = dict(run(reading, 120))
    producer_exit = RATE_GONE_AT - 5  # the rate reading trails the producer by one sample
    assert trace[producer_exit + pause] == 0
