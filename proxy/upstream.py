"""Connections to the upstream: a keep-alive pool, and the protocol that parses each response with llhttp.

A connection goes back to the pool only after a cleanly framed response to a fully sent request; any error,
early close, unread body or byte after the response's end discards it. The pool owns connecting and the decision to
send an idempotent request once more when a reused connection turns out to be closed.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Final, cast

import httptools

from proxy.flow import FlowControl, WriteBatch
from proxy.ports import ResponseListener

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to the upstream, serving one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.listener: ResponseListener | None = None
        self.closed = False
        self.reusable = True
        self.used = False  # served an exchange before: a close before any answer may be a stale keep-alive
        self.got_bytes = False  # any byte of the current response arrived
        self.idle_since = 0.0
        self.tunnel = False
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._skip_body = False
        self._out: list[bytes] = []
        self._in_head = False  # between attach and the end of the response head: its bytes are counted
        self._head_bytes = 0
        self._answered = False  # the response for the current listener is complete; any further byte is stray
        self._status = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.flow = FlowControl(self.transport)

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if self.tunnel and listener is not None:
            listener.on_tunnel_data(data)
            return
        if listener is None:  # bytes nobody asked for: this connection is out of step, never reuse it
            self.discard()
            return
        self.got_bytes = True
        if self._in_head:
            self._head_bytes += len(data)
        batch = self.pool.batch
        batch.depth += 1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.tunnel = True
            listener.on_upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self.reusable = False
            if self.listener is not None:
                self.listener.on_upstream_error("protocol", f"malformed upstream response: {_parser_reason(exc)}")
        else:
            # Counted as they arrive, not when a field ends: llhttp would hold an endless header line in memory.
            if self._in_head and self._head_bytes > self.pool.max_head_bytes and self.listener is not None:
                self.reusable = False
                limit = self.pool.max_head_bytes
                self.listener.on_upstream_error("response_head_too_large", f"upstream response head over {limit} bytes")
        finally:
            batch.end()
        if self._skip_body:  # a HEAD response: llhttp would wait for the body its Content-Length announces
            self._skip_body = False
            self._parser = httptools.HttpResponseParser(self)
        if not self.reusable and self.listener is None:
            self.discard()  # stray bytes after a response: never hand this connection to another request

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.on_upstream_lost(exc)

    def pause_writing(self) -> None:
        self.flow.write_paused = True
        self.flow.write_paused_at = self.pool.now()
        if self.listener is not None:
            self.listener.upstream_writable(False)

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        if self.listener is not None:
            self.listener.upstream_writable(True)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._answered:
            self.reusable = False  # a second response nobody asked for, or stray bytes: out of step
        self._reason = b""
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = status = self._parser.get_status_code()
        if status >= 200 or status == 101:
            self._in_head = False
        else:
            self._head_bytes = 0  # an interim response: the final head is counted on its own
        if self.listener is not None and self.reusable:
            keep = self._parser.should_keep_alive()
            self.listener.on_response_head(status, self._reason, self._headers, keep)

    def on_body(self, body: bytes) -> None:
        if self.listener is not None:
            self.listener.on_response_body(body)
        else:
            self.reusable = False

    def on_message_complete(self) -> None:
        if self._status < 200 and self._status != 101:
            return  # llhttp ends an interim response as a message of its own
        self._answered = True
        if self.listener is not None:
            self.listener.on_response_complete()

    # used by the exchange

    def attach(self, listener: ResponseListener) -> None:
        self.listener = listener
        self.got_bytes = False
        self._answered = False
        self._in_head = True
        self._head_bytes = 0

    def skip_body(self) -> None:
        """The response to HEAD has no body whatever its framing headers say; the next bytes are a new response."""
        self._skip_body = True

    def write(self, data: bytes) -> None:
        """Send `data`; inside a batch, or while earlier writes wait for the loop turn's end, it joins them in one
        send (flow.WriteBatch)."""
        if self.pool.batch.queue(self, self._out, data):
            return
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if out and transport is not None and not self.closed and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close after what is written has been sent (a tunnel's last frames)."""
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def discard(self) -> None:
        """Close now and never reuse: the state of this connection is unknown."""
        self.reusable = False
        self.listener = None
        self._out = []
        if self.transport is not None and not self.closed:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to the one upstream, newest first; idle ones expire before the upstream's own
    keep-alive timeout would close them under a request."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        keepalive_seconds: float,
        max_head_bytes: int,
        batch: WriteBatch,
    ) -> None:
        self.batch = batch
        self.max_head_bytes = max_head_bytes
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_seconds
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None

    def now(self) -> float:
        return self._loop.time()

    def take_idle(self) -> UpstreamConnection | None:
        now = self._loop.time()
        while self._idle:
            connection = self._idle.pop()
            if connection.closed or connection.transport is None or connection.transport.is_closing():
                continue
            if not connection.reusable:
                connection.discard()
                continue
            if now - connection.idle_since >= self._keepalive:
                connection.discard()
                continue
            return connection
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection; raises UpstreamConnectError with the failure in plain words."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await self._loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
        except TimeoutError:
            raise UpstreamConnectError(
                f"upstream {self.address} did not accept the connection within {self._connect_timeout:g} s",
                timeout=True,
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else (exc.strerror or str(exc))
            if exc.errno == errno.ECONNREFUSED:
                reason = "connection refused"
            raise UpstreamConnectError(f"cannot connect to upstream {self.address}: {reason}") from None
        self._all.add(connection)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        connection.listener = None
        if not connection.reusable or connection.closed or connection.tunnel or self._keepalive <= 0:
            connection.discard()
            return
        connection.used = True
        connection.idle_since = self._loop.time()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._keepalive, self._sweep)

    @staticmethod
    def may_replay(connection: UpstreamConnection, method: bytes) -> bool:
        """A reused connection the upstream closed before a byte of the answer: the request (idempotent, fully
        sent, small enough to have been held) is sent once more on a new connection (RFC 9110 §9.2.2)."""
        return connection.used and not connection.got_bytes and method in IDEMPOTENT

    def forget(self, connection: UpstreamConnection) -> None:
        self._all.discard(connection)

    def _sweep(self) -> None:
        """Close idle connections past their keep-alive, so the upstream is not left holding them."""
        self._sweeper = None
        now = self._loop.time()
        keep = []
        for connection in self._idle:
            if connection.closed:
                continue
            if now - connection.idle_since >= self._keepalive:
                connection.discard()
            else:
                keep.append(connection)
        self._idle = keep
        if keep:
            self._sweeper = self._loop.call_later(self._keepalive, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._all):
            connection.discard()
        self._idle.clear()


class UpstreamConnectError(Exception):
    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def _parser_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
