"""A three-node RabbitMQ cluster on this machine, from the machine's own rabbitmq-server.

Each node has its own node name (`creditstream-a@localhost` ...), AMQP port (5673, 5674, 5675),
management port (15673, ...), distribution port (25673, ...), data, log and config directories
under one base directory, and one Erlang cookie of its own (HOME=base directory), so the
machine's broker (`rabbit@localhost` on 5672, with the rabbitmq user's cookie) can be neither
joined nor stopped by mistake. Nodes 2 and 3 join node 1 (`rabbitmqctl join_cluster`).

Used by `make broker-cluster-up` / `broker-cluster-down` (`python -m
creditstream.harness.broker_cluster up|down|status`) and by the cluster fault tests, which also
use its fault verbs: kill (SIGKILL), pause/resume (SIGSTOP/SIGCONT), stop/start, disk limit.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
DEFAULT_BASE_DIR = Path("/tmp/creditstream-broker-cluster")
NODE_LETTERS = "abc"
HOST = "localhost"


@dataclass(frozen=True)
class ClusterNode:
    """One node: its names, ports and directories."""

    letter: str
    amqp_port: int
    management_port: int
    dist_port: int
    base_dir: Path

    @property
    def nodename(self) -> str:
        """Erlang node name, e.g. creditstream-a@localhost."""
        return f"creditstream-{self.letter}@{HOST}"

    @property
    def directory(self) -> Path:
        """This node's own directory (data, logs, config, pid file)."""
        return self.base_dir / self.letter

    @property
    def pid_file(self) -> Path:
        """Where the node writes its beam pid."""
        return self.directory / "rabbitmq.pid"

    def amqp_url(self, user: str = "guest", password: str = "guest", vhost: str = "") -> str:
        """amqp://user:password@localhost:PORT/vhost."""
        quoted = urllib.parse.quote(vhost, safe="")
        return f"amqp://{user}:{password}@{HOST}:{self.amqp_port}/{quoted}"

    def management_url(self, user: str = "guest", password: str = "guest") -> str:
        """http://user:password@localhost:PORT/ (the node's management API)."""
        return f"http://{user}:{password}@{HOST}:{self.management_port}/"

    def pid(self) -> int | None:
        """The node's beam pid, if its pid file names a live process."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        # NOTE: a stale pid file may name a reused pid: trust it only when that process is
        # this node's Erlang VM (its environment names the node).
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if f"RABBITMQ_NODENAME={self.nodename}".encode() in environ else None


class ClusterError(RuntimeError):
    """The cluster did not start, form or stop as asked."""


class BrokerCluster:
    """Start, fault and stop three local RabbitMQ nodes joined into one cluster."""

    def __init__(
        self,
        base_dir: Path = DEFAULT_BASE_DIR,
        *,
        size: int = 3,
        amqp_port: int = 5673,
        management_port: int = 15673,
        dist_port: int = 25673,
        net_ticktime_s: int | None = None,
        user: str = "rabbitmq",
    ) -> None:
        if not 1 <= size <= len(NODE_LETTERS):
            raise ValueError(f"size must be 1..{len(NODE_LETTERS)}")
        self.base_dir = Path(base_dir)
        self.net_ticktime_s = net_ticktime_s
        self.user = user
        self.nodes = [
            ClusterNode(letter, amqp_port + i, management_port + i, dist_port + i, self.base_dir)
            for i, letter in enumerate(NODE_LETTERS[:size])
        ]

    # --- addresses ------------------------------------------------------------------------
    def amqp_urls(self, vhost: str = "") -> list[str]:
        """One AMQP URL per node."""
        return [node.amqp_url(vhost=vhost) for node in self.nodes]

    def amqp_url_list(self, vhost: str = "") -> str:
        """The comma-separated list CREDITSTREAM_AMQP_URL takes."""
        return ",".join(self.amqp_urls(vhost))

    def node(self, nodename_or_letter: str) -> ClusterNode:
        """The node with that Erlang node name (or letter)."""
        for node in self.nodes:
            if nodename_or_letter in (node.nodename, node.letter):
                return node
        raise KeyError(nodename_or_letter)

    # --- processes ------------------------------------------------------------------------
    def _run_as(self) -> list[str]:
        # NOTE: runuser sets HOME to the user's home (the machine broker's cookie): `env`
        # puts this cluster's HOME, and with it its own cookie, back.
        home = ["env", f"HOME={self.base_dir}"]
        if os.geteuid() == 0 and self.user != "root":
            return ["runuser", "-u", self.user, "--", *home]
        return home

    def _env(self, node: ClusterNode) -> dict[str, str]:
        d = node.directory
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # NOTE: HOME holds this cluster's own Erlang cookie; the machine's broker keeps
            # the rabbitmq user's, so nothing here can talk to (or join) rabbit@localhost.
            "HOME": str(self.base_dir),
            "RABBITMQ_NODENAME": node.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # NOTE: Erlang distribution (code execution for whoever has the cookie) on
            # loopback only, as the machine's broker has it; nodes and CLI alike.
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def rabbitmqctl(
        self, node: ClusterNode, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`rabbitmqctl -n NODE ARGS` with this cluster's cookie."""
        return self._cli("rabbitmqctl", node, *args, timeout=timeout, check=check)

    def _cli(
        self, tool: str, node: ClusterNode, *args: str, timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self._run_as(), str(RABBITMQ_BIN / tool), "-n", node.nodename, *args]
        result = subprocess.run(
            argv,
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{tool} -n {node.nodename} {' '.join(args)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )
        return result

    def _check_base_dir(self) -> None:
        """Refuse a base directory (or cookie) someone else planted: we chown and trust it."""
        base = self.base_dir
        if base.is_symlink():
            raise ClusterError(f"{base} is a symlink: refusing to use it")
        if not base.exists():
            return
        owners = {os.geteuid(), *self._owner_ids()}
        for path in [base, *base.rglob("*")]:
            info = path.lstat()
            if info.st_uid not in owners or (path.is_symlink()):
                raise ClusterError(
                    f"{path} is not ours (owner uid {info.st_uid}, or a symlink): remove {base}"
                )

    def _owner_ids(self) -> set[int]:
        if os.geteuid() == 0 and self.user != "root":
            return {pwd.getpwnam(self.user).pw_uid}
        return set()

    def _write_files(self) -> None:
        self._check_base_dir()
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cookie = self.base_dir / ".erlang.cookie"
        if not cookie.exists():
            # NOTE: created 0400 at once (no window with the umask's mode)
            fd = os.open(cookie, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o400)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(20).upper())
        for node in self.nodes:
            d = node.directory
            for sub in ("mnesia", "log"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "enabled_plugins").write_text("[rabbitmq_management].\n")
            (d / "rabbitmq-env.conf").write_text("# creditstream local cluster: env vars only\n")
            (d / "rabbitmq.conf").write_text(
                "\n".join(
                    [
                        f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}",
                        f"management.tcp.port = {node.management_port}",
                        "management.tcp.ip = 127.0.0.1",
                        # NOTE: after a partition heals, the losing side restarts and
                        # rejoins. pause_minority cannot handle a node that was frozen
                        # (SIGSTOP, a VM stall): it never saw itself in a minority, and the
                        # cluster stayed partitioned (measured: > 4 min after the resume).
                        "cluster_partition_handling = autoheal",
                        "disk_free_limit.absolute = 50MB",
                        "vm_memory_high_watermark.absolute = 1GB",
                        "",
                    ]
                )
            )
            kernel = (
                f"[{{kernel, [{{net_ticktime, {self.net_ticktime_s}}}]}}].\n"
                if self.net_ticktime_s
                else "[].\n"
            )
            (d / "advanced.config").write_text(kernel)
        if os.geteuid() == 0 and self.user != "root":
            entry = pwd.getpwnam(self.user)
            for path in [self.base_dir, *self.base_dir.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def start_node(self, node: ClusterNode) -> None:
        """Start one node detached (its data directory is kept: a restart rejoins)."""
        if node.pid() is not None:
            raise ClusterError(f"{node.nodename} is running already (pid {node.pid()})")
        argv = [*self._run_as(), str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"]
        subprocess.run(
            argv,
            env=self._env(node),
            cwd=self.base_dir,
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def await_node(self, node: ClusterNode, timeout: float = 180) -> None:
        """Wait until the node's app runs (`rabbitmqctl await_startup`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            result = self.rabbitmqctl(
                node,
                "await_startup",
                "--timeout",
                str(max(1, int(left))),
                timeout=left + 15,
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{node.nodename} did not start in {timeout:.0f}s: "
                    f"{(result.stderr or result.stdout).strip()[-600:]}; logs: {node.directory}/log"
                )
            time.sleep(1)

    def up(self, timeout: float = 240) -> None:
        """Start every node, join 2..n to node 1, wait until all run in one cluster."""
        if rabbitmq_server_missing():
            raise ClusterError("rabbitmq-server is not installed (/usr/lib/rabbitmq/bin)")
        running = [node.nodename for node in self.nodes if node.pid() is not None]
        if running and self.running_nodes() == sorted(n.nodename for n in self.nodes):
            return  # NOTE: idempotent: `make broker-cluster-up` twice is fine
        if running:
            raise ClusterError(f"half a cluster is running ({running}): run down first")
        fresh = not any((node.directory / "mnesia").exists() for node in self.nodes)
        self._write_files()
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            self.await_node(node, timeout)
        if fresh or len(self.running_nodes()) < len(self.nodes):
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                if seed.nodename in self.running_nodes(node):
                    continue
                self.rabbitmqctl(node, "stop_app")
                self.rabbitmqctl(node, "join_cluster", seed.nodename)
                self.rabbitmqctl(node, "start_app", timeout=120)
        self.await_cluster(timeout)

    def running_nodes(self, via: ClusterNode | None = None) -> list[str]:
        """Running nodes of the cluster as one node sees them (sorted; [] when unreachable)."""
        for node in [via] if via else self.nodes:
            if node is None or node.pid() is None:
                continue
            result = self.rabbitmqctl(
                node, "cluster_status", "--formatter", "json", timeout=60, check=False
            )
            if result.returncode == 0:
                with contextlib.suppress(ValueError):
                    return sorted(json.loads(result.stdout).get("running_nodes", []))
        return []

    def await_cluster(
        self, timeout: float = 120, nodes: Sequence[ClusterNode] | None = None
    ) -> None:
        """Wait until `nodes` (default: all) run and each sees all of them running."""
        want = sorted(n.nodename for n in (nodes or self.nodes))
        deadline = time.monotonic() + timeout
        while True:
            views = {n.nodename: self.running_nodes(n) for n in (nodes or self.nodes)}
            if all(set(want) <= set(view) for view in views.values()):
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"cluster did not form in {timeout:.0f}s: {views}")
            time.sleep(1)

    def stop_node(self, node: ClusterNode, timeout: float = 120) -> None:
        """Stop one node cleanly (`rabbitmqctl stop`); SIGKILL if it does not go."""
        pid = node.pid()
        if pid is None:
            return
        self.rabbitmqctl(node, "stop", timeout=timeout, check=False)
        if not _wait_gone(pid, 30):
            self.kill_node(node)

    def kill_node(self, node: ClusterNode) -> None:
        """SIGKILL the node's Erlang VM (a crash: no goodbye to its peers)."""
        pid = node.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # NOTE: a paused VM dies just as well, but say so
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 30):
            raise ClusterError(f"{node.nodename} (pid {pid}) survived SIGKILL")

    def pause_node(self, node: ClusterNode) -> None:
        """SIGSTOP the node's VM: to its peers it looks cut off."""
        pid = node.pid()
        if pid is None:
            raise ClusterError(f"{node.nodename} is not running")
        os.kill(pid, signal.SIGSTOP)

    def resume_node(self, node: ClusterNode) -> None:
        """SIGCONT a paused node."""
        pid = node.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def set_disk_free_limit(self, node: ClusterNode, limit: str) -> None:
        """`rabbitmqctl set_disk_free_limit LIMIT` on one node (e.g. '100000GB' for an alarm)."""
        self.rabbitmqctl(node, "set_disk_free_limit", limit)

    def down(self) -> None:
        """Stop every node (killing what will not stop) and delete the base directory."""
        for node in self.nodes:
            self.resume_node(node)
        for node in self.nodes:
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                self.stop_node(node)
        for node in self.nodes:
            self.kill_node(node)
        leftovers = self.leftovers()
        if leftovers:
            raise ClusterError(f"still running after down: {leftovers}")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Anything of this cluster still alive: node pids, and names registered in epmd."""
        alive = [f"{n.nodename} pid {n.pid()}" for n in self.nodes if n.pid() is not None]
        names = {n.nodename.split("@")[0] for n in self.nodes}
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            epmd = subprocess.run(
                ["epmd", "-names"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            for line in epmd.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "name" and parts[1] in names:
                    alive.append(f"epmd: {parts[1]}")
        return alive

    # --- management API -------------------------------------------------------------------
    def management_get(self, path: str, node: ClusterNode | None = None) -> Any:
        """GET a management API path from the first node that answers."""
        last: Exception | None = None
        for candidate in [node] if node else self.nodes:
            if candidate is None or candidate.pid() is None:
                continue
            request = urllib.request.Request(
                f"http://{HOST}:{candidate.management_port}{path}",
                headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
        raise ClusterError(f"no node answered GET {path}: {last}")

    def queue_leader(self, vhost: str, queue: str) -> ClusterNode:
        """The node leading a quorum queue."""
        quoted = (
            f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
        )
        info = self.management_get(quoted)
        leader = info.get("leader") or info.get("node")
        return self.node(str(leader))


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # NOTE: a zombie child of ours counts as gone once reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False


def rabbitmq_server_missing() -> bool:
    """True when the machine has no rabbitmq-server to start nodes from."""
    return not (RABBITMQ_BIN / "rabbitmq-server").exists()


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[BrokerCluster]:
    """A started cluster, stopped (nothing left running) afterwards."""
    cluster = BrokerCluster(**kwargs)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m creditstream.harness.broker_cluster up|down|status|ctl ARGS`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=["up", "down", "status", "ctl"])
    parser.add_argument("ctl_args", nargs="*", help="ctl: rabbitmqctl arguments (node 1)")
    parser.add_argument("--base-dir", type=Path, default=DEFAULT_BASE_DIR)
    parser.add_argument("--net-ticktime", type=int, default=None)
    args = parser.parse_args(argv)
    cluster = BrokerCluster(args.base_dir, net_ticktime_s=args.net_ticktime)
    try:
        if args.verb == "up":
            cluster.up()
            running = cluster.running_nodes()
            print(f"RabbitMQ cluster running: {', '.join(running)}")
            for node in cluster.nodes:
                print(
                    f"  {node.nodename}: amqp {node.amqp_port}, management "
                    f"{node.management_port}, dist {node.dist_port}, {node.directory}"
                )
            print(f"export CREDITSTREAM_AMQP_URL='{cluster.amqp_url_list()}'")
            management = ",".join(node.management_url() for node in cluster.nodes)
            print(f"export CREDITSTREAM_MANAGEMENT_URL='{management}'")
            print("stop it with: make broker-cluster-down")
        elif args.verb == "down":
            cluster.down()
            print("RabbitMQ cluster stopped; nothing left running")
        elif args.verb == "ctl":
            result = cluster.rabbitmqctl(cluster.nodes[0], *args.ctl_args, check=False)
            print(result.stdout, end="")
            print(result.stderr, end="", file=sys.stderr)
            return result.returncode
        else:
            running = cluster.running_nodes()
            print(f"running nodes: {', '.join(running) or 'none'}")
            return 0 if len(running) == len(cluster.nodes) else 1
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
