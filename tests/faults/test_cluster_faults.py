"""Node failures of a three-node RabbitMQ cluster under load: exactly once, every time.

Producer -> 2 consumers -> PostgreSQL on the local cluster (tests/conftest.py `broker_cluster`:
nodes creditstream-{a,b,c}@localhost, net_ticktime 10 s, pause_minority), every client given
all three AMQP URLs. Faults, each in the middle of a paced stream:

- leader kill: SIGKILL of the node leading the requests queue, restarted 5 s later;
- restarts: a follower stopped and started, then all three restarted one after the other;
- pause: the leader's VM stopped (SIGSTOP) for 2.5 x net_ticktime, then resumed;
- disk alarm: disk_free_limit above the free space on the producer's node.

Each ends with: every record stored exactly once (lost = 0, duplicated = 0), figures in the
reliability ledger. Short variants run in `make test`; the 30,000-record ones are `slow`
(`make test-cluster-faults`).
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from creditstream.harness.broker_cluster import BrokerCluster, ClusterNode
from creditstream.harness.processes import Process
from creditstream.settings import Settings
from creditstream.topology import declare_topology
from tests.conftest import CLUSTER_NET_TICKTIME_S, cluster_ready
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet
from tests.faults.ledger import record_run
from tests.helpers import Processes, count_rows, wait_until

pytestmark = pytest.mark.faults

_SUMMARY = re.compile(r"produced (\d+) records.*?(?:; (\d+) reconnects, (\d+) republished)?$", re.M)


@dataclass(frozen=True)
class ClusterRun:
    """A workload and the producer's pace (so the faults land mid-stream)."""

    workload: Workload
    rate: int


def _cases(short: ClusterRun, full: ClusterRun) -> list[Any]:
    return [
        pytest.param(short, id=f"short-{short.workload.records // 1000}k"),
        pytest.param(full, marks=pytest.mark.slow, id="30k"),
    ]


@dataclass
class Stream:
    """One run: the cluster, its settings, the consumers and the producer."""

    cluster: BrokerCluster
    settings: Settings
    fleet: Fleet
    processes: Processes
    run: ClusterRun
    producer: Process | None = None
    started: float = field(default_factory=time.monotonic)
    faults: list[str] = field(default_factory=list)
    producer_reconnects: int = 0
    consumer_reconnects: list[int] = field(default_factory=list)

    def start_producer(self, first: ClusterNode | None = None) -> None:
        """Start the paced producer; connected to `first` (the node a fault will hit) first."""
        settings = self.settings
        if first is not None:
            urls = [first.amqp_url()] + [
                n.amqp_url() for n in self.cluster.nodes if n.nodename != first.nodename
            ]
            settings = settings.model_copy(update={"amqp_url": SecretStr(",".join(urls))})
        self.started = time.monotonic()
        self.producer = self.processes.start(
            [
                "produce",
                *self.run.workload.produce_args(),
                "--rate",
                str(self.run.rate),
                "--no-progress",
            ],
            settings,
            "producer",
        )

    def at_fraction(self, fraction: float) -> None:
        """Sleep until `fraction` of the stream should have been published."""
        due = self.started + fraction * self.run.workload.records / self.run.rate
        time.sleep(max(0.0, due - time.monotonic()))
        assert self.producer is not None and self.producer.poll() is None, (
            "the producer is still mid-stream at the fault: " + self.producer_log()[-1500:]
        )

    def producer_log(self) -> str:
        """Everything the producer wrote so far."""
        assert self.producer is not None
        return Path(self.producer.log_path).read_text()  # type: ignore[attr-defined]

    def leader(self) -> ClusterNode:
        """The node leading the requests queue now."""
        return self.cluster.queue_leader("/", self.settings.requests_queue)

    def declare_and_find_leader(self) -> ClusterNode:
        """Declare the topology (the requests queue gets its leader) and name the leader."""
        declare_topology(self.settings)
        wait_until(lambda: _leader_or_none(self) is not None, timeout=30, message="a leader")
        return self.leader()

    def finish(self, name: str, variant: str, **figures: Any) -> None:
        """Wait for the producer and every row, stop the consumers, record and check."""
        assert self.producer is not None
        n = self.run.workload.records
        assert self.producer.wait(timeout=600) == 0, self.producer_log()[-3000:]
        wait_until(
            lambda: count_rows(self.settings) >= n, timeout=600, interval=1, message="all rows"
        )
        time.sleep(1.0)
        exit_codes = self.fleet.stop()
        elapsed = time.monotonic() - self.started
        match = _SUMMARY.search(self.producer_log())
        assert match, self.producer_log()[-2000:]
        result = verdict(self.settings, self.run.workload)
        self.producer_reconnects = int(match.group(2) or 0)
        self.consumer_reconnects = [
            int(m.last["creditstream_broker_reconnects_total"]) for m in self.fleet.members
        ]
        record_run(
            f"cluster-{name}",
            variant,
            records=n,
            nodes=len(self.cluster.nodes),
            faults="; ".join(self.faults),
            producer_confirmed=int(match.group(1)),
            producer_reconnects=int(match.group(2) or 0),
            producer_republished=int(match.group(3) or 0),
            consumer_reconnects=[
                int(m.last["creditstream_broker_reconnects_total"]) for m in self.fleet.members
            ],
            redelivered_messages_seen=self.fleet.total("creditstream_redelivered_messages_total"),
            duplicate_records_skipped=self.fleet.total("creditstream_duplicate_records_total"),
            stored=result.stored,
            lost=result.lost,
            duplicated=result.duplicated,
            seconds=round(elapsed, 1),
            **figures,
        )
        assert int(match.group(1)) == n
        assert exit_codes == [0, 0]
        assert result == type(result)(stored=n, lost=0, duplicated=0, unexpected=0)


