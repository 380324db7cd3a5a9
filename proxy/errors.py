"""The proxy's own error answers: a small JSON body, and the failures that produce them."""

from __future__ import annotations

import orjson
from aiohttp import web


class BodyReadTimeout(Exception):
    """The client did not send its request body in time."""


class UpstreamFailure(Exception):
    def __init__(self, status: int, error: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.kind = status, error, kind


def error_response(status: int, error: str, message: str, **headers: str) -> web.Response:
    """A small JSON error answer. The connection is closed after it: an unread request body may still be on it."""
    body = orjson.dumps({"error": error, "message": message, "status": status})
    response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
    response.force_close()
    return response
