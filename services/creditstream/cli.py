"""`creditstream` command line: builds the Settings once and hands them to each component.

NOTE: heavy modules (onnxruntime, pandas, scikit-learn) are imported inside each command so
that `creditstream --help` is fast and the consumer image never imports training code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from creditstream.settings import Settings

app = typer.Typer(
    name="creditstream",
    help="Queue-driven credit-card default risk scoring on RabbitMQ + ONNX Runtime.",
    no_args_is_help=True,
    # NOTE: uncaught errors reach run_app(), which prints them redacted (rich's pretty
    # tracebacks would print exception messages as they are).
    pretty_exceptions_enable=False,
    add_completion=False,
)


def build_settings(**overrides: Any) -> Settings:
    """Environment/.env settings with the CLI flags that were given on top.

    Invalid settings end the command with exit code 2 and the field names, never the values
    (they may be URLs with passwords).
    """
    from pydantic import ValidationError

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        from creditstream.redaction import Redactor, secrets_in_environment

        redactor = Redactor(secrets_in_environment())
        for error in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            variable = f"CREDITSTREAM_{field.upper()}"
            typer.echo(redactor(f"error: invalid {field} ({variable}): {error['msg']}"), err=True)
        raise typer.Exit(code=2) from None


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Kubernetes stopping the pod, Ctrl-C)."""
    import signal

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger("creditstream").warning(
            "received %s: stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def read_secret_file(path: Path | None) -> str | None:
    """The secret stored in a file (e.g. a mounted Secret), without its trailing newline."""
    if path is None:
        return None
    return path.read_text(encoding="utf-8").strip()


def _setup_logging(settings: Settings, component: str) -> None:
    from creditstream.logs import configure_logging

    configure_logging(settings, component)


# NOTE: secrets are never command-line values (visible in `ps`, shell history, pod specs):
# they come from the environment (CREDITSTREAM_*) or from a file such as a mounted Secret.
_SECRET_FILE = {"exists": True, "dir_okay": False, "readable": True, "show_default": False}
AmqpUrlFileOption = Annotated[
    Path | None,
    typer.Option(
        "--amqp-url-file",
        help="File holding the AMQP URL (default: the CREDITSTREAM_AMQP_URL variable).",
        **_SECRET_FILE,
    ),
]
DatabaseUrlFileOption = Annotated[
    Path | None,
    typer.Option(
        "--database-url-file",
        help="File holding the results store's SQLAlchemy URL (default: the "
        "CREDITSTREAM_DATABASE_URL variable).",
        **_SECRET_FILE,
    ),
]
# NOTE: options shared by the long-running commands (consume, stage, relay), declared once.
HttpPortOption = Annotated[
    int | None, typer.Option(help="Port of /healthz, /readyz, /metrics (0 disables).", min=0)
]
ExitWhenIdleOption = Annotated[
    float | None,
    typer.Option("--exit-when-idle", help="Exit 0 after SECONDS without deliveries.", min=0),
]
PrefetchOption = Annotated[int | None, typer.Option(help="AMQP prefetch count.", min=1)]
DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="UCI data set (.csv or official .xls).", show_default=False),
]


