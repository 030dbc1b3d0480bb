"""The local platform: processes, isolated runs, the results reader and KEDA on this machine."""

from creditstream.harness.isolation import (
    broker_vhost,
    isolated_run,
    postgres_database,
    postgres_schema,
    unique_tag,
)

__all__ = ["broker_vhost", "isolated_run", "postgres_database", "postgres_schema", "unique_tag"]
