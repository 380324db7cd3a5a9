"""Relay one request to the upstream and its response back: the exchange between two connections.

Errors are mapped here, once:

- more requests in flight than RUM_PROXY_MAX_CONNECTIONS -> 503 `overloaded` (with Retry-After)
- Transfer-Encoding other than `chunked` -> 501 `unsupported_transfer_encoding`; CONNECT -> 405
- request body not received within the body-read timeout -> 408 `request_timeout`
- upstream refused / reset / unreachable before answering -> 502 `upstream_unavailable`
- connect timeout, or no response headers within the idle timeout -> 504 `upstream_timeout`
- malformed upstream response (framing, control bytes, a 101 nobody asked for) -> 502 `upstream_protocol_error`,
  and that upstream connection is discarded
- upstream body cut, or idle timeout, after the response started -> the client connection is aborted so the
  client sees a truncated response, never a clean end
- client gone -> the upstream connection is closed at once (the agent's handler is cancelled); logged with
  status 499, never answered
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import structlog

from proxy.errors import error_response
from proxy.headers import (
    RequestHead,
    ResponseFraming,
    downstream_response_head,
    response_framing,
    upstream_request_head,
)
from proxy.session import INSPECTABLE_CODINGS, NOT_FOUND, Extraction, RequestParts, body_kind, inspectable_body
from proxy.upstream import UpstreamConnectError, UpstreamConnection

if TYPE_CHECKING:
    from proxy.app import Proxy
    from proxy.server import ClientConnection

logger = structlog.get_logger()

CLIENT_CLOSED_REQUEST = 499  # nginx's convention, for logs and metrics only: nothing is sent
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CHUNK_END = b"0\r\n\r\n"
HELD_BYTES = 65_536  # most request bytes kept for a resend, or queued before the upstream connection exists


class Exchange:
    """One request and its response. The client connection feeds it the request (head, body chunks, end); the
    upstream connection feeds it the response. Every decision is a call into the pure core."""

    __slots__ = (
        "proxy",
        "client",
        "head",
        "started",
        "extraction",
        "status",
        "error",
        "log_trace_id",
        "done",
        "logged",
        "counted",
        "websocket",
        "upstream",
        "span",
        "_chunked_in",
        "_length_in",
        "_inspecting",
        "_kind",
        "_buffer",
        "_buffered",
        "_request_complete",
        "_request_sent",
        "_pending",
        "_pending_size",
        "_replay",
        "_replay_size",
        "_body_deadline",
        "_last_body",
        "_response_started",
        "_framing",
        "_chunked_out",
        "_keep_client",
        "_keep_upstream",
        "_last_upstream",
    )

    def __init__(self, proxy: Proxy, client: ClientConnection, head: RequestHead) -> None:
        self.proxy = proxy
        self.client = client
        self.head = head
        self.started = time.monotonic()
        self.extraction: Extraction = NOT_FOUND
        self.status = CLIENT_CLOSED_REQUEST
        self.error: str | None = None
        self.log_trace_id: str | None = None
        self.done = False
        self.logged = False  # the request line is written by someone else (a rate-limited bad_request line)
        self.counted = False
        self.websocket = False
        self.upstream: UpstreamConnection | None = None
        self.span: object | None = None
        # request side
        self._chunked_in = False
        self._length_in: int | None = None
        self._inspecting = False
        self._kind: str | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._request_complete = False
        self._request_sent = False  # the whole request, body included, went upstream
        self._pending: list[bytes] | None = None  # written before the upstream connection exists
        self._pending_size = 0
        self._replay: list[bytes] | None = []  # the whole request while small enough to resend on a stale pool hit
        self._replay_size = 0
        self._body_deadline = 0.0
        self._last_body = 0.0
        # response side
        self._response_started = False
        self._framing = ResponseFraming("none")
        self._chunked_out = False
        self._keep_client = False
        self._keep_upstream = False
        self._last_upstream = 0.0

    # ---- request side: called by the client connection

    def start(self) -> None:
        proxy, head = self.proxy, self.head
        proxy.in_flight += 1
        self.counted = True
        if not proxy.streams_by_function:
            proxy.metrics.open_streams.inc()
        proxy.tracing_start(self)
        codings = head.transfer_codings
        if proxy.in_flight > proxy.max_in_flight:
            self.fail(503, "overloaded", "too many requests in flight", retry_after=1)
            return
        if codings and codings != [b"chunked"]:
            # Counted and logged with the malformed requests (rate-limited), not as a request line.
            self.logged = True
            proxy.log_bad_request(501, "unsupported_transfer_encoding", "transfer coding other than chunked")
            self.fail(501, "unsupported_transfer_encoding", "only the chunked transfer coding is supported")
            return
        if head.method == b"CONNECT":
            self.fail(405, "method_not_allowed", "CONNECT is not supported by a reverse proxy")
            return
        self._chunked_in = bool(codings)
        length = head.get(b"content-length")
        self._length_in = int(length) if length is not None and not self._chunked_in else None
        has_body = self._chunked_in or bool(self._length_in)
        if self.websocket:
            self._send_head(self._find_session(None), framing=None)
            return
        expect = head.get(b"expect")
        if has_body and expect is not None and expect.strip().lower() == b"100-continue":
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        now = time.monotonic()
        self._last_body = now
        if has_body and proxy.extractor.inspects_body:
            reason = self._not_inspected_reason()
            if reason is None:
                self._inspecting = True
                self._body_deadline = now + proxy.body_timeout
                return
            logger.debug("body_not_inspected", reason=reason, path=self.path)
        # Whatever framing the client announced goes upstream, `Content-Length: 0` of an empty POST included
        # (servers answer 411 to a POST with neither a length nor chunked framing).
        announced = self._chunked_in or self._length_in is not None
        self._send_head(self._find_session(None), framing=self._streamed_framing() if announced else None)

    def _not_inspected_reason(self) -> str | None:
        head = self.head
        content_type = head.get(b"content-type")
        self._kind = body_kind(content_type.decode("latin-1") if content_type else None)
        if self._kind is None:
            return "content_type"
        if self._length_in is not None and self._length_in > self.proxy.max_inspect:
            return "too_large"
        encoding = head.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in INSPECTABLE_CODINGS:
            return "content_encoding"
        return None

    def receive_body(self, chunk: bytes) -> None:
        if self.done:
            return
        self._last_body = time.monotonic()
        if self._inspecting:
            self._buffer.append(chunk)
            self._buffered += len(chunk)
            if self._buffered > self.proxy.max_inspect:
                logger.debug("body_not_inspected", reason="too_large", path=self.path)
                self._inspecting = False
                self._send_head(self._find_session(None), framing=self._streamed_framing())
                for part in self._buffer:
                    self._send_body(part)
                self._buffer = []
            return
        self._send_body(chunk)

    def request_complete(self) -> None:
        self._request_complete = True
        if self.done:
            return
        if self._inspecting:
            self._inspecting = False
            body = b"".join(self._buffer)
            self._buffer = []
            encoding = self.head.get(b"content-encoding")
            plain = inspectable_body(body, encoding, self.proxy.max_inspect)
            if plain is None:
                logger.debug("body_not_inspected", reason="undecodable", path=self.path)
            self._send_head(self._find_session((plain, self._kind)), framing=b"content-length: %d" % len(body))
            if body:
                self._write_upstream(body)
            self._request_sent = True
            return
        if self._chunked_in:
            self._write_upstream(_CHUNK_END)
        self._request_sent = True

    def _streamed_framing(self) -> bytes:
        if self._chunked_in:
            return b"transfer-encoding: chunked"
        return f"content-length: {self._length_in or 0:d}".encode()  # not b"%d": see trace_context._log_id

    def _send_body(self, chunk: bytes) -> None:
        if self._chunked_in:
            self._write_upstream(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self._write_upstream(chunk)

    def _find_session(self, body: tuple[bytes | None, str | None] | None) -> Extraction:
        proxy, head = self.proxy, self.head
        content, kind = body if body is not None else (None, None)
        parts = RequestParts(head, _Query(head.query), content, kind, int(time.time() * 1000))
        extraction = proxy.extractor.extract(parts)
        for source in extraction.rejected:
            proxy.metrics.count_invalid(str(source))
            logger.debug("invalid_session_id", source=str(source), path=self.path)
        self.extraction = extraction
        return extraction

    def _send_head(self, extraction: Extraction, *, framing: bytes | None) -> None:
        proxy, head = self.proxy, self.head
        trace_headers = proxy.trace_headers(self, extraction)
        upstream_head = upstream_request_head(
            head,
            proxy.rules,
            target=proxy.upstream_target(head.target),
            session_id=extraction.session_id,
            remote=self.client.remote,
            scheme=b"http",
            trace_headers=trace_headers,
            body_framing=framing,
            websocket=self.websocket,
        )
        connection = None if self.websocket else proxy.pool.take_idle()
        self._last_upstream = time.monotonic()
        if connection is not None:
            self._use(connection)
            self._write_upstream(upstream_head)
            return
        self._pending = [upstream_head]
        self._pending_size = len(upstream_head)
        proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            connection = await self.proxy.pool.connect()
        except UpstreamConnectError as exc:
            if not self.done:
                self.upstream_failed(504 if exc.timeout else 502, "timeout" if exc.timeout else "connect", str(exc))
            return
        if self.done:
            self.proxy.pool.release(connection)
            return
        self._use(connection)
        pending, self._pending = self._pending or [], None
        self._pending_size = 0
        connection.write(b"".join(pending))
        self.client.gate.resume("connect")

    def _use(self, connection: UpstreamConnection) -> None:
        self.upstream = connection
        connection.attach(self)

    def _write_upstream(self, data: bytes) -> None:
        if self._replay is not None:
            self._replay.append(data)
            self._replay_size += len(data)
            if self._replay_size > HELD_BYTES:
                self._replay = None  # too large to hold for a resend
        if self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > HELD_BYTES:
                self.client.gate.pause("connect")
            return
        if self.upstream is not None:
            self.upstream.write(data)

    # ---- response side: called by the upstream connection

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep: bool) -> None:
        if self.done:
            return
        self._last_upstream = time.monotonic()
        client = self.client
        if status < 200 and status != 101:
            if status != 100 and client.http11:  # 103 Early Hints and the like reach the client (RFC 9110 §15.2)
                client.write(
                    downstream_response_head(
                        status, reason, headers, framing=ResponseFraming("none"), chunked_to_client=False
                    )
                )
            return
        if status == 101 and not self.websocket:
            self.upstream_failed(502, "protocol", "upstream switched protocols unasked")
            return
        try:
            self._framing = framing = response_framing(status, self.head.method, headers)
        except ValueError:
            self.upstream_failed(502, "protocol", "malformed upstream response: bad Content-Length")
            return
        self.status = status
        self._response_started = True
        self._chunked_out = framing.kind in ("chunked", "eof") and client.http11
        # A body that ends when the upstream closes ends the client connection too.
        self._keep_client = client.keep_alive and framing.kind != "eof" and not self.proxy.draining and status != 101
        out = downstream_response_head(status, reason, headers, framing=framing, chunked_to_client=self._chunked_out)
        if not self._keep_client and status != 101:
            out = out[:-2] + b"connection: close\r\n\r\n"
        elif not client.http11:
            out = out[:-2] + b"connection: keep-alive\r\n\r\n"
        client.write(out)
        if framing.kind == "none" and status != 101:
            if self.head.method == b"HEAD" and self.upstream is not None:
                self.upstream.skip_body()
            self._response_done(keep)
        else:
            self._keep_upstream = keep

    def on_response_body(self, chunk: bytes) -> None:
        if self.done:
            return
        self._last_upstream = time.monotonic()
        if self._chunked_out:
            self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.client.write(chunk)

    def on_response_complete(self) -> None:
        if self.done or not self._response_started or self._framing.kind == "none":
            return
        if self._chunked_out:
            self.client.write(_CHUNK_END)
        self._response_done(self._keep_upstream)

    def _response_done(self, upstream_keep: bool) -> None:
        connection, self.upstream = self.upstream, None
        if connection is not None:
            if upstream_keep and self._request_sent:
                self.proxy.pool.release(connection)
            else:
                connection.discard()
        self._finish()
        # A client whose body was not read to its end cannot be reused: the rest would be read as a request.
        self.client.exchange_done(self, self._keep_client and self._request_complete)

    def on_upgraded(self, rest: bytes) -> None:
        connection, self.upstream = self.upstream, None
        if self.done or connection is None or self.status != 101:
            if connection is not None:
                connection.discard()
            return
        self.client.start_tunnel(self, connection, rest)

    def on_upstream_error(self, detail: str) -> None:
        self.upstream_failed(502, "protocol", f"malformed upstream response: {detail}")

    def on_upstream_lost(self, exc: Exception | None) -> None:
        connection, self.upstream = self.upstream, None
        if self.done:
            return
        if self._response_started:
            if self._framing.kind == "eof":  # the close is the end of this body
                if self._chunked_out:
                    self.client.write(_CHUNK_END)
                self._finish()
                self.client.exchange_done(self, self._keep_client and self._request_complete)
                return
            self._cut("truncated", "upstream closed the connection in the middle of the response")
            return
        if (
            connection is not None
            and connection.used
            and not connection.got_bytes
            and self._replay is not None
            and self._request_sent
            and self.head.method in IDEMPOTENT
        ):
            # A pooled connection the upstream closed just as we reused it: send the request once more.
            self._pending = list(self._replay)
            self._pending_size = self._replay_size
            self.proxy.loop.create_task(self._connect())
            return
        detail = f"upstream {self.proxy.pool.address} closed the connection before answering"
        self.upstream_failed(502, "disconnected", detail)

    def on_tunnel_data(self, data: bytes) -> None:  # only tunnels get bytes after the upgrade
        pass

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self.client.gate.resume("upstream")
        else:
            self.client.gate.pause("upstream")

    def client_writable(self, writable: bool) -> None:
        connection = self.upstream
        if connection is not None and connection.gate is not None:
            if writable:
                connection.gate.resume("client")
            else:
                connection.gate.pause("client")

    # ---- endings

    def upstream_failed(self, status: int, kind: str, detail: str) -> None:
        """The upstream failed: answer with an error, or cut the response if it already started."""
        error = {502: "upstream_unavailable", 504: "upstream_timeout"}[status]
        if kind == "protocol":
            error = "upstream_protocol_error"
        if self._response_started:
            self._cut(kind, detail)
            return
        self.proxy.metrics.upstream_errors.labels(kind).inc()
        logger.warning("upstream_error", kind=kind, detail=detail, path=self.path)
        self.fail(status, error, detail)

    def _cut(self, kind: str, detail: str) -> None:
        """The response already started: count the failure (a protocol error or a timeout as such, anything
        else as `truncated`) and abort the client connection."""
        self.error = f"upstream_body_{'timeout' if kind == 'timeout' else 'truncated'}"
        self.proxy.metrics.upstream_errors.labels(kind if kind in ("timeout", "protocol") else "truncated").inc()
        logger.warning("upstream_body_cut", kind=kind, detail=detail, path=self.path)
        self._drop_upstream()
        self._finish()
        self.client.abort()

    def fail(self, status: int, error: str, message: str, *, retry_after: int | None = None) -> None:
        """Answer with the proxy's own error (the response has not started) and close the client connection."""
        self.status, self.error = status, error
        self._drop_upstream()
        self.client.write(error_response(status, error, message, retry_after=retry_after))
        self._finish()
        self.client.exchange_done(self, False)

    def client_gone(self) -> None:
        if self.done:
            return
        if self.status != 101:
            self.status = CLIENT_CLOSED_REQUEST
        self._drop_upstream()
        self._finish()

    def _drop_upstream(self) -> None:
        connection, self.upstream = self.upstream, None
        if connection is not None:
            connection.discard()

    def check_deadlines(self, now: float) -> None:
        """Called by the client connection's periodic check: the body-read and upstream-idle timeouts."""
        if self.done:
            return
        proxy = self.proxy
        if self._inspecting:
            if now >= self._body_deadline:
                self.fail(408, "request_timeout", "the request body did not arrive in time")
            return
        if not self._request_complete and not self._response_started and now - self._last_body >= proxy.body_timeout:
            self.fail(408, "request_timeout", "the request body did not arrive in time")
            return
        if now - self._last_upstream < proxy.idle_timeout:
            return
        if self._response_started:
            self._cut("timeout", f"upstream silent for {proxy.idle_timeout:g} s in the middle of the response")
        else:
            detail = f"upstream {proxy.pool.address} sent no response within {proxy.idle_timeout:g} s"
            self.upstream_failed(504, "timeout", detail)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        proxy = self.proxy
        proxy.batch.after(lambda: proxy.exchange_finished(self))  # counted and logged once its bytes are sent

    def tunnel_finished(self) -> None:
        self._finish()

    @property
    def response_started(self) -> bool:
        return self._response_started

    @property
    def path(self) -> str:
        return self.head.target.partition(b"?")[0].decode("latin-1")


class _Query:
    """The `Query` protocol the session extractor reads, over the raw query string (parsed on first use)."""

    __slots__ = ("_raw", "_values")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._values: dict[str, str] | None = None

    def get(self, key: str) -> str | None:
        if not self._raw or key.encode("latin-1") not in self._raw:
            return None
        if self._values is None:
            self._values = {}
            for name, value in parse_qsl(self._raw.decode("latin-1"), keep_blank_values=True):
                self._values.setdefault(name, value)
        return self._values.get(key)
