"""HTTP/1 framing decisions as pure functions over plain values: is a request head acceptable, and how does a
response go back to the client (its body mode, whether the client connection is kept, the Connection field).

Models: h11's `_body_framing` and `_clean_up_response_headers_for_sending`. The protocol classes only carry the
plans out; every combination is table-tested in tests/proxy/test_http1.py.
"""

from __future__ import annotations

from typing import Final

# How the response body reaches the client.
BODY_NONE: Final = 0  # no body (HEAD, 1xx, 204, 304)
BODY_PASS: Final = 1  # Content-Length: the bytes as they come
BODY_RECHUNK: Final = 2  # the upstream's chunks or close-delimited body, re-chunked for an HTTP/1.1 client
BODY_UNTIL_CLOSE: Final = 3  # an HTTP/1.0 client: the body ends when the proxy closes the connection
BODY_TUNNEL: Final = 4  # 101 Switching Protocols: bytes both ways from now on

BODY_NAMES: Final = ("none", "pass", "rechunk", "until-close", "tunnel")


class Refusal:
    """Why a request is answered by the proxy itself and never forwarded."""

    __slots__ = ("status", "error", "reason")

    def __init__(self, status: int, error: str, reason: str) -> None:
        self.status = status
        self.error = error
        self.reason = reason

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.error!r}, {self.reason!r})"


def check_request_head(
    method: bytes, http11: bool, host_count: int, transfer_codings: list[bytes], absolute_form: bool
) -> Refusal | None:
    """RFC 9112 §3.2 and §6.1: the request heads a proxy must refuse before forwarding anything."""
    if host_count > 1:
        return Refusal(400, "bad_request", "more than one Host field")
    if http11 and host_count == 0 and not absolute_form:
        return Refusal(400, "bad_request", "HTTP/1.1 request without a Host field")
    if transfer_codings:
        if not http11:
            return Refusal(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
        if transfer_codings != [b"chunked"]:
            return Refusal(501, "unsupported_transfer_encoding", "only the chunked transfer coding is supported")
    if method == b"CONNECT":
        return Refusal(405, "method_not_allowed", "CONNECT is not supported by a reverse proxy")
    return None


def sends_continue(http11: bool, has_body: bool, expect: bytes | None) -> bool:
    """The proxy answers `Expect: 100-continue` itself; an HTTP/1.0 client never gets a 1xx (RFC 9110 §15.2)."""
    return http11 and has_body and expect is not None and expect.strip().lower() == b"100-continue"


def forwards_interim(status: int, http11: bool) -> bool:
    """An upstream 1xx other than 100 and 101 (103 Early Hints…) reaches an HTTP/1.1 client only."""
    return http11 and status != 100 and status != 101


class ResponsePlan:
    """How one response goes back: the body mode, whether the client connection stays open after it, and the
    Connection field the head carries (None, b"close" or b"keep-alive")."""

    __slots__ = ("body", "keep_client", "connection")

    def __init__(self, body: int, keep_client: bool, connection: bytes | None) -> None:
        self.body = body
        self.keep_client = keep_client
        self.connection = connection

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResponsePlan) and (self.body, self.keep_client, self.connection) == (
            other.body,
            other.keep_client,
            other.connection,
        )

    def __hash__(self) -> int:
        return hash((self.body, self.keep_client, self.connection))

    def __repr__(self) -> str:
        return f"ResponsePlan({BODY_NAMES[self.body]}, keep_client={self.keep_client}, connection={self.connection!r})"


def plan_response(
    status: int,
    framing: str,  # proxy.headers.response_framing: "none", "length", "chunked" or "eof"
    *,
    http11: bool,
    keep_alive: bool,  # what the client asked for on this request (llhttp's should_keep_alive)
    request_complete: bool,  # the whole request body has been read from the client
    draining: bool,
) -> ResponsePlan:
    """The response plan for a final response (status >= 200, or 101 for a WebSocket the proxy asked for)."""
    if status == 101:
        return ResponsePlan(BODY_TUNNEL, False, None)
    if framing == "none":
        body = BODY_NONE
    elif framing == "length":
        body = BODY_PASS
    elif http11:
        body = BODY_RECHUNK
    else:
        body = BODY_UNTIL_CLOSE  # h11: an HTTP/1.0 peer gets a close-delimited body, never chunks
    # A client whose body is still arriving cannot be kept: the rest of it would be read as the next request.
    keep = keep_alive and request_complete and not draining and body != BODY_UNTIL_CLOSE
    if not keep:
        return ResponsePlan(body, False, b"close")
    return ResponsePlan(body, True, None if http11 else b"keep-alive")
