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
    """Joins the writes of one read event into one send per connection (a cork): a request head and its body,
    or a response head, body and end, go out in a single system call."""

    __slots__ = ("depth", "dirty")

    def __init__(self) -> None:
        self.depth = 0
        self.dirty: list[Flushable] = []

    def end(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.dirty:
            dirty, self.dirty = self.dirty, []
            for writer in dirty:
                writer.flush()
