"""Least privilege on the real broker and PostgreSQL (issue 15): each role, created with the
permissions creditstream.accounts defines, may do its job and is refused everything else."""

from __future__ import annotations

import secrets
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions
import psycopg
import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from creditstream.accounts import broker_roles, database_role_sql
from creditstream.batcher import Prediction
from creditstream.client import SMOKE_RECORD, PredictionClient
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from creditstream.topology import REQUEST_ROUTING_KEY, Topology, isolated_names
from tests.faults.injectors import rabbitmqctl
from tests.helpers import AMQP_URL, MODELS, PG_URL, run_cli
from tests.integration.test_bad_input_and_rpc import running_consumer

pytestmark = pytest.mark.integration

ACCESS_REFUSED = 403
MANAGEMENT = "http://127.0.0.1:15672"


@dataclass(frozen=True)
class Deployment:
    """An isolated vhost holding creditstream's topology and one user per role."""

    vhost: str
    settings: Settings
    passwords: dict[str, str]
    users: dict[str, str]

    def connect(self, role: str) -> pika.BlockingConnection:
        """An AMQP connection as the role's user."""
        params = pika.URLParameters(AMQP_URL)
        params.virtual_host = self.vhost
        params.credentials = pika.PlainCredentials(self.users[role], self.passwords[role])
        return pika.BlockingConnection(params)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    tag = secrets.token_hex(4)
    vhost = f"cs-lp-{tag}"
    settings = Settings(amqp_url=AMQP_URL, declare_topology=False, **isolated_names(f"lp{tag}"))
    roles = broker_roles(settings)
    users = {role: f"cs-{role}-{tag}" for role in roles}
    passwords = {role: secrets.token_hex(16) for role in roles}  # no leading "-"
    admin = pika.URLParameters(AMQP_URL).credentials.username  # type: ignore[attr-defined]
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, admin, ".*", ".*", ".*")
        for role, spec in roles.items():
            rabbitmqctl("add_user", users[role], passwords[role])
            rabbitmqctl("set_user_tags", users[role], *spec.tags)
            p = spec.permissions
            rabbitmqctl("set_permissions", "-p", vhost, users[role], p.configure, p.write, p.read)
        # The admin bootstraps the topology (as the chart's bootstrap would).
        params = pika.URLParameters(AMQP_URL)
        params.virtual_host = vhost
        connection = pika.BlockingConnection(params)
        bootstrap = settings.model_copy(update={"declare_topology": True})
        Topology.from_settings(bootstrap).declare(connection.channel())
        connection.close()
        yield Deployment(vhost, settings, passwords, users)
    finally:
        for user in users.values():
            try:
                rabbitmqctl("delete_user", user)
            except RuntimeError as exc:
                print(f"cleanup: {exc}")
        rabbitmqctl("delete_vhost", vhost)


def publish(deployment: Deployment, role: str, exchange: str, routing_key: str = "") -> None:
    """One confirmed publish as `role` (raises when the broker refuses it)."""
    connection = deployment.connect(role)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            routing_key,
            b"{}",
            pika.BasicProperties(user_id=deployment.users[role], message_id="lp"),
        )
    finally:
        if connection.is_open:
            connection.close()


def get(deployment: Deployment, role: str, queue: str) -> None:
    """basic_get one message from `queue` as `role` (raises when refused)."""
    connection = deployment.connect(role)
    try:
        connection.channel().basic_get(queue, auto_ack=False)
    finally:
        if connection.is_open:
            connection.close()


def declare_own_topology(deployment: Deployment, role: str) -> None:
    connection = deployment.connect(role)
    try:
        Topology.from_settings(deployment.settings).declare(connection.channel())
    finally:
        connection.close()


def _declare_as(deployment: Deployment, role: str, topology: Topology) -> None:
    connection = deployment.connect(role)
    try:
        topology.declare(connection.channel())
    finally:
        if connection.is_open:
            connection.close()


def refused(action: Callable[[], None]) -> bool:
    """True when the broker closes the channel with ACCESS_REFUSED."""
    try:
        action()
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == ACCESS_REFUSED
    return False


