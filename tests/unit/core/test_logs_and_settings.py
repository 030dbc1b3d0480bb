"""Credentials never reach the logs; settings read the CREDITSTREAM_ environment."""

from __future__ import annotations

import io
import json
import logging

import pytest
import typer
from pydantic import ValidationError

from creditstream.cli import run_app
from creditstream.logs import configure_logging
from creditstream.redaction import Redactor, redact, secrets_in_environment, secrets_in_url
from creditstream.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("amqp://app:s3cret@rabbit:5672/", "amqp://app:***@rabbit:5672/", id="amqp"),
        pytest.param("url=amqps://u:p%40ss@h/vh x", "url=amqps://u:***@h/vh x", id="amqps"),
        pytest.param(
            "postgresql+psycopg://cs:pw@db/x", "postgresql+psycopg://cs:***@db/x", id="postgres"
        ),
        pytest.param(
            "http://guest:guest@127.0.0.1:15672",
            "http://guest:***@127.0.0.1:15672",
            id="management",
        ),
        pytest.param("amqp://:pw12@h/", "amqp://:***@h/", id="empty-user"),
        pytest.param("amqp://u:pa/ss@h:5672/v", "amqp://u:***@h:5672/v", id="raw-slash"),
        pytest.param("amqp://u:p@ss@h/", "amqp://u:***@h/", id="raw-at"),
        pytest.param("https://tok3n@h/x", "https://***@h/x", id="user-only-token"),
        pytest.param(
            "postgresql://u@h/db?sslmode=require&password=pw12",
            "postgresql://***@h/db?sslmode=require&password=***",
            id="query-password",
        ),
        pytest.param("host=h password=pw12 dbname=x", "host=h password=*** dbname=x", id="libpq"),
        pytest.param("'amqp://u:pw@h/'", "'amqp://u:***@h/'", id="quoted"),
        pytest.param(
            "a amqp://u:pw@h/ b postgresql://v:pw2@g/x",
            "a amqp://u:***@h/ b postgresql://v:***@g/x",
            id="two-urls",
        ),
        pytest.param("no url here", "no url here", id="untouched"),
        pytest.param("routing_key=abc bypass=1", "routing_key=abc bypass=1", id="not-secret-keys"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_literal_secrets_masked_in_any_form() -> None:
    secret = "S3cr/t@x"  # NOTE: a raw `/` and `@`: URL parsers cut it; errors may quote a piece
    redactor = Redactor(secrets_in_url(f"amqp://u:{secret}@h/"))
    assert redactor(f"bad port {secret!r}") == "bad port '***'"
    assert redactor("quoted S3cr%2Ft%40x") == "quoted ***"


def test_secrets_in_environment_reads_urls_and_secret_names() -> None:
    found = secrets_in_environment(
        {
            "CREDITSTREAM_AMQP_URL": "amqp://u:one1@h/",
            "CREDITSTREAM_DB_PASSWORD": "two2",
            "CREDITSTREAM_BATCH_SIZE": "256",
            "OTHER_URL": "amqp://u:three3@h/",
        }
    )
    assert sorted(found) == ["one1", "two2"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_are_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    secret = "TopSecret/42"
    monkeypatch.setenv("CREDITSTREAM_AMQP_URL", f"amqp://app:{secret.replace('/', '%2F')}@rabbit/")
    configure_logging(Settings(log_format=log_format), "test")  # type: ignore[arg-type]
    try:
        try:
            raise RuntimeError(f"cannot reach amqp://app:{secret}@rabbit/ (saw {secret[:9]!r})")
        except RuntimeError:
            logging.getLogger("x").exception("connect failed")
    finally:
        logging.getLogger().handlers.clear()
    captured = capsys.readouterr()
    output = captured.out + captured.err  # NOTE: rich's console writes to stdout
    assert "connect failed" in output and "RuntimeError" in output, output
    assert "TopSecret" not in output, output


def test_uncaught_errors_print_a_redacted_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CREDITSTREAM_DATABASE_URL", "postgresql://u:Hidden99@db/x")
    failing = typer.Typer()

    @failing.command()
    def boom() -> None:
        raise RuntimeError("store at postgresql://u:Hidden99@db/x said Hidden99")

    monkeypatch.setattr("sys.argv", ["creditstream"])
    with pytest.raises(SystemExit) as exited:
        run_app(failing)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError" in err
    assert "Hidden99" not in err, err


def test_json_logs_redact_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(Settings(log_format="json"), "test")
    try:
        logging.getLogger("x").warning("connecting to %s", "amqp://app:topsecret@rabbit/")
    finally:
        logging.getLogger().handlers.clear()
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["component"] == "test" and line["level"] == "WARNING"
    assert "topsecret" not in stream.getvalue()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITSTREAM_BATCH_SIZE", "64")
    monkeypatch.setenv("CREDITSTREAM_AMQP_URL", "amqps://u:p@broker:5671/prod")
    settings = Settings()
    assert settings.batch_size == 64
    assert "p@" not in repr(settings)  # SecretStr keeps it out of reprs


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"amqp_url": "http://x"}, id="scheme"),
        pytest.param({"amqp_url": "amqp://u:p/w@h/"}, id="raw-slash"),
        pytest.param({"amqp_url": "amqp://user@h/"}, id="user-only"),
        pytest.param({"management_url": "ftp://u:p@h/"}, id="management-scheme"),
        pytest.param({"batch_size": 0}, id="batch-size"),
        pytest.param({"threshold": 1.5}, id="threshold"),
    ],
)
def test_settings_reject_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**overrides)  # type: ignore[arg-type]
    assert "input_value" not in str(caught.value), "errors never echo what was given"
