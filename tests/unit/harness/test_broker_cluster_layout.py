"""The local cluster's nodes: names, ports and files of their own (no node is started here)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from creditstream.harness.broker_cluster import BrokerCluster, ClusterError

pytestmark = pytest.mark.unit


def test_three_nodes_with_ports_names_and_directories_of_their_own(tmp_path: Path) -> None:
    cluster = BrokerCluster(tmp_path, user="root")
    assert [n.nodename for n in cluster.nodes] == [
        "creditstream-a@localhost",
        "creditstream-b@localhost",
        "creditstream-c@localhost",
    ]
    assert [n.amqp_port for n in cluster.nodes] == [5673, 5674, 5675]
    assert [n.management_port for n in cluster.nodes] == [15673, 15674, 15675]
    assert [n.dist_port for n in cluster.nodes] == [25673, 25674, 25675]
    assert cluster.amqp_url_list("v/1") == (
        "amqp://guest:guest@localhost:5673/v%2F1,amqp://guest:guest@localhost:5674/v%2F1,"
        "amqp://guest:guest@localhost:5675/v%2F1"
    )
    assert len({n.directory for n in cluster.nodes}) == 3


def test_config_files_and_one_private_cookie(tmp_path: Path) -> None:
    cluster = BrokerCluster(tmp_path, net_ticktime_s=10, user="root")
    cluster._write_files()
    cookie = tmp_path / ".erlang.cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400
    assert len(cookie.read_text()) >= 20
    for node in cluster.nodes:
        conf = (node.directory / "rabbitmq.conf").read_text()
        assert f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}" in conf
        assert f"management.tcp.port = {node.management_port}" in conf
        assert "cluster_partition_handling = autoheal" in conf
        assert (node.directory / "enabled_plugins").read_text() == "[rabbitmq_management].\n"
        assert "net_ticktime, 10" in (node.directory / "advanced.config").read_text()
        env = cluster._env(node)
        # NOTE: never the machine broker's node name, port, data or cookie
        assert env["RABBITMQ_NODENAME"] == node.nodename != "rabbit@localhost"
        assert env["RABBITMQ_NODE_PORT"] != "5672"
        assert env["HOME"] == str(tmp_path)
        assert env["RABBITMQ_MNESIA_BASE"].startswith(str(node.directory))
        assert env["RABBITMQ_CONF_ENV_FILE"].startswith(str(node.directory))
    cluster._write_files()
    assert len(cookie.read_text()) >= 20, "a second up keeps the cookie"


def test_nothing_running_means_no_leftovers(tmp_path: Path) -> None:
    cluster = BrokerCluster(tmp_path, user="root", amqp_port=45673, dist_port=45683)
    assert all(node.pid() is None for node in cluster.nodes)
    assert cluster.running_nodes() == []


def test_a_planted_symlink_or_foreign_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("x")
    base = tmp_path / "cluster"
    base.mkdir()
    (base / "evil").symlink_to(victim)
    with pytest.raises(ClusterError, match="not ours"):
        BrokerCluster(base, user="root")._write_files()
    link = tmp_path / "link"
    link.symlink_to(base)
    with pytest.raises(ClusterError, match="symlink"):
        BrokerCluster(link, user="root")._write_files()
    if os.geteuid() == 0:  # NOTE: only root can plant a file owned by someone else here
        planted = tmp_path / "planted"
        planted.mkdir()
        (planted / ".erlang.cookie").write_text("KNOWN")
        os.chown(planted / ".erlang.cookie", 65534, 65534)
        with pytest.raises(ClusterError, match="not ours"):
            BrokerCluster(planted, user="root")._write_files()


def test_a_stale_pid_file_naming_another_process_is_not_the_node(tmp_path: Path) -> None:
    cluster = BrokerCluster(tmp_path, user="root")
    node = cluster.nodes[0]
    node.directory.mkdir(parents=True)
    with subprocess.Popen(["sleep", "30"]) as stranger:
        try:
            node.pid_file.write_text(str(stranger.pid))
            assert node.pid() is None
            cluster.kill_node(node)  # must not touch the stranger
            assert stranger.poll() is None
        finally:
            stranger.kill()
