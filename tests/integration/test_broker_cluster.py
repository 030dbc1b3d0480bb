"""The local three-node cluster: `make broker-cluster-up/down`, and clients given every node.

The cluster runs from the machine's own rabbitmq-server beside the shared broker on 5672,
which must come out of it untouched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import psutil
import pytest

from creditstream.autoscale.queue_depth import depth_reader_for
from creditstream.broker import CONNECT_TIMEOUT_S, ConnectInterrupted, connect
from creditstream.harness import broker_vhost
from creditstream.harness.broker_cluster import BrokerCluster, rabbitmq_server_missing
from creditstream.settings import REPO_ROOT, Settings
from creditstream.topology import declare_topology
from tests.conftest import refuse_a_foreign_cluster
from tests.helpers import AMQP_URL, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _make(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )


def _machine_broker_nodes() -> list[str]:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "cluster_status", "--formatter", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(json.loads(result.stdout)["running_nodes"])


def test_make_targets_start_a_three_node_cluster_and_stop_it_without_leftovers() -> None:
    if rabbitmq_server_missing():
        pytest.skip("rabbitmq-server is not installed")
    cluster = BrokerCluster()
    refuse_a_foreign_cluster(cluster)
    machine_before = _machine_broker_nodes()
    try:
        up = _make("broker-cluster-up")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        urls = ",".join(f"amqp://guest:guest@localhost:{port}/" for port in (5673, 5674, 5675))
        assert f"export CREDITSTREAM_AMQP_URL='{urls}'" in up.stdout
        status = cluster.rabbitmqctl(cluster.nodes[1], "cluster_status", "--formatter", "json")
        running = sorted(json.loads(status.stdout)["running_nodes"])
        assert running == [f"creditstream-{x}@localhost" for x in "abc"]
        # Management on each node's own port, one cluster seen from each
        for node in cluster.nodes:
            nodes = cluster.management_get("/api/nodes", node)
            assert sorted(n["name"] for n in nodes if n["running"]) == running
        assert _machine_broker_nodes() == machine_before, "the machine's broker is untouched"
        # a cookie of its own: the machine broker's CLI (its cookie) is refused by every node
        for node in cluster.nodes:
            pid = node.pid()
            assert pid is not None
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"HOME={cluster.base_dir}".encode() in environ
            foreign = subprocess.run(
                ["rabbitmqctl", "-q", "-n", node.nodename, "status"],
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert foreign.returncode != 0, "the machine's cookie must not open a cluster node"
            # Erlang distribution on loopback only
            listening = [
                c.laddr
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            ]
            assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    finally:
        down = _make("broker-cluster-down")
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert cluster.leftovers() == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "creditstream-a@" not in ps and "creditstream-broker-cluster" not in ps
    assert not cluster.base_dir.exists()
    assert _machine_broker_nodes() == machine_before


@pytest.fixture
def cluster_vhost(broker_cluster: BrokerCluster) -> str:
    """A vhost of the test's own on the cluster; the AMQP URL list into it."""
    with broker_vhost(
        broker_cluster.amqp_url_list(),
        f"cs-cluster-{uuid.uuid4().hex[:8]}",
        management_url=broker_cluster.nodes[0].management_url(),
    ) as urls:
        yield urls  # type: ignore[misc]


def test_clients_skip_a_dead_node_in_the_list(
    broker_cluster: BrokerCluster,
    cluster_vhost: str,
    make_settings: Callable[..., Settings],
) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    vhost = cluster_vhost.split(",")[0].rsplit("/", 1)[1]
    settings = make_settings(
        amqp_url=f"{dead},{cluster_vhost}",
        management_url=",".join(
            [f"http://guest:guest@127.0.0.1:{free_port()}/"]
            + [node.management_url() for node in broker_cluster.nodes]
        ),
    )
    peers = set()
    for _ in range(12):  # attempts start at a random node: all four show up, the dead never
        connection = connect(settings, name="cluster-test", wait_s=0)
        try:
            sock = connection._impl._transport._sock  # type: ignore[attr-defined]
            peers.add(sock.getpeername()[1])
        finally:
            connection.close()
    assert peers <= {5673, 5674, 5675} and len(peers) >= 2, peers
    declare_topology(settings)
    # published through one node, counted through another node's management API
    connection = pika.BlockingConnection(pika.URLParameters(broker_cluster.amqp_urls(vhost)[2]))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(5):
            channel.basic_publish(settings.requests_exchange, "score", str(i).encode())
    finally:
        connection.close()
    reader = depth_reader_for(settings, settings.requests_queue)
    wait_until(lambda: _depth(reader) == 5, timeout=30, interval=1, message="5 messages via mgmt")
    members = broker_cluster.management_get(f"/api/queues/{vhost}/{settings.requests_queue}")[
        "members"
    ]
    assert sorted(members) == [n.nodename for n in broker_cluster.nodes], "3 quorum members"


def _depth(reader: object) -> int | None:
    try:
        return reader.read().messages  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - statistics not collected yet
        return None


def test_stop_interrupts_a_connect_to_a_list_of_dead_nodes(
    make_settings: Callable[..., Settings],
) -> None:
    dead = ",".join(f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(3))
    settings = make_settings(amqp_url=dead, reconnect_max_s=5)
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ConnectInterrupted):
        connect(settings, name="cluster-test", wait_s=60, stop=stop)
    assert time.monotonic() - started < 5


def test_machine_broker_alone_still_works_as_a_list_of_one(
    make_settings: Callable[..., Settings],
) -> None:
    connect(make_settings(amqp_url=AMQP_URL), name="cluster-test", wait_s=0).close()


@pytest.fixture
def hung_node() -> Iterator[str]:
    """An AMQP URL whose 'node' accepts TCP and never answers (a paused node looks like this)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # NOTE: never accepted: the kernel completes the handshake anyway
        yield f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/"


def test_a_hung_node_costs_one_connect_timeout_then_the_next_node_is_used(
    make_settings: Callable[..., Settings], hung_node: str
) -> None:
    settings = make_settings(amqp_url=f"{hung_node},{AMQP_URL}")
    for _ in range(3):  # whichever node the random start picks
        started = time.monotonic()
        connect(settings, name="cluster-test", wait_s=0).close()
        assert time.monotonic() - started < CONNECT_TIMEOUT_S + 3


def test_a_hung_node_is_retried_and_stop_still_interrupts(
    make_settings: Callable[..., Settings], hung_node: str
) -> None:
    settings = make_settings(amqp_url=f"{hung_node},{hung_node}", reconnect_max_s=1)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ConnectInterrupted):
        connect(settings, name="cluster-test", wait_s=60, stop=stop)
    assert time.monotonic() - started < 1.0 + CONNECT_TIMEOUT_S + 2
