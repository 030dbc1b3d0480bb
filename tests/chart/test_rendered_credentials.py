"""User-supplied passwords reach the pods intact: the rendered URLs log in to the REAL broker.

For each password (space, `+`, `/`, `@`, `:`, `%`), a user with exactly that password and a vhost
of its own are created on this machine's RabbitMQ; the chart is rendered with them; the Secret's
amqp-url is opened with pika (as creditstream.broker does) and its management-url with the
project's management API reader. Only the Service host name is pointed at 127.0.0.1.
The database URL is parsed by SQLAlchemy, as the consumer does (PostgreSQL here trusts local
logins, so a wrong password would not show).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
import yaml
from chart_checks import secret_data
from sqlalchemy.engine import make_url

from conftest import helm_template, parse_docs
from creditstream.autoscale.queue_depth import ManagementApiReader
from tests.chart.services import require_services

pytestmark = [pytest.mark.chart, pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORDS = [
    pytest.param("two words", id="space"),
    pytest.param("a+b", id="plus"),
    pytest.param("sl/ash@at:colon%25percent", id="slash-at-colon-percent"),
    pytest.param(" +/@:% all of them %20", id="all"),
]


@pytest.fixture
def broker_user(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """A vhost (with a space and a slash in its name) and a user of its own on the real broker."""
    require_services("rabbitmqctl")
    suffix = uuid.uuid4().hex[:10]
    user, vhost = f"cs-pw-{suffix}", f"cs pw/{suffix}"
    password = request.param
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    try:
        subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], check=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_user_tags", user, "monitoring"], check=True, timeout=60
        )
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
            check=True,
            timeout=60,
        )
        yield {"user": user, "password": password, "vhost": vhost}
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], timeout=60)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], timeout=60)


def _to_localhost(url: str) -> str:
    """Only the host changes: credentials, port and path stay as rendered."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    port = hostport.rpartition(":")[2]
    return urlunsplit((parts.scheme, f"{userinfo}@127.0.0.1:{port}", parts.path, "", ""))


@pytest.mark.parametrize("broker_user", PASSWORDS, indirect=True)
def test_rendered_urls_log_in_with_a_user_supplied_password(
    helm: Path, broker_user: dict[str, str], tmp_path: Path
) -> None:
    values = {
        "rabbitmq": {
            "vhost": broker_user["vhost"],
            "auth": {"username": broker_user["user"], "password": broker_user["password"]},
        },
        "postgresql": {"enabled": True, "auth": {"password": broker_user["password"]}},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    docs = parse_docs(helm_template(helm, (values_file,)).stdout)
    secrets = secret_data(docs)
    broker = secrets["cs-creditstream-rabbitmq"]
    assert broker["rabbitmq-password"] == broker_user["password"]

    params = pika.URLParameters(_to_localhost(broker["amqp-url"]))
    connection = pika.BlockingConnection(params)  # raises ProbableAuthenticationError on a bad URL
    try:
        assert connection.channel().is_open
    finally:
        connection.close()
    assert (params.credentials.username, params.credentials.password, params.virtual_host) == (
        broker_user["user"],
        broker_user["password"],
        broker_user["vhost"],
    )

    reader = ManagementApiReader(_to_localhost(broker["management-url"]), "unused")
    try:
        assert reader.ping(), "the management API refused the rendered credentials"
    finally:
        reader.close()

    database = make_url(secrets["cs-creditstream-postgresql"]["database-url"])
    assert (database.username, database.password) == ("creditstream", broker_user["password"])