@pytest.mark.timeout(120)
def test_consumer_reads_requests_and_publishes_results_only(deployment: Deployment) -> None:
    s = deployment.settings
    declare_own_topology(deployment, "consumer")
    get(deployment, "consumer", s.requests_queue)
    publish(deployment, "consumer", s.predictions_exchange)
    publish(deployment, "consumer", s.dead_letter_exchange)
    publish(deployment, "consumer", "", "amq.rabbitmq.reply-to.nobody")  # a reply
    assert refused(lambda: publish(deployment, "consumer", s.requests_exchange, "score"))
    assert refused(lambda: get(deployment, "consumer", s.dead_letter_queue))
    assert refused(lambda: get(deployment, "consumer", "other-app-queue"))
    admin = Topology.from_settings(
        deployment.settings.model_copy(update={"declare_topology": True})
    )
    assert refused(lambda: _declare_as(deployment, "consumer", admin))


@pytest.mark.timeout(120)
def test_producer_publishes_requests_and_reads_nothing(deployment: Deployment) -> None:
    s = deployment.settings
    declare_own_topology(deployment, "producer")
    publish(deployment, "producer", s.requests_exchange, REQUEST_ROUTING_KEY)
    assert refused(lambda: get(deployment, "producer", s.requests_queue))
    assert refused(lambda: get(deployment, "producer", s.dead_letter_queue))
    assert refused(lambda: publish(deployment, "producer", s.predictions_exchange))
    assert refused(lambda: publish(deployment, "producer", s.dead_letter_exchange))
    assert refused(lambda: publish(deployment, "producer", "", s.dead_letter_queue))


@pytest.mark.timeout(120)
def test_smoke_test_publishes_a_request_and_reads_only_its_reply(deployment: Deployment) -> None:
    s = deployment.settings
    connection = deployment.connect("smoke-test")
    try:
        channel = connection.channel()
        Topology.from_settings(s).declare(channel)
        channel.basic_consume("amq.rabbitmq.reply-to", lambda *_: None, auto_ack=True)
        channel.confirm_delivery()
        channel.basic_publish(
            s.requests_exchange,
            REQUEST_ROUTING_KEY,
            b"{}",
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"),
        )
    finally:
        connection.close()
    assert refused(lambda: get(deployment, "smoke-test", s.requests_queue))
    assert refused(lambda: publish(deployment, "smoke-test", s.predictions_exchange))


@pytest.mark.timeout(120)
def test_keda_reads_queue_depth_from_the_management_api_and_nothing_else(
    deployment: Deployment,
) -> None:
    s = deployment.settings
    auth = (deployment.users["keda"], deployment.passwords["keda"])
    vhost = urllib.parse.quote(deployment.vhost, safe="")
    queue = requests.get(
        f"{MANAGEMENT}/api/queues/{vhost}/{urllib.parse.quote(s.requests_queue)}",
        auth=auth,
        timeout=10,
    )
    assert queue.status_code == 200, queue.text
    assert queue.json()["name"] == s.requests_queue
    for path in ("/api/users", "/api/definitions", "/api/permissions"):
        answer = requests.get(f"{MANAGEMENT}{path}", auth=auth, timeout=10)
        assert answer.status_code in {401, 403}, f"{path}: {answer.status_code}"
    # Nothing outside its vhost: not other users' connections, other vhosts, or the nodes.
    connections = requests.get(f"{MANAGEMENT}/api/connections", auth=auth, timeout=10)
    assert connections.status_code == 200
    assert all(c["vhost"] == deployment.vhost for c in connections.json()), "other connections"
    vhosts = requests.get(f"{MANAGEMENT}/api/vhosts", auth=auth, timeout=10)
    assert [v["name"] for v in vhosts.json()] == [deployment.vhost]
    assert requests.get(f"{MANAGEMENT}/api/nodes", auth=auth, timeout=10).status_code in {401, 403}
    assert refused(lambda: get(deployment, "keda", s.requests_queue))
    assert refused(lambda: publish(deployment, "keda", s.requests_exchange, REQUEST_ROUTING_KEY))


# --- PostgreSQL ---------------------------------------------------------------------------
def _admin(statement: str) -> None:
    with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        c.execute(statement)


