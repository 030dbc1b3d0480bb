"""The BUILT images run as the chart runs them, against the real broker and PostgreSQL.

The chart is rendered with a broker user, vhost, PostgreSQL role and database created for the
test (the password has a space, `+`, `/`, `@`, `:` and `%` in it), the producer reading the real
UCI data set from a PVC. The consumer Deployment, producer Job and `helm test` Pod then run as
containers of the images `make images` builds, with the rendered command, args, env (Secrets
as rendered), user, read-only root, dropped capabilities, limits and volumes (pod_runner.py);
the Services' DNS names resolve to 127.0.0.1. Nothing in the rendered URLs is rewritten.

- short (in `make test`): 3,000 records; /readyz answers; every record is stored once; the
  helm-test command succeeds; SIGTERM on the idle consumer exits 0 within the grace period.
- slow (`make test-images`): 30,000 records; SIGTERM while records flow, a second consumer
  takes over, and every ID 1..30,000 is stored exactly once.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from chart_checks import by_kind, component
from pod_runner import Containers, run_spec

from conftest import helm_template, parse_docs
from creditstream.settings import Settings
from tests.chart.services import require_services

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.images]

Docs = list[dict[str, Any]]
PVC = "uci-data"


@dataclass(frozen=True)
class Isolation:
    """A broker user + vhost and a PostgreSQL role + database of the test's own."""

    suffix: str
    password: str

    @property
    def user(self) -> str:
        return f"cs-img-{self.suffix}"

    @property
    def vhost(self) -> str:
        return f"cs-img-{self.suffix}"

    @property
    def database(self) -> str:
        return f"cs_img_{self.suffix}"


def _psql(sql: str, database: str = "postgres") -> str:
    out = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=60)


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    require_services("rabbitmqctl", "psql")
    suffix = uuid.uuid4().hex[:10]
    iso = Isolation(suffix, f"p w+/@:%{suffix}")
    _rabbitmqctl("add_vhost", iso.vhost)
    try:
        _rabbitmqctl("add_user", iso.user, iso.password)
        _rabbitmqctl("set_user_tags", iso.user, "monitoring")
        _rabbitmqctl("set_permissions", "-p", iso.vhost, iso.user, ".*", ".*", ".*")
        escaped = iso.password.replace("'", "''")
        _psql(f"CREATE ROLE {iso.database} LOGIN PASSWORD '{escaped}'")
        _psql(f"CREATE DATABASE {iso.database} OWNER {iso.database}")
        yield iso
    finally:
        subprocess.run(
            ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", iso.database],
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                f"DROP ROLE IF EXISTS {iso.database}",
            ],
            capture_output=True,
            timeout=60,
        )
        _rabbitmqctl("delete_user", iso.user, check=False)
        _rabbitmqctl("delete_vhost", iso.vhost, check=False)


@pytest.fixture
def data_csv() -> Path:
    """The real UCI data set; its folder plays the producer's PVC."""
    path = Settings().data_path
    if not path.is_file():
        require_services()  # NOTE: same policy: fail under CI, skip elsewhere
        pytest.fail(f"UCI data set not found at {path} (set CREDITSTREAM_DATA_PATH)")
    return path