@app.command()
def produce(
    data: DataOption = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic", help="Send SYNTHETIC records drawn from the model card's distributions."
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Send at most N records.", min=1)] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Target records per second (default: as fast as confirms allow).", min=0.001
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(help="Seconds to pause between messages (alternative to --rate).", min=0),
    ] = None,
    records_per_message: Annotated[
        int,
        typer.Option(
            "--records-per-message",
            "-k",
            help="Records per AMQP message (JSON array when > 1).",
            min=1,
        ),
    ] = 1,
    repeat: Annotated[int, typer.Option(help="Stream the data this many times.", min=1)] = 1,
    run_id: Annotated[
        str | None,
        typer.Option(help="Stable run id: message ids derive from it, so a rerun is deduplicated."),
    ] = None,
    amqp_url_file: AmqpUrlFileOption = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar (default: on a terminal).",
            show_default=False,
        ),
    ] = None,
    pipeline: Annotated[
        str,
        typer.Option(
            "--pipeline",
            help="fused: request records to the requests queue; staged: raw CSV rows (strings, "
            "as the file holds them) to the preprocess stage's queue.",
        ),
    ] = "fused",
) -> None:
    """Stream client records into RabbitMQ with publisher confirms."""
    from creditstream.producer import run_producer

    if pipeline not in {"fused", "staged"}:
        raise typer.BadParameter("--pipeline is fused or staged")
    if pipeline == "staged" and repeat != 1:
        raise typer.BadParameter("--pipeline staged sends each raw row once (no --repeat)")
    if data is not None and synthetic:
        raise typer.BadParameter("--data and --synthetic exclude each other")
    if rate is not None and interval is not None:
        raise typer.BadParameter("--rate and --interval exclude each other")
    settings = build_settings(
        amqp_url=read_secret_file(amqp_url_file), data_path=data, run_id=run_id
    )
    _setup_logging(settings, "producer")
    from creditstream.broker import BROKER_DOWN_ERRORS
    from creditstream.data.dataset import DatasetError
    from creditstream.data.source import DataSourceError
    from creditstream.logs import settings_redactor
    from creditstream.model_card import ModelCardError
    from creditstream.stages.raw import RawDataError
    from creditstream.topology import TopologyMismatchError

    stop = _stop_on_signals()
    try:
        if pipeline == "staged":
            from creditstream.producer import iter_source_records
            from creditstream.stages.raw import as_raw, raw_rows
            from creditstream.stages.topology import stage_settings

            if synthetic:
                synthetic_rows, _total, _label = iter_source_records(
                    settings, synthetic=True, limit=limit, repeat=1
                )
                rows = as_raw(synthetic_rows)
            else:
                rows = raw_rows(settings.data_path, limit)
            report = run_producer(
                stage_settings(settings, "preprocess"),
                limit=limit,
                rate=rate,
                interval=interval,
                records_per_message=records_per_message,
                progress=progress,
                records=rows,
                stop=stop,
            )
        else:
            report = run_producer(
                settings,
                synthetic=synthetic,
                limit=limit,
                rate=rate,
                interval=interval,
                records_per_message=records_per_message,
                repeat=repeat,
                progress=progress,
                stop=stop,
            )
    except (
        DatasetError,
        DataSourceError,
        ModelCardError,
        TopologyMismatchError,
        RawDataError,
        FileNotFoundError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except BROKER_DOWN_ERRORS as exc:
        url = settings_redactor(settings)(settings.amqp_url.get_secret_value())
        typer.echo(
            f"error: RabbitMQ unreachable at {url} after {settings.broker_wait_s:g}s "
            f"({exc.__class__.__name__}); nothing was sent",
            err=True,
        )
        raise typer.Exit(code=1) from exc
    typer.echo(report.summary_line())
    if not report.complete:
        raise typer.Exit(code=1)


@app.command()
def consume(
    batch_size: Annotated[
        int | None, typer.Option(help="Max records per ONNX call.", min=1)
    ] = None,
    batch_timeout_ms: Annotated[
        int | None, typer.Option(help="Flush a partial batch after T ms.", min=0)
    ] = None,
    prefetch: PrefetchOption = None,
    exit_when_idle: ExitWhenIdleOption = None,
    http_port: HttpPortOption = None,
    amqp_url_file: AmqpUrlFileOption = None,
    database_url_file: DatabaseUrlFileOption = None,
    model: Annotated[Path | None, typer.Option("--model", help="ONNX model file.")] = None,
) -> None:
    """Score queued records in micro-batches with ONNX Runtime and store every prediction."""
    from creditstream.consumer import run_consumer

    settings = build_settings(
        batch_size=batch_size,
        batch_timeout_ms=batch_timeout_ms,
        prefetch=prefetch,
        exit_when_idle_s=exit_when_idle,
        http_port=http_port,
        amqp_url=read_secret_file(amqp_url_file),
        database_url=read_secret_file(database_url_file),
        model_path=model,
    )
    _setup_logging(settings, "consumer")
    raise typer.Exit(code=run_consumer(settings))


@app.command()
def relay(
    http_port: HttpPortOption = None,
    amqp_url_file: AmqpUrlFileOption = None,
    database_url_file: DatabaseUrlFileOption = None,
) -> None:
    """Publish committed prediction events from the outbox (every consumer also runs one)."""
    from creditstream.outbox import run_relay

    settings = build_settings(
        http_port=http_port,
        amqp_url=read_secret_file(amqp_url_file),
        database_url=read_secret_file(database_url_file),
    )
    _setup_logging(settings, "relay")
    raise typer.Exit(code=run_relay(settings))


results_app = typer.Typer(
    help="Read predictions back: the results stream (events) or the results store.",
    no_args_is_help=True,
)
app.add_typer(results_app, name="results")


@results_app.command("follow")
def results_follow(
    start: Annotated[
        str,
        typer.Option(
            "--from",
            help="Where to start in the stream: first, last, next, an offset, or a time "
            "(ISO 8601, e.g. 2026-11-30T21:00:00Z).",
        ),
    ] = "next",
    limit: Annotated[
        int | None, typer.Option(help="Exit after this many events.", min=1, show_default=False)
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(
            "--idle-exit", help="Exit after SECONDS without an event.", min=0, show_default=False
        ),
    ] = None,
    amqp_url_file: AmqpUrlFileOption = None,
) -> None:
    """Print prediction events from the results stream, one JSON line each."""
    import json

    from creditstream.results import FollowError, follow, parse_offset

    try:
        offset = parse_offset(start)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--from") from exc
    settings = build_settings(amqp_url=read_secret_file(amqp_url_file))
    _setup_logging(settings, "results")
    try:
        follow(
            settings,
            offset,
            lambda event: typer.echo(json.dumps(event)),
            stop=_stop_on_signals(),
            limit=limit,
            idle_exit_s=idle_exit,
        )
    except FollowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@results_app.command("get")
def results_get(
    ids: Annotated[list[str], typer.Argument(help="Request ids or record ids.")],
    database_url_file: DatabaseUrlFileOption = None,
) -> None:
    """Print stored predictions (the database) for request or record ids; exit 1 if any missing."""
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from creditstream.results import get

    settings = build_settings(database_url=read_secret_file(database_url_file))
    _setup_logging(settings, "results")
    try:
        rows = get(settings, ids)
    except SQLAlchemyError as exc:
        typer.echo(f"error: results store: {str(exc).splitlines()[0][:200]}", err=True)
        raise typer.Exit(code=2) from exc
    for row in rows:
        typer.echo(json.dumps(row))
    found = {str(row["request_id"]) for row in rows} | {str(row["record_id"]) for row in rows}
    missing = [i for i in ids if i not in found]
    for i in missing:
        typer.echo(f"not found: {i}", err=True)
    if missing:
        raise typer.Exit(code=1)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="preprocess, features or score.")],
    batch_size: Annotated[
        int | None, typer.Option(help="Max messages (score: records) per batch.", min=1)
    ] = None,
    batch_timeout_ms: Annotated[
        int | None, typer.Option(help="Score: flush a partial batch after T ms.", min=0)
    ] = None,
    prefetch: PrefetchOption = None,
    exit_when_idle: ExitWhenIdleOption = None,
    http_port: HttpPortOption = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Graph file of the stage (features or score; default: the card's, beside "
            "the fused model).",
        ),
    ] = None,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Score: consume the shadow queue (a copy of the features output), store under "
            "this model's own version, never reply, never publish results.",
        ),
    ] = False,
    amqp_url_file: AmqpUrlFileOption = None,
    database_url_file: DatabaseUrlFileOption = None,
) -> None:
    """Run one stage of the staged pipeline (raw → preprocess → features → score)."""
    from creditstream.stages.run import run_stage
    from creditstream.stages.topology import STAGES

    if name not in STAGES:
        raise typer.BadParameter(f"stage is one of {', '.join(STAGES)}")
    settings = build_settings(
        batch_size=batch_size,
        batch_timeout_ms=batch_timeout_ms,
        prefetch=prefetch,
        exit_when_idle_s=exit_when_idle,
        http_port=http_port,
        amqp_url=read_secret_file(amqp_url_file),
        database_url=read_secret_file(database_url_file),
    )
    _setup_logging(settings, f"stage-{name}")
    raise typer.Exit(code=run_stage(settings, name, model=model, shadow=shadow))


