"""CREDITSTREAM_AMQP_URL takes one URL per cluster node; each is checked and redacted alone."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from creditstream.broker import connection_parameters, connection_parameters_list
from creditstream.redaction import Redactor, redact, secrets_in_url
from creditstream.settings import Settings

pytestmark = pytest.mark.unit

THREE = "amqp://u:pw-a1@a:5673/v, amqp://u:pw-b2@b:5674/v,amqps://w:pw-c3@c:5671/v"


def test_settings_split_the_list_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITSTREAM_AMQP_URL", THREE)
    settings = Settings()
    assert settings.amqp_urls == [
        "amqp://u:pw-a1@a:5673/v",
        "amqp://u:pw-b2@b:5674/v",
        "amqps://w:pw-c3@c:5671/v",
    ]


def test_single_url_is_a_list_of_one() -> None:
    assert Settings(amqp_url="amqp://u:p@h:5672/").amqp_urls == ["amqp://u:p@h:5672/"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        pytest.param("amqp://u:pw-a1@a/,http://u:pw-b2@b/", "URL 2 of 2", id="second-scheme"),
        pytest.param("amqp://u:pw-a1@a/,amqp://u@b/", "URL 2 of 2", id="second-user-only"),
        pytest.param("amqp://u:pw-a1@a/,,amqp://u:pw-b2@b/", "empty URL", id="empty-entry"),
        pytest.param("amqp://u:pw-a1@a/,", "empty URL", id="trailing-comma"),
        pytest.param("amqp://u:pw/a1@a/,amqp://u:pw-b2@b/", "URL 1 of 2", id="first-raw-slash"),
    ],
)
def test_each_url_is_checked_and_errors_never_quote_them(value: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(amqp_url=value)  # type: ignore[arg-type]
    message = str(caught.value)
    assert says in message
    for secret in ("pw-a1", "pw/a1", "pw-b2"):
        assert secret not in message


def test_redaction_masks_every_url_of_a_list_and_keeps_the_hosts() -> None:
    assert redact(f"connecting to {THREE}") == (
        "connecting to amqp://u:***@a:5673/v, amqp://u:***@b:5674/v,amqps://w:***@c:5671/v"
    )
    secrets = secrets_in_url(THREE)
    assert secrets == ["pw-a1", "pw-b2", "pw-c3"]
    assert Redactor(secrets)("port 5673 pw-b2") == "port 5673 ***"


def test_connection_parameters_one_per_url_with_the_shared_options() -> None:
    settings = Settings(amqp_url=THREE, heartbeat_s=7)  # type: ignore[arg-type]
    params = connection_parameters_list(settings, name="t")
    assert [(p.host, p.port) for p in params] == [("a", 5673), ("b", 5674), ("c", 5671)]
    for p in params:
        assert p.heartbeat == 7
        assert p.client_properties["connection_name"] == f"t:{settings.requests_queue}"
    assert params[0].ssl_options is None and params[2].ssl_options is not None
    # the single-parameter form rotates through the nodes (producer reconnects)
    assert [connection_parameters(settings, name="t", index=i).host for i in range(4)] == [
        "a",
        "b",
        "c",
        "a",
    ]


def test_a_raw_comma_in_a_password_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(amqp_url="amqp://u:pa5s,w0rd9@h/")  # type: ignore[arg-type]
    message = str(caught.value)
    assert "%2C" in message
    for piece in ("pa5s", "w0rd9"):
        assert piece not in message


def test_management_urls_derived_per_node_of_the_local_cluster() -> None:
    settings = Settings(
        amqp_url="amqp://guest:guest@localhost:5673/,amqp://guest:guest@localhost:5674/"  # type: ignore[arg-type]
    )
    assert settings.management_urls == [
        "http://guest:guest@localhost:15673/",
        "http://guest:guest@localhost:15674/",
    ]
