"""Request bodies held to be searched for the session ID: bounded per request and, together, per process."""

from __future__ import annotations


class InspectBudget:
    """The request bytes all connections together may hold while looking for the session ID (process-wide)."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


class Inspection:
    """A request body held to be searched for the session ID, bounded per request and by the process budget."""

    __slots__ = ("kind", "chunks", "size", "deadline", "_budget", "_limit")

    def __init__(self, kind: str, budget: InspectBudget, limit: int, deadline: float) -> None:
        self.kind = kind
        self.chunks: list[bytes] = []
        self.size = 0
        self.deadline = deadline
        self._budget = budget
        self._limit = limit

    def add(self, chunk: bytes) -> str | None:
        """Hold `chunk`; the reason to stop inspecting (fail open: the body is then streamed), or None."""
        if self.size + len(chunk) > self._limit:
            return "too_large"
        if not self._budget.reserve(len(chunk)):
            return "budget"
        self.chunks.append(chunk)
        self.size += len(chunk)
        return None

    def take(self) -> list[bytes]:
        chunks, self.chunks = self.chunks, []
        self._budget.release(self.size)
        self.size = 0
        return chunks
