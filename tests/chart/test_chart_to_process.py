"""Chart-to-process contract: run the rendered pods' command + args + env as local processes.

The consumer Deployment, the producer Job and the `helm test` Pod are rendered with the chart's
in-release PostgreSQL; their Secrets' URLs are kept but pointed at this machine's services:
service hostnames -> 127.0.0.1, credentials -> guest/guest (broker, in a vhost of its own) and
postgres (trust auth, in a database of its own; both made by creditstream.harness, so no broker
or database CLI is needed). Image paths (the baked-in model) map to the repository files the
Dockerfiles COPY. Records must flow end to end into the predictions table.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import requests
from chart_checks import POD_IP, by_kind, component, containers, resolve_env, secret_data

from conftest import CHART, REPO_ROOT, helm_template, parse_docs
from creditstream.harness import broker_vhost, postgres_database
from creditstream.harness.processes import free_port
from creditstream.harness.results import ResultsReader
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from creditstream.topology import declare_topology
from tests.helpers import AMQP_URL, PG_URL, read_results_stream, wait_until
from tests.integration.test_results_stream import event_message, events_for

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS = 300
RECORDS_PER_MESSAGE = 10
Docs = list[dict[str, Any]]


def _services_up() -> str | None:
    for port, name in ((5672, "RabbitMQ"), (15672, "RabbitMQ management"), (5432, "PostgreSQL")):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{name} not reachable on 127.0.0.1:{port}"
    return None


@pytest.fixture(scope="module")
def isolation() -> Iterator[dict[str, str]]:
    """Its own RabbitMQ vhost and PostgreSQL database, removed afterwards."""
    reason = _services_up()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:10]
    vhost = f"cs-chart-{suffix}"
    with (
        broker_vhost(AMQP_URL, vhost),
        postgres_database(PG_URL, f"cs_chart_{suffix}") as database_url,
    ):
        yield {"vhost": vhost, "database_url": database_url}


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def docs(helm_binaries: dict[str, Path], http_port: int) -> Docs:
    """The install as a user would render it, with a small producer run and a free HTTP port."""
    out = helm_template(
        helm_binaries["3"],
        (CHART / "ci" / "postgresql-values.yaml",),
        sets=(
            f"producer.limit={RECORDS}",
            f"producer.recordsPerMessage={RECORDS_PER_MESSAGE}",
            "producer.rate=0",
            f"consumer.httpPort={http_port}",
            f"relay.httpPort={free_port()}",
            "logFormat=json",
        ),
    )
    return parse_docs(out.stdout)


def image_paths(dockerfile: Path) -> dict[str, Path]:
    """{path inside the image: repository file} from the runtime stage's plain COPY lines."""
    mapping: dict[str, Path] = {}
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, dest = shlex.split(line)[1:]
            for source in sources:
                if dest.endswith("/"):
                    mapping[dest + Path(source).name] = REPO_ROOT / source
    return mapping


def _local_url(url: str, services: set[str], isolation: dict[str, str]) -> str:
    """The rendered URL pointed at this machine: host, credentials and vhost/db swapped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    assert host.split(".")[0] in services, f"{url!r} names no rendered Service"
    if parts.scheme.startswith("postgresql"):
        return isolation["database_url"]
    netloc = f"guest:guest@127.0.0.1:{parts.port}"
    if parts.scheme.startswith("amqp"):
        return urlunsplit((parts.scheme, netloc, "/" + quote(isolation["vhost"], safe=""), "", ""))
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))  # management API base URL


def process_env(
    docs: Docs, workload: dict[str, Any], dockerfile: Path, isolation: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the workload's main container, mapped to this machine."""
    (container,) = list(containers(workload, init=False))
    secrets = secret_data(docs)
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    paths = image_paths(dockerfile)
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
    }
    for name, value in resolve_env(docs, container).items():
        if isinstance(value, tuple):
            secret, key = value
            assert key in secrets[secret], f"{name}: Secret {secret} has no key {key}"
            value = _local_url(secrets[secret][key], services, isolation)
        else:
            # NOTE: this machine's "pod IP", where the probes below go.
            value = value.replace(POD_IP, "127.0.0.1")
        env[name] = paths.get(value, value) if isinstance(value, str) else value
        if isinstance(env[name], Path):
            env[name] = str(env[name])
    # NOTE: a vhost of our own: the queue names stay the chart's, so they are checked too.
    argv = [*container["command"], *container.get("args", [])]
    return argv, env


