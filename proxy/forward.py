"""Relay one request to the upstream and its response back: the exchange between two connections.

An exchange is a state machine with one state per direction:

    request:  INSPECTING (body held to look for the session ID) -> STREAMING (head sent, body relayed) -> SENT
    response: WAITING -> STREAMING (head sent to the client) -> DONE (finished, counted and logged once)

and one method per event. Framing decisions are the pure plans of proxy.http1; failures map through the one table in
proxy.errors. Each timeout is charged to the side being waited for: the body-read timeout runs only while the
proxy waits for the client's body (not while the upstream is slow to take it), the upstream's idle timeout only
while it owes the proxy progress (taking the body, answering, streaming) and never while the client is not
reading — that is the connection's send timeout.
"""

from __future__ import annotations

from time import monotonic, time
from typing import Final
from urllib.parse import parse_qsl

import structlog

from proxy.app import Proxy
from proxy.errors import CUT_KINDS, FAILURES, error_response
from proxy.flow import FlowControl, couple, decouple
from proxy.headers import (
    RequestHead,
    ResponseFraming,
    downstream_response_head,
    forwards_to_itself,
    response_framing,
    upstream_request_head,
)
from proxy.http1 import (
    BODY_NONE,
    BODY_RECHUNK,
    BODY_TUNNEL,
    Refusal,
    ResponsePlan,
    check_request_head,
    forwards_interim,
    plan_response,
    sends_continue,
)
from proxy.inspection import Inspection
from proxy.ports import CLIENT_CLOSED_REQUEST, Downstream, RequestRecord
from proxy.session import INSPECTABLE_CODINGS, Extraction, RequestParts, body_kind, inspectable_body
from proxy.upstream import UpstreamConnectError, UpstreamConnection

logger = structlog.get_logger()

_CHUNK_END: Final = b"0\r\n\r\n"
HELD_BYTES: Final = 65_536  # most request bytes kept for a resend, or queued before the upstream connection exists

REQUEST_INSPECTING: Final = 0
REQUEST_STREAMING: Final = 1
REQUEST_SENT: Final = 2

RESPONSE_WAITING: Final = 0
RESPONSE_STREAMING: Final = 1
RESPONSE_DONE: Final = 2

_NO_PLAN: Final = ResponsePlan(BODY_NONE, False, b"close")