def render(
    helm: Path, iso: Isolation, data_csv: Path, records: int, rate: int, port: int, tmp_path: Path
) -> Docs:
    """The install as a user would render it, for this test's broker user and database."""
    values = {
        "rabbitmq": {"vhost": iso.vhost, "auth": {"username": iso.user, "password": iso.password}},
        "postgresql": {
            "enabled": True,
            "auth": {"username": iso.database, "database": iso.database, "password": iso.password},
        },
        "consumer": {"httpPort": port},
        "producer": {
            "source": "pvc",
            "pvc": {"claimName": PVC, "path": data_csv.name},
            "limit": records,
            "rate": rate,
            "recordsPerMessage": 10,
        },
        "logFormat": "json",
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return parse_docs(helm_template(helm, (values_file,)).stdout)


def stored(database: str) -> tuple[int, int, int, int]:
    """(rows, distinct record ids, min id, max id) in the predictions table (zeros before it)."""
    try:
        out = _psql(
            "SELECT count(*), count(DISTINCT record_id), coalesce(min(record_id::int), 0), "
            "coalesce(max(record_id::int), 0) FROM predictions",
            database,
        )
    except subprocess.CalledProcessError:
        return (0, 0, 0, 0)  # the consumer creates the table on its first batch
    rows, distinct, low, high = (int(x) for x in out.split("|"))
    return rows, distinct, low, high


def wait_ready(url: str, timeout: float, containers: Containers, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not 200 within {timeout} s:\n{containers.logs(name)}")


def wait_rows(database: str, at_least: int, timeout: float) -> tuple[int, int, int, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = stored(database)
        if counts[0] >= at_least or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def stop_within_grace(containers: Containers, name: str, grace: int) -> float:
    """SIGTERM as the kubelet does; the consumer must exit 0 before the grace period ends."""
    started = time.monotonic()
    containers.stop(name, grace)
    elapsed = time.monotonic() - started
    state = containers.state(name)
    assert state["ExitCode"] == 0, containers.logs(name)
    assert elapsed < grace, f"took {elapsed:.1f} s of a {grace} s grace period (SIGKILLed?)"
    return elapsed


def run_chart_in_containers(
    built_images: tuple[str, dict[str, str]],
    helm: Path,
    iso: Isolation,
    data_csv: Path,
    tmp_path: Path,
    *,
    records: int,
    rate: int,
    sigterm_at: int | None,
) -> dict[str, float]:
    """Consumer, producer, helm-test pod; optional SIGTERM mid-stream. Returns timings."""
    from tests.helpers import free_port

    engine, refs = built_images
    port = free_port()
    docs = render(helm, iso, data_csv, records, rate, port, tmp_path)
    (deployment,) = component(docs, "Deployment", "consumer")
    (job,) = by_kind(docs, "Job")
    (test_pod,) = by_kind(docs, "Pod")
    rendered = {
        c["image"]
        for w in (deployment, job, test_pod)
        for c in w["spec"].get("template", {"spec": w["spec"]})["spec"]["containers"]
    }
    assert rendered == set(refs.values()), "the chart runs other images than `make images` builds"

    containers = Containers(engine, tmp_path)
    prefix = f"cs-img-{iso.suffix}"
    timings: dict[str, float] = {}
    try:
        consumer = run_spec(docs, deployment, name=f"{prefix}-consumer-0")
        readiness = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        started = time.monotonic()
        containers.start(consumer)
        wait_ready(
            f"http://127.0.0.1:{port}{readiness['httpGet']['path']}",
            120,
            containers,
            f"{prefix}-consumer-0",
        )
        timings["consumer_ready_s"] = time.monotonic() - started

        producer = run_spec(docs, job, name=f"{prefix}-producer", claims={PVC: data_csv.parent})
        started = time.monotonic()
        if sigterm_at is None:
            result = containers.run(producer, timeout=job["spec"]["activeDeadlineSeconds"])
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        else:
            containers.start(producer)
            counts = wait_rows(iso.database, sigterm_at, timeout=300)
            assert counts[0] < records, f"all {records} stored before the SIGTERM: raise the load"
            timings["sigterm_at_rows"] = counts[0]
            timings["sigterm_drain_s"] = stop_within_grace(
                containers, f"{prefix}-consumer-0", consumer.grace_seconds
            )
            containers.start(run_spec(docs, deployment, name=f"{prefix}-consumer-1"))
            deadline = job["spec"]["activeDeadlineSeconds"]
            subprocess.run(
                [engine, "wait", f"{prefix}-producer"],
                timeout=deadline,
                capture_output=True,
                check=True,
            )
            state = containers.state(f"{prefix}-producer")
            assert state["ExitCode"] == 0, containers.logs(f"{prefix}-producer")
        timings["producer_s"] = time.monotonic() - started

        counts = wait_rows(iso.database, records, timeout=max(120, records / 100))
        timings["stored_s"] = time.monotonic() - started
        assert counts == (records, records, 1, records), (
            f"(rows, distinct ids, min id, max id) = {counts}, expected IDs 1..{records} once each"
        )

        smoke = run_spec(docs, test_pod, name=f"{prefix}-smoke-test")
        result = containers.run(smoke, timeout=180)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        last = f"{prefix}-consumer-{0 if sigterm_at is None else 1}"
        timings["idle_drain_s"] = stop_within_grace(containers, last, consumer.grace_seconds)
        return timings
    finally:
        containers.cleanup()


@pytest.mark.timeout(900)
def test_images_run_as_the_chart_runs_them(
    built_images: tuple[str, dict[str, str]],
    helm: Path,
    isolation: Isolation,
    data_csv: Path,
    tmp_path: Path,
) -> None:
    timings = run_chart_in_containers(
        built_images, helm, isolation, data_csv, tmp_path, records=3000, rate=0, sigterm_at=None
    )
    print(f"\nshort run, 3,000 records: {timings}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_thirty_thousand_real_records_scored_exactly_once_by_the_consumer_image(
    built_images: tuple[str, dict[str, str]],
    helm: Path,
    isolation: Isolation,
    data_csv: Path,
    tmp_path: Path,
) -> None:
    timings = run_chart_in_containers(
        built_images,
        helm,
        isolation,
        data_csv,
        tmp_path,
        records=30000,
        rate=2000,
        sigterm_at=8000,
    )
    print(f"\n30,000 records, SIGTERM mid-stream: {timings}")