@pytest.fixture
def stream(
    broker_cluster: BrokerCluster,
    pg_settings: Callable[..., Settings],
    processes: Processes,
) -> Iterator[Callable[[ClusterRun], Stream]]:
    """A Stream factory on the cluster; afterwards the cluster is whole again."""

    def build(run: ClusterRun) -> Stream:
        # NOTE: a 5 s heartbeat: a client of a paused node finds out in ~10 s, not a minute.
        settings = pg_settings(
            amqp_url=broker_cluster.amqp_url_list(),
            management_url=",".join(node.management_url() for node in broker_cluster.nodes),
            heartbeat_s=5,
            reconnect_max_s=2.0,
            broker_wait_s=120,
        )
        return Stream(broker_cluster, settings, Fleet(processes, settings), processes, run)

    cluster_ready(broker_cluster)
    try:
        yield build
    finally:
        for node in broker_cluster.nodes:
            broker_cluster.resume_node(node)
            if node.pid() is not None:
                broker_cluster.rabbitmqctl(node, "set_disk_free_limit", "50MB", check=False)
        processes.stop_all()
        cluster_ready(broker_cluster)


def _start_consumers(s: Stream) -> None:
    s.fleet.start()
    s.fleet.start()


LEADER_KILL = _cases(
    ClusterRun(Workload(3_000, real_data=False), rate=150),
    ClusterRun(Workload(30_000, real_data=True), rate=1_000),
)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", LEADER_KILL)
def test_sigkill_of_the_queue_leader(
    run: ClusterRun, stream: Callable[[ClusterRun], Stream], request: pytest.FixtureRequest
) -> None:
    s = stream(run)
    leader = s.declare_and_find_leader()
    _start_consumers(s)
    s.start_producer(first=leader)
    s.at_fraction(0.3)
    assert s.leader() == leader
    rows_before = count_rows(s.settings)
    s.cluster.kill_node(leader)
    s.faults.append(f"SIGKILL {leader.nodename} (leader) at {rows_before} rows")
    # a new leader among the survivors, while the stream goes on
    wait_until(lambda: _leader_or_none(s) not in (None, leader), timeout=60, message="a new leader")
    new_leader = s.leader()
    time.sleep(5)
    s.cluster.start_node(leader)
    s.cluster.await_node(leader)
    s.faults.append(f"{leader.nodename} restarted; new leader {new_leader.nodename}")
    s.finish("leader-kill", request.node.callspec.id)
    assert s.producer_reconnects >= 1, "the producer, on the killed node, reconnected elsewhere"