@results_app.command("compare")
def results_compare(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="CSV with the label column (AUC where labels exist).", exists=True
        ),
    ] = None,
    champion: Annotated[
        str | None, typer.Option(help="Champion model version (default: the only one).")
    ] = None,
    shadow: Annotated[
        str | None, typer.Option(help="Shadow model version (default: the only shadow:*).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    database_url_file: DatabaseUrlFileOption = None,
) -> None:
    """Champion vs shadow over the records both scored: AUC of each, differing decisions."""
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from creditstream.stages.compare import as_dict, compare, read_labels

    settings = build_settings(database_url=read_secret_file(database_url_file))
    _setup_logging(settings, "results")
    labels = read_labels(data) if data is not None else None
    try:
        result = compare(settings, labels=labels, champion=champion, shadow=shadow)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    except SQLAlchemyError as exc:
        typer.echo(f"error: results store: {str(exc).splitlines()[0][:200]}", err=True)
        raise typer.Exit(code=1) from exc
    if as_json:
        typer.echo(json.dumps(as_dict(result)))
    else:
        for line in result.lines():
            typer.echo(line)


@app.command()
def predict(
    source: Annotated[str, typer.Argument(help="JSON file of record(s), or - for stdin.")] = "-",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each reply.", min=0.1)] = 30.0,
    amqp_url_file: AmqpUrlFileOption = None,
) -> None:
    """Score records through the queue (reply_to + correlation_id); one JSON line per record."""
    import json
    import sys

    from creditstream.client import PredictionClient, PredictionError

    settings = build_settings(amqp_url=read_secret_file(amqp_url_file))
    _setup_logging(settings, "client")
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"input is not JSON: {exc}") from exc
    records = payload if isinstance(payload, list) else [payload]
    with PredictionClient(settings) as client:
        try:
            predictions = client.predict_many(records, timeout=timeout)
        except PredictionError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from exc
    for prediction in predictions:
        typer.echo(json.dumps(prediction))
    if any("error" in p for p in predictions):
        raise typer.Exit(code=1)


