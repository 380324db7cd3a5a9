"""One protocol object per client connection: parse requests with llhttp, hand each to an Exchange, in order.

The connection owns what is true of the connection and outlives every request on it: its flow state (proxy.flow:
write paused, the reasons reading is paused), whether another request may follow, and its end with a deadline:

    OPEN -> LINGERING (answered while the client still sends: FIN sent, input read and dropped for
            RUM_PROXY_LINGER_SECONDS, RFC 9112 §9.6) -> CLOSING -> CLOSED
    OPEN -> CLOSING (flushing before the close: reset after RUM_PROXY_SEND_TIMEOUT_SECONDS) -> CLOSED

Malformed requests are answered 400 (431 for oversized heads, whose bytes are counted as they arrive) and nothing
of them is forwarded; a malformed request pipelined behind others is answered in its turn, after theirs. One
request is in flight per connection: pipelined requests wait, with reading paused, and each keeps its own version,
keep-alive and upgrade. After a request that closes the connection nothing more is read. A client that does not
read what the proxy sends for RUM_PROXY_SEND_TIMEOUT_SECONDS is reset. A client that half-closes (FIN) after a
complete request is treated as gone, like nginx's default: the exchange is cancelled, so the agent's LLM call stops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

import httptools
import structlog

from proxy.app import Proxy
from proxy.errors import error_response
from proxy.flow import FlowControl, reset
from proxy.forward import Exchange
from proxy.headers import RequestHead, is_websocket_upgrade, scan_request_head
from proxy.http1 import Refusal
from proxy.upstream import UpstreamConnection
from proxy.websocket import Tunnel

logger = structlog.get_logger()

OPEN: Final = 0
LINGERING: Final = 1
CLOSING: Final = 2
CLOSED: Final = 3


class Rejected(Exception):
    """A request the proxy refuses while parsing it (raised from an llhttp callback)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.refusal = Refusal(status, error, reason)


class _StopParsing(Exception):
    """Raised from an llhttp callback: nothing after this message is read."""


