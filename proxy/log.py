"""structlog configured once: JSON lines when not on a TTY, readable console output otherwise.

Every line the process writes goes through the one renderer: the proxy's own, aiohttp's and ddtrace's log
records. ddtrace adds a plain-text stderr handler to its `ddtrace` logger at import (DD_TRACE_LOG_STREAM_HANDLER);
it is removed so ddtrace's records reach the renderer only. ddtrace's trace writer logs an error for every
payload it cannot send (`failed to send, dropping N traces to intake at …`): without a reachable Agent that is
one warning, `datadog_agent_unreachable`, then the same records at debug level only.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import orjson
import structlog

from config.settings import LogFormat, LogLevel

logger = structlog.get_logger()


def _datadog_correlation(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add dd.trace_id/dd.span_id of the active span so Datadog links log lines and traces."""
    from ddtrace.trace import tracer

    context = tracer.get_log_correlation_context()  # dd.trace_id, dd.span_id, dd.service, dd.env, dd.version
    if context.get("dd.trace_id", "0") != "0":
        event.update((key, value) for key, value in context.items() if value)
    return event


def _orjson_dumps(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


class LineWriter:
    """structlog's output: whole lines to stdout, buffered for a moment while the event loop runs.

    A line per request written with a system call each would cost as much as forwarding the request; lines are
    instead sent together at most every FLUSH_SECONDS (and at exit), like nginx's `access_log … flush=`.
    """

    FLUSH_SECONDS = 0.05
    MAX_BUFFER = 256 * 1024

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buffer: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._lock = threading.Lock()  # ddtrace logs from its writer thread too

    def msg(self, message: str | bytes) -> None:
        line = (message.encode() if isinstance(message, str) else message) + b"\n"
        with self._lock:
            self._buffer.append(line)
            self._size += len(line)
            if self._scheduled and self._size < self.MAX_BUFFER:
                return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread (startup, exit, or another thread): write now
            self.flush()
            return
        if self._size >= self.MAX_BUFFER:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_later(self.FLUSH_SECONDS, self.flush)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def flush(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._buffer:
                return
            data, self._buffer, self._size = b"".join(self._buffer), [], 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed: nothing to write logs to, and never a reason to fail a request


_writer: LineWriter | None = None
_fast_json_level: int | None = None  # set when request lines may skip structlog's processor chain


_stamp_second = -1
_stamp_prefix = ""


def _timestamp() -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper writes it; the date part is made once a second."""
    global _stamp_second, _stamp_prefix
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    if second != _stamp_second:
        _stamp_second, _stamp_prefix = second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_stamp_prefix}.{micro:06d}Z"


def log_request(fields: dict[str, Any], *, warning: bool) -> None:
    """The one `request` line per request. In JSON it is rendered directly, the same line structlog would write
    (fields, event, level, timestamp) at a third of the cost; otherwise through structlog."""
    level = logging.WARNING if warning else logging.INFO
    if _fast_json_level is not None and _writer is not None:
        if level >= _fast_json_level:
            fields["event"] = "request"
            fields["level"] = "warning" if warning else "info"
            fields["timestamp"] = _timestamp()
            _writer.msg(orjson.dumps(fields, default=str))
        return
    if warning:
        logger.warning("request", **fields)
    else:
        logger.info("request", **fields)


def flush_logs() -> None:
    if _writer is not None:
        _writer.flush()


class AgentUnreachable(logging.Filter):
    """Turns ddtrace's repeated `failed to send, dropping …` errors into one clear warning, then debug lines."""

    TEMPLATE = "failed to send, dropping"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name.startswith("ddtrace") and str(record.msg).startswith(self.TEMPLATE)):
            return True
        with self._lock:
            first, self.warned = not self.warned, True
        if first:
            args = record.args if isinstance(record.args, tuple) else ()
            intake = str(args[1]) if len(args) > 1 else ""
            parts = urlsplit(intake)
            logger.warning(
                "datadog_agent_unreachable",
                url=f"{parts.scheme}://{parts.netloc}" if parts.netloc else intake,
                detail=record.getMessage(),
                hint="start a Datadog Agent there or point DD_TRACE_AGENT_URL at one; RUM_PROXY_APM_SPAN=false (the "
                "default) stops the proxy sending spans. Later send failures are logged at debug level only.",
            )
            return False
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _drop_ddtrace_stream_handlers() -> None:
    """ddtrace's own StreamHandler writes raw text to stderr; its records propagate to the root handler instead."""
    ddtrace_logger = logging.getLogger("ddtrace")
    for handler in list(ddtrace_logger.handlers):
        if type(handler) is logging.StreamHandler:  # not its file handler (DD_TRACE_LOG_FILE), a subclass
            ddtrace_logger.removeHandler(handler)
    ddtrace_logger.propagate = True


def configure_logging(level: LogLevel, fmt: LogFormat, *, trace_correlation: bool) -> None:
    """Configure structlog and route the standard library's loggers (aiohttp, ddtrace) through it."""
    numeric_level = logging.getLevelNamesMapping()[level.value.upper()]
    as_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())

    global _writer, _fast_json_level
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if trace_correlation:
        shared.append(_datadog_correlation)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if _writer is not None:
        _writer.flush()
    writer = _writer = LineWriter(sys.stdout.buffer)
    _fast_json_level = numeric_level if as_json and not trace_correlation else None
    atexit.register(writer.flush)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _as_text(renderer)],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *shared,
                structlog.processors.format_exc_info,
            ],
        )
    )
    handler.addFilter(AgentUnreachable())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    _drop_ddtrace_stream_handlers()
    logging.captureWarnings(True)  # Python warnings too, instead of raw text on stderr
    # aiohttp's access log is replaced by the proxy's own request line.
    logging.getLogger("aiohttp.access").disabled = True


def _as_text(renderer: Any) -> Any:
    """The standard library's handler writes text: decode what the JSON renderer makes as bytes."""

    def render(logger: Any, name: str, event: Any) -> str:
        flush_logs()  # keep lines in order with the buffered structlog output
        rendered = renderer(logger, name, event)
        return rendered.decode() if isinstance(rendered, bytes) else str(rendered)

    return render
