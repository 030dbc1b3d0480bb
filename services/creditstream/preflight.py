"""Check that RabbitMQ and PostgreSQL answer; say exactly how to start whichever does not.

The one "how to start RabbitMQ" text of the project (`make services`, `make demo`); its image
tags are the chart's (tests/chart checks they agree).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Final
from urllib.parse import urlsplit

RABBITMQ_IMAGE: Final = "rabbitmq:4.1.4-management"
POSTGRES_IMAGE: Final = "postgres:17.6-bookworm"

START_RABBITMQ: Final = f"""\
  Debian/Ubuntu:  sudo apt-get install -y rabbitmq-server && sudo service rabbitmq-server start
                  sudo rabbitmq-plugins enable rabbitmq_management   # queue depth incl. unacked
  Docker:         docker run -d --name rabbitmq -p 5672:5672 -p 15672:15672 {RABBITMQ_IMAGE}
  Elsewhere:      export CREDITSTREAM_AMQP_URL=amqp://user:pass@host:5672/"""

START_POSTGRES: Final = f"""\
  Debian/Ubuntu:  sudo pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
  Docker:         docker run -d --name pg -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust \
{POSTGRES_IMAGE}"""

HOW_TO_START = {"RabbitMQ": START_RABBITMQ, "PostgreSQL": START_POSTGRES}


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main() -> int:
    """Exit 0 when both services accept TCP connections, 1 otherwise (with instructions)."""
    amqp = urlsplit(os.environ.get("CREDITSTREAM_TEST_AMQP_URL", "amqp://localhost:5672/"))
    pg = urlsplit(os.environ.get("CREDITSTREAM_TEST_PG_URL", "postgresql://localhost:5432/"))
    targets = {
        "RabbitMQ": (amqp.hostname or "localhost", amqp.port or 5672),
        "PostgreSQL": (pg.hostname or "localhost", pg.port or 5432),
    }
    missing = [name for name, (host, port) in targets.items() if not _reachable(host, port)]
    for name in missing:
        host, port = targets[name]
        print(
            f"{name} is not reachable at {host}:{port}. Start it:\n{HOW_TO_START[name]}",
            file=sys.stderr,
        )
    if not missing:
        print("RabbitMQ and PostgreSQL are reachable.")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
