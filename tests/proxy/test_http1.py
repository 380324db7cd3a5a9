"""The pure HTTP/1 plans: one row per combination of what decides a request's refusal and a response's framing."""

from __future__ import annotations

import itertools

import pytest

from proxy.http1 import (
    BODY_NONE,
    BODY_PASS,
    BODY_RECHUNK,
    BODY_TUNNEL,
    BODY_UNTIL_CLOSE,
    ResponsePlan,
    check_request_head,
    forwards_interim,
    plan_response,
    sends_continue,
)

FRAMINGS = ("none", "length", "chunked", "eof")


def expected_plan(framing: str, http11: bool, keep_alive: bool, request_complete: bool, draining: bool) -> ResponsePlan:
    """The rule, written the long way: h11's, with the proxy's own (a client still sending is not kept)."""
    body = {"none": BODY_NONE, "length": BODY_PASS}.get(framing, BODY_RECHUNK if http11 else BODY_UNTIL_CLOSE)
    keep = keep_alive and request_complete and not draining and body != BODY_UNTIL_CLOSE
    if not keep:
        return ResponsePlan(body, False, b"close")
    return ResponsePlan(body, True, None if http11 else b"keep-alive")


@pytest.mark.parametrize(
    ("framing", "http11", "keep_alive", "request_complete", "draining"),
    list(itertools.product(FRAMINGS, (True, False), (True, False), (True, False), (True, False))),
)
def test_every_response_plan(
    framing: str, http11: bool, keep_alive: bool, request_complete: bool, draining: bool
) -> None:
    plan = plan_response(
        200, framing, http11=http11, keep_alive=keep_alive, request_complete=request_complete, draining=draining
    )
    assert plan == expected_plan(framing, http11, keep_alive, request_complete, draining)


@pytest.mark.parametrize(
    ("framing", "http11", "keep_alive", "request_complete", "expected"),
    [
        # An HTTP/1.0 keep-alive client and an SSE answer: close-delimited, never chunks, never keep-alive.
        ("chunked", False, True, True, ResponsePlan(BODY_UNTIL_CLOSE, False, b"close")),
        ("eof", False, True, True, ResponsePlan(BODY_UNTIL_CLOSE, False, b"close")),
        # An HTTP/1.0 keep-alive client and a sized answer: kept, and told so.
        ("length", False, True, True, ResponsePlan(BODY_PASS, True, b"keep-alive")),
        # An early answer (401 before the upload ended): the head says close, since the proxy then closes.
        ("length", True, True, False, ResponsePlan(BODY_PASS, False, b"close")),
        ("chunked", True, True, True, ResponsePlan(BODY_RECHUNK, True, None)),
        ("eof", True, True, True, ResponsePlan(BODY_RECHUNK, True, None)),
    ],
)
def test_the_cases_the_review_found(
    framing: str, http11: bool, keep_alive: bool, request_complete: bool, expected: ResponsePlan
) -> None:
    plan = plan_response(
        200, framing, http11=http11, keep_alive=keep_alive, request_complete=request_complete, draining=False
    )
    assert plan == expected


def test_a_websocket_answer_becomes_a_tunnel() -> None:
    plan = plan_response(101, "none", http11=True, keep_alive=False, request_complete=True, draining=False)
    assert plan == ResponsePlan(BODY_TUNNEL, False, None)


@pytest.mark.parametrize(
    ("method", "http11", "hosts", "codings", "absolute", "status"),
    [
        (b"GET", True, 1, [], False, None),
        (b"GET", True, 0, [], False, 400),  # HTTP/1.1 without Host (RFC 9112 §3.2)
        (b"GET", True, 0, [], True, None),  # absolute-form carries its authority
        (b"GET", True, 2, [], False, 400),  # duplicate Host
        (b"GET", False, 0, [], False, None),  # HTTP/1.0 needs none
        (b"GET", False, 2, [], False, 400),
        (b"POST", True, 1, [b"chunked"], False, None),
        (b"POST", True, 1, [b"gzip", b"chunked"], False, 501),
        (b"POST", False, 1, [b"chunked"], False, 400),  # Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1)
        (b"CONNECT", True, 1, [], False, 405),
    ],
)
def test_request_heads_the_proxy_refuses(
    method: bytes, http11: bool, hosts: int, codings: list[bytes], absolute: bool, status: int | None
) -> None:
    refusal = check_request_head(method, http11, hosts, codings, absolute)
    assert (refusal.status if refusal is not None else None) == status


@pytest.mark.parametrize(
    ("http11", "has_body", "expect", "sent"),
    [
        (True, True, b"100-continue", True),
        (True, True, b" 100-Continue ", True),
        (False, True, b"100-continue", False),  # never a 1xx to HTTP/1.0 (RFC 9110 §15.2)
        (True, False, b"100-continue", False),
        (True, True, None, False),
    ],
)
def test_continue(http11: bool, has_body: bool, expect: bytes | None, sent: bool) -> None:
    assert sends_continue(http11, has_body, expect) is sent


@pytest.mark.parametrize(
    ("status", "http11", "forwarded"), [(103, True, True), (103, False, False), (100, True, False), (102, True, True)]
)
def test_interim_responses(status: int, http11: bool, forwarded: bool) -> None:
    assert forwards_interim(status, http11) is forwarded