@app.command("smoke-test")
def smoke_test(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.", min=0.1)] = 60.0,
    amqp_url_file: AmqpUrlFileOption = None,
) -> None:
    """Publish one synthetic record and wait for its prediction via reply_to (the helm test)."""
    from creditstream.client import run_smoke_test

    settings = build_settings(amqp_url=read_secret_file(amqp_url_file))
    _setup_logging(settings, "smoke-test")
    raise typer.Exit(code=run_smoke_test(settings, timeout=timeout))


@app.command("declare-topology")
def declare_topology_command(amqp_url_file: AmqpUrlFileOption = None) -> None:
    """Declare the exchanges, queues and bindings (as an admin: the least-privilege bootstrap)."""
    from creditstream.broker import BROKER_DOWN_ERRORS
    from creditstream.topology import declare_topology

    settings = build_settings(amqp_url=read_secret_file(amqp_url_file))
    _setup_logging(settings, "declare-topology")
    try:
        declare_topology(settings.model_copy(update={"declare_topology": True}))
    except BROKER_DOWN_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"declared {settings.requests_exchange} -> {settings.requests_queue} and friends")


@app.command("broker-roles")
def broker_roles_command() -> None:
    """Print the least-privilege broker users as rabbitmqctl commands (creditstream.accounts)."""
    from creditstream.accounts import broker_roles

    settings = build_settings()
    vhost = "${VHOST:-/}"
    for role in broker_roles(settings).values():
        p = role.permissions
        typer.echo(f"# {role.name}: {role.does}")
        user = f'"$USER_{role.name.upper().replace("-", "_")}"'
        # NOTE: without a password argument rabbitmqctl reads it from stdin (never in argv).
        typer.echo(f"rabbitmqctl add_user {user}  # password from stdin")
        typer.echo(f"rabbitmqctl set_user_tags {user} {' '.join(role.tags)}".rstrip())
        typer.echo(
            f'rabbitmqctl set_permissions -p "{vhost}" {user} '
            f"'{p.configure}' '{p.write}' '{p.read}'"
        )


