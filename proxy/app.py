"""The one place that assembles the proxy from validated settings, and the server that runs it."""

from __future__ import annotations

import asyncio
import re
from time import monotonic
from typing import Any

import structlog

from config.settings import Settings
from proxy.access_log import log_request
from proxy.flow import WriteBatch
from proxy.headers import ForwardRules
from proxy.inspection import InspectBudget
from proxy.metrics import Metrics
from proxy.ports import Abortable, GoingAway, RequestRecord
from proxy.session import Extraction, SessionExtractor
from proxy.trace_context import propagate
from proxy.tracing import Tracing
from proxy.upstream import UpstreamPool

logger = structlog.get_logger()


DRAIN_LINGER_SECONDS = 1.0
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")  # X-Request-ID as ingresses write it; anything else is not logged


class Lifecycle:
    """Whether the proxy takes traffic; readiness answers 503 while starting and once draining."""

    def __init__(self) -> None:
        self.starting = False  # RUM_PROXY_WORKERS: until every worker listens
        self.draining = False


class LogLimiter:
    """At most `rate` lines a second (bursts up to `rate`); the lines left out are counted for the next one."""

    def __init__(self, rate: float = 10.0) -> None:
        self._rate = rate
        self._tokens = rate
        self._stamp = monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> dict[str, int]:
        count, self.suppressed = self.suppressed, 0
        return {"suppressed": count} if count else {}


class Limits:
    """Every bound and timeout of the forwarding core, fixed at startup (seconds and bytes)."""

    __slots__ = (
        "max_in_flight",
        "max_client_connections",
        "max_header_bytes",
        "max_headers",
        "max_inspect",
        "body_timeout",
        "idle_timeout",
        "header_timeout",
        "keepalive_timeout",
        "send_timeout",
        "linger",
        "ws_max_frame",
        "tick",
    )

    def __init__(self, settings: Settings) -> None:
        self.max_in_flight = settings.max_connections
        self.max_client_connections = settings.max_client_connections
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.max_inspect = settings.max_inspect_bytes
        self.body_timeout = settings.body_read_timeout_seconds
        self.idle_timeout = settings.idle_timeout_seconds
        self.header_timeout = settings.header_read_timeout_seconds
        self.keepalive_timeout = settings.keepalive_timeout_seconds
        self.send_timeout = settings.send_timeout_seconds
        self.linger = settings.linger_seconds
        self.ws_max_frame = settings.ws_max_message_bytes
        # Each connection checks its deadlines this often: timeouts fire within a quarter of their value.
        timeouts = [
            self.header_timeout,
            self.keepalive_timeout,
            self.body_timeout,
            self.idle_timeout,
            self.send_timeout,
        ]
        if self.linger > 0:
            timeouts.append(self.linger)
        self.tick = min(max(min(timeouts) / 4, 0.01), 1.0)