def _leader_or_none(s: Stream) -> ClusterNode | None:
    try:
        return s.leader()
    except Exception:  # noqa: BLE001 - no leader or no answer during the election
        return None


RESTARTS = _cases(
    ClusterRun(Workload(3_000, real_data=False), rate=15),
    ClusterRun(Workload(30_000, real_data=True), rate=100),
)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("run", RESTARTS)
def test_follower_restart_then_rolling_restart(
    run: ClusterRun, stream: Callable[[ClusterRun], Stream], request: pytest.FixtureRequest
) -> None:
    s = stream(run)
    _start_consumers(s)
    s.start_producer()
    s.at_fraction(0.1)
    leader = s.leader()
    follower = next(node for node in s.cluster.nodes if node != leader)
    s.cluster.stop_node(follower)
    time.sleep(3)
    s.cluster.start_node(follower)
    s.cluster.await_cluster(180)
    s.faults.append(f"follower {follower.letter} stopped+started")
    for node in s.cluster.nodes:
        assert s.producer is not None and s.producer.poll() is None, "still mid-stream"
        s.cluster.stop_node(node)
        s.cluster.start_node(node)
        s.cluster.await_cluster(180)
    s.faults.append("rolling restart a, b, c")
    s.finish("restarts", request.node.callspec.id)
    assert s.producer_reconnects >= 1 and min(s.consumer_reconnects) >= 1, (
        "every node restarted: every client lost its node and reconnected",
        s.producer_reconnects,
        s.consumer_reconnects,
    )


PAUSE = _cases(
    ClusterRun(Workload(3_000, real_data=False), rate=60),
    ClusterRun(Workload(30_000, real_data=True), rate=500),
)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", PAUSE)
def test_leader_paused_longer_than_net_ticktime(
    run: ClusterRun, stream: Callable[[ClusterRun], Stream], request: pytest.FixtureRequest
) -> None:
    s = stream(run)
    leader = s.declare_and_find_leader()
    _start_consumers(s)
    s.start_producer(first=leader)
    s.at_fraction(0.2)
    assert s.leader() == leader
    paused_s = 2.5 * CLUSTER_NET_TICKTIME_S
    s.cluster.pause_node(leader)
    paused_at = time.monotonic()
    try:
        survivors = [node for node in s.cluster.nodes if node != leader]
        # the other two take it for gone (net_ticktime) and elect a leader among themselves
        wait_until(
            lambda: _leader_or_none(s) in survivors,
            timeout=paused_s,
            interval=1,
            message="a leader among the two others while one is paused",
        )
        new_leader = s.leader()
        time.sleep(max(0.0, paused_at + paused_s - time.monotonic()))
    finally:
        s.cluster.resume_node(leader)
    s.faults.append(
        f"SIGSTOP {leader.nodename} (leader) {paused_s:.0f} s (net_ticktime "
        f"{CLUSTER_NET_TICKTIME_S} s); new leader {new_leader.nodename}"
    )
    s.cluster.await_cluster(240)
    s.finish("pause", request.node.callspec.id, paused_s=paused_s)
    assert s.producer_reconnects >= 1, "the producer, on the paused node, went to another"


DISK_ALARM = _cases(
    ClusterRun(Workload(3_000, real_data=False), rate=300),
    ClusterRun(Workload(30_000, real_data=True), rate=1_500),
)


