"""One protocol object per client connection: parse requests with llhttp, hand each to an Exchange, in order.

Malformed requests are answered 400 (431 for oversized heads) and the connection is closed; nothing of them is
forwarded. One request is in flight per connection: a pipelined request waits, with reading paused, until the
response before it is done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from proxy.errors import error_response
from proxy.flow import ReadGate
from proxy.forward import Exchange
from proxy.headers import RequestHead, is_websocket_upgrade, scan_request_head
from proxy.websocket import Tunnel

if TYPE_CHECKING:
    from proxy.app import Proxy
    from proxy.upstream import UpstreamConnection


class Rejected(Exception):
    """A request the proxy refuses before forwarding anything of it."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


class _Pending:
    """A pipelined request parsed while the one before it is still being answered."""

    __slots__ = ("head", "chunks", "complete")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.chunks: list[bytes] = []
        self.complete = False


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate = None  # type: ignore[assignment]  # set in connection_made
        self.remote: str | None = None
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.http11 = True
        self.keep_alive = True
        self.closing = False
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Pending] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._ignored_upgrade = False
        self._synthetic = False
        self._early = b""  # WebSocket bytes the client sent before the upstream's 101
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._head_started = 0.0
        self._out: list[bytes] = []

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)  # type: ignore[arg-type]
        proxy = self.proxy
        proxy.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        if len(proxy.connections) > proxy.max_client_connections:
            proxy.metrics.count_request(503, "none", 0.0)
            proxy.log_refused_connection()
            self.write(error_response(503, "overloaded", "too many client connections", retry_after=1))
            self.close()
            return
        self._idle_since = proxy.loop.time()
        self._timer = proxy.loop.call_later(proxy.tick, self._tick)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.closing:
            return
        batch = self.proxy.batch
        batch.depth += 1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # a Rejected raised in a callback reaches here wrapped by httptools
            if isinstance(cause, Rejected):
                self._reject(cause)
            else:
                self._reject(Rejected(400, "bad_request", str(exc) or type(exc).__name__))
        finally:
            batch.end()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.proxy.connection_closed(self)
        self._cancel_timer()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        elif self.exchange is not None:
            self.exchange.client_gone()
        self.exchange = None
        self._queue.clear()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_writable(False)
        elif self.exchange is not None:
            self.exchange.client_writable(False)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_writable(True)
        elif self.exchange is not None:
            self.exchange.client_writable(True)

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._in_head = True
        self._head_started = self.proxy.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailer fields end with the message; nothing forwards them
        self._headers.append((name, value))
        if len(self._headers) > self.proxy.max_headers:
            raise Rejected(431, "request_header_fields_too_large", "too many header fields")
        self._count(len(name) + len(value) + 4)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.proxy.max_header_bytes:
            raise Rejected(431, "request_header_fields_too_large", "request head too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._synthetic:
            return
        parser = self._parser
        version = parser.get_http_version().encode()
        head = scan_request_head(parser.get_method(), self._url, version, self._headers, self.proxy.extra_header_names)
        if version == b"1.0" and b"transfer-encoding" in head.index:
            raise Rejected(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
        websocket = parser.should_upgrade() and is_websocket_upgrade(head)
        # Other upgrades (h2c) are served as plain HTTP/1.1: llhttp stops at them, data_received resumes.
        self._ignored_upgrade = parser.should_upgrade() and not websocket and head.method != b"CONNECT"
        if self.exchange is None and not self._queue:
            self.http11 = version == b"1.1"
            self.keep_alive = parser.should_keep_alive() and not websocket
            self._start(head, websocket=websocket)
        else:
            self._queue.append(_Pending(head))
            self.gate.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        if self._queue:
            self._queue[-1].chunks.append(body)
        elif self.exchange is not None:
            self.exchange.receive_body(body)

    def on_message_complete(self) -> None:
        if self._ignored_upgrade and not self._synthetic and self._body_expected(self._current_head()):
            return  # llhttp skipped the body of an upgrade request; it is parsed after the upgrade point
        self._synthetic = False
        if self._queue:
            self._queue[-1].complete = True
        elif self.exchange is not None:
            self.exchange.request_complete()

    # ---- request lifecycle

    def _start(self, head: RequestHead, *, websocket: bool = False) -> Exchange:
        exchange = Exchange(self.proxy, self, head)
        exchange.websocket = websocket
        self.exchange = exchange
        exchange.start()
        return exchange

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response is complete: serve the next pipelined request, wait for one, or close."""
        if exchange is not self.exchange:
            return
        self.exchange = None
        if self.closing:
            return
        if not keep_alive or self.proxy.draining:
            self.close()
            return
        if self._queue:
            pending = self._queue.popleft()
            self.http11 = pending.head.version == b"1.1"
            following = self._start(pending.head)
            for chunk in pending.chunks:
                following.receive_body(chunk)  # a no-op once it is done (an error answered at its start)
            if pending.complete:
                following.request_complete()
            if not self._queue:
                self.gate.resume("pipeline")
            return
        self._idle_since = self.proxy.loop.time()

    def _current_head(self) -> RequestHead | None:
        """The head of the request being parsed: the last one queued, else the one being answered."""
        if self._queue:
            return self._queue[-1].head
        return self.exchange.head if self.exchange is not None else None

    @staticmethod
    def _body_expected(head: RequestHead | None) -> bool:
        if head is None:
            return False
        length = head.get(b"content-length")
        return b"transfer-encoding" in head.index or (length is not None and length.strip() not in (b"", b"0"))

    def _upgraded(self, rest: bytes) -> None:
        if self._ignored_upgrade:
            self._ignored_upgrade = False
            self._parser = httptools.HttpRequestParser(self)
            head = self._current_head()
            if head is not None and self._body_expected(head):
                # Let a fresh parser read the body llhttp skipped, behind a head only it sees.
                framing = (
                    b"transfer-encoding: chunked"
                    if b"transfer-encoding" in head.index
                    else b"content-length: " + (head.get(b"content-length") or b"0")
                )
                self._synthetic = True
                rest = b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + rest
            if rest:
                self.data_received(rest)
            return
        if self.exchange is None or not self.exchange.websocket:
            self._reject(Rejected(400, "bad_request", "unsupported upgrade"))
            return
        # The WebSocket's first frames may already be here; they wait until the upstream accepted the upgrade.
        self._early = rest
        self.gate.pause("upgrade")

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on bytes flow both ways untouched, frames tracked for shutdown."""
        if self.transport is None or upstream.transport is None:
            return
        self.tunnel = Tunnel(self.proxy, exchange, self, upstream)
        early, self._early = self._early, b""
        if rest:
            self.tunnel.from_upstream(rest)
        if early:
            self.tunnel.from_client(early)
        self.gate.resume("upgrade")

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def _reject(self, rejected: Rejected) -> None:
        self.proxy.log_bad_request(rejected.status, rejected.error, rejected.reason)
        exchange = self.exchange
        if exchange is not None and not exchange.done and not exchange.response_started:
            exchange.fail(rejected.status, rejected.error, rejected.reason)
        elif exchange is None:
            self.write(error_response(rejected.status, rejected.error, rejected.reason))
        self.close()

    # ---- transport

    def write(self, data: bytes) -> None:
        """Send `data`; inside a batch, or while earlier writes wait for the loop turn's end, it joins them in one
        send (flow.WriteBatch)."""
        if self.proxy.batch.queue(self, self._out, data):
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close after what is written has been sent."""
        self.closing = True
        self._cancel_timer()
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once with a reset: the client must see an incomplete response, never a clean end. What this
        read event already wrote (a response head, body bytes — never an end) is sent first."""
        self.closing = True
        self._cancel_timer()
        self.flush()
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> None:
        if self.exchange is None and self.tunnel is None and not self._queue and not self._in_head:
            self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        """The connection's one periodic check: header-read, keep-alive and the exchange's own timeouts."""
        proxy = self.proxy
        now = proxy.loop.time()
        self._timer = proxy.loop.call_later(proxy.tick, self._tick)
        if self.tunnel is not None:
            return
        batch = proxy.batch
        batch.depth += 1
        try:
            if self.exchange is not None:
                self.exchange.check_deadlines(now)
            elif self._in_head:
                if now - self._head_started >= proxy.header_timeout:
                    self._reject(Rejected(408, "request_timeout", "the request headers did not arrive in time"))
            elif not self._queue and now - max(self._idle_since, proxy.drain_started) >= proxy.idle_limit:
                self.close()
        finally:
            batch.end()
