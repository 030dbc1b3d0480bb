"""Secrets never printed: every URL form, settings errors, flags; the real CLI in a subprocess.

Each case runs `creditstream` with a secret placed in one form (wrong scheme, empty user, raw
`/` in the password, user-only, query string, amqps, PostgreSQL, management URL, a secret in
the wrong variable) at DEBUG level and searches stdout + stderr for it (and for its pieces, in
case something quotes a fragment). The producer's broker is a closed port; the consumer's is
the real broker (isolated names), its database the given (unreachable) URL.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main

from creditstream.cli import app
from creditstream.settings import Settings
from tests.helpers import CREDITSTREAM, free_port, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PRODUCE = ["produce", "--synthetic", "--limit", "1", "--no-progress"]
CONSUME = ["consume", "--exit-when-idle", "1"]


def run_with(args: list[str], settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    """`creditstream ARGS` with the settings' environment, `env` on top (raw, maybe invalid)."""
    return subprocess.run(
        [CREDITSTREAM, *args],
        env=settings_env(settings) | env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


# (command, variable, value template, exit code, what the output must say instead)
FORMS = [
    pytest.param(
        CONSUME, "CREDITSTREAM_AMQP_URL", "http://u:{secret}@h/", 2, "amqp_url", id="wrong-scheme"
    ),
    pytest.param(
        PRODUCE,
        "CREDITSTREAM_AMQP_URL",
        "amqp://:{secret}@127.0.0.1:{port}/",
        1,
        "RabbitMQ unreachable at amqp://:***@127.0.0.1",
        id="amqp-empty-user",
    ),
    pytest.param(
        PRODUCE,
        "CREDITSTREAM_AMQP_URL",
        "amqp://u:{secret}/{secret2}@127.0.0.1:{port}/",
        2,
        "percent-encode",
        id="amqp-raw-slash-in-password",
    ),
    pytest.param(
        PRODUCE,
        "CREDITSTREAM_AMQP_URL",
        "amqp://{secret}@127.0.0.1:{port}/",
        2,
        "user without a password",
        id="amqp-user-only",
    ),
    pytest.param(
        PRODUCE,
        "CREDITSTREAM_AMQP_URL",
        "amqp://u:pw@127.0.0.1:{port}/?password={secret}",
        2,
        "Unknown URL parameter",
        id="amqp-query-password",
    ),
    pytest.param(
        PRODUCE,
        "CREDITSTREAM_AMQP_URL",
        "amqps://u:{secret}@127.0.0.1:{port}/",
        1,
        "RabbitMQ unreachable at amqps://u:***@127.0.0.1",
        id="amqps",
    ),
    pytest.param(
        CONSUME,
        "CREDITSTREAM_DATABASE_URL",
        "postgresql+psycopg://u:{secret}@127.0.0.1:{port}/db",
        0,
        "results store not reachable",
        id="postgres",
    ),
    pytest.param(
        CONSUME,
        "CREDITSTREAM_DATABASE_URL",
        "postgresql+psycopg://u@127.0.0.1:{port}/db?password={secret}",
        0,
        "results store not reachable",
        id="postgres-query-password",
    ),
    pytest.param(
        CONSUME,
        "CREDITSTREAM_DATABASE_URL",
        "postgresql+psycopg://u:{secret}/{secret2}@127.0.0.1:{port}/db",
        0,
        "results store not reachable",
        id="postgres-raw-slash-in-password",
    ),
    pytest.param(
        CONSUME,
        "CREDITSTREAM_MANAGEMENT_URL",
        "ftp://u:{secret}@h/",
        2,
        "management_url",
        id="management-url-wrong-scheme",
    ),
    pytest.param(
        CONSUME,
        "CREDITSTREAM_BATCH_SIZE",
        "{secret}",
        2,
        "batch_size",
        id="secret-in-wrong-variable",
    ),
]


@pytest.mark.parametrize(("command", "variable", "template", "code", "expected"), FORMS)
def test_secret_never_printed(
    make_settings: Callable[..., Settings],
    command: list[str],
    variable: str,
    template: str,
    code: int,
    expected: str,
) -> None:
    secret, secret2 = f"S3CRET{secrets.token_hex(6)}", f"Z{secrets.token_hex(6)}"
    value = template.format(secret=secret, secret2=secret2, port=free_port())
    settings = make_settings(broker_wait_s=1, log_level="DEBUG")
    result = run_with(command, settings, **{variable: value})
    output = result.stdout + result.stderr
    assert secret not in output and secret2 not in output, output[-3000:]
    assert expected in output, output[-3000:]
    assert result.returncode == code, output[-3000:]


def test_secret_flags_are_files_not_values(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    secret = f"S3CRET{secrets.token_hex(6)}"
    url = f"amqp://u:{secret}@127.0.0.1:{free_port()}/"
    settings = make_settings(broker_wait_s=1)
    refused = run_with([*PRODUCE, "--amqp-url", url], settings)
    assert refused.returncode == 2 and "No such option" in refused.stderr, refused.stderr
    assert secret not in refused.stdout + refused.stderr
    url_file = tmp_path / "amqp-url"
    url_file.write_text(url + "\n", encoding="utf-8")
    url_file.chmod(0o600)
    from_file = run_with([*PRODUCE, "--amqp-url-file", str(url_file)], settings)
    output = from_file.stdout + from_file.stderr
    assert from_file.returncode == 1, output[-3000:]
    assert "RabbitMQ unreachable at amqp://u:***@127.0.0.1" in output, output[-3000:]
    assert secret not in output


def _options() -> list[tuple[str, str, str]]:
    """(command, option name, help) of every option of every command."""
    found = []
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            for opt in getattr(param, "opts", []):
                found.append((name, opt, getattr(param, "help", "") or ""))
    return found


@pytest.mark.timeout(30)
def test_no_option_takes_a_secret_on_the_command_line() -> None:
    options = _options()
    assert any(opt == "--amqp-url-file" for _, opt, _ in options), "the file form exists"
    # NOTE: `download --url` is the public archive address, not a credential.
    secret_flags = [
        (command, opt)
        for command, opt, _ in options
        if opt.endswith(("-url", "password", "-token")) and (command, opt) != ("download", "--url")
    ]
    assert secret_flags == [], "secrets belong in the environment or a file (ps, shell history)"
    suggesting = [(c, o) for c, o, text in options if "user:pass" in text or ":***@" in text]
    assert suggesting == [], "no help text shows credentials on a command line"
