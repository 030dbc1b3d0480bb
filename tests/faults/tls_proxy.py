"""A TLS-terminating TCP proxy on loopback (amqps:// → the plain AMQP broker) and a throwaway CA.

Lets the fault suite prove `amqps://` + CREDITSTREAM_TLS_CA_FILE end to end on a machine whose
broker has no TLS listener: clients verify the proxy's certificate against the test CA, exactly
as they would verify a broker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TestPki:
    """A CA certificate and a server certificate for `localhost` (only) that it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_pki(directory: Path) -> TestPki:
    """Generate a one-day CA and server certificate with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not found: needed to make the test CA")
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-subj", "/CN=creditstream fault-test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=localhost",
    )  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(extensions),
    )  # fmt: skip
    return TestPki(ca_cert, cert, key)


@dataclass
class TlsProxy:
    """Accepts TLS on 127.0.0.1:<port> and forwards the plaintext to the broker."""

    pki: TestPki
    upstream: tuple[str, int] = ("127.0.0.1", 5672)
    port: int = 0
    tls_sessions: int = 0
    bytes_up: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tls_sessions += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, up=True), self._pipe(up_reader, writer, up=False)
        )

    def _serve(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=context)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[TlsProxy]:
        """Serve on a background thread for the duration of the block."""
        thread = threading.Thread(target=self._serve, name="tls-proxy", daemon=True)
        thread.start()
        assert self._ready.wait(10), "TLS proxy did not start"
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(timeout=10)