class Exchange(RequestRecord):
    """One request and its response. The client connection feeds it the request (head, body chunks, end); the
    upstream connection feeds it the response. Every decision is a call into the pure core."""

    def __init__(
        self, proxy: Proxy, client: Downstream, head: RequestHead, *, http11: bool, keep_alive: bool, websocket: bool
    ) -> None:
        super().__init__(head, monotonic())
        self.proxy = proxy
        self.client = client
        self.flow: FlowControl = client.flow  # the client connection's, read natively on every event
        self.http11 = http11
        self.keep_alive = keep_alive  # what the client asked for on this request
        self.websocket = websocket
        self.upstream: UpstreamConnection | None = None
        self.request_state = REQUEST_STREAMING
        self.response_state = RESPONSE_WAITING
        self.request_complete_seen = False  # the client's whole request (body included) has been read
        self._chunked_in = False
        self._length_in: int | None = None
        self._inspection: Inspection | None = None
        self._pending: list[bytes] | None = None  # written before the upstream connection exists
        self._pending_size = 0
        self._replay: list[bytes] | None = []  # the whole request while small enough to resend on a stale pool hit
        self._replay_size = 0
        self._last_body = self.started
        self._last_upstream = self.started
        self._plan = _NO_PLAN
        self._framing = ResponseFraming("none")
        self._keep_upstream = False

    @property
    def response_started(self) -> bool:
        return self.response_state != RESPONSE_WAITING

    # ---- request side: called by the client connection

    def start(self) -> None:
        proxy, head = self.proxy, self.head
        proxy.in_flight += 1
        self.counted = True
        if not proxy.streams_by_function:
            proxy.metrics.open_streams.inc()
        proxy.tracing_start(self)
        codings = head.transfer_codings
        hosts = head.index.get(b"host")
        absolute = head.target[:1] != b"/" and head.target.startswith((b"http://", b"https://"))
        refusal = check_request_head(head.method, self.http11, len(hosts) if hosts else 0, codings, absolute)
        if refusal is not None:
            if refusal.status != 405:  # malformed: counted and logged with the others (rate-limited)
                self.logged = True
                proxy.log_bad_request(refusal.status, refusal.error, refusal.reason)
            self.refuse(refusal)
            return
        if b"via" in head.index and forwards_to_itself(head, proxy.rules.via_token):
            # The request came back through this proxy: its upstream leads to itself (RFC 9110 §7.6.3).
            logger.error("forwarding_loop", upstream=proxy.pool.address, path=self.path)
            self.fail("loop", f"the request came back to this proxy: its upstream {proxy.pool.address} leads to it")
            return
        if proxy.in_flight > proxy.limits.max_in_flight:
            self.fail("overloaded", "too many requests in flight", retry_after=1)
            return
        self._chunked_in = bool(codings)
        length = head.get(b"content-length")
        self._length_in = int(length) if length is not None and not self._chunked_in else None
        has_body = self._chunked_in or bool(self._length_in)
        if self.websocket:
            self._send_head(self._find_session(None), framing=None)
            return
        if sends_continue(self.http11, has_body, head.get(b"expect")):
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if has_body and proxy.extractor.inspects_body:
            reason, kind = self._not_inspected_reason()
            if reason is None and kind is not None:
                deadline = self.started + proxy.limits.body_timeout
                self._inspection = Inspection(kind, proxy.inspect_budget, proxy.limits.max_inspect, deadline)
                self.request_state = REQUEST_INSPECTING
                return
            logger.debug("body_not_inspected", reason=reason, path=self.path)
        # Whatever framing the client announced goes upstream, `Content-Length: 0` of an empty POST included
        # (servers answer 411 to a POST with neither a length nor chunked framing).
        announced = self._chunked_in or self._length_in is not None
        self._send_head(self._find_session(None), framing=self._streamed_framing() if announced else None)

    def _not_inspected_reason(self) -> tuple[str | None, str | None]:
        head = self.head
        content_type = head.get(b"content-type")
        kind = body_kind(content_type.decode("latin-1") if content_type else None)
        if kind is None:
            return "content_type", None
        if self._length_in is not None and self._length_in > self.proxy.limits.max_inspect:
            return "too_large", kind
        encoding = head.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in INSPECTABLE_CODINGS:
            return "content_encoding", kind
        return None, kind

    def receive_body(self, chunk: bytes) -> None:
        if self.response_state == RESPONSE_DONE:
            return
        self._last_body = monotonic()
        inspection = self._inspection
        if inspection is not None:
            reason = inspection.add(chunk)
            if reason is None:
                return
            logger.debug("body_not_inspected", reason=reason, path=self.path)
            self._inspection = None
            self.request_state = REQUEST_STREAMING
            self._send_head(self._find_session(None), framing=self._streamed_framing())
            for part in inspection.take():
                self._send_body(part)
        self._send_body(chunk)

    def request_complete(self) -> None:
        self.request_complete_seen = True
        if self.response_state == RESPONSE_DONE:
            return
        inspection = self._inspection
        if inspection is not None:
            self._inspection = None
            body = b"".join(inspection.take())
            encoding = self.head.get(b"content-encoding")
            plain = inspectable_body(body, encoding, self.proxy.limits.max_inspect)
            if plain is None:
                logger.debug("body_not_inspected", reason="undecodable", path=self.path)
            self.request_state = REQUEST_STREAMING
            self._send_head(self._find_session((plain, inspection.kind)), framing=b"content-length: %d" % len(body))
            if body:
                self._write_upstream(body)
        elif self._chunked_in:
            self._write_upstream(_CHUNK_END)
        self.request_state = REQUEST_SENT
        self._last_upstream = monotonic()  # from now on the upstream owes the answer

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
        parts = RequestParts(head, _Query(head.query), content, kind, int(time() * 1000))
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
        self._last_upstream = monotonic()
        if connection is not None:
            self._use(connection)
            self._write_upstream(upstream_head)
            return
        self._pending = [upstream_head]
        self._pending_size = len(upstream_head)
        proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        pool = self.proxy.pool
        try:
            connection = await pool.connect()
        except UpstreamConnectError as exc:
            if self.response_state == RESPONSE_WAITING:
                self.upstream_failed("connect_timeout" if exc.timeout else "connect", str(exc))
            return
        if self.response_state != RESPONSE_WAITING:
            pool.release(connection)
            return
        self._use(connection)
        pending, self._pending = self._pending or [], None
        self._pending_size = 0
        connection.write(b"".join(pending))
        self.flow.resume_reading("connect")

    def _use(self, connection: UpstreamConnection) -> None:
        """Pair the two connections' flow state as it is now: a pause signalled before this exchange still holds."""
        self.upstream = connection
        connection.attach(self)
        couple(self.flow, connection.flow)

    def _detach(self) -> UpstreamConnection | None:
        connection, self.upstream = self.upstream, None
        if connection is not None:
            decouple(self.flow, connection.flow)
        return connection

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
                self.flow.pause_reading("connect")
            return
        if self.upstream is not None:
            self.upstream.write(data)

    # ---- response side: called by the upstream connection

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep: bool) -> None:
        if self.response_state != RESPONSE_WAITING:
            return
        self._last_upstream = monotonic()
        client = self.client
        if status < 200 and status != 101:
            if forwards_interim(status, self.http11):  # 103 Early Hints and the like (RFC 9110 §15.2)
                client.write(downstream_response_head(status, reason, headers, framing=ResponseFraming("none")))
            return
        if status == 101 and not self.websocket:
            self.upstream_failed("protocol", "upstream switched protocols unasked")
            return
        try:
            self._framing = framing = response_framing(status, self.head.method, headers)
        except ValueError as exc:
            self.upstream_failed("protocol", f"malformed upstream response: {exc}")
            return
        plan = plan_response(
            status,
            framing.kind,
            http11=self.http11,
            keep_alive=self.keep_alive,
            request_complete=self.request_complete_seen,
            draining=self.proxy.draining,
        )
        if framing.codings and plan.body != BODY_RECHUNK:
            # A transfer coding other than chunked (gzip, chunked) can only reach an HTTP/1.1 client.
            self.upstream_failed("protocol", "transfer coding an HTTP/1.0 client cannot receive")
            return
        self._plan = plan
        self.status = status
        self.response_state = RESPONSE_STREAMING
        upstream = self.upstream
        if (
            self.request_state != REQUEST_SENT
            or (upstream is not None and upstream.flow.write_paused)
            or (status >= 400 and (self._chunked_in or bool(self._length_in)))
        ):
            # An answer before the upstream had the whole request (nginx's rule), or an error answer to a request
            # with a body (an early 401/413 whose body may still sit unread in the socket buffers: written is not
            # read): whether the upstream reads the rest is unknown, so the connection is never reused.
            keep = False
        client.write(downstream_response_head(status, reason, headers, framing=framing, plan=plan))
        if plan.body == BODY_NONE:
            if self.head.method == b"HEAD" and upstream is not None:
                upstream.skip_body()
            self._response_done(keep)
        elif plan.body != BODY_TUNNEL:
            self._keep_upstream = keep

    def on_response_body(self, chunk: bytes) -> None:
        if self.response_state != RESPONSE_STREAMING:
            return
        self._last_upstream = monotonic()
        if self._plan.body == BODY_RECHUNK:
            self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.client.write(chunk)

    def on_response_complete(self) -> None:
        if self.response_state != RESPONSE_STREAMING or self._plan.body in (BODY_NONE, BODY_TUNNEL):
            return
        if self._plan.body == BODY_RECHUNK:
            self.client.write(_CHUNK_END)
        self._response_done(self._keep_upstream)

    def _response_done(self, upstream_keep: bool) -> None:
        connection = self._detach()
        if connection is not None:
            if upstream_keep and self.request_state == REQUEST_SENT:
                self.proxy.pool.release(connection)
            else:
                connection.discard()
        self._finish()
        self.client.exchange_done(self, self._plan.keep_client, not self.request_complete_seen)

    def on_upgraded(self, rest: bytes) -> None:
        connection = self._detach()
        if self.response_state != RESPONSE_STREAMING or connection is None or self._plan.body != BODY_TUNNEL:
            if connection is not None:
                connection.discard()
            return
        self.client.start_tunnel(self, connection, rest)

    def on_upstream_error(self, kind: str, detail: str) -> None:
        self.upstream_failed(kind, detail)

    def on_upstream_lost(self, exc: Exception | None) -> None:
        connection = self._detach()
        if self.response_state == RESPONSE_DONE:
            return
        if self.response_state == RESPONSE_STREAMING:
            if self._framing.kind == "eof" and exc is None:  # a clean close is the end of this body
                if self._plan.body == BODY_RECHUNK:
                    self.client.write(_CHUNK_END)
                self._finish()
                self.client.exchange_done(self, self._plan.keep_client, not self.request_complete_seen)
                return
            self._cut("truncated", "upstream closed the connection in the middle of the response")
            return
        if (
            connection is not None
            and self._replay is not None
            and self.request_state == REQUEST_SENT
            and self.proxy.pool.may_replay(connection, self.head.method)
        ):
            # A pooled connection the upstream closed just as we reused it: send the request once more.
            self._pending = list(self._replay)
            self._pending_size = self._replay_size
            self.proxy.loop.create_task(self._connect())
            return
        detail = f"upstream {self.proxy.pool.address} closed the connection before answering"
        self.upstream_failed("disconnected", detail)

    def on_tunnel_data(self, data: bytes) -> None:  # only tunnels get bytes after the upgrade
        pass

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self._last_upstream = monotonic()  # the upstream took our bytes: progress
        self.flow.peer_writable("upstream", writable)

    def client_writable(self, writable: bool) -> None:
        connection = self.upstream
        if connection is not None:
            if writable:
                self._last_upstream = monotonic()  # the upstream's silence while we held it is not its fault
            connection.flow.peer_writable("client", writable)

    # ---- endings

    def upstream_failed(self, kind: str, detail: str) -> None:
        """The upstream failed: answer with an error, or cut the response if it already started."""
        if self.response_state == RESPONSE_DONE:
            return
        if self.response_state == RESPONSE_STREAMING:
            self._cut(kind, detail)
            return
        failure = FAILURES[kind]
        if failure.metric_kind is not None:
            self.proxy.metrics.upstream_errors.labels(failure.metric_kind).inc()
        logger.warning("upstream_error", kind=failure.metric_kind or kind, detail=detail, path=self.path)
        self.fail(kind, detail)

    def _cut(self, kind: str, detail: str) -> None:
        """The response already started: count the failure and reset the client connection."""
        metric_kind, error = CUT_KINDS.get(kind, ("truncated", "upstream_body_truncated"))
        self.error = error
        self.proxy.metrics.upstream_errors.labels(metric_kind).inc()
        logger.warning("upstream_body_cut", kind=metric_kind, detail=detail, path=self.path)
        self._drop_upstream()
        self._finish()
        self.client.abort()

    def fail(self, kind: str, message: str, *, retry_after: int | None = None) -> None:
        """Answer with the proxy's own error for a failure of the table (the response has not started)."""
        failure = FAILURES[kind]
        self.refuse(Refusal(failure.status, failure.error, message), retry_after=retry_after)

    def refuse(self, refusal: Refusal, *, retry_after: int | None = None) -> None:
        """Answer with the proxy's own error and close the client connection (the response has not started)."""
        if self.response_state != RESPONSE_WAITING:
            return
        self.status, self.error = refusal.status, refusal.error
        self._drop_upstream()
        if self._pending is not None:
            self._pending = None
            self.flow.resume_reading("connect")
        self.client.write(error_response(refusal.status, refusal.error, refusal.reason, retry_after=retry_after))
        self._finish()
        self.client.exchange_done(self, False, not self.request_complete_seen)

    def client_gone(self, error: str | None = None) -> None:
        if self.response_state == RESPONSE_DONE:
            return
        if self.status != 101:
            self.status = CLIENT_CLOSED_REQUEST
        if error is not None:
            self.error = error
        self._drop_upstream()
        self._finish()

    def _drop_upstream(self) -> None:
        connection = self._detach()
        if connection is not None:
            connection.discard()

    def check_deadlines(self, now: float) -> None:
        """Called by the client connection's periodic check (never while the client is not reading: that is the
        connection's send timeout): the timeout of whichever side the exchange is waiting for."""
        if self.response_state == RESPONSE_DONE:
            return
        limits = self.proxy.limits
        flow = self.flow
        upstream_blocked = flow.reading_paused_for("upstream") or flow.reading_paused_for("connect")
        if self.request_state != REQUEST_SENT and not upstream_blocked and self.response_state == RESPONSE_WAITING:
            inspection = self._inspection
            if inspection is not None:
                late = now >= inspection.deadline
            else:
                late = now - self._last_body >= limits.body_timeout
            if late:
                self.fail("body_timeout", "the request body did not arrive in time")
            return  # waiting for the client, not the upstream
        if now - self._last_upstream < limits.idle_timeout:
            return
        if self.response_state == RESPONSE_STREAMING:
            detail = f"upstream silent for {limits.idle_timeout:g} s in the middle of the response"
            self._cut("response_timeout", detail)
        elif self.request_state != REQUEST_SENT:
            self.upstream_failed("response_timeout", f"upstream took no request bytes for {limits.idle_timeout:g} s")
        else:
            detail = f"upstream {self.proxy.pool.address} sent no response within {limits.idle_timeout:g} s"
            self.upstream_failed("response_timeout", detail)

    def _finish(self) -> None:
        if self.response_state == RESPONSE_DONE:
            return
        self.response_state = RESPONSE_DONE
        inspection, self._inspection = self._inspection, None
        if inspection is not None:
            inspection.take()  # its bytes go back to the process budget
        proxy = self.proxy
        proxy.batch.after(lambda: proxy.exchange_finished(self))  # counted and logged once its bytes are sent

    def tunnel_finished(self) -> None:
        self._finish()


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
