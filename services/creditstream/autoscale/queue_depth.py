"""Queue depth as the KEDA RabbitMQ scaler counts it: management API first, AMQP as fallback.

Over `http` KEDA reads `messages` (ready + unacknowledged) from the management API; over `amqp`
it passive-declares the queue and sees only the ready count, so messages prefetched by busy
consumers are invisible (keda#356). Every reading carries its source so a plot or a dashboard
never passes an AMQP count off as the full depth.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:
    from pika import BlockingConnection

    from creditstream.settings import Settings

DepthSource = Literal["management-api", "amqp-passive-declare"]

MANAGEMENT_SOURCE: Final[DepthSource] = "management-api"
AMQP_SOURCE: Final[DepthSource] = "amqp-passive-declare"
DEFAULT_MANAGEMENT_PORT: Final = 15672


class QueueDepthError(RuntimeError):
    """The depth could not be read (broker down, queue missing, stats not collected yet)."""


@dataclass(frozen=True)
class QueueDepth:
    """One reading of a queue: what KEDA's trigger would see, and where it came from."""

    queue: str
    ready: int
    unacked: int | None
    consumers: int | None
    source: DepthSource
    ack_rate: float | None = None
    publish_rate: float | None = None

    @property
    def messages(self) -> int:
        """The trigger metric: ready + unacked over http, ready only over amqp."""
        return self.ready + (self.unacked or 0)


class DepthReader(Protocol):
    """Anything that can read one queue's depth."""

    def read(self) -> QueueDepth: ...

    def close(self) -> None: ...


def _rate(payload: Mapping[str, Any], key: str) -> float:
    # NOTE: RabbitMQ omits message_stats until the queue has seen traffic; KEDA's scaler decodes
    # into a struct, so a missing rate is 0 (idle), as here. The rate is RabbitMQ's own: the
    # change between its last two statistics samples (collect_statistics_interval, 5 s).
    details = (payload.get("message_stats") or {}).get(f"{key}_details")
    if not isinstance(details, Mapping):
        return 0.0
    return float(details.get("rate") or 0.0)


def parse_management_queue(payload: Mapping[str, Any]) -> QueueDepth:
    """A GET /api/queues/{vhost}/{name} response as a QueueDepth.

    NOTE: right after a queue is declared the management API answers without `messages`
    (statistics are collected every 5 s); that is "unknown" (QueueDepthError: the trigger's
    metric is unavailable and the rule changes nothing), not zero. KEDA's scaler would decode
    the missing field as 0 and could count a fresh queue as idle; the twin refuses to guess.
    """
    if "messages" not in payload:
        raise QueueDepthError(f"queue {payload.get('name')!r}: no statistics collected yet")
    return QueueDepth(
        queue=str(payload["name"]),
        ready=int(payload.get("messages_ready", payload["messages"])),
        unacked=int(payload.get("messages_unacknowledged", 0)),
        consumers=int(payload["consumers"]) if "consumers" in payload else None,
        source=MANAGEMENT_SOURCE,
        ack_rate=_rate(payload, "ack"),
        publish_rate=_rate(payload, "publish"),
    )


def management_url_from_amqp(amqp_url: str, port: int | None = None) -> str:
    """http://user:pass@host:PORT/vhost derived from an AMQP URL (same credentials and vhost).

    PORT is 15672 for the standard AMQP ports (5672, 5671) and AMQP port + 10000 otherwise:
    several nodes on one host (`make broker-cluster-up`: 5673 -> 15673) each have their own.
    """
    parts = urllib.parse.urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    # NOTE: urlsplit leaves %-escapes in place; unquote first so they are not escaped twice.
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    host = parts.hostname or "localhost"
    if port is None:
        amqp_port = parts.port
        port = (
            amqp_port + 10_000
            if amqp_port and amqp_port not in (5671, 5672)
            else DEFAULT_MANAGEMENT_PORT
        )
    credentials = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    netloc = f"{credentials}@{host}:{port}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def _split_vhost(url: str) -> tuple[str, str]:
    """(path prefix, vhost) as KEDA's getVhostAndPathFromURL splits a URL's raw path."""
    prefix, _, last = urllib.parse.urlsplit(url).path.rpartition("/")
    return prefix, urllib.parse.unquote(last) or "/"


def vhost_of(url: str) -> str:
    """The vhost of an AMQP or management URL: its LAST path segment, url-decoded ('/' if empty).

    KEDA (rabbitmq_scaler.go getVhostAndPathFromURL) takes the last segment and keeps what
    precedes it as the API's path prefix (a management UI served under /rabbitmq, say).
    """
    return _split_vhost(url)[1]


def queue_path(vhost: str, queue: str) -> str:
    """The management API path of one queue (vhost and name percent-encoded, "/" included)."""
    return f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"