@app.command("check-data")
def check_data(
    data: DataOption = None,
    expect_full: Annotated[
        bool, typer.Option("--expect-full/--any-size", help="Require the full 30,000-row data set.")
    ] = True,
) -> None:
    """Validate the UCI data set and print rows, default rate and sha256 digests."""
    from creditstream.data.dataset import DatasetError, summarise
    from creditstream.data.source import DataSourceError, resolve_data_path

    settings = build_settings(data_path=data)
    try:
        path = data if data is not None else resolve_data_path(settings)
        summary = summarise(path, expect_full=expect_full)
    except (DatasetError, DataSourceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    for line in summary.lines():
        typer.echo(line)


@app.command()
def download(
    url: Annotated[
        str | None,
        typer.Option(
            help="Archive URL (default: CREDITSTREAM_UCI_ARCHIVE_URL).", show_default=False
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Download directory (default: CREDITSTREAM_CACHE_DIR).", show_default=False
        ),
    ] = None,
) -> None:
    """Fetch the official UCI archive (id 350) into the cache and verify its content digest."""
    from creditstream.data.download import DownloadError, download_uci

    settings = build_settings(uci_archive_url=url, cache_dir=cache_dir)
    try:
        result = download_uci(settings)
    except DownloadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"downloaded {result.rows} rows to {result.path}")
    typer.echo(f"archive sha256: {result.archive_sha256}")
    typer.echo(f"content sha256: {result.content_sha256} (matches the pinned digest)")


