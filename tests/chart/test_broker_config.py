"""The rendered rabbitmq.conf as a real RabbitMQ node reads it.

A throwaway node (its own name, ports and data folder; the machine's broker is untouched) boots
with the chart's rendered `rabbitmq.conf` and `enabled_plugins`, only its three listener ports
moved to free ones. The node must accept the file, and its memory monitor must hold the
absolute watermark the chart derived from the container's memory limit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from chart_checks import by_kind

from conftest import helm_template, parse_docs
from tests.chart.services import require_services
from tests.helpers import free_port

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.timeout(240)]

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def _as_rabbitmq(
    command: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    return subprocess.run(
        ["su", "rabbitmq", "-s", "/bin/sh", "-c", f"env {exports} {command}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_real_node_reads_the_absolute_memory_watermark(
    helm: Path, request: pytest.FixtureRequest
) -> None:
    require_services("rabbitmqctl")
    if not SERVER.is_file() or os.geteuid() != 0:
        reason = "needs Debian's rabbitmq-server and root (to run the node as `rabbitmq`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    docs = parse_docs(helm_template(helm, sets=("rabbitmq.resources.limits.memory=1Gi",)).stdout)
    config = next(
        c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")
    )
    amqp, management, prometheus, dist = (free_port() for _ in range(4))
    conf = config["data"]["rabbitmq.conf"]
    for key, port in (
        ("listeners.tcp.default", amqp),
        ("management.tcp.port", management),
        ("prometheus.tcp.port", prometheus),
    ):
        conf, count = re.subn(rf"^{re.escape(key)} = \d+$", f"{key} = {port}", conf, flags=re.M)
        assert count == 1, key
    # NOTE: pytest's tmp_path sits under a root-only folder; the node runs as `rabbitmq`.
    base = Path(tempfile.mkdtemp(prefix="cs-img-node-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    (base / "rabbitmq.conf").write_text(conf)
    (base / "enabled_plugins").write_text(config["data"]["enabled_plugins"])
    for path in [base, *base.iterdir()]:
        shutil.chown(path, "rabbitmq", "rabbitmq")
    node = f"cs-img-{uuid.uuid4().hex[:8]}@localhost"
    env = {
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(amqp),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
    }
    started = _as_rabbitmq(f"{SERVER} -detached", env, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        # NOTE: `rabbitmqctl wait PIDFILE` waits for the node to come up and its app to boot.
        waited = subprocess.run(
            ["rabbitmqctl", "-n", node, "wait", "--timeout", "120", str(base / "node.pid")],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert waited.returncode == 0, waited.stdout + waited.stderr
        watermark = subprocess.run(
            [
                "rabbitmqctl",
                "-n",
                node,
                "eval",
                "vm_memory_monitor:get_vm_memory_high_watermark().",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        assert watermark == "{absolute,644245094}", watermark
    finally:
        subprocess.run(["rabbitmqctl", "-n", node, "stop"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 30
        while (base / "node.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
