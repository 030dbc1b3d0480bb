"""The one settings object: built once by the CLI, passed down to every component."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_data_path() -> Path:
    """`../shared/data/UCI_Credit_Card.csv` beside the checkout, where developers and CI keep it."""
    return (REPO_ROOT.parent / "shared" / "data" / "UCI_Credit_Card.csv").resolve()


def _default_models_dir() -> Path:
    # NOTE: inside an image the package is installed into site-packages, so REPO_ROOT is
    # meaningless there; images set CREDITSTREAM_MODEL_PATH explicitly.
    return REPO_ROOT / "models"


class Settings(BaseSettings):
    """Every knob of creditstream; env vars are `CREDITSTREAM_<FIELD>` (also read from `.env`)."""

    model_config = SettingsConfigDict(
        env_prefix="CREDITSTREAM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
        # NOTE: a validation error must never echo what was given: it may be a URL with a
        # password (or a password in the wrong variable).
        hide_input_in_errors=True,
    )

    # --- broker -----------------------------------------------------------------------------
    amqp_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@localhost:5672/"),
        description="AMQP URL of RabbitMQ (amqps:// for TLS), or a comma-separated list of "
        "them, one per cluster node: clients connect to one and fail over to the others. "
        "Secret: never logged.",
    )
    management_url: SecretStr | None = Field(
        None,
        description="RabbitMQ management API base URL (http://user:pass@host:15672), or a "
        "comma-separated list (one per cluster node, tried in turn); used to count ready + "
        "unacked messages. Derived from amqp_url (each URL, port 15672) when unset.",
    )
    requests_exchange: str = Field(
        "creditstream.requests", description="Exchange producers publish to."
    )
    requests_queue: str = Field(
        "creditstream.requests",
        description="Queue consumers read (and KEDA watches); bound to requests_exchange.",
    )
    dead_letter_exchange: str = Field(
        "creditstream.dead", description="Exchange for rejected records."
    )
    dead_letter_queue: str = Field(
        "creditstream.dead", description="Queue holding rejected records."
    )
    predictions_exchange: str = Field(
        "creditstream.predictions", description="Exchange every scored batch is published to."
    )
    results_stream: str = Field(
        "creditstream.results",
        description="Stream queue (x-queue-type: stream) bound to predictions_exchange: every "
        "prediction event, durable and replayable (`creditstream results follow`).",
    )
    results_stream_max_bytes: int = Field(
        1_000_000_000,
        ge=1_000_000,
        description="Retention of the results stream by size (x-max-length-bytes): the oldest "
        "segments are removed past it. Applies when the stream is created; an existing stream "
        "keeps its own (change it with a RabbitMQ policy).",
    )
    results_stream_max_age: str = Field(
        "7D",
        pattern=r"^[1-9][0-9]*(Y|M|D|h|m|s)$",
        description="Retention of the results stream by age (x-max-age, e.g. 7D, 12h, 30m); "
        "applies when the stream is created, like results_stream_max_bytes.",
    )
    results_stream_segment_bytes: int = Field(
        100_000_000,
        ge=100_000,
        description="Segment size of the results stream (x-stream-max-segment-size-bytes); "
        "retention removes whole segments, so keep it well below results_stream_max_bytes.",
    )
    stage_prefix: str = Field(
        "creditstream.stage",
        description="Staged pipeline (issue 11): stage S reads queue PREFIX.S, bound to "
        "exchange PREFIX.S (S = preprocess, features, score; the shadow score stage reads "
        "PREFIX.score.shadow).",
    )
    stage_shadow: bool = Field(
        False,
        description="Staged pipeline: the features stage also declares the shadow score "
        "stage's queue (bound to the score exchange), so a shadow model sees every record "
        "even before its first replica starts.",
    )
    stage_model_path: Path | None = Field(
        None,
        description="Staged pipeline: the model graph the score stage serves (`stage score "
        "--model` wins); default: the card's, beside model_path. A graph the card does not list "
        "is served as version model+<sha256[:12]>.",
    )
    delivery_limit: int = Field(
        20,
        ge=1,
        description="Quorum-queue x-delivery-limit: deliveries returned (nack, consumer crash) "
        "before the broker dead-letters a message. Changing it on an existing queue needs a "
        "policy.",
    )
    quorum_initial_group_size: int | None = Field(
        None,
        ge=1,
        description="x-quorum-initial-group-size of the quorum queues: members (nodes) each "
        "queue gets when declared (None: RabbitMQ's default, quorum_cluster_size = 3, at most "
        "every node). Changing it "
        "on an existing queue needs a new queue.",
    )
    retry_delay_ms: int = Field(
        1000,
        ge=1,
        le=3_600_000,
        description="A message whose scoring failed (the model, not the input) waits this long "
        "in the retry queue (broker-side TTL) before it comes back; after delivery_limit "
        "attempts it is dead-lettered with reason scoring-failed.",
    )
    declare_topology: bool = Field(
        True,
        description="Declare the exchanges, queues and bindings at start (needs configure "
        "permission). False: only check they exist (passive declares need no permission), for "
        "least-privilege accounts; an admin bootstraps the topology (`creditstream "
        "declare-topology`, or the chart's bootstrap Job).",
    )
    tls_ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker's certificate for amqps:// URLs."
    )
    heartbeat_s: int = Field(30, ge=0, description="AMQP heartbeat in seconds (0 disables).")
    reconnect_max_s: float = Field(
        10.0, gt=0, description="Upper bound of the exponential reconnect backoff, seconds."
    )
    reconnect_attempts: int = Field(
        0, ge=0, description="Reconnect attempts before giving up (0 = forever)."
    )

    # --- results store ----------------------------------------------------------------------
    database_url: SecretStr = Field(
        SecretStr("sqlite:///creditstream.db"),
        description="SQLAlchemy URL of the results store (sqlite:///file.db or "
        "postgresql+psycopg://user:pass@host/db). Secret: never logged.",
    )
    database_schema: str | None = Field(
        None, description="PostgreSQL schema for the predictions table (default: search_path)."
    )
    database_connect_timeout_s: int = Field(
        5,
        ge=1,
        le=300,
        description="Seconds a connection to the results database may take before the attempt "
        "counts as a (transient) store failure.",
    )
    database_statement_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="PostgreSQL statement_timeout of the results store's sessions: a write "
        "slower than this is cancelled and retried as a transient store failure.",
    )

    outbox_poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often the outbox relay looks for unpublished events (it is also woken "
        "after every commit of its own consumer).",
    )
    outbox_batch_rows: int = Field(
        100, ge=1, le=10_000, description="Outbox rows the relay publishes per round."
    )
    outbox_batch_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Body bytes the relay loads per round (at least one row): dead letters "
        "keep whole bodies, so a round is bounded by bytes as well as rows.",
    )
    outbox_retry_max_s: float = Field(
        30.0,
        gt=0,
        description="Upper bound of the relay's backoff when events are returned unroutable, "
        "nacked or the broker is away.",
    )
    reply_buffer: int = Field(
        10_000,
        ge=1,
        description="Replies to RPC callers waiting for the publishing connection (e.g. during "
        "a memory alarm); beyond it the oldest is dropped and counted (the caller times out, "
        "the result is in the database).",
    )

    # --- data and model ---------------------------------------------------------------------
    data_path: Path = Field(
        default_factory=_default_data_path,
        description="UCI data set (CSV in the common layout, or the official .xls).",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "creditstream",
        description="Where the official UCI archive is downloaded to.",
    )
    uci_archive_url: str = Field(
        "https://archive.ics.uci.edu/static/public/350/default+of+credit+card+clients.zip",
        description="Official UCI archive (data set id 350).",
    )
    download_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest archive `creditstream download` accepts (the official one is a "
        "few MB); a larger one is refused while it downloads.",
    )
    download_max_extracted_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Largest .xls `creditstream download` extracts from the archive (the "
        "official one is a few MB); a bigger member (a zip bomb) is refused.",
    )
    model_path: Path = Field(
        default_factory=lambda: _default_models_dir() / "credit_default.onnx",
        description="ONNX model file (preprocessing inside the graph).",
    )
    model_card_path: Path | None = Field(
        None, description="Model card JSON; default: model_card.json beside model_path."
    )
    seed: int = Field(42, description="Random seed for training and synthetic records.")

    # --- consumer ---------------------------------------------------------------------------
    batch_size: int = Field(256, ge=1, le=100_000, description="Max records per ONNX call.")
    batch_timeout_ms: int = Field(
        20, ge=0, description="Flush a partial batch after this many ms without filling it."
    )
    prefetch: int = Field(
        1024, ge=1, le=65_535, description="AMQP prefetch (unacked deliveries per consumer)."
    )
    max_body_bytes: int = Field(
        262_144,
        ge=256,
        description="Bodies larger than this are dead-lettered unread (about 790 records of "
        "the contract fit in the default). prefetch x max_body_bytes must fit "
        "memory_budget_bytes.",
    )
    memory_budget_bytes: int = Field(
        268_435_456,
        ge=1_048_576,
        description="Memory the consumer may hold in deliveries not yet settled: prefetch x "
        "max_body_bytes must not exceed it. Keep it at most half the container's memory limit "
        "(the chart sets it to consumer.memoryBudgetFraction of the limit).",
    )
    max_records_per_message: int = Field(
        10_000, ge=1, description="Messages with more records than this are dead-lettered."
    )
    max_dead_letters_per_message: int = Field(
        100,
        ge=1,
        description="Rejected records one message may dead-letter one by one; a message with "
        "more is dead-lettered once, whole (reason too-many-rejections).",
    )
    dead_letter_excerpt_bytes: int = Field(
        65_536,
        ge=256,
        description="Largest payload of one dead letter; a longer record or body is cut to "
        "this many bytes, with its sha256 and length in headers.",
    )
    dead_letter_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=4096,
        description="x-max-length-bytes of the dead-letter queue (overflow reject-publish: a "
        "full queue refuses dead letters and the message stays in the requests queue). "
        "Changing it on an existing queue needs a policy.",
    )
    dead_letter_max_messages: int = Field(
        1_000_000,
        ge=1,
        description="x-max-length of the dead-letter queue (overflow reject-publish). "
        "x-max-length-bytes counts bodies only; this bounds letters of small bodies with large "
        "headers. Changing it on an existing queue needs a policy.",
    )
    reply_to_prefixes: str = Field(
        "",
        description="Queue-name prefixes a request's reply_to may name besides RabbitMQ's direct "
        "reply-to (amq.rabbitmq.reply-to.*); any other reply_to is refused (metric "
        'creditstream_refused_total{what="reply-to"}, a log line) and nothing is published. '
        "Comma-separated, e.g. `replies.,app2.replies.`.",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="Decision threshold override (default: the model card's)."
    )
    exit_when_idle_s: float | None = Field(
        None, ge=0, description="Exit 0 after this many seconds with no delivery (None: never)."
    )
    http_host: str = Field(
        "127.0.0.1",
        description="Bind address(es) of /healthz, /readyz, /metrics, comma-separated (IPv4 or "
        "IPv6 literals, or names). Loopback by default; the chart binds the pod IP (downward "
        "API status.podIP), which the kubelet probes and Prometheus scrapes, and loopback, "
        "which `kubectl port-forward` reaches.",
    )
    http_port: int = Field(
        8000, ge=0, le=65_535, description="Port of the HTTP endpoints (0: off)."
    )
    http_request_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Time a client has to send its whole request (line and headers) and to "
        "read the answer; slower connections are closed.",
    )
    http_max_connections: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Open connections the HTTP endpoints hold at once; more are closed at "
        "accept (all served by one thread).",
    )
    inference_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads.")

    # --- producer ---------------------------------------------------------------------------
    confirm_window: int = Field(
        2048, ge=1, description="Publisher confirms outstanding before the producer waits."
    )
    run_id: str | None = Field(
        None,
        description="Stable id of a production run; message ids derive from it so a retried "
        "producer Job republishes the same ids (deduplicated by the results store).",
    )
    broker_wait_s: float = Field(
        120.0, ge=0, description="How long producer/consumer wait for the broker at start-up."
    )

    # --- logging ----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json lines, rich console, or auto (console on a terminal)."
    )

    @model_validator(mode="after")
    def _check_memory_bound(self) -> Settings:
        in_hand = self.prefetch * self.max_body_bytes
        if in_hand > self.memory_budget_bytes:
            raise ValueError(
                f"prefetch ({self.prefetch}) x max_body_bytes ({self.max_body_bytes}) = "
                f"{in_hand} bytes of deliveries in hand exceeds memory_budget_bytes "
                f"({self.memory_budget_bytes}): lower CREDITSTREAM_PREFETCH or "
                "CREDITSTREAM_MAX_BODY_BYTES, or raise CREDITSTREAM_MEMORY_BUDGET_BYTES (and "
                "the container's memory limit with it)"
            )
        return self

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: SecretStr) -> SecretStr:
        urls = split_amqp_urls(value.get_secret_value())
        if not urls or any(not url for url in urls):
            raise ValueError("an empty URL in the list (amqp://host1/,amqp://host2/)")
        # NOTE: a raw comma in a password or vhost splits a URL in two; say so before pika
        # quotes a piece of the password in its error.
        if len(urls) > 1 and not all(re.match(r"[a-z][a-z0-9+.-]*://", url, re.I) for url in urls):
            raise ValueError(
                "a comma-separated list of amqp:// URLs, one per node; a comma inside a "
                "password or vhost must be percent-encoded (%2C)"
            )
        for position, url in enumerate(urls, 1):
            where = f"URL {position} of {len(urls)}: " if len(urls) > 1 else ""
            try:
                _check_amqp(url)
            except ValueError as exc:
                raise ValueError(f"{where}{exc}") from None
        return value

    @field_validator("run_id")
    @classmethod
    def _check_run_id(cls, value: str | None) -> str | None:
        # NOTE: message ids are `<run_id>-<9 digits>`; the consumer refuses ids outside
        # creditstream.guard's bounds, which would dead-letter the whole run.
        if value is not None and not _RUN_ID.fullmatch(value):
            raise ValueError(
                "must be 1..118 visible ASCII characters without '/' or '#' (message ids are "
                "<run_id>-<sequence>, at most 128 characters)"
            )
        return value

    @field_validator("reply_to_prefixes")
    @classmethod
    def _check_reply_to_prefixes(cls, value: str) -> str:
        for prefix in (p.strip() for p in value.split(",")):
            if not prefix:
                continue
            if prefix.startswith("amq.") or prefix.startswith("creditstream"):
                raise ValueError(
                    f"prefix {prefix!r} would admit the broker's or creditstream's own queues"
                )
            if not prefix.endswith("."):
                raise ValueError(f"prefix {prefix!r} must end with '.' (a name space, not a stem)")
        return value

    @model_validator(mode="after")
    def _reply_prefixes_miss_own_names(self) -> Settings:
        own = (
            self.requests_exchange,
            self.requests_queue,
            self.dead_letter_exchange,
            self.dead_letter_queue,
            self.predictions_exchange,
            # NOTE: a reply in the retry queue comes back as a request; in the results stream
            # it would be read as prediction events.
            f"{self.requests_queue}.retry-{self.retry_delay_ms}ms",
            *([self.results_stream] if self.results_stream else []),
        )
        for prefix in self.reply_to_prefix_list:
            if any(name.startswith(prefix) for name in own):
                raise ValueError(
                    f"reply_to_prefixes: {prefix!r} admits this deployment's own queues"
                )
        return self

    @model_validator(mode="after")
    def _check_results_stream(self) -> Settings:
        if self.results_stream_segment_bytes >= self.results_stream_max_bytes:
            raise ValueError(
                "results_stream_segment_bytes must be below results_stream_max_bytes: the "
                "stream removes whole segments, so retention by size could never apply"
            )
        return self

    @field_validator("management_url")
    @classmethod
    def _check_management_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            urls = split_amqp_urls(value.get_secret_value())
            for position, url in enumerate(urls, 1):
                where = f"URL {position} of {len(urls)}: " if len(urls) > 1 else ""
                try:
                    if not url:
                        raise ValueError("an empty URL in the list")
                    _check_url(url, {"http", "https"})
                except ValueError as exc:
                    raise ValueError(f"{where}{exc}") from None
        return value

    @classmethod
    def secret_field_names(cls) -> list[str]:
        """Fields holding secrets (SecretStr): never logged, redacted as literals."""
        return [
            name
            for name, info in cls.model_fields.items()
            if SecretStr in (info.annotation, *get_args(info.annotation))
        ]

    @property
    def amqp_urls(self) -> list[str]:
        """The AMQP URLs (secrets revealed), one per broker node, in the given order."""
        return split_amqp_urls(self.amqp_url.get_secret_value())

    @property
    def management_urls(self) -> list[str]:
        """Management API URLs (secrets revealed): the given list, or one per AMQP URL."""
        if self.management_url is not None:
            return split_amqp_urls(self.management_url.get_secret_value())
        from creditstream.autoscale.queue_depth import management_url_from_amqp

        return [management_url_from_amqp(url) for url in self.amqp_urls]

    @property
    def http_hosts(self) -> list[str]:
        """The addresses the HTTP endpoints bind, without duplicates, in the given order."""
        hosts = [host.strip() for host in self.http_host.split(",") if host.strip()]
        return list(dict.fromkeys(hosts)) or ["127.0.0.1"]

    @property
    def reply_to_prefix_list(self) -> list[str]:
        """The configured reply_to prefixes, without empty ones."""
        return [p.strip() for p in self.reply_to_prefixes.split(",") if p.strip()]

    @property
    def resolved_model_card_path(self) -> Path:
        """The model card path, defaulting to model_card.json beside the model."""
        return self.model_card_path or self.model_path.with_name("model_card.json")

    def to_env(self) -> dict[str, str]:
        """Every set field as CREDITSTREAM_<FIELD> (secrets revealed): a child's environment."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"CREDITSTREAM_{name.upper()}"] = str(value)
        return env