class Proxy:
    """The services every connection uses, resolved once at startup (the rules, the pool, the counters, the
    limits), and the registry of open connections and tunnels that shutdown drains."""

    def __init__(self, settings: Settings, *, tracing_enabled: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        url = settings.upstream_url
        host = url.host or "127.0.0.1"
        port = url.port or 80  # the settings accept only http:// upstreams
        self.base_path = (url.path or "").rstrip("/").encode()
        self.batch = WriteBatch(self.loop)
        self.pool = UpstreamPool(
            host.strip("[]"),
            port,
            connect_timeout=settings.connect_timeout_seconds,
            keepalive_seconds=settings.upstream_keepalive_seconds,
            max_head_bytes=settings.max_response_header_bytes,
            batch=self.batch,
        )
        self.extractor = SessionExtractor(
            settings.sources,
            body_fields=settings.body_fields,
            query_params=settings.query_params,
            header_names=settings.header_names,
        )
        self.extra_header_names = frozenset(name.encode("ascii") for name in settings.header_names)
        self.rules = ForwardRules(
            session_header=settings.session_header.encode("ascii"),
            preserve_host=settings.preserve_host,
            propagate_baggage=settings.propagate_baggage,
            upstream_host=f"{host}:{port}".encode(),
            replaces_trace_headers=settings.propagate_trace or settings.apm_span and tracing_enabled,
        )
        self.metrics = Metrics()
        self.lifecycle = Lifecycle()
        self.tracing = Tracing(settings.apm_span and tracing_enabled)
        self.propagate_trace = settings.propagate_trace
        self.limits = limits = Limits(settings)
        self.inspect_budget = InspectBudget(settings.inspect_budget_bytes)
        self.idle_limit = limits.keepalive_timeout  # how long an idle client connection stays open
        self.drain_started = 0.0
        self.in_flight = 0
        self.streams_by_function = self.metrics.track_open_streams(lambda: self.in_flight)
        self.connections: set[Abortable] = set()
        self.tunnels: set[GoingAway] = set()
        self._bad_requests = LogLimiter()
        self._idle = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    def upstream_target(self, target: bytes) -> bytes:
        if not target.startswith(b"/"):
            if target.startswith((b"http://", b"https://")):  # absolute-form (RFC 9112 §3.2.2)
                _, _, rest = target.partition(b"://")
                slash = rest.find(b"/")
                target = rest[slash:] if slash >= 0 else b"/"
            elif target == b"*":
                return target if not self.base_path else self.base_path + b"/"
        return self.base_path + target

    def tracing_start(self, exchange: RequestRecord) -> None:
        if self.tracing.enabled:
            head = exchange.head
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
            exchange.span = self.tracing.start(headers, head.method.decode(), exchange.path)

    def trace_headers(self, exchange: RequestRecord, extraction: Extraction) -> dict[bytes, bytes]:
        if self.tracing.enabled:
            source = str(extraction.source) if extraction.source is not None else None
            headers = self.tracing.propagate(exchange.span, extraction.session_id, source)  # type: ignore[arg-type]
            return {name.lower().encode(): value.encode("latin-1") for name, value in headers.items()}
        if not self.propagate_trace:
            return {}
        propagation = propagate(exchange.head.index, extraction.session_id)
        exchange.log_trace_id = propagation.log_trace_id
        return propagation.headers

    def exchange_finished(self, exchange: RequestRecord) -> None:
        """The one place that counts and logs a finished request: one `request` line each."""
        if exchange.counted:
            self.in_flight -= 1
            if not self.streams_by_function:
                self.metrics.open_streams.dec()
        duration = monotonic() - exchange.started
        extraction = exchange.extraction
        source = str(extraction.source) if extraction.source is not None else "none"  # a StrEnum: its value
        self.metrics.count_request(exchange.status, source, duration)
        fields: dict[str, Any] = {
            "method": exchange.head.method.decode("latin-1"),
            "path": exchange.path,
            "status": exchange.status,
            "duration_ms": round(duration * 1000, 2),
            "session_source": source,
            "session_id": extraction.session_id,
        }
        request_id = exchange.head.get(b"x-request-id")
        if request_id is not None and _REQUEST_ID.fullmatch(request_id):
            fields["request_id"] = request_id.decode("ascii")  # the ingress's or the client's, to join their logs
        if exchange.span is not None:
            fields.update(self.tracing.log_ids(exchange.span))  # type: ignore[arg-type]
        elif exchange.log_trace_id is not None:
            fields["dd.trace_id"] = exchange.log_trace_id
        if exchange.error is not None:
            fields["error"] = exchange.error
        if not exchange.logged:
            log_request(fields, warning=exchange.error is not None)
        if exchange.span is not None:
            self.tracing.finish(exchange.span, exchange.status, exchange.error)  # type: ignore[arg-type]

    def log_bad_request(self, status: int, error: str, reason: str) -> None:
        """Malformed requests: counted always, logged at most ten a second with the number left out."""
        self.metrics.bad_requests.labels(reason).inc()
        if self._bad_requests.allow():
            logger.warning(
                "bad_request", status=status, error=error, reason=reason, **self._bad_requests.take_suppressed()
            )

    def log_refused_connection(self) -> None:
        if self._bad_requests.allow():
            logger.warning(
                "connection_refused", reason="too many client connections", **self._bad_requests.take_suppressed()
            )

    # ---- shutdown

    def drain(self) -> None:
        """Stop taking requests: idle connections close after a short linger, busy ones after their response,
        WebSockets get 1001."""
        self.lifecycle.draining = True
        # An idle connection is not closed at once: a request its client is sending right now (or a new
        # connection's first request) would be lost in flight. It gets DRAIN_LINGER_SECONDS to send one, which is
        # answered with `Connection: close`; the periodic check closes it after that.
        self.idle_limit = min(self.limits.keepalive_timeout, DRAIN_LINGER_SECONDS)
        self.drain_started = self.loop.time()
        for tunnel in list(self.tunnels):
            tunnel.go_away()

    def connection_closed(self, connection: Abortable) -> None:
        self.connections.discard(connection)
        if self.lifecycle.draining and not self.connections:
            self._idle.set()

    async def wait_closed(self, grace: float) -> None:
        """Wait up to `grace` for every client connection to end, then cut the rest (their upstreams too)."""
        if self.connections:
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                logger.warning("drain_timeout", open_connections=len(self.connections), grace_seconds=grace)
        for connection in list(self.connections):
            connection.abort()
        self.pool.close()
