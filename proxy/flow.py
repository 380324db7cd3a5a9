"""Flow control owned by each connection, a reset that is a reset, and the write batch that joins a turn's sends."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Protocol


class FlowControl:
    """A connection's flow state, owned by the connection and outliving every request on it.

    Reading pauses while at least one named reason holds (the peer's full write buffer, a pipelined request waiting
    its turn, a connect in progress) and resumes when the last one clears. `write_paused` is the transport's own
    signal (pause_writing/resume_writing arrive once per crossing of the high-water mark): it is kept here, so an
    exchange that starts later still sees it (uvicorn's FlowControl)."""

    __slots__ = ("_transport", "_reasons", "write_paused", "write_paused_at")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons: set[str] = set()
        self.write_paused = False
        self.write_paused_at = 0.0

    def pause_reading(self, reason: str) -> None:
        if not self._reasons and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        reasons = self._reasons
        if not reasons or reason not in reasons:  # the common case: nothing paused (no set lookup)
            return
        self._reasons.discard(reason)
        if not self._reasons and not self._transport.is_closing():
            self._transport.resume_reading()

    def resume_all(self) -> None:
        if self._reasons:
            self._reasons.clear()
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def peer_writable(self, reason: str, writable: bool) -> None:
        """Follow the peer `reason` names: read while it can take bytes, pause while its send buffer is full."""
        if writable:
            self.resume_reading(reason)
        else:
            self.pause_reading(reason)

    def reading_paused_for(self, reason: str) -> bool:
        return bool(self._reasons) and reason in self._reasons

    @property
    def reading_paused(self) -> bool:
        return bool(self._reasons)


def couple(client: FlowControl, upstream: FlowControl) -> None:
    """Pair a client and an upstream connection's flow state as it is now (an exchange or a tunnel starts): a write
    pause signalled before, between two requests, still stops the other side from reading."""
    if client.write_paused:
        upstream.pause_reading("client")
    if upstream.write_paused:
        client.pause_reading("upstream")


def decouple(client: FlowControl, upstream: FlowControl) -> None:
    """Undo `couple`: neither connection waits for the other any more."""
    upstream.resume_reading("client")
    client.resume_reading("upstream")


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset, not a FIN: a peer reading until close must see an error, never a clean end."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # already gone: abort() below is all that is left
    transport.abort()


_LINGER_RESET = struct.pack("ii", 1, 0)


class Flushable(Protocol):
    def flush(self) -> None: ...


class WriteBatch:
    """Joins writes into one send per connection (a cork): a request head and its body, or a response head,
    body and end, go out in a single system call. The sends wait until the event loop has run every callback of
    its current turn, so the events that arrived together leave together: the peer is woken once for the lot
    instead of once per connection. Work that can wait for the sends (counting and logging a finished request)
    is queued with `after` and runs right after them, off the response's path."""

    __slots__ = ("depth", "dirty", "_later", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.depth = 0
        self.dirty: list[Flushable] = []
        self._later: list[Callable[[], None]] = []
        self._loop = loop
        self._scheduled = False

    def end(self) -> None:
        self.depth -= 1
        if self.depth == 0 and (self.dirty or self._later):
            self._schedule()

    def queue(self, writer: Flushable, out: list[bytes], data: bytes) -> bool:
        """Hold `data` in `writer`'s pending sends `out` while a batch is open or earlier sends still wait for the
        turn's end (so the bytes keep their order); False when nothing waits and the caller sends it now."""
        if not (self.depth or out):
            return False
        if not out:
            self.dirty.append(writer)
        out.append(data)
        return True

    def after(self, callback: Callable[[], None]) -> None:
        self._later.append(callback)
        if self.depth == 0:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self.dirty = self.dirty, []
        later, self._later = self._later, []
        for writer in dirty:
            writer.flush()
        for callback in later:
            try:
                callback()
            except Exception as exc:  # one failure must not cost the others their count and log line
                self._loop.call_exception_handler({"message": "error after a send", "exception": exc})
