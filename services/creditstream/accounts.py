"""Least privilege (pure): the broker permissions of each role and the consumer's database role.

The one place the permission regexes come from: tests create these users on the real broker and
prove each is refused what it must not do (tests/integration/test_least_privilege.py).

RabbitMQ checks, per vhost: `configure` to declare or delete a queue or exchange, `write` to
publish to an exchange (and to bind a queue: write on the queue), `read` to consume from a queue
(and to bind: read on the exchange). Replies to direct reply-to go through the default exchange
(`amq.default`): only the consumer may write there, and creditstream.guard limits where it does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from creditstream.settings import Settings

DEFAULT_EXCHANGE: Final = "amq.default"
NOTHING: Final = "^$"


@dataclass(frozen=True, slots=True)
class Permissions:
    """One user's regexes on one vhost (rabbitmqctl set_permissions CONF WRITE READ)."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True, slots=True)
class BrokerRole:
    """A broker user's job: its tags and its permissions on creditstream's vhost (None: none)."""

    name: str
    tags: tuple[str, ...]
    permissions: Permissions
    does: str


def _any_of(*names: str) -> str:
    return "^(" + "|".join(re.escape(name) for name in sorted(set(names))) + ")$"


def broker_roles(settings: Settings) -> dict[str, BrokerRole]:
    """The broker users of a deployment, by role (the admin only bootstraps: not listed).

    NOTE: no role may configure: the bootstrap (admin) declares the topology and the roles run
    with declare_topology=False (passive declares need no permission). RabbitMQ matches names,
    not kinds: where an exchange and a queue share a name (the defaults do), a permission on
    one is a permission on the other (see docs/security.md for what that leaves open).
    """
    return {
        "consumer": BrokerRole(
            "consumer",
            (),
            Permissions(
                NOTHING,
                _any_of(
                    settings.dead_letter_exchange, settings.predictions_exchange, DEFAULT_EXCHANGE
                ),
                _any_of(settings.requests_queue),
            ),
            "reads requests; publishes predictions, dead letters, replies (direct reply-to)",
        ),
        "producer": BrokerRole(
            "producer",
            (),
            Permissions(NOTHING, _any_of(settings.requests_exchange), NOTHING),
            "publishes requests; reads nothing",
        ),
        "smoke-test": BrokerRole(
            "smoke-test",
            (),
            # NOTE: consuming direct reply-to needs no read permission.
            Permissions(NOTHING, _any_of(settings.requests_exchange), NOTHING),
            "publishes one request, reads its reply (direct reply-to)",
        ),
        "keda": BrokerRole(
            "keda",
            # NOTE: `management`, not `monitoring` (which shows every vhost's connections and
            # the nodes): KEDA reads one queue. The API shows a vhost's queues only to users
            # with access to it: access, and no permission on anything in it.
            ("management",),
            Permissions(NOTHING, NOTHING, NOTHING),
            "reads queue depth and rates from the management API; nothing over AMQP",
        ),
    }


def database_role_sql(role: str, schema: str) -> list[str]:
    """Statements (run by the database admin) creating the consumer's role and its schema.

    The role may log in, create tables in `schema` only (so it owns the predictions table it
    creates and nothing else) and has no other privilege: no superuser, no CREATEDB or
    CREATEROLE, no access to other schemas' tables.
    """
    quoted_role, quoted_schema = _ident(role), _ident(schema)
    return [
        f"CREATE ROLE {quoted_role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT",
        f"CREATE SCHEMA IF NOT EXISTS {quoted_schema}",
        f"REVOKE ALL ON SCHEMA {quoted_schema} FROM PUBLIC",
        f"GRANT USAGE, CREATE ON SCHEMA {quoted_schema} TO {quoted_role}",
        f"ALTER ROLE {quoted_role} SET search_path = {quoted_schema}",
    ]


def _ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,62}", name):
        raise ValueError(f"not a plain PostgreSQL identifier: {name!r}")
    return f'"{name}"'
