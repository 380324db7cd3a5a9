"""structlog configured once: JSON lines when not on a TTY, readable console output otherwise.

Every line the process writes goes through the one renderer: the proxy's own, aiohttp's and ddtrace's log
records. ddtrace adds a plain-text stderr handler to its `ddtrace` logger at import (DD_TRACE_LOG_STREAM_HANDLER);
it is removed so ddtrace's records reach the renderer only. ddtrace's trace writer logs an error for every
payload it cannot send (`failed to send, dropping N traces to intake at …`): without a reachable Agent that is
one warning, `datadog_agent_unreachable`, then the same records at debug level only.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from config.settings import LogFormat, LogLevel
from proxy import access_log
from proxy.access_log import LineWriter, flush_logs

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


class _StructlogOutput:
    """structlog's logger: the method named like each level writes the rendered line to the one LineWriter."""

    def __init__(self, writer: LineWriter) -> None:
        self.msg = self.debug = self.info = self.warning = self.warn = writer.msg
        self.error = self.critical = self.exception = self.fatal = self.log = writer.msg


def configure_logging(level: LogLevel, fmt: LogFormat, *, trace_correlation: bool) -> None:
    """Configure structlog and route the standard library's loggers (aiohttp, ddtrace) through it."""
    numeric_level = logging.getLevelNamesMapping()[level.value.upper()]
    as_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())

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
    writer = LineWriter(sys.stdout.buffer)
    access_log.use(writer, numeric_level if as_json and not trace_correlation else None)
    output = _StructlogOutput(writer)
    atexit.register(writer.flush)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: output,
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
