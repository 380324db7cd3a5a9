"""The failure table, written once: what each failure costs the client (status, error code), how it is counted
(the `kind` label of rum_proxy_upstream_errors_total, or none) and logged. And the proxy's own error answers.

| failure                | status | error                          | upstream_errors kind | log event         |
|------------------------|--------|--------------------------------|----------------------|-------------------|
| connect                | 502    | upstream_unavailable           | connect              | upstream_error    |
| connect_timeout        | 504    | upstream_timeout               | timeout              | upstream_error    |
| disconnected           | 502    | upstream_unavailable           | disconnected         | upstream_error    |
| response_timeout       | 504    | upstream_timeout               | timeout              | upstream_error    |
| protocol               | 502    | upstream_protocol_error        | protocol             | upstream_error    |
| response_head_too_large| 502    | upstream_protocol_error        | protocol             | upstream_error    |
| body_timeout           | 408    | request_timeout                | —                    | request line      |
| overloaded             | 503    | overloaded (Retry-After: 1)    | —                    | request line      |
| loop                   | 508    | loop_detected                  | —                    | forwarding_loop   |

After the response head went out an upstream failure cannot be answered: the client connection is reset so the
client sees a truncated response, never a clean end (`upstream_body_cut`, kinds truncated / timeout / protocol).
A client that stops reading for RUM_PROXY_SEND_TIMEOUT_SECONDS is reset too (`client_send_timeout`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

import orjson


class Failure:
    __slots__ = ("status", "error", "metric_kind")

    def __init__(self, status: int, error: str, metric_kind: str | None) -> None:
        self.status = status
        self.error = error
        self.metric_kind = metric_kind


FAILURES: Final[dict[str, Failure]] = {
    "connect": Failure(502, "upstream_unavailable", "connect"),
    "connect_timeout": Failure(504, "upstream_timeout", "timeout"),
    "disconnected": Failure(502, "upstream_unavailable", "disconnected"),
    "response_timeout": Failure(504, "upstream_timeout", "timeout"),
    "protocol": Failure(502, "upstream_protocol_error", "protocol"),
    "response_head_too_large": Failure(502, "upstream_protocol_error", "protocol"),
    "body_timeout": Failure(408, "request_timeout", None),
    "overloaded": Failure(503, "overloaded", None),
    "loop": Failure(508, "loop_detected", None),
}

# A response cut after its head: the kind counted in rum_proxy_upstream_errors_total and the request's `error`.
CUT_KINDS: Final[dict[str, tuple[str, str]]] = {
    "truncated": ("truncated", "upstream_body_truncated"),
    "disconnected": ("truncated", "upstream_body_truncated"),
    "response_timeout": ("timeout", "upstream_body_timeout"),
    "protocol": ("protocol", "upstream_body_truncated"),
}


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
