"""The process group on a real consumer: its port, metrics, drain on SIGTERM, restart."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from creditstream.harness import ProcessGroup, isolated_run
from creditstream.settings import Settings
from tests.helpers import AMQP_URL, MODELS, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_consumer_serves_on_its_port_drains_on_sigterm_and_restarts(tmp_path: Path) -> None:
    base = Settings(amqp_url=AMQP_URL, model_path=MODELS / "credit_default.onnx", log_format="json")
    prefix = f"creditstream.test.harness.{uuid.uuid4().hex[:10]}"
    with (
        isolated_run(base, prefix, sqlite_file=tmp_path / "results.db") as settings,
        ProcessGroup(tmp_path / "logs", settings) as group,
    ):
        first = group.start(["consume"], name="consumer", http=True)
        wait_until(first.ready, timeout=60, message="the consumer's /readyz")
        metrics = first.scrape()
        # NOTE: get() is None for a series the page does not have: present, and 0 so far.
        assert metrics is not None
        assert metrics.get('creditstream_records_total{outcome="scored"}') == 0
        assert group.stop([first]) == [0], first.log_tail()  # drained on SIGTERM
        assert first.scrape() is None and first.last_metrics is metrics  # kept past its death
        second = group.restart(first)
        assert (second.argv, second.name) == (first.argv, first.name)
        assert second.port != first.port and second.pid != first.pid
        wait_until(second.ready, timeout=60, message="the restarted consumer's /readyz")
        assert [p.name for p in group.alive] == ["consumer"]
    assert not second.alive, "the group stops what it started"
