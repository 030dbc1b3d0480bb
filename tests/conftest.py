"""Shared fixtures: isolated broker names, isolated PostgreSQL schemas, settings, processes.

Integration and fault tests talk to the real RabbitMQ and PostgreSQL on this machine
(CREDITSTREAM_TEST_AMQP_URL / CREDITSTREAM_TEST_PG_URL override the defaults). Each test gets
its own exchange/queue names and its own PostgreSQL schema, deleted in `finally`.

A test skips when something it needs is missing (a service, the data set, a tool); with
CI=true that skip is a failure, so a CI run cannot pass with a suite silently left out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from creditstream.harness import postgres_schema
from creditstream.harness.broker_cluster import (
    BrokerCluster,
    ClusterError,
    rabbitmq_server_missing,
)
from creditstream.settings import Settings
from creditstream.topology import delete_topology, isolated_names
from tests.helpers import AMQP_URL, MODELS, PG_URL, Processes, data_path_or_skip

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _fail_skips_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped with CI=true (everything must be there in CI): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A skipped test fails when CI=true."""
    report = yield
    _fail_skips_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module skipped at collection fails when CI=true."""
    report = yield
    _fail_skips_in_ci(report)
    return report


@pytest.fixture
def data_path() -> Path:
    """Path of the real UCI data set; skips with the reason when absent."""
    return data_path_or_skip()


@pytest.fixture
def broker_names(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Unique exchange and queue names for one test; deleted afterwards."""

    names = isolated_names(f"t{uuid.uuid4().hex[:10]}")
    try:
        yield names
    finally:
        delete_topology(Settings(amqp_url=AMQP_URL, **names))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema in the test database; dropped afterwards."""
    with postgres_schema(PG_URL, f"cs_{uuid.uuid4().hex[:10]}") as schema:
        yield schema


@pytest.fixture
def make_settings(broker_names: dict[str, str], tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: isolated broker names, a temp SQLite store, the committed model."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "amqp_url": AMQP_URL,
            "database_url": f"sqlite:///{tmp_path / 'results.db'}",
            "model_path": MODELS / "credit_default.onnx",
            "http_port": 0,
            "broker_wait_s": 10,
            "log_format": "json",
            **broker_names,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Subprocess manager; everything it started is stopped in `finally`."""
    manager = Processes(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()


# NOTE: short, so that a paused node is taken for cut off within seconds (fault tests); 2 cores
# shared with other work still keep up with a 10 s tick (4 ticks of 2.5 s before a node is lost).
CLUSTER_NET_TICKTIME_S = 10


@pytest.fixture(scope="module")
def broker_cluster() -> Iterator[BrokerCluster]:
    """Three local RabbitMQ nodes in one cluster (ports 5673-5675) for one test module;
    stopped, with nothing left running, in `finally`."""
    if rabbitmq_server_missing():
        pytest.skip("rabbitmq-server is not installed: the cluster tests start its nodes")
    cluster = BrokerCluster(net_ticktime_s=CLUSTER_NET_TICKTIME_S)
    refuse_a_foreign_cluster(cluster)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
        assert not cluster.leftovers(), cluster.leftovers()


def refuse_a_foreign_cluster(cluster: BrokerCluster) -> None:
    """Fail when a local cluster runs already (`make broker-cluster-up`, another test run):
    the tests would kill, pause and finally remove nodes that are not theirs."""
    if cluster.leftovers():
        pytest.fail(
            f"a local RabbitMQ cluster is running already ({cluster.leftovers()}); the cluster "
            "tests start their own: `make broker-cluster-down` first"
        )


def cluster_ready(cluster: BrokerCluster) -> None:
    """Every node running and clustered again (after a test restarted or paused one)."""
    for node in cluster.nodes:
        if node.pid() is None:
            cluster.start_node(node)
    try:
        cluster.await_cluster(180)
    except ClusterError as exc:
        pytest.fail(f"the cluster did not recover: {exc}")
