"""Forward one HTTP request to the upstream and stream its response back.

Errors are mapped here, once:

- more requests in flight than RUM_PROXY_MAX_CONNECTIONS -> 503 `overloaded` (with Retry-After)
- Transfer-Encoding other than `chunked` -> 501 `unsupported_transfer_encoding`
- request body not received within the body-read timeout -> 408 `request_timeout`
- upstream refused / reset / unreachable before answering -> 502 `upstream_unavailable`
- connect timeout, or no response headers within the idle timeout -> 504 `upstream_timeout`
- malformed upstream response -> 502 `upstream_protocol_error`
- upstream body cut, or idle timeout, after the response started -> the client connection is aborted so
  the client sees a truncated response, never a clean end
- client gone -> the handler is cancelled (aiohttp handler_cancellation), which cancels the upstream
  request at once; logged with status 499, never answered with a 5xx
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog
from aiohttp import (
    ClientConnectionError,
    ClientConnectorError,
    ClientError,
    ClientPayloadError,
    ClientResponseError,
    ClientSession,
    ServerTimeoutError,
    StreamReader,
    web,
)
from ddtrace.trace import Span
from multidict import CIMultiDict
from yarl import URL

from config.settings import Settings
from proxy.errors import BodyReadTimeout, UpstreamFailure, error_response
from proxy.headers import downstream_response_headers, upstream_request_headers
from proxy.metrics import Metrics
from proxy.session import NOT_FOUND, Extraction, RequestParts, SessionExtractor, body_kind
from proxy.tracing import Tracing
from proxy.websocket import WebSocketBridge, is_websocket_upgrade

logger = structlog.get_logger()

CLIENT_CLOSED_REQUEST = 499  # nginx's convention, for logs and metrics only: nothing is sent


async def read_up_to(content: StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read the body until EOF or until more than `limit` bytes arrived; say whether EOF was reached."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.readany()
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def stream_body(prefix: bytes, content: StreamReader, idle_timeout: float) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await content.readany()
        except TimeoutError:
            raise BodyReadTimeout from None
        if not chunk:
            return
        yield chunk


@dataclass(slots=True)
class Outcome:
    """What the request line reports, filled in as the request goes."""

    extraction: Extraction = NOT_FOUND
    status: int = CLIENT_CLOSED_REQUEST
    error: str | None = None


class Forwarder:
    """Everything a request needs, resolved once at startup; `handle` is the proxy's only route."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_getter: Callable[[], ClientSession],
        metrics: Metrics,
        tracing: Tracing,
        websockets: WebSocketBridge,
    ) -> None:
        self._session_getter = session_getter
        self._base = str(settings.upstream_url).rstrip("/")
        self._extractor = SessionExtractor(
            settings.sources,
            body_fields=settings.body_fields,
            query_params=settings.query_params,
            header_names=settings.header_names,
        )
        self._session_header = settings.session_header
        self._preserve_host = settings.preserve_host
        self._propagate_baggage = settings.propagate_baggage
        self._max_inspect = settings.max_inspect_bytes
        self._body_timeout = settings.body_read_timeout_seconds
        self._max_in_flight = settings.max_connections
        self._metrics = metrics
        self._tracing = tracing
        self._websockets = websockets
        self.in_flight = 0

    def upstream_url(self, request: web.BaseRequest) -> URL:
        target = request.raw_path
        if not target.startswith("/"):  # absolute-form or asterisk-form request target
            target = request.rel_url.raw_path_qs
        return URL(self._base + target, encoded=True)

    def find_session(self, request: web.BaseRequest, body: bytes | None, kind: str | None) -> Extraction:
        """`body` is the inspected body (None when not inspected), `kind` its body_kind."""
        parts = RequestParts(
            headers=request.headers,
            query=request.rel_url.query,
            body=body,
            body_kind=kind,
            now_ms=int(time.time() * 1000),
        )
        extraction = self._extractor.extract(parts)
        for source in extraction.rejected:
            self._metrics.count_invalid(source.value)
            logger.debug("invalid_session_id", source=source.value, path=request.path)
        return extraction

    def prepare_upstream(
        self,
        request: web.BaseRequest,
        body: tuple[bytes, str] | None,
        span: Span | None,
        outcome: Outcome,
        *,
        websocket: bool,
    ) -> CIMultiDict[str]:
        """Find the session, carry it into the trace, and build the headers to send upstream.

        `body` is the inspected body with its body_kind, or None when the body was not inspected.
        """
        content, kind = body if body is not None else (None, None)
        outcome.extraction = extraction = self.find_session(request, content, kind)
        trace_headers = self._tracing.propagate(span, extraction.session_id, _source(extraction))
        return upstream_request_headers(
            request.headers,
            session_header=self._session_header,
            session_id=extraction.session_id,
            remote=request.remote,
            scheme=request.scheme,
            preserve_host=self._preserve_host,
            propagate_baggage=self._propagate_baggage,
            trace_headers=trace_headers,
            websocket=websocket,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        outcome = Outcome()
        span = self._tracing.start(request.headers, request.method, request.path)
        self.in_flight += 1
        self._metrics.open_streams.inc()
        try:
            if self.in_flight > self._max_in_flight:
                response: web.StreamResponse = error_response(
                    503, "overloaded", "too many requests in flight", **{"Retry-After": "1"}
                )
            elif _unsupported_transfer_coding(request):
                response = error_response(501, "unsupported_transfer_encoding", "only chunked is supported")
            elif is_websocket_upgrade(request):
                headers = self.prepare_upstream(request, None, span, outcome, websocket=True)
                response = await self._websockets.bridge(request, self.upstream_url(request), headers)
            else:
                response = await self._forward(request, span, outcome)
            outcome.status = response.status
            return response
        except BodyReadTimeout:
            outcome.status, outcome.error = 408, "request_timeout"
            response = error_response(408, outcome.error, "the request body did not arrive in time")
            # Answer, then close at once instead of lingering to drain a body the client is not sending.
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
            return response
        except UpstreamFailure as failure:
            outcome.status, outcome.error = failure.status, failure.error
            self._metrics.upstream_errors.labels(failure.kind).inc()
            logger.warning("upstream_error", kind=failure.kind, detail=str(failure), path=request.path)
            return error_response(failure.status, failure.error, str(failure))
        finally:
            self.in_flight -= 1
            self._metrics.open_streams.dec()
            duration = time.monotonic() - started
            source = _source(outcome.extraction) or "none"
            self._metrics.count_request(outcome.status, source, duration)
            logger.info(  # while the span is still active, so the line carries its trace ids
                "request",
                method=request.method,
                path=request.path,
                status=outcome.status,
                duration_ms=round(duration * 1000, 2),
                session_source=source,
                session_id=outcome.extraction.session_id,
                **({"error": outcome.error} if outcome.error else {}),
            )
            self._tracing.finish(span, outcome.status, outcome.error)

    async def _forward(self, request: web.Request, span: Span | None, outcome: Outcome) -> web.StreamResponse:
        inspected: tuple[bytes, str] | None = None
        data: bytes | AsyncIterator[bytes] | None = None
        if request.body_exists:
            kind = body_kind(request.headers.get("Content-Type")) if self._extractor.inspects_body else None
            if kind is not None and (request.content_length is None or request.content_length <= self._max_inspect):
                try:
                    async with asyncio.timeout(self._body_timeout):
                        prefix, complete = await read_up_to(request.content, self._max_inspect)
                except TimeoutError:
                    raise BodyReadTimeout from None
                if complete:
                    data = prefix
                    inspected = (prefix, kind)
                else:
                    data = stream_body(prefix, request.content, self._body_timeout)
            else:
                data = stream_body(b"", request.content, self._body_timeout)

        headers = self.prepare_upstream(request, inspected, span, outcome, websocket=False)
        session = self._session_getter()
        try:
            upstream = await session.request(
                request.method, self.upstream_url(request), headers=headers, data=data, allow_redirects=False
            )
        except BodyReadTimeout:
            raise
        except ClientError as exc:
            if isinstance(exc.__cause__, BodyReadTimeout) or isinstance(exc.__context__, BodyReadTimeout):
                raise BodyReadTimeout from None
            raise _map_upstream_error(exc) from None
        except TimeoutError as exc:
            raise UpstreamFailure(504, "upstream_timeout", "timeout", f"upstream timed out: {exc}") from None

        finished = False
        try:
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=downstream_response_headers(upstream.headers),
            )
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ClientPayloadError, ClientConnectionError, TimeoutError) as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else "truncated"
                outcome.error = f"upstream_body_{kind}"
                self._metrics.upstream_errors.labels(kind).inc()
                logger.warning("upstream_body_cut", kind=kind, detail=str(exc) or type(exc).__name__, path=request.path)
                _abort(request)
                return response
            except ConnectionResetError:
                outcome.error = "client_gone"
                _abort(request)  # the client went away while we wrote
                return response
            await response.write_eof()
            finished = True
            return response
        finally:
            if finished:
                upstream.release()  # the connection goes back to the pool
            else:
                upstream.close()  # unread or cancelled: never reuse this connection


def _map_upstream_error(exc: ClientError) -> UpstreamFailure:
    if isinstance(exc, ServerTimeoutError):
        return UpstreamFailure(504, "upstream_timeout", "timeout", f"upstream timed out: {exc}")
    if isinstance(exc, ClientConnectorError):
        return UpstreamFailure(502, "upstream_unavailable", "connect", f"cannot connect to upstream: {exc}")
    if isinstance(exc, ClientResponseError):
        return UpstreamFailure(
            502, "upstream_protocol_error", "protocol", f"malformed upstream response: {exc.message}"
        )
    return UpstreamFailure(502, "upstream_unavailable", "disconnected", f"upstream failed: {exc!r}")


def _unsupported_transfer_coding(request: web.BaseRequest) -> bool:
    # aiohttp accepts e.g. "gzip, chunked" and hands us decoded chunks of still-gzipped data (RFC 9112 §6.1).
    codings = request.headers.getall("Transfer-Encoding", [])
    return any(value.strip().lower() != "chunked" for value in codings)


def _source(extraction: Extraction) -> str | None:
    return extraction.source.value if extraction.source is not None else None


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