def split_amqp_urls(value: str) -> list[str]:
    """The URLs of a comma-separated AMQP URL list, stripped (an empty entry stays empty).

    NOTE: a comma cannot occur unescaped in a valid AMQP URL's user, password, host or vhost
    (they are percent-encoded), so the comma is an unambiguous separator.
    """
    return [url.strip() for url in value.split(",")]


def _check_amqp(url: str) -> None:
    """Refuse one AMQP URL pika cannot use (without quoting it)."""
    userinfo = _check_url(url, {"amqp", "amqps"})
    if userinfo and ":" not in userinfo:
        raise ValueError("names a user without a password (amqp://user:password@host/)")
    import pika

    try:
        pika.URLParameters(url)
    except Exception as exc:  # noqa: BLE001 - pika raises several kinds for a bad URL
        from creditstream.redaction import Redactor, secrets_in_url

        detail = Redactor(secrets_in_url(url))(f"{type(exc).__name__}: {exc}")
        raise ValueError(f"pika cannot use it ({detail})") from None


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*", re.IGNORECASE)
_RUN_ID = re.compile(r"[!-\x22\x24-\x2e\x30-~]{1,118}")  # visible ASCII but '#' and '/'


def _check_url(url: str, schemes: set[str]) -> str:
    """Refuse a URL with the wrong scheme or ambiguous credentials (without quoting it).

    Returns the URL's user-info ("" when none).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"must be a {' or '.join(sorted(schemes))} URL (scheme://...)")
    if scheme.lower() not in schemes:
        raise ValueError(f"must start with {' or '.join(f'{s}://' for s in sorted(schemes))}")
    userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
    # NOTE: URL parsers end the host part at the first `/`, `?` or `#`: a raw one in the
    # password would send the rest of it to the host or path (and into error messages).
    if any(char in userinfo for char in "/?#"):
        raise ValueError(
            "ambiguous credentials: percent-encode '/', '?', '#' and '@' in the user, "
            "password and vhost (urllib.parse.quote(password, safe=''))"
        )
    return userinfo
