"""The admin server: liveness, readiness and metrics, on a port of its own so no agent path is shadowed.

Three GET endpoints answered by a small asyncio protocol on httptools (llhttp, the proxy's own parser). No web
framework is imported to serve them: aiohttp's import alone was a third of the sidecar's start and 13 MB of its
memory in every pod (issue 20), for three fixed answers. HTTP/1.1 keep-alive and pipelining work as any client
expects; HEAD is answered as GET without the body, another method with 405, another path with 404; a request head
larger than MAX_HEAD_BYTES or a malformed request gets 400/431 and the connection closes; an idle connection
closes after IDLE_SECONDS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from proxy.app import Lifecycle
    from proxy.metrics import Metrics

JSON = "application/json; charset=utf-8"
MAX_HEAD_BYTES = 16 * 1024
IDLE_SECONDS = 75.0  # aiohttp's keep-alive timeout, which served these endpoints before
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
Answer = tuple[int, bytes, str]


def healthz(_: Lifecycle) -> Answer:
    """Alive: the event loop answers. No I/O, never depends on the upstream."""
    return 200, b'{"status": "ok"}', JSON


def readyz(lifecycle: Lifecycle) -> Answer:
    """Ready to take traffic; 503 while workers start and once draining. Independent of the upstream: the agent
    container never waits for it, and the proxy is ready before a slow agent is."""
    if lifecycle.draining:
        return 503, b'{"status": "draining"}', JSON
    if lifecycle.starting:
        return 503, b'{"status": "starting"}', JSON
    return 200, b'{"status": "ready"}', JSON


class AdminServer:
    """Serves /healthz, /readyz and /metrics for one Lifecycle and Metrics."""

    def __init__(self, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self._server: asyncio.Server | None = None
        self._connections: set[AdminConnection] = set()

    def answer(self, method: bytes, target: bytes, accept: str | None) -> tuple[Answer, dict[str, str]]:
        path = target.partition(b"?")[0]
        if path == b"/healthz" or path == b"/readyz":
            handler: Callable[[Lifecycle], Answer] | None = healthz if path == b"/healthz" else readyz
        elif path == b"/metrics":
            handler = None
        else:
            return (404, b"404: Not Found", "text/plain; charset=utf-8"), {}
        if method not in (b"GET", b"HEAD"):
            return (405, b"405: Method Not Allowed", "text/plain; charset=utf-8"), {"Allow": "GET, HEAD"}
        if handler is not None:
            return handler(self.lifecycle), {}
        body, content_type = self.metrics.render(accept)
        return (200, body, content_type), {}

    async def start(self, host: str, port: int) -> None:
        """Listen (OSError when the address is taken or invalid)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: AdminConnection(self), host, port, backlog=128)

    @property
    def addresses(self) -> list[str]:
        sockets = self._server.sockets if self._server is not None else ()
        return [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None


class AdminConnection(asyncio.Protocol):
    """One client connection: parses requests with httptools and answers each as it completes, in order."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._target = b""
        self._accept: str | None = None
        self._head_bytes = 0
        self._idle: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        self._server._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
        except httptools.HttpParserError:
            self._refuse(400)
        else:
            if self._head_bytes > MAX_HEAD_BYTES and self._transport is not None:
                self._refuse(431)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._target, self._accept = b"", None

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"accept":
            self._accept = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head_bytes = 0  # the head is complete: a body (ignored) does not count against the head's limit

    def on_message_complete(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        method = self._parser.get_method()
        (status, body, content_type), extra = self._server.answer(method, self._target, self._accept)
        keep_alive = self._parser.should_keep_alive()
        self._write(status, body, content_type, extra, head_only=method == b"HEAD", keep_alive=keep_alive)
        if not keep_alive:
            self._transport.close()

    # helpers

    def _write(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str], *, head_only: bool, keep_alive: bool
    ) -> None:
        if self._transport is None:
            return
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in extra.items()),
        ]
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._transport.write(head if head_only else head + body)

    def _refuse(self, status: int) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        body = f"{status}: {_REASONS[status]}".encode()
        self._write(status, body, "text/plain; charset=utf-8", {}, head_only=False, keep_alive=False)
        self._transport.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self.close)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