# NOTE: a consumer that publishes (prediction events) on its consuming connection is blocked by
# the alarm as a whole, acks included: it stops draining. The outbox relay's own publishing
# connection (creditstream.outbox, issue 9) is what lets consumers drain under an alarm.
_SHARED_CONNECTION = importlib.util.find_spec("creditstream.outbox") is None


@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", DISK_ALARM)
def test_disk_alarm_on_one_node_blocks_publishers_while_consumers_drain(
    run: ClusterRun, stream: Callable[[ClusterRun], Stream], request: pytest.FixtureRequest
) -> None:
    s = stream(run)
    s.start_producer()  # NOTE: no consumers yet: a backlog for them to drain under the alarm
    s.at_fraction(0.3)
    node = _producer_node(s)
    s.cluster.set_disk_free_limit(node, "100000GB")
    try:
        wait_until(
            lambda: _disk_alarm(s.cluster, node), timeout=30, interval=0.5, message="disk alarm"
        )
        wait_until(lambda: "connection.blocked" in s.producer_log(), timeout=30, message="blocked")
        time.sleep(6)  # NOTE: queue statistics are up to 5 s old (collect_statistics_interval)
        published_at_alarm = _published(s)
        rows_at_alarm = count_rows(s.settings)
        _start_consumers(s)
        hold_s = 10.0
        time.sleep(hold_s)
        published_under_alarm = _published(s) - published_at_alarm
        drained_under_alarm = count_rows(s.settings) - rows_at_alarm
        left_under_alarm = _queue_messages(s)
        assert s.producer is not None and s.producer.poll() is None, "blocked, not finished"
    finally:
        s.cluster.set_disk_free_limit(node, "50MB")
    s.faults.append(
        f"disk alarm on {node.nodename} (the producer's node) {hold_s:.0f} s: "
        f"{published_under_alarm} published, {drained_under_alarm} rows stored meanwhile, "
        f"{left_under_alarm} messages left in the queue"
    )
    s.finish(
        "disk-alarm",
        request.node.callspec.id,
        published_under_alarm=published_under_alarm,
        drained_under_alarm=drained_under_alarm,
        left_under_alarm=left_under_alarm,
    )
    assert published_under_alarm == 0, "publishers are blocked cluster-wide"
    assert drained_under_alarm > 0, "consumers keep draining"
    if _SHARED_CONNECTION:
        # NOTE: the known defect, checked to be still there (the branch goes once it is fixed)
        assert left_under_alarm > 0, "drained with events on the consuming connection?"
        pytest.xfail(f"consumers blocked by the alarm after one batch: {left_under_alarm} left")
    assert left_under_alarm == 0, (
        f"consumers drained the whole backlog under the alarm: {left_under_alarm} left"
    )


def _producer_node(s: Stream) -> ClusterNode:
    name = f"creditstream-producer:{s.settings.requests_queue}"

    def find() -> str | None:
        for connection in s.cluster.management_get("/api/connections"):
            if connection.get("client_properties", {}).get("connection_name") == name:
                return str(connection["node"])
        return None

    wait_until(lambda: find() is not None, timeout=30, interval=1, message="producer connection")
    return s.cluster.node(str(find()))


def _disk_alarm(cluster: BrokerCluster, node: ClusterNode) -> bool:
    info = cluster.management_get(f"/api/nodes/{node.nodename}")
    return bool(info.get("disk_free_alarm"))


def _published(s: Stream) -> int:
    """Messages published into the requests queue so far (the queue's statistics)."""
    queue = s.cluster.management_get(f"/api/queues/%2F/{s.settings.requests_queue}")
    return int((queue.get("message_stats") or {}).get("publish", 0))


def _queue_messages(s: Stream) -> int:
    """Ready + unacked messages of the requests queue (statistics up to 5 s old)."""
    queue = s.cluster.management_get(f"/api/queues/%2F/{s.settings.requests_queue}")
    return int(queue.get("messages", 0))
