"""Header rules for forwarding: pure functions over (name, value) byte pairs."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.headers import (
    ForwardRules,
    ResponseFraming,
    downstream_response_head,
    response_framing,
    scan_request_head,
    upstream_request_head,
)
from proxy.http1 import BODY_PASS, BODY_RECHUNK, BODY_TUNNEL, BODY_UNTIL_CLOSE, ResponsePlan

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"
Pairs = list[tuple[str, str]]


def forward(headers: Pairs, *, websocket: bool = False, **kwargs: Any) -> Pairs:
    rules: dict[str, Any] = {"preserve_host": True, "propagate_baggage": True, "replaces_trace_headers": True}
    rules.update({k: kwargs.pop(k) for k in list(kwargs) if k in rules})
    options: dict[str, Any] = {"session_id": SID, "remote": "10.1.2.3", "trace_headers": {}, "body_framing": None}
    options.update(kwargs)
    raw = [(name.encode(), value.encode()) for name, value in headers]
    head = scan_request_head(b"GET", b"/chat", b"1.1", raw)
    out = upstream_request_head(
        head,
        ForwardRules(session_header=b"x-rum-session-id", upstream_host=b"upstream:8000", **rules),
        target=b"/chat",
        scheme=b"http",
        websocket=websocket,
        **options,
    )
    assert out.startswith(b"GET /chat HTTP/1.1\r\n") and out.endswith(b"\r\n\r\n")
    lines = out.decode().split("\r\n")[1:-2]
    return [(name, value) for name, _, value in (line.partition(": ") for line in lines)]


def getall(pairs: Pairs, name: str) -> list[str]:
    return [value for key, value in pairs if key.lower() == name.lower()]


def first(pairs: Pairs, name: str) -> str:
    return getall(pairs, name)[0]


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    out = forward(
        [
            ("Connection", "keep-alive, X-Private"),
            ("Connection", "Upgrade"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ("X-Kept", "1"),
        ],
        session_id=None,
        remote=None,
    )
    assert [name for name, _ in out] == ["X-Kept", "host", "x-forwarded-proto", "via"]


@pytest.mark.parametrize("spelling", ["x-rum-session-id", "X-RUM-SESSION-ID", "x_rum_session_id", "X_Rum-Session_Id"])
def test_client_copies_of_the_session_header_are_replaced(spelling: str) -> None:
    out = forward([(spelling, "forged\r\nvalue"), ("x-rum-session-id", "again")])
    assert getall(out, "x-rum-session-id") == [SID]
    assert [k for k, _ in out if k.lower().replace("_", "-") == "x-rum-session-id"] == ["x-rum-session-id"]


def test_no_session_means_no_session_header_at_all() -> None:
    out = forward([("x_rum_session_id", "forged")], session_id=None)
    assert not [k for k, _ in out if "rum" in k.lower()]


def test_connection_cannot_smuggle_away_the_proxy_headers() -> None:
    out = forward([("Connection", "x-rum-session-id, x-forwarded-for, baggage")])
    assert first(out, "x-rum-session-id") == SID
    assert first(out, "x-forwarded-for") == "10.1.2.3"
    assert first(out, "baggage") == f"session.id={SID}"


def test_forwarded_headers() -> None:
    out = forward([("Host", "agent.example.com"), ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")])
    assert first(out, "X-Forwarded-For") == "1.1.1.1, 2.2.2.2, 10.1.2.3"
    assert first(out, "X-Forwarded-Proto") == "http"
    assert first(out, "X-Forwarded-Host") == "agent.example.com"
    assert first(out, "Host") == "agent.example.com"


def test_forwarded_proto_and_host_from_an_ingress_are_kept() -> None:
    out = forward([("Host", "svc:8080"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "chat.example.com")])
    assert first(out, "X-Forwarded-Proto") == "https"
    assert first(out, "X-Forwarded-Host") == "chat.example.com"


def test_host_can_be_left_to_the_client_library() -> None:
    assert getall(forward([("Host", "agent.example.com")], preserve_host=False), "host") == ["upstream:8000"]


def test_expect_is_not_forwarded() -> None:
    assert getall(forward([("Expect", "100-continue")]), "expect") == []


def test_baggage_gets_the_session_and_keeps_other_members() -> None:
    out = forward([("baggage", "user.id=u1,session.id=spoofed"), ("baggage", "account.id=a1")])
    assert getall(out, "baggage") == [f"user.id=u1,account.id=a1,session.id={SID}"]


def test_baggage_untouched_when_nothing_to_change() -> None:
    out = forward([("baggage", "user.id=u1 ,  x=2")], session_id=None)
    assert getall(out, "baggage") == ["user.id=u1 ,  x=2"]


def test_invalid_baggage_session_is_removed_when_no_valid_id() -> None:
    out = forward([("baggage", "session.id=not-a-uuid,user.id=u1")], session_id=None)
    assert getall(out, "baggage") == ["user.id=u1"]


def test_baggage_can_be_left_alone() -> None:
    out = forward([("baggage", f"session.id={SID},user.id=u1")], propagate_baggage=False)
    assert getall(out, "baggage") == [f"session.id={SID},user.id=u1"]


def test_baggage_left_alone_still_loses_a_foreign_session() -> None:
    out = forward([("baggage", "session.id=other,user.id=u1"), ("baggage", "session.id=junk")], propagate_baggage=False)
    assert getall(out, "baggage") == ["user.id=u1"]


def test_trace_headers_replace_incoming_ones() -> None:
    out = forward(
        [("x-datadog-trace-id", "1"), ("traceparent", "00-old-old-01"), ("baggage", "a=1")],
        trace_headers={b"x-datadog-trace-id": b"2", b"traceparent": b"00-new-new-01"},
    )
    assert getall(out, "x-datadog-trace-id") == ["2"]
    assert getall(out, "traceparent") == ["00-new-new-01"]
    assert getall(out, "baggage") == [f"a=1,session.id={SID}"]


def test_websocket_handshake_fields_reach_the_upstream_which_answers_the_client() -> None:
    out = forward(
        [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "k"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "chat"),
            ("Origin", "https://app"),
        ],
        websocket=True,
    )
    assert [k for k, _ in out if k.lower().startswith("sec-websocket")] == [
        "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
    ]  # fmt: skip
    assert (first(out, "connection"), first(out, "upgrade"), first(out, "Origin")) == (
        "upgrade",
        "websocket",
        "https://app",
    )


def test_the_body_is_framed_by_the_proxy() -> None:
    out = forward([("Content-Length", "12"), ("Transfer-Encoding", "chunked")], body_framing=b"content-length: 3")
    assert getall(out, "content-length") == ["3"] and getall(out, "transfer-encoding") == []


def response(headers: Pairs, **kwargs: Any) -> Pairs:
    raw = [(name.encode(), value.encode()) for name, value in headers]
    options: dict[str, Any] = {"framing": ResponseFraming("length", 2), "plan": KEEP_PASS}
    options.update(kwargs)
    out = downstream_response_head(200, b"OK", raw, **options)
    lines = out.decode().split("\r\n")[1:-2]
    return [(name, value) for name, _, value in (line.partition(": ") for line in lines)]


def test_response_headers() -> None:
    out = response(
        [
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Connection", "X-Internal"),
            ("X-Internal", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "2"),
        ]
    )
    assert out == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "text/plain"),
        ("Content-Length", "2"),
    ]


KEEP_PASS = ResponsePlan(BODY_PASS, True, None)


def test_a_chunked_or_close_delimited_body_goes_chunked_to_an_http_1_1_client() -> None:
    plan = ResponsePlan(BODY_RECHUNK, True, None)
    out = response([("Transfer-Encoding", "chunked")], framing=ResponseFraming("chunked"), plan=plan)
    assert out == [("transfer-encoding", "chunked")]


def test_transfer_codings_before_chunked_reach_the_client() -> None:
    headers = [(b"Transfer-Encoding", b"gzip, chunked")]
    framing = response_framing(200, b"GET", headers)
    out = response(
        [("Transfer-Encoding", "gzip, chunked")], framing=framing, plan=ResponsePlan(BODY_RECHUNK, True, None)
    )
    assert out == [("transfer-encoding", "gzip, chunked")]


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (ResponsePlan(BODY_PASS, False, b"close"), [("connection", "close")]),
        (ResponsePlan(BODY_PASS, True, b"keep-alive"), [("connection", "keep-alive")]),
        (ResponsePlan(BODY_UNTIL_CLOSE, False, b"close"), [("connection", "close")]),
        (ResponsePlan(BODY_TUNNEL, False, None), [("connection", "upgrade"), ("upgrade", "websocket")]),
    ],
)
def test_the_plan_decides_the_connection_and_framing_fields(plan: ResponsePlan, expected: Pairs) -> None:
    assert response([("Connection", "keep-alive")], framing=ResponseFraming("chunked"), plan=plan) == expected


@pytest.mark.parametrize(
    ("status", "method", "headers", "kind"),
    [
        (200, b"GET", [(b"Content-Length", b"5")], "length"),
        (200, b"GET", [(b"Transfer-Encoding", b"gzip, chunked")], "chunked"),
        (200, b"GET", [], "eof"),
        (200, b"HEAD", [(b"Content-Length", b"5")], "none"),
        (204, b"GET", [(b"Content-Length", b"5")], "none"),
        (304, b"GET", [], "none"),
        (103, b"GET", [], "none"),
    ],
)
def test_response_framing(status: int, method: bytes, headers: list[tuple[bytes, bytes]], kind: str) -> None:
    assert response_framing(status, method, headers).kind == kind


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1 2"])
def test_a_bad_content_length_is_refused(length: bytes) -> None:
    with pytest.raises(ValueError, match="Content-Length"):
        response_framing(200, b"GET", [(b"Content-Length", length)])