@app.command()
def train(
    data: DataOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="Where to write the ONNX model, model card and report "
            "(default: the directory of CREDITSTREAM_MODEL_PATH).",
            show_default=False,
        ),
    ] = None,
    allow_download: Annotated[
        bool,
        typer.Option(
            "--download/--no-download", help="Download the UCI archive if no data is found."
        ),
    ] = False,
    allow_unpinned_data: Annotated[
        bool,
        typer.Option(
            "--allow-unpinned-data",
            help="Train on data that is not the pinned UCI data set (its content digest "
            "differs), on purpose.",
        ),
    ] = False,
) -> None:
    """Select a model by CV, fit it, export ONNX and write the model card and report."""
    from creditstream.data.dataset import DatasetError
    from creditstream.data.download import PINNED_CONTENT_SHA256
    from creditstream.data.source import DataSourceError, resolve_data_path
    from creditstream.training.train import run_training

    settings = build_settings(data_path=data)
    try:
        path = resolve_data_path(settings, allow_download=allow_download)
        result = run_training(
            settings,
            path,
            out_dir or settings.model_path.parent,
            expected_content_sha256=None if allow_unpinned_data else PINNED_CONTENT_SHA256,
        )
    except (DatasetError, DataSourceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    card = result.card
    holdout = card["metrics"]["holdout"]
    cv = card["metrics"]["cv"]
    typer.echo(f"model {card['version']} ({card['selection']['chosen']}) from {path}")
    typer.echo(
        f"hold-out AUC {holdout['auc']:.4f}  F1 {holdout['f1']:.4f}  "
        f"Brier {holdout['brier']:.4f}  at threshold {card['threshold']['value']:.4f}"
    )
    typer.echo(
        f"CV AUC {cv['auc_mean']:.4f} ± {cv['auc_std']:.4f}; full-data AUC "
        f"{card['metrics']['full_data']['auc']:.6f}; parity "
        f"{card['parity']['holdout_max_abs_diff']:.2e}"
    )
    for name, written in result.paths.items():
        typer.echo(f"{name}: {written}")


@app.command()
def demo(
    first_burst: Annotated[int, typer.Option(help="Records in the first burst.", min=1)] = 15_000,
    pause: Annotated[float, typer.Option(help="Seconds between the bursts.", min=0)] = 45.0,
    second_burst: Annotated[
        int, typer.Option(help="Records in the second burst (0: none).", min=0)
    ] = 15_000,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Records/s of each burst (default 500: faster than one replica drains).", min=0.001
        ),
    ] = None,
    max_duration: Annotated[
        float,
        typer.Option(
            "--max-duration", help="Stop after this many seconds even if not settled.", min=10
        ),
    ] = 270.0,
    set_values: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a chart value (autoscaling.* for the local rule, consumer.* for the "
            "consumers), e.g. autoscaling.maxReplicaCount=4 (repeatable).",
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", help="Parent of the run folder (default: runs/).")
    ] = None,
    download: Annotated[
        bool,
        typer.Option(
            "--download/--no-download", help="Download the UCI data when it is not present."
        ),
    ] = True,
    dashboard: Annotated[
        bool | None,
        typer.Option(
            "--dashboard/--no-dashboard",
            help="Live dashboard (default: on a terminal).",
            show_default=False,
        ),
    ] = None,
    amqp_url_file: AmqpUrlFileOption = None,
    pipeline: Annotated[
        str,
        typer.Option(
            "--pipeline",
            help="fused: the consumer; staged: preprocess, features and score processes, each "
            "scaled by the rule on its own queue (raw CSV rows in).",
        ),
    ] = "fused",
) -> None:
    """Run the platform on this machine, scaled by the local KEDA rule, and write a run folder."""
    from creditstream.autoscale.rule import parse_set_override
    from creditstream.demo.run import DemoOptions, LoadProfile, run_demo

    settings = build_settings(amqp_url=read_secret_file(amqp_url_file))
    try:
        overrides: list[Mapping[str, Any]] = [parse_set_override(text) for text in set_values or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if pipeline not in {"fused", "staged"}:
        raise typer.BadParameter("--pipeline is fused or staged")
    if pipeline == "staged":
        from creditstream.stages.demo import StagedDemoOptions, run_staged_demo

        staged = StagedDemoOptions(
            first_burst=first_burst,
            second_burst=second_burst,
            pause_s=pause,
            rate=rate or StagedDemoOptions.rate,
            max_duration_s=max_duration,
            set_overrides=overrides,
            dashboard=dashboard,
        )
        if runs_dir is not None:
            staged.runs_dir = runs_dir
        raise typer.Exit(code=run_staged_demo(settings, staged))
    options = DemoOptions(
        profile=LoadProfile(
            first_burst=first_burst, pause_s=pause, second_burst=second_burst, rate=rate
        ),
        max_duration_s=max_duration,
        set_overrides=overrides,
        allow_download=download,
        dashboard=dashboard,
    )
    if runs_dir is not None:
        options.runs_dir = runs_dir
    raise typer.Exit(code=run_demo(settings, options))


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI sanity run (< 2 min): small sizes, no targets.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for benchmarks.json and benchmarks.md (default: docs/).",
            show_default=False,
        ),
    ] = None,
    pg_url_file: Annotated[
        Path | None,
        typer.Option(
            "--pg-url-file",
            help="File holding the SQLAlchemy URL of the PostgreSQL database for the PostgreSQL "
            "scenarios (default: the local test database, postgres@127.0.0.1:5432/test).",
            **_SECRET_FILE,
        ),
    ] = None,
    amqp_url_file: AmqpUrlFileOption = None,
) -> None:
    """Benchmark throughput and latency against the broker ceiling and a seed-style consumer."""
    from creditstream.bench.runner import DEFAULT_PG_URL, run_bench
    from creditstream.settings import REPO_ROOT

    settings = build_settings(amqp_url=read_secret_file(amqp_url_file))
    _setup_logging(settings, "bench")
    target = out or REPO_ROOT / "docs"
    pg_url = read_secret_file(pg_url_file) or DEFAULT_PG_URL
    raise typer.Exit(code=run_bench(settings, quick=quick, out_dir=target, pg_url=pg_url))


