"""Credentials never reach the logs; settings read the CREDITSTREAM_ environment."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from creditstream.logs import configure_logging, redact
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
        pytest.param("no url here", "no url here", id="untouched"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


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
        pytest.param({"batch_size": 0}, id="batch-size"),
        pytest.param({"threshold": 1.5}, id="threshold"),
    ],
)
def test_settings_reject_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]
