"""structlog configured once: JSON lines when not on a TTY, readable console output otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from ddtrace.trace import tracer

from config.settings import LogFormat, LogLevel

logger = structlog.get_logger()


def _datadog_correlation(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add dd.trace_id/dd.span_id of the active span so Datadog links log lines and traces."""
    context = tracer.get_log_correlation_context()  # dd.trace_id, dd.span_id, dd.service, dd.env, dd.version
    if context.get("dd.trace_id", "0") != "0":
        event.update((key, value) for key, value in context.items() if value)
    return event


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: LogLevel, fmt: LogFormat, *, trace_correlation: bool) -> None:
    """Configure structlog and route the standard library's loggers (aiohttp, ddtrace) through it."""
    numeric_level = logging.getLevelNamesMapping()[level.value.upper()]
    as_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
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
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *shared,
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # aiohttp's access log is replaced by the proxy's own request line.
    logging.getLogger("aiohttp.access").disabled = True
