"""Logging set-up: JSON lines off a terminal, rich console on one; credentials always redacted."""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from creditstream.settings import Settings

# user:password@ in any URL-looking text (amqp://, amqps://, postgresql+psycopg://, http://).
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@", re.IGNORECASE
)


def redact(text: str) -> str:
    """Replace the password in every URL of `text` by `***`."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


class RedactingFilter(logging.Filter):
    """Scrub URL credentials from every record, whatever library logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


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
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # NOTE: pika logs every connection step at INFO; keep it to warnings and above.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
