"""Security: generated broker credentials never reach a log; AMQP over TLS works end to end;
the deployment does not expose the broker's management UI outside the cluster.

Chart-level checks (non-root, read-only root filesystem, dropped capabilities, NetworkPolicies,
checkov) live in tests/chart/test_manifests.py: test_security_defaults_on_every_pod,
test_network_policies_cover_every_pod, test_broker_secret_survives_upgrades_and_never_uses_guest,
test_checkov_passes_on_every_rendered_case.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import yaml

from creditstream.settings import REPO_ROOT, Settings
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet
from tests.faults.injectors import close_connections_of, connections_of, rabbitmqctl, wait_for
from tests.faults.ledger import record_run
from tests.faults.tls_proxy import TlsProxy, make_pki
from tests.helpers import PG_URL, Processes, count_rows, free_port, run_cli, wait_until

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class BrokerAccount:
    """A vhost and a user that may use only it, with a generated password."""

    vhost: str
    user: str
    password: str

    def url(self, password: str | None = None, port: int = 5672) -> str:
        """AMQP URL of the account (optionally with another password)."""
        quoted = urllib.parse.quote(password or self.password, safe="")
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.user}:{quoted}@127.0.0.1:{port}/{vhost}"


@pytest.fixture
def broker_account() -> Iterator[BrokerAccount]:
    """`rabbitmqctl add_vhost/add_user/set_permissions` with a random password; deleted after."""
    tag = secrets.token_hex(5)
    # NOTE: no leading "-" in the password: rabbitmqctl would read it as an option.
    password = "p" + secrets.token_urlsafe(24)
    account = BrokerAccount(f"cs-sec-{tag}", f"cs-sec-{tag}", password)
    rabbitmqctl("add_vhost", account.vhost)
    try:
        rabbitmqctl("add_user", account.user, account.password)
        rabbitmqctl("set_permissions", "-p", account.vhost, account.user, ".*", ".*", ".*")
        yield account
    finally:
        for args in (("delete_user", account.user), ("delete_vhost", account.vhost)):
            try:
                rabbitmqctl(*args)
            except RuntimeError as exc:
                print(f"cleanup: {exc}")


def _all_output(log_dir: Path, extra: list[str]) -> str:
    return "\n".join([*(p.read_text(errors="replace") for p in log_dir.glob("*.log")), *extra])


@pytest.mark.timeout(300)
def test_generated_broker_password_never_appears_in_any_log(
    broker_account: BrokerAccount,
    make_settings: Callable[..., Settings],
    pg_schema: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    # A database password too: trust auth ignores it, but it travels in the URL like a real one.
    db_password = secrets.token_urlsafe(18)
    db_url = PG_URL.replace("postgres@", f"postgres:{db_password}@", 1)
    assert db_password in db_url
    settings = make_settings(
        amqp_url=broker_account.url(),
        database_url=db_url,
        database_schema=pg_schema,
        log_level="DEBUG",  # the most a run ever logs
        reconnect_max_s=1.0,
    )
    # The generated account is the only way in: the default guest user has no access here.
    guest = broker_account.url().replace(
        f"{broker_account.user}:{urllib.parse.quote(broker_account.password, safe='')}",
        "guest:guest",
    )
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.URLParameters(guest))

    workload = Workload(500, real_data=False)
    fleet = Fleet(processes, settings)
    fleet.start()
    outputs: list[str] = []
    produced = run_cli(["produce", *workload.produce_args(), "--no-progress"], settings)
    outputs += [produced.stdout, produced.stderr]
    assert produced.returncode == 0, produced.stderr[-2000:]
    wait_until(lambda: count_rows(settings) >= 500, timeout=120, message="500 rows")
    # Error paths log the most connection detail: a cut connection, a wrong password, no broker.
    assert wait_for(lambda: connections_of(settings.requests_queue), timeout=30, interval=0.5)
    assert close_connections_of(settings.requests_queue), "consumer connection cut"
    consumer = fleet.members[0]
    assert wait_for(
        lambda: (
            fleet.scrape(consumer) and consumer.last["creditstream_broker_reconnects_total"] >= 1
        ),
        timeout=30,
    ), "consumer reconnected"
    wrong_password = secrets.token_urlsafe(24)
    for url in (broker_account.url(wrong_password), broker_account.url(port=free_port())):
        url_file = tmp_path / "amqp-url"
        url_file.write_text(url, encoding="utf-8")
        failed = run_cli(
            [
                "produce",
                "--synthetic",
                "--limit",
                "5",
                "--no-progress",
                "--amqp-url-file",
                str(url_file),
            ],
            settings.model_copy(update={"broker_wait_s": 1.0}),
            timeout=120,
        )
        assert failed.returncode != 0
        outputs += [failed.stdout, failed.stderr]
    smoke = run_cli(["smoke-test", "--timeout", "30"], settings, timeout=90)
    outputs += [smoke.stdout, smoke.stderr]
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    assert fleet.stop() == [0]
    assert verdict(settings, workload).lost == 0

    everything = _all_output(tmp_path, outputs)
    assert "consuming" in everything and "produced 500 records" in everything, "logs captured"
    secrets_to_find = {
        "broker password": broker_account.password,
        "broker password (URL-quoted)": urllib.parse.quote(broker_account.password, safe=""),
        "wrong password tried": wrong_password,
        "database password": db_password,
    }
    leaked = [label for label, value in secrets_to_find.items() if value in everything]
    assert leaked == [], f"found in the logs: {leaked}"
    record_run(
        "security-credentials",
        "short",
        log_bytes_scanned=len(everything),
        secrets_searched=len(secrets_to_find),
        leaked=len(leaked),
    )


@pytest.mark.timeout(300)
def test_amqps_with_a_private_ca_end_to_end(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    with TlsProxy(pki).running() as proxy:
        tls_url = f"amqps://guest:guest@localhost:{proxy.port}/"
        settings = make_settings(amqp_url=tls_url, tls_ca_file=pki.ca_cert, broker_wait_s=5)
        workload = Workload(300, real_data=False)
        fleet = Fleet(processes, settings)
        fleet.start()
        produced = run_cli(["produce", *workload.produce_args(), "--no-progress"], settings)
        assert produced.returncode == 0, produced.stderr[-2000:]
        wait_until(lambda: count_rows(settings) >= 300, timeout=120, message="300 rows over TLS")
        smoke = run_cli(["smoke-test", "--timeout", "30"], settings, timeout=90)
        assert smoke.returncode == 0, smoke.stderr[-2000:]
        assert fleet.stop() == [0]
        sessions = proxy.tls_sessions
        # Without the private CA the client must refuse the certificate (verification is on).
        untrusted = run_cli(
            ["produce", "--synthetic", "--limit", "5", "--no-progress"],
            settings.model_copy(update={"tls_ca_file": None, "broker_wait_s": 1.0}),
            timeout=120,
        )
        # And the certificate (issued to `localhost`) is refused for another name of the host.
        wrong_host = run_cli(
            ["produce", "--synthetic", "--limit", "5", "--no-progress"],
            settings.model_copy(
                update={
                    "amqp_url": f"amqps://guest:guest@127.0.0.1:{proxy.port}/",
                    "broker_wait_s": 1.0,
                }
            ),
            timeout=120,
        )
    result = verdict(settings, workload)
    # The 300 records once each, plus the smoke test's own record.
    assert (result.stored, result.lost, result.duplicated, result.unexpected) == (301, 0, 0, 1)
    # producer (setup + publishing), consumer, smoke test: all through the TLS proxy.
    assert sessions >= 4, f"only {sessions} TLS sessions reached the proxy"
    assert untrusted.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout + untrusted.stderr
    assert wrong_host.returncode != 0
    assert "mismatch" in wrong_host.stdout + wrong_host.stderr, wrong_host.stderr[-1000:]
    record_run(
        "security-tls",
        "short",
        records=300,
        tls_sessions=sessions,
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
    )


RENDERED = REPO_ROOT / "k8s" / "rendered"


def _rendered_objects() -> list[dict[str, Any]]:
    if not RENDERED.is_dir():
        pytest.skip(f"{RENDERED} not found (rendered by `make lint`)")
    docs = []
    for path in sorted(RENDERED.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_management_ui_is_not_exposed_outside_the_cluster_by_default() -> None:
    docs = _rendered_objects()
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Ingress", "Route", "Gateway", "HTTPRoute"}, kinds
    services = [d for d in docs if d["kind"] == "Service"]
    exposing = [s for s in services if any(p["port"] == 15672 for p in s["spec"].get("ports", []))]
    assert exposing, "the management port is rendered (KEDA's http protocol needs it)"
    for service in services:
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    broker_policy = next(
        p for p in policies
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "broker"
    )  # fmt: skip
    management_rules = [
        rule for rule in broker_policy["spec"]["ingress"]
        if any(port.get("port") in ("management", 15672) for port in rule.get("ports", []))
    ]  # fmt: skip
    assert management_rules, "management ingress is governed by an explicit rule"
    for rule in management_rules:
        assert rule.get("from"), "management port open to everyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, f"management reachable from an IP block: {peer}"