class ManagementApiReader:
    """Reads ready + unacked from the RabbitMQ management HTTP API (KEDA `protocol: http`)."""

    def __init__(
        self, management_url: str, queue: str, *, vhost: str | None = None, timeout_s: float = 3.0
    ) -> None:
        parts = urllib.parse.urlsplit(management_url)
        prefix, url_vhost = _split_vhost(management_url)
        self._base = urllib.parse.urlunsplit(
            (
                parts.scheme,
                f"{parts.hostname}:{parts.port or DEFAULT_MANAGEMENT_PORT}",
                prefix,
                "",
                "",
            )
        )
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = vhost if vhost is not None else url_vhost
        self.queue = queue
        self.timeout_s = timeout_s

    @property
    def endpoint(self) -> str:
        """The API address without credentials (safe to print)."""
        return self._base

    def get_json(self, path: str) -> Any:
        """GET an API path (already quoted) and decode the JSON answer."""
        request = urllib.request.Request(
            f"{self._base}{path}", headers={"Authorization": self._auth}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise QueueDepthError(f"management API {path}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise QueueDepthError(f"management API at {self._base} unreachable: {exc}") from exc

    def read(self) -> QueueDepth:
        """Current depth of the queue."""
        return parse_management_queue(self.get_json(queue_path(self.vhost, self.queue)))

    def ping(self) -> bool:
        """True when the API answers /api/overview with these credentials."""
        try:
            self.get_json("/api/overview")
        except QueueDepthError:
            return False
        return True

    def close(self) -> None:
        """Nothing to release (one HTTP request per reading)."""


class ManagementFailoverReader:
    """The management API of a cluster: each node's API in turn until one answers.

    Every node of a cluster serves the same queue statistics; the reader stays with the node
    that answered last and moves on when it stops answering (a node down, restarting, paused).
    """

    def __init__(self, readers: list[ManagementApiReader]) -> None:
        if not readers:
            raise ValueError("no management API URL")
        self.readers = readers
        self._current = 0

    @property
    def endpoint(self) -> str:
        """The API addresses without credentials (safe to print)."""
        return ",".join(reader.endpoint for reader in self.readers)

    def _each(self) -> list[tuple[int, ManagementApiReader]]:
        n = len(self.readers)
        return [((self._current + i) % n, self.readers[(self._current + i) % n]) for i in range(n)]

    def get_json(self, path: str) -> Any:
        """GET an API path from the first node that answers (4xx errors are answers)."""
        last: QueueDepthError | None = None
        for index, reader in self._each():
            try:
                answer = reader.get_json(path)
            except QueueDepthError as exc:
                # NOTE: a node down, or up but not serving (503 while booting or paused):
                # ask the next; a 404 or 401 would be the same answer from every node.
                if "unreachable" not in str(exc) and ": HTTP 5" not in str(exc):
                    raise
                last = exc
                continue
            self._current = index
            return answer
        raise last or QueueDepthError("no management API answered")

    def read(self) -> QueueDepth:
        """Current depth of the queue, from the first node that answers."""
        first = self.readers[0]
        return parse_management_queue(self.get_json(queue_path(first.vhost, first.queue)))

    def ping(self) -> bool:
        """True when one node's API answers /api/overview with these credentials."""
        try:
            self.get_json("/api/overview")
        except QueueDepthError:
            return False
        return True

    def close(self) -> None:
        """Nothing to release."""


def management_reader(
    urls: list[str], queue: str, *, vhost: str | None = None
) -> ManagementApiReader | ManagementFailoverReader:
    """One node's reader, or a failover reader over a cluster's nodes."""
    readers = [ManagementApiReader(url, queue, vhost=vhost) for url in urls]
    return readers[0] if len(readers) == 1 else ManagementFailoverReader(readers)


class PassiveDeclareReader:
    """Reads the ready count by passive queue.declare over AMQP (KEDA `protocol: amqp`)."""

    def __init__(self, settings: Settings, queue: str) -> None:
        self.settings = settings
        self.queue = queue
        self._connection: BlockingConnection | None = None

    def _channel(self) -> Any:
        import pika

        from creditstream.broker import connection_parameters_list

        if self._connection is None or self._connection.is_closed:
            params = connection_parameters_list(self.settings, name="creditstream-queue-depth")
            for one in params:
                one.connection_attempts = 1
                one.socket_timeout = 3
            self._connection = pika.BlockingConnection(params)
        return self._connection.channel()

    def read(self) -> QueueDepth:
        """Ready messages and consumer count of the queue."""
        import pika.exceptions

        try:
            channel = self._channel()
            try:
                frame = channel.queue_declare(self.queue, passive=True)
            finally:
                if channel.is_open:
                    channel.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise QueueDepthError(f"queue {self.queue!r}: {exc.reply_text}") from exc
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise QueueDepthError(f"AMQP passive declare failed: {exc!r}") from exc
        return QueueDepth(
            queue=self.queue,
            ready=int(frame.method.message_count),
            unacked=None,
            consumers=int(frame.method.consumer_count),
            source=AMQP_SOURCE,
        )

    def close(self) -> None:
        """Close the AMQP connection if open."""
        if self._connection is not None and self._connection.is_open:
            # NOTE: closing a broken connection must not raise.
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None


class FallbackDepthReader:
    """Management API when it answers, the AMQP passive-declare count (labelled) otherwise."""

    def __init__(
        self,
        primary: ManagementApiReader | ManagementFailoverReader | None,
        fallback: PassiveDeclareReader,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.last_error: str | None = None

    def read(self) -> QueueDepth:
        """One reading from the best available source."""
        if self.primary is not None:
            try:
                depth = self.primary.read()
            except QueueDepthError as exc:
                self.last_error = str(exc)
            else:
                self.last_error = None
                return depth
        return self.fallback.read()

    def close(self) -> None:
        """Close both readers."""
        if self.primary is not None:
            self.primary.close()
        self.fallback.close()


def depth_reader_for(
    settings: Settings, queue: str, *, protocol: str = "http"
) -> FallbackDepthReader:
    """The reader KEDA's `protocol` implies: http/auto try the management API first."""
    primary = None
    if protocol != "amqp":
        # NOTE: a cluster: one management URL per node (given, or derived from each AMQP URL)
        primary = management_reader(
            settings.management_urls, queue, vhost=vhost_of(settings.amqp_urls[0])
        )
    return FallbackDepthReader(primary, PassiveDeclareReader(settings, queue))