def _wait_http(url: str, timeout: float) -> requests.Response:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{url} not 200 within {timeout} s ({last})")


def _count_rows(isolation: dict[str, str]) -> int:
    with ResultsReader(Settings(database_url=isolation["database_url"])) as results:
        return results.count()


def test_rendered_pods_run_end_to_end(
    docs: Docs, isolation: dict[str, str], http_port: int, tmp_path: Path
) -> None:
    (deployment,) = component(docs, "Deployment", "consumer")
    (job,) = by_kind(docs, "Job")
    (test_pod,) = by_kind(docs, "Pod")
    consumer_argv, consumer_env = process_env(
        docs, deployment, REPO_ROOT / "services" / "consumer" / "Dockerfile", isolation
    )
    producer_argv, producer_env = process_env(
        docs, job, REPO_ROOT / "services" / "producer" / "Dockerfile", isolation
    )
    smoke_argv, smoke_env = process_env(
        docs, test_pod, REPO_ROOT / "services" / "producer" / "Dockerfile", isolation
    )
    assert Path(consumer_env["CREDITSTREAM_MODEL_PATH"]).is_file(), "model path not in the image"

    log = (tmp_path / "consumer.log").open("w")
    consumer = subprocess.Popen(
        consumer_argv, env=consumer_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    try:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        base = f"http://127.0.0.1:{http_port}"
        _wait_http(base + container["readinessProbe"]["httpGet"]["path"], timeout=60)
        _wait_http(base + container["livenessProbe"]["httpGet"]["path"], timeout=5)

        producer = subprocess.run(
            producer_argv,
            env=producer_env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert producer.returncode == 0, producer.stdout + producer.stderr

        deadline = time.monotonic() + 90
        while _count_rows(isolation) < RECORDS and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _count_rows(isolation) == RECORDS

        # KEDA's view: the management URL from the Secret + the trigger's queueName and vhost.
        (scaled,) = by_kind(docs, "ScaledObject")
        trigger = scaled["spec"]["triggers"][0]["metadata"]
        management = consumer_env["CREDITSTREAM_MANAGEMENT_URL"]
        queue_url = (
            f"{management}/api/queues/{quote(isolation['vhost'], safe='')}/"
            f"{quote(trigger['queueName'], safe='')}"
        )
        deadline = time.monotonic() + 20
        while True:  # NOTE: the management API fills in queue stats a few seconds late
            queue = requests.get(queue_url, timeout=10)
            assert queue.status_code == 200, queue.text
            if "consumers" in queue.json() or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert (queue.json()["vhost"], queue.json()["name"]) == (
            isolation["vhost"],
            trigger["queueName"],
        )
        assert queue.json().get("consumers", 0) >= 1

        metrics = _wait_http(base + "/metrics", timeout=5).text
        assert "creditstream" in metrics

        smoke = subprocess.run(
            smoke_argv, env=smoke_env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    finally:
        consumer.send_signal(signal.SIGTERM)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        try:
            code = consumer.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            consumer.kill()
            code = consumer.wait()
        log.close()
    assert code == 0, (tmp_path / "consumer.log").read_text()[-3000:]


def test_rendered_relay_publishes_a_stopped_consumers_outbox(
    docs: Docs, isolation: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review-outbox #2: KEDA scales the consumers to zero once the queue is empty, so events
    committed to the outbox but not yet published (an alarm-time drain) need a relay that
    outlives them: the chart's relay Deployment, run as a process, publishes them."""
    (scaled,) = by_kind(docs, "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0  # the consumers may all be gone
    relays = component(docs, "Deployment", "relay")
    assert len(relays) == 1, "no relay Deployment: with 0 consumers nothing publishes the outbox"
    (relay,) = relays
    argv, env = process_env(
        docs, relay, REPO_ROOT / "services" / "consumer" / "Dockerfile", isolation
    )
    for name in [n for n in os.environ if n.startswith("CREDITSTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("CREDITSTREAM_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    # NOTE: what a consumer leaves behind when it is stopped before its relay published:
    # rows and their event committed in one transaction, nothing in the results stream.
    store = ResultsStore.from_settings(settings)
    try:
        store.create_schema()
        declare_topology(settings)
        assert store.write(events_for("relay-", 5), event_message) == 5
        assert store.outbox_backlog()[0] == 1
    finally:
        store.dispose()

    def relayed() -> list[str]:  # NOTE: the module's vhost also holds the end-to-end run's
        events = read_results_stream(settings, idle_s=0.5)
        return sorted(e["request_id"] for e in events if e["request_id"].startswith("relay-"))

    assert relayed() == []

    log = (tmp_path / "relay.log").open("w")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        (container,) = relay["spec"]["template"]["spec"]["containers"]
        base = f"http://127.0.0.1:{env['CREDITSTREAM_HTTP_PORT']}"
        _wait_http(base + container["readinessProbe"]["httpGet"]["path"], timeout=60)
        _wait_http(base + container["livenessProbe"]["httpGet"]["path"], timeout=5)
        wait_until(
            lambda: len(relayed()) >= 5,
            timeout=60,
            interval=1,
            message="the relay published the stopped consumer's events",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        grace = relay["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        try:
            code = process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
    assert relayed() == [f"relay-{i}" for i in range(5)]
    store = ResultsStore.from_settings(settings)
    try:
        assert store.outbox_backlog()[0] == 0
    finally:
        store.dispose()
    assert code == 0, (tmp_path / "relay.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def staged_isolation() -> Iterator[dict[str, str]]:
    """The staged run's own vhost and database."""
    reason = _services_up()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:10]
    vhost = f"cs-chart-staged-{suffix}"
    with (
        broker_vhost(AMQP_URL, vhost),
        postgres_database(PG_URL, f"cs_chart_staged_{suffix}") as database_url,
    ):
        yield {"vhost": vhost, "database_url": database_url}


def test_rendered_stage_pods_run_end_to_end(
    helm_binaries: dict[str, Path], staged_isolation: dict[str, str], tmp_path: Path
) -> None:
    """pipeline.mode=staged (issue 11): every stage Deployment + the Job, as local processes."""
    out = helm_template(
        helm_binaries["3"],
        (CHART / "ci" / "staged-values.yaml",),
        sets=(
            f"producer.limit={RECORDS}",
            f"producer.recordsPerMessage={RECORDS_PER_MESSAGE}",
            "producer.rate=0",
            "logFormat=json",
        ),
    )
    docs = parse_docs(out.stdout)
    # NOTE: the stage workloads (the chart's relay Deployment is not a stage; each score stage
    # runs its own relay as the consumer does).
    deployments = [
        d
        for d in by_kind(docs, "Deployment")
        if "creditstream.io/stage" in d["spec"]["selector"]["matchLabels"]
    ]
    assert len(deployments) == 4
    (job,) = by_kind(docs, "Job")
    consumer_image = REPO_ROOT / "services" / "consumer" / "Dockerfile"
    started: list[tuple[subprocess.Popen[bytes], Any, dict[str, Any]]] = []
    try:
        for deployment in deployments:
            argv, env = process_env(docs, deployment, consumer_image, staged_isolation)
            # NOTE: pods have an IP each; local processes share one, so each gets its own port.
            env["CREDITSTREAM_HTTP_PORT"] = str(free_port())
            name = deployment["metadata"]["name"]
            log = (tmp_path / f"{name}.log").open("w")
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
            started.append((process, log, deployment))
            probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
            _wait_http(
                f"http://127.0.0.1:{env['CREDITSTREAM_HTTP_PORT']}{probe['httpGet']['path']}", 60
            )
        producer_argv, producer_env = process_env(
            docs, job, REPO_ROOT / "services" / "producer" / "Dockerfile", staged_isolation
        )
        producer = subprocess.run(
            producer_argv,
            env=producer_env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert producer.returncode == 0, producer.stdout + producer.stderr
        # Champion and shadow each store every record.
        deadline = time.monotonic() + 120
        while _count_rows(staged_isolation) < 2 * RECORDS and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _count_rows(staged_isolation) == 2 * RECORDS
    finally:
        codes = []
        for process, log, deployment in started:
            process.send_signal(signal.SIGTERM)
            grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            try:
                codes.append(process.wait(timeout=grace))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
            log.close()
    assert codes == [0] * len(started), [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