class _Pending:
    """A request parsed while the one before it is still being answered: its head and the facts of this request
    (version, keep-alive, upgrade), its body so far, or the refusal it gets in its turn."""

    __slots__ = ("head", "http11", "keep_alive", "websocket", "chunks", "complete", "early", "refusal")

    def __init__(self, head: RequestHead | None, http11: bool, keep_alive: bool, websocket: bool) -> None:
        self.head = head
        self.http11 = http11
        self.keep_alive = keep_alive
        self.websocket = websocket
        self.chunks: list[bytes] = []
        self.complete = False
        self.early = b""  # a WebSocket's first frames, sent before the upstream's 101
        self.refusal: Refusal | None = None


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.remote: str | None = None
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.state = OPEN
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Pending] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # the raw bytes of the head being read
        self._field_bytes = 0  # the same head as llhttp hands its fields over
        self._in_head = False  # between a request's first byte and the end of its head
        self._counting = True  # the bytes read now belong to a request head: counted as they arrive
        self._reading_done = False  # a request that closes the connection, an upgrade or a parse error was read
        self._ignored_upgrade = False
        self._synthetic = False
        self._early = b""  # WebSocket bytes the client sent before the upstream's 101
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._head_started = 0.0
        self._deadline = 0.0  # LINGERING: stop reading then; CLOSING: reset then
        self._out: list[bytes] = []

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]
        proxy = self.proxy
        proxy.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self._idle_since = proxy.loop.time()
        self._timer = proxy.loop.call_later(proxy.limits.tick, self._tick)
        if len(proxy.connections) > proxy.limits.max_client_connections:
            proxy.metrics.count_request(503, "none", 0.0)
            proxy.log_refused_connection()
            self.write(error_response(503, "overloaded", "too many client connections", retry_after=1))
            self.close()  # not a lingering close: the slot it holds is what is short

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.state != OPEN or self._reading_done:
            return  # lingering: read and dropped
        if self._counting:
            self._head_bytes += len(data)
        batch = self.proxy.batch
        batch.depth += 1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an exception raised in a callback reaches here wrapped by httptools
            if isinstance(cause, _StopParsing):
                pass
            elif isinstance(cause, Rejected):
                self._malformed(cause.refusal)
            else:
                self._malformed(Refusal(400, "bad_request", str(exc) or type(exc).__name__))
        else:
            # A head is counted as its bytes arrive, not when a field ends: llhttp holds a field until it ends.
            if self._counting and self._head_bytes > self.proxy.limits.max_header_bytes and not self._reading_done:
                self._malformed(Refusal(431, "request_header_fields_too_large", "request head too large"))
        finally:
            batch.end()

    def eof_received(self) -> bool:
        return False  # a half-close is the client leaving (nginx's default): close, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.proxy.connection_closed(self)
        self._cancel_timer()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        elif self.exchange is not None:
            self.exchange.client_gone()
        self.exchange = None
        self._queue.clear()

    def pause_writing(self) -> None:
        flow = self.flow
        flow.write_paused = True
        flow.write_paused_at = self.proxy.loop.time()
        if self.tunnel is not None:
            self.tunnel.client_writable(False)
        elif self.exchange is not None:
            self.exchange.client_writable(False)

    def resume_writing(self) -> None:
        self.flow.write_paused = False
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
        self._field_bytes = 0
        self._in_head = True
        self._counting = True
        self._head_started = self.proxy.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailer fields end with the message; nothing forwards them
        self._headers.append((name, value))
        if len(self._headers) > self.proxy.limits.max_headers:
            raise Rejected(431, "request_header_fields_too_large", "too many header fields")
        self._count(len(name) + len(value) + 4)

    def _count(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > self.proxy.limits.max_header_bytes:
            raise Rejected(431, "request_header_fields_too_large", "request head too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._counting = False
        self._head_bytes = 0
        if self._synthetic:
            return
        parser = self._parser
        http11 = parser.get_http_version() == "1.1"
        head = scan_request_head(
            parser.get_method(), self._url, b"1.1" if http11 else b"1.0", self._headers, self.proxy.extra_header_names
        )
        upgrade = parser.should_upgrade()
        websocket = upgrade and is_websocket_upgrade(head)
        # Other upgrades (h2c) are served as plain HTTP/1.1: llhttp stops at them, data_received resumes.
        self._ignored_upgrade = upgrade and not websocket and head.method != b"CONNECT"
        keep_alive = parser.should_keep_alive() and not websocket and head.method != b"CONNECT"
        if self.exchange is None and not self._queue:
            self._start(head, http11, keep_alive, websocket)
        else:
            self._queue.append(_Pending(head, http11, keep_alive, websocket))
            self.flow.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self._queue:
            self._queue[-1].chunks.append(body)
        elif self.exchange is not None:
            self.exchange.receive_body(body)

    def on_message_complete(self) -> None:
        if self._ignored_upgrade and not self._synthetic and self._body_expected(self._current_head()):
            return  # llhttp skipped the body of an upgrade request; it is parsed after the upgrade point
        self._synthetic = False
        self._counting = True
        if self._queue:
            pending = self._queue[-1]
            pending.complete = True
            closes = not pending.keep_alive
        elif self.exchange is not None:
            exchange = self.exchange
            closes = not exchange.keep_alive
            exchange.request_complete()
        else:
            return
        if closes and not self._ignored_upgrade:
            # The last request on this connection (Connection: close, HTTP/1.0): nothing after it is read.
            self._reading_done = True
            raise _StopParsing

    # ---- request lifecycle

    def _start(self, head: RequestHead, http11: bool, keep_alive: bool, websocket: bool) -> Exchange:
        exchange = Exchange(self.proxy, self, head, http11=http11, keep_alive=keep_alive, websocket=websocket)
        self.exchange = exchange
        exchange.start()
        return exchange

    def exchange_done(self, exchange: object, keep_client: bool, linger: bool) -> None:
        """The response is complete: serve the next pipelined request, wait for one, or close."""
        if exchange is not self.exchange:
            return
        self.exchange = None
        flow = self.flow
        flow.resume_reading("upstream")
        flow.resume_reading("connect")
        if self.state != OPEN or self.tunnel is not None:
            return
        if not keep_client or self.proxy.draining:
            if linger:
                self.linger()
            else:
                self.close()
            return
        if self._queue:
            self._next()
            return
        self._idle_since = self.proxy.loop.time()
        if self._reading_done:
            self.close()  # the request that closed the connection was refused before its turn came

    def _next(self) -> None:
        pending = self._queue.popleft()
        if not self._queue and not self._reading_done:
            self.flow.resume_reading("pipeline")
        if pending.refusal is not None or pending.head is None:
            refusal = pending.refusal or Refusal(400, "bad_request", "malformed request")
            self.proxy.metrics.count_request(refusal.status, "none", 0.0)
            self.write(error_response(refusal.status, refusal.error, refusal.reason))
            self.linger()
            return
        self._early = pending.early
        following = self._start(pending.head, pending.http11, pending.keep_alive, pending.websocket)
        for chunk in pending.chunks:
            following.receive_body(chunk)  # a no-op once it is done (an error answered at its start)
        if pending.complete:
            following.request_complete()

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
        if self.state != OPEN:
            return
        # A WebSocket handshake or CONNECT: nothing after it is HTTP. The WebSocket's first frames may already be
        # here; they wait until the upstream accepted the upgrade. CONNECT is refused by its exchange, in its turn.
        self._reading_done = True
        self.flow.pause_reading("upgrade")
        if self._queue:
            self._queue[-1].early = rest
        elif self.exchange is not None and self.exchange.websocket:
            self._early = rest

    def start_tunnel(self, exchange: object, upstream: object, rest: bytes) -> None:
        """The upstream answered 101: from now on bytes flow both ways untouched, frames tracked for shutdown."""
        if (
            not isinstance(exchange, Exchange)
            or not isinstance(upstream, UpstreamConnection)
            or self.transport is None
            or upstream.transport is None
            or self.state != OPEN
        ):
            return
        self.tunnel = Tunnel(self.proxy, exchange, self, upstream)
        early, self._early = self._early, b""
        if rest:
            self.tunnel.from_upstream(rest)
        if early:
            self.tunnel.from_client(early)
        self.flow.resume_reading("upgrade")

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def _malformed(self, refusal: Refusal) -> None:
        """A parse error: nothing after it can be read. It belongs to the request being parsed — the active one's
        body, or a request after it, which is answered in its turn."""
        self._reading_done = True
        self.proxy.log_bad_request(refusal.status, refusal.error, refusal.reason)
        exchange = self.exchange
        active_body = exchange is not None and not self._queue and not exchange.request_complete_seen
        if exchange is not None and active_body:
            if not exchange.response_started:
                exchange.refuse(refusal)
            else:
                exchange.client_gone("bad_request")
                self.abort()
            return
        if exchange is not None or self._queue:
            pending = _Pending(None, True, False, False)
            pending.refusal = refusal
            self._queue.append(pending)
            self.flow.pause_reading("pipeline")
            return
        self.proxy.metrics.count_request(refusal.status, "none", 0.0)
        self.write(error_response(refusal.status, refusal.error, refusal.reason))
        self.linger()

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
        """Close after what is written has been sent, within the send timeout (then reset)."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        self._deadline = self.proxy.loop.time() + self.proxy.limits.send_timeout
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def linger(self) -> None:
        """Close after an answer the client may still be sending a request body to: send what is written and a FIN,
        then read and drop what still comes for RUM_PROXY_LINGER_SECONDS, so the client reads the answer instead
        of a reset (RFC 9112 §9.6; nginx's lingering_close)."""
        transport = self.transport
        if self.state != OPEN or transport is None or self.proxy.limits.linger <= 0:
            self.close()
            return
        self.state = LINGERING
        self._deadline = self.proxy.loop.time() + self.proxy.limits.linger
        self.flush()
        self.flow.resume_all()
        if not transport.is_closing():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                self.close()

    def abort(self) -> None:
        """Close at once with a reset: the client must see an incomplete response, never a clean end."""
        self.state = CLOSED
        self._cancel_timer()
        self.flush()
        if self.transport is not None:
            reset(self.transport)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        """The connection's one periodic check: its close deadlines, the send timeout, the header-read and
        keep-alive timeouts, and the exchange's own."""
        proxy = self.proxy
        limits = proxy.limits
        now = proxy.loop.time()
        self._timer = proxy.loop.call_later(limits.tick, self._tick)
        state = self.state
        if state == CLOSING:
            if now >= self._deadline:
                self.abort()  # the client never took the last bytes
            return
        if state == LINGERING and now >= self._deadline and not self.flow.write_paused:
            self.close()
            return
        if self.flow.write_paused and now - self.flow.write_paused_at >= limits.send_timeout:
            logger.warning("client_send_timeout", timeout_seconds=limits.send_timeout, remote=self.remote)
            if self.tunnel is not None:
                self.tunnel.client_stalled()
            elif self.exchange is not None:
                self.exchange.client_gone("client_send_timeout")
            self.abort()
            return
        if self.tunnel is not None:
            upstream = self.tunnel.upstream.flow
            if upstream.write_paused and now - upstream.write_paused_at >= limits.send_timeout:
                logger.warning("upstream_send_timeout", timeout_seconds=limits.send_timeout, remote=self.remote)
                self.tunnel.upstream_stalled()
            return
        if state != OPEN:
            return
        batch = proxy.batch
        batch.depth += 1
        try:
            if self.exchange is not None:
                if not self.flow.write_paused:
                    self.exchange.check_deadlines(now)
            elif self._in_head:
                if now - self._head_started >= limits.header_timeout:
                    self._malformed(Refusal(408, "request_timeout", "the request headers did not arrive in time"))
            elif not self._queue and now - max(self._idle_since, proxy.drain_started) >= proxy.idle_limit:
                self.close()
        finally:
            batch.end()
