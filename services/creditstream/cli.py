"""`creditstream` command line: builds the Settings once and hands them to each component.

NOTE: heavy modules (onnxruntime, pandas, scikit-learn) are imported inside each command so
that `creditstream --help` is fast and the consumer image never imports training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from creditstream.settings import Settings

app = typer.Typer(
    name="creditstream",
    help="Queue-driven credit-card default risk scoring on RabbitMQ + ONNX Runtime.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def build_settings(**overrides: Any) -> Settings:
    """Environment/.env settings with the CLI flags that were given on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)


def _setup_logging(settings: Settings, component: str) -> None:
    from creditstream.logs import configure_logging

    configure_logging(settings, component)


AmqpUrlOption = Annotated[
    str | None, typer.Option("--amqp-url", help="AMQP URL (default: CREDITSTREAM_AMQP_URL).",
                             show_default=False)
]
DatabaseUrlOption = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL of the results store.",
                             show_default=False)
]
DataOption = Annotated[
    Path | None, typer.Option("--data", help="UCI data set (.csv or official .xls).",
                              show_default=False)
]


@app.command()
def produce(
    data: DataOption = None,
    synthetic: Annotated[bool, typer.Option(
        "--synthetic", help="Send SYNTHETIC records drawn from the model card's distributions.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Send at most N records.", min=1)] = None,
    rate: Annotated[float | None, typer.Option(
        help="Target records per second (default: as fast as confirms allow).", min=0.001)] = None,
    interval: Annotated[float | None, typer.Option(
        help="Seconds to pause between messages (alternative to --rate).", min=0)] = None,
    records_per_message: Annotated[int, typer.Option(
        "--records-per-message", "-k", help="Records per AMQP message (JSON array when > 1).",
        min=1)] = 1,
    repeat: Annotated[int, typer.Option(help="Stream the data this many times.", min=1)] = 1,
    run_id: Annotated[str | None, typer.Option(
        help="Stable run id: message ids derive from it, so a rerun is deduplicated.")] = None,
    amqp_url: AmqpUrlOption = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar (default: on a terminal).",
        show_default=False)] = None,
) -> None:
    """Stream client records into RabbitMQ with publisher confirms."""
    from creditstream.producer import run_producer

    if data is not None and synthetic:
        raise typer.BadParameter("--data and --synthetic exclude each other")
    if rate is not None and interval is not None:
        raise typer.BadParameter("--rate and --interval exclude each other")
    settings = build_settings(amqp_url=amqp_url, data_path=data, run_id=run_id)
    _setup_logging(settings, "producer")
    report = run_producer(
        settings,
        synthetic=synthetic,
        limit=limit,
        rate=rate,
        interval=interval,
        records_per_message=records_per_message,
        repeat=repeat,
        progress=progress,
    )
    typer.echo(report.summary_line())
    if report.unconfirmed:
        raise typer.Exit(code=1)


@app.command()
def consume(
    batch_size: Annotated[int | None, typer.Option(help="Max records per ONNX call.", min=1)] = None,
    batch_timeout_ms: Annotated[int | None, typer.Option(
        help="Flush a partial batch after T ms.", min=0)] = None,
    prefetch: Annotated[int | None, typer.Option(help="AMQP prefetch count.", min=1)] = None,
    exit_when_idle: Annotated[float | None, typer.Option(
        "--exit-when-idle", help="Exit 0 after SECONDS without deliveries.", min=0)] = None,
    http_port: Annotated[int | None, typer.Option(
        help="Port of /healthz, /readyz, /metrics (0 disables).", min=0)] = None,
    amqp_url: AmqpUrlOption = None,
    database_url: DatabaseUrlOption = None,
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
        amqp_url=amqp_url,
        database_url=database_url,
        model_path=model,
    )
    _setup_logging(settings, "consumer")
    raise typer.Exit(code=run_consumer(settings))


@app.command()
def predict(
    source: Annotated[str, typer.Argument(help="JSON file of record(s), or - for stdin.")] = "-",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each reply.", min=0.1)] = 30.0,
    amqp_url: AmqpUrlOption = None,
) -> None:
    """Score records through the queue (reply_to + correlation_id); one JSON line per record."""
    import json
    import sys

    from creditstream.client import PredictionClient, PredictionError

    settings = build_settings(amqp_url=amqp_url)
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


@app.command("smoke-test")
def smoke_test(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.", min=0.1)] = 60.0,
    amqp_url: AmqpUrlOption = None,
) -> None:
    """Publish one synthetic record and wait for its prediction via reply_to (the helm test)."""
    from creditstream.client import run_smoke_test

    settings = build_settings(amqp_url=amqp_url)
    _setup_logging(settings, "smoke-test")
    raise typer.Exit(code=run_smoke_test(settings, timeout=timeout))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
