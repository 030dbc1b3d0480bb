"""Logging set-up: JSON lines off a terminal, rich console on one; credentials always redacted."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

from creditstream.redaction import RedactingFilter, Redactor, secrets_in_environment, secrets_in_url

if TYPE_CHECKING:
    from creditstream.settings import Settings


def settings_redactor(settings: Settings) -> Redactor:
    """A redactor that also knows this process's literal secrets (settings and environment)."""
    literals = secrets_in_environment()
    for name in settings.secret_field_names():
        value = getattr(settings, name)
        if value is not None:
            literals += secrets_in_url(value.get_secret_value())
    return Redactor(literals)


def configure_logging(settings: Settings, component: str) -> None:
    """Install one handler on the root logger (idempotent)."""
    use_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    handler: logging.Handler
    if use_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"component": component},
            )
        )
    else:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=True)
    handler.addFilter(RedactingFilter(settings_redactor(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # NOTE: pika logs every connection step at INFO; keep it to warnings and above.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
