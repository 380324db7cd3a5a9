"""The proxy's own error answers: a small JSON body, always with `Connection: close`."""

from __future__ import annotations

from http import HTTPStatus

import orjson


def error_response(status: int, error: str, message: str, *, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 error response. The connection is closed after it: an unread request body may be on it."""
    body = orjson.dumps({"error": error, "message": message, "status": status})
    reason = HTTPStatus(status).phrase.encode() if status in HTTPStatus._value2member_map_ else b"Error"
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(head) + b"\r\n\r\n" + body
