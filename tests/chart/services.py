"""The real services the chart tests use, and how a missing one is reported."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

SERVICE_PORTS = ((5672, "RabbitMQ"), (15672, "RabbitMQ management"), (5432, "PostgreSQL"))


def missing_services(*tools: str) -> str | None:
    """Why the real services cannot be used here (None when they can)."""
    for port, name in SERVICE_PORTS:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{name} not reachable on 127.0.0.1:{port} (run `make services`)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def require_services(*tools: str) -> None:
    """Skip without the services, but FAIL under CI, where a skip would hide a missing setup."""
    reason = missing_services(*tools)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