@app.command()
def observe(
    release: Annotated[str, typer.Option(help="Helm release name.")] = "creditstream",
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")] = "default",
    deployment: Annotated[
        str | None,
        typer.Option(
            help="Consumer Deployment (default: found by the chart's labels).", show_default=False
        ),
    ] = None,
    context: Annotated[
        str | None, typer.Option(help="kubeconfig context (default: current).", show_default=False)
    ] = None,
    management_url_file: Annotated[
        Path | None,
        typer.Option(
            "--management-url-file",
            help="File holding the RabbitMQ management API URL with its credentials (default: "
            "the CREDITSTREAM_MANAGEMENT_URL variable; reach the API with `kubectl "
            "port-forward svc/creditstream-rabbitmq 15672`). Without it the HPA's metric is "
            "shown.",
            **_SECRET_FILE,
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            help="Queue to read (default: CREDITSTREAM_REQUESTS_QUEUE).", show_default=False
        ),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.2)] = 2.0,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after SECONDS (default: until Ctrl-C).", min=1, show_default=False),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="Where timeline.csv/png go (default: runs/observe-<time>/).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Follow a cluster release: Deployment, HPA, ScaledObject and queue depth, like `get -w`."""
    import sys
    from datetime import datetime

    from creditstream.autoscale.queue_depth import QueueDepthError, management_reader
    from creditstream.observe import run_observe
    from creditstream.settings import REPO_ROOT

    settings = build_settings(
        management_url=read_secret_file(management_url_file), requests_queue=queue
    )
    reader = None
    if settings.management_url is not None:
        reader = management_reader(settings.management_urls, settings.requests_queue)

    def read_depth() -> Any:
        if reader is None:
            return None
        try:
            return reader.read()
        except QueueDepthError:
            return None

    target = out_dir or REPO_ROOT / "runs" / f"observe-{datetime.now():%Y%m%d-%H%M%S}"
    raise typer.Exit(
        code=run_observe(
            namespace=namespace,
            release=release,
            out_dir=target,
            read_depth=read_depth,
            deployment=deployment,
            context=context,
            interval_s=interval,
            duration_s=duration,
            stream=sys.stdout,
        )
    )


def main() -> None:
    """Console-script entry point: an unexpected error prints a redacted traceback, exit 1."""
    run_app(app)


def run_app(application: typer.Typer) -> None:
    """Run a Typer app; tracebacks of unexpected errors pass the redactor before printing."""
    import sys
    import traceback

    try:
        application()
    except Exception:  # noqa: BLE001 - the last line of defence before the terminal
        from creditstream.redaction import Redactor, secrets_in_environment

        redactor = Redactor(secrets_in_environment())
        sys.stderr.write(redactor(traceback.format_exc()))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
