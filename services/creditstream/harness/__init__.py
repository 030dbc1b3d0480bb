"""The local platform, one package for the demo, the benchmark and the tests.

- processes: `ProcessGroup` starts `creditstream` subcommands from a Settings object
  (`Settings.to_env()`), with a port and a log each; SIGTERM, grace, SIGKILL; restart.
- metrics: `Metrics` (prometheus_client's parser) and histogram maths over processes.
- isolation: `isolated_run()`: a run's own exchanges/queues and store, removed afterwards;
  `postgres_schema`, `postgres_database`, `broker_vhost` for tests that need more.
- results: `ResultsReader`, the one reader of the predictions table (count, rows, timing).
- supervisor + keda: `Supervisor` keeps N consumers like a Deployment; `LocalKeda.tick()` is
  trigger metric -> KEDA + HPA rule -> supervisor.
"""

from creditstream.harness.isolation import (
    broker_vhost,
    isolated_run,
    isolated_settings,
    postgres_database,
    postgres_schema,
    unique_tag,
)
from creditstream.harness.keda import KedaTick, LocalKeda, QueueTrigger
from creditstream.harness.metrics import Histogram, HistogramAggregator, Metrics, scrape
from creditstream.harness.processes import (
    Process,
    ProcessGroup,
    cli_command,
    free_port,
    process_env,
    run_cli,
)
from creditstream.harness.results import ResultsReader, StoredPrediction, StoreSummary
from creditstream.harness.supervisor import Supervisor, SupervisorEvent

__all__ = [
    "Histogram",
    "HistogramAggregator",
    "KedaTick",
    "LocalKeda",
    "Metrics",
    "Process",
    "ProcessGroup",
    "QueueTrigger",
    "ResultsReader",
    "StoreSummary",
    "StoredPrediction",
    "Supervisor",
    "SupervisorEvent",
    "broker_vhost",
    "cli_command",
    "free_port",
    "isolated_run",
    "isolated_settings",
    "postgres_database",
    "postgres_schema",
    "process_env",
    "run_cli",
    "scrape",
    "unique_tag",
]
