"""Flow control: a transport stops reading while any reason to wait holds, so memory stays bounded."""

from __future__ import annotations

import asyncio
from typing import Protocol


class ReadGate:
    """Pauses a transport's reading while at least one named reason holds (the other side's full write buffer,
    a pipelined request waiting its turn, a connect in progress); resumes when the last one clears."""

    __slots__ = ("_transport", "_reasons")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and not self._transport.is_closing():
            self._transport.resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)


class Flushable(Protocol):
    def flush(self) -> None: ...


class WriteBatch:
    """Joins writes into one send per connection (a cork): a request head and its body, or a response head,
    body and end, go out in a single system call. The sends wait until the event loop has run every callback of
    its current turn, so the events that arrived together leave together: the peer is woken once for the lot
    instead of once per connection."""

    __slots__ = ("depth", "dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.depth = 0
        self.dirty: list[Flushable] = []
        self._loop = loop
        self._scheduled = False

    def end(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.dirty and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self.dirty = self.dirty, []
        for writer in dirty:
            writer.flush()
