from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from proxy.headers import downstream_response_headers, strip_hop_by_hop, upstream_request_headers

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"


def forward(headers: list[tuple[str, str]], **kwargs: Any) -> CIMultiDict[str]:
    options: dict[str, Any] = {
        "session_header": "x-rum-session-id",
        "session_id": SID,
        "remote": "10.1.2.3",
        "scheme": "http",
        "preserve_host": True,
        "propagate_baggage": True,
    }
    options.update(kwargs)
    return upstream_request_headers(CIMultiDict(headers), **options)


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    headers = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Private"),
            ("Connection", "Upgrade"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("X-Kept", "1"),
        ]
    )
    strip_hop_by_hop(headers)
    assert list(headers.items()) == [("X-Kept", "1")]


@pytest.mark.parametrize("spelling", ["x-rum-session-id", "X-RUM-SESSION-ID", "x_rum_session_id", "X_Rum-Session_Id"])
def test_client_copies_of_the_session_header_are_replaced(spelling: str) -> None:
    out = forward([(spelling, "forged\r\nvalue"), ("x-rum-session-id", "again")])
    assert out.getall("x-rum-session-id") == [SID]
    assert [k for k in out if k.lower().replace("_", "-") == "x-rum-session-id"] == ["x-rum-session-id"]


def test_no_session_means_no_session_header_at_all() -> None:
    out = forward([("x_rum_session_id", "forged")], session_id=None)
    assert not [k for k in out if "rum" in k.lower()]


def test_connection_cannot_smuggle_away_the_proxy_headers() -> None:
    out = forward([("Connection", "x-rum-session-id, x-forwarded-for, baggage")])
    assert out["x-rum-session-id"] == SID
    assert out["x-forwarded-for"] == "10.1.2.3"
    assert out["baggage"] == f"session.id={SID}"


def test_forwarded_headers() -> None:
    out = forward([("Host", "agent.example.com"), ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")])
    assert out["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2, 10.1.2.3"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "agent.example.com"
    assert out["Host"] == "agent.example.com"


def test_forwarded_proto_and_host_from_an_ingress_are_kept() -> None:
    out = forward([("Host", "svc:8080"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "chat.example.com")])
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "chat.example.com"


def test_host_can_be_left_to_the_client_library() -> None:
    assert "Host" not in forward([("Host", "agent.example.com")], preserve_host=False)


def test_expect_is_not_forwarded() -> None:
    assert "Expect" not in forward([("Expect", "100-continue")])


def test_baggage_gets_the_session_and_keeps_other_members() -> None:
    out = forward([("baggage", "user.id=u1,session.id=spoofed"), ("baggage", "account.id=a1")])
    assert out.getall("baggage") == [f"user.id=u1,account.id=a1,session.id={SID}"]


def test_baggage_untouched_when_nothing_to_change() -> None:
    out = forward([("baggage", "user.id=u1 ,  x=2")], session_id=None)
    assert out.getall("baggage") == ["user.id=u1 ,  x=2"]


def test_invalid_baggage_session_is_removed_when_no_valid_id() -> None:
    out = forward([("baggage", "session.id=not-a-uuid,user.id=u1")], session_id=None)
    assert out.getall("baggage") == ["user.id=u1"]


def test_baggage_can_be_left_alone() -> None:
    out = forward([("baggage", "session.id=other")], propagate_baggage=False)
    assert out.getall("baggage") == ["session.id=other"]


def test_trace_headers_replace_incoming_ones_but_not_baggage() -> None:
    out = forward(
        [("x-datadog-trace-id", "1"), ("traceparent", "00-old-old-01"), ("baggage", "a=1")],
        trace_headers={"x-datadog-trace-id": "2", "traceparent": "00-new-new-01", "baggage": "evil=1"},
    )
    assert out.getall("x-datadog-trace-id") == ["2"]
    assert out.getall("traceparent") == ["00-new-new-01"]
    assert out.getall("baggage") == [f"a=1,session.id={SID}"]


def test_websocket_handshake_fields_are_left_to_the_client_library() -> None:
    out = forward(
        [
            ("Sec-WebSocket-Key", "k"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "chat"),
            ("Origin", "https://app"),
        ],
        websocket=True,
    )
    assert [k for k in out if k.lower().startswith("sec-websocket")] == []
    assert out["Origin"] == "https://app"


def test_response_headers() -> None:
    out = downstream_response_headers(
        CIMultiDict(
            [
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Connection", "X-Internal"),
                ("X-Internal", "1"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", "text/plain"),
            ]
        )
    )
    assert list(out.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Type", "text/plain")]
