"""The `request` line, one per request: rendered and written in batches with the request path (compiled by mypyc).

proxy/log.py configures structlog and hands this module the writer every line goes to (`use`). In JSON, request
lines skip structlog's processor chain and are rendered here directly, the same line structlog would write (fields,
event, level, timestamp) at a fraction of the cost; otherwise they go through structlog like every other line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from time import time_ns
from typing import Any, BinaryIO

import orjson
import structlog

logger = structlog.get_logger()


class LineWriter:
    """Every line the process writes, whole lines to stdout, buffered for a moment while the event loop runs.

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


def use(writer: LineWriter, fast_json_level: int | None) -> None:
    """Write lines to `writer`; render request lines at `fast_json_level` or above directly (None: structlog)."""
    global _writer, _fast_json_level
    if _writer is not None:
        _writer.flush()
    _writer, _fast_json_level = writer, fast_json_level


_stamp_second = -1
_stamp_prefix = ""


def _timestamp() -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper writes it; the date part is made once a second."""
    global _stamp_second, _stamp_prefix
    micros = time_ns() // 1000
    second = micros // 1_000_000
    if second != _stamp_second:
        _stamp_second, _stamp_prefix = second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    # Native integer arithmetic and str() when compiled, where divmod() and a format spec are generic calls.
    return _stamp_prefix + str(micros - second * 1_000_000 + 1_000_000)[1:] + "Z"


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