@pytest.fixture
def consumer_role() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    role, schema = f"cs_consumer_{tag}", f"cs_lp_{tag}"
    for statement in database_role_sql(role, schema):
        _admin(statement)
    _admin(f'CREATE TABLE "{schema}".not_yours (secret text)')
    try:
        yield role, schema
    finally:
        _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        _admin(f'DROP OWNED BY "{role}" CASCADE')
        _admin(f'DROP ROLE IF EXISTS "{role}"')


def _as_role(role: str) -> str:
    parts = urllib.parse.urlsplit(PG_URL)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


@pytest.mark.timeout(120)
def test_consumer_database_role_owns_its_table_and_nothing_else(
    consumer_role: tuple[str, str],
) -> None:
    role, schema = consumer_role
    url = _as_role(role)
    store = ResultsStore(create_engine(url), schema)
    try:
        store.create_schema()
        now = time.time()
        prediction = Prediction("u/m", "m", "1", 0.5, True, 0.5, "v1", now, now)
        assert store.write([prediction]) == 1
    finally:
        store.dispose()
    engine = create_engine(url)
    forbidden = [
        f'SELECT * FROM "{schema}".not_yours',
        f'DROP TABLE "{schema}".not_yours',
        f'DROP SCHEMA "{schema}" CASCADE',
        "CREATE TABLE public.planted (x int)",
        "CREATE ROLE planted",
        "CREATE SCHEMA planted",
    ]
    outcomes = {}
    try:
        for statement in forbidden:
            try:
                with engine.begin() as conn:
                    conn.execute(text(statement))
                outcomes[statement] = "allowed"
            except Exception as exc:  # noqa: BLE001
                outcomes[statement] = type(getattr(exc, "orig", exc)).__name__
    finally:
        engine.dispose()
    assert all(o == "InsufficientPrivilege" for o in outcomes.values()), outcomes


@pytest.mark.timeout(120)
def test_the_roles_are_enough_to_serve(deployment: Deployment, tmp_path: Path) -> None:
    def url(role: str) -> str:
        user, password = deployment.users[role], deployment.passwords[role]
        vhost = urllib.parse.quote(deployment.vhost, safe="")
        return f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"

    base = deployment.settings.model_copy(
        update={
            "database_url": SecretStr(f"sqlite:///{tmp_path / 'results.db'}"),
            "model_path": MODELS / "credit_default.onnx",
            "http_port": 0,
        }
    )
    consumer_settings = base.model_copy(update={"amqp_url": SecretStr(url("consumer"))})
    client_settings = base.model_copy(update={"amqp_url": SecretStr(url("smoke-test"))})
    with running_consumer(consumer_settings), PredictionClient(client_settings) as client:
        reply = client.predict({**SMOKE_RECORD, "ID": "least-privilege"}, timeout=30)
    assert reply["record_id"] == "least-privilege"
    assert reply["request_id"].startswith(deployment.users["smoke-test"] + "/rpc-")


@pytest.mark.timeout(120)
def test_declare_topology_bootstraps_what_the_roles_only_check(tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    vhost = f"cs-lp-boot-{tag}"
    admin = pika.URLParameters(AMQP_URL).credentials.username  # type: ignore[attr-defined]
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, admin, ".*", ".*", ".*")
        url = AMQP_URL.rstrip("/") + "/" + urllib.parse.quote(vhost, safe="")
        settings = Settings(amqp_url=url, declare_topology=False, **isolated_names(f"boot{tag}"))
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            assert refused_missing(
                lambda: Topology.from_settings(settings).declare(connection.channel())
            )
        finally:
            connection.close()
        result = run_cli(["declare-topology"], settings, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            Topology.from_settings(settings).declare(connection.channel())  # passive: all there
        finally:
            connection.close()
        roles = run_cli(["broker-roles"], settings, timeout=60)
        assert roles.returncode == 0
        for role in broker_roles(settings).values():
            assert f"'{role.permissions.write}'" in roles.stdout
    finally:
        rabbitmqctl("delete_vhost", vhost)


def refused_missing(action: Callable[[], None]) -> bool:
    """True when a passive declare finds something missing (404)."""
    try:
        action()
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 404
    return False
