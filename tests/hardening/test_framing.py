"""Malformed and smuggling-shaped requests: the exact answer, the connection closed, nothing forwarded."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.hardening.conftest import (
    GUARD,
    ProxyFactory,
    ProxyProcess,
    assert_error_answer,
    assert_no_traceback,
    start_proxy,
)
from tests.hardening.rawhttp import Connection, Ending, build_request, exchange
from tests.hardening.upstreams import RecordingUpstream

BAD = "bad_request"
POST = b"POST /framing HTTP/1.1\r\nHost: proxy.test\r\n"

CASES = [
    ("cl-and-te", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, BAD),
    ("te-and-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, BAD),
    ("duplicate-cl-equal", POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, BAD),
    ("duplicate-cl-different", POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, BAD),
    ("cl-list", POST + b"Content-Length: 3, 3\r\n\r\nabc", 400, BAD),
    ("cl-abc", POST + b"Content-Length: abc\r\n\r\n", 400, BAD),
    ("cl-negative", POST + b"Content-Length: -1\r\n\r\n", 400, BAD),
    ("cl-plus", POST + b"Content-Length: +5\r\n\r\nhello", 400, BAD),
    ("cl-space", POST + b"Content-Length: 1 2\r\n\r\n", 400, BAD),
    ("cl-huge", POST + b"Content-Length: 99999999999999999999999999\r\n\r\n", 400, BAD),
    (
        "te-gzip-chunked",
        POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
        "unsupported_transfer_encoding",
    ),
    (
        "te-chunked-http10",
        b"POST /framing HTTP/1.0\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
        BAD,
    ),
    ("obs-fold", b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\nX-A: one\r\n two\r\n\r\n", 400, BAD),
    ("bare-cr", b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\nX-A: one\rtwo\r\n\r\n", 400, BAD),
    ("nul", b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\nX-A: one\x00two\r\n\r\n", 400, BAD),
    ("ctl", b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\nX-A: one\x01two\r\n\r\n", 400, BAD),
    ("space-before-colon", b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\nX-A : one\r\n\r\n", 400, BAD),
    ("bad-chunk-size", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, BAD),
    ("chunk-size-overflow", POST + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n", 400, BAD),
    ("not-http", b"GARBAGE\r\n\r\n", 400, BAD),
    (
        "header-over-max-header-bytes",
        b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
    ),
    (
        "headers-over-max-header-bytes-in-total",
        b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\n"
        + b"".join(b"X-Part-%d: " % i + b"b" * 7000 + b"\r\n" for i in range(10))
        + b"\r\n",
        431,
        "request_header_fields_too_large",
    ),
    (
        "more-than-max-headers",
        b"GET /framing HTTP/1.1\r\nHost: proxy.test\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
        431,
        "request_header_fields_too_large",
    ),
]


LOGGED = {"cl-and-te", "te-gzip-chunked", "obs-fold", "nul", "more-than-max-headers"}


@pytest.fixture(scope="module")
def proxy(module_upstream: RecordingUpstream) -> Iterator[ProxyProcess]:
    process = start_proxy(module_upstream.url)
    yield process
    process.stop()


@pytest.mark.parametrize(("raw", "status", "error"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_malformed_request_is_refused_closed_and_never_forwarded(
    proxy: ProxyProcess, upstream: RecordingUpstream, raw: bytes, status: int, error: str
) -> None:
    with Connection(proxy.port) as conn:
        conn.send(raw)
        response = conn.read_response()
        assert_error_answer(response, status, error)
        assert conn.wait_closed() in (Ending.EOF, Ending.RESET)
    assert upstream.requests == []
    assert exchange(proxy.port, build_request("GET", "/still-serving")).status == 200


@pytest.mark.parametrize(("raw", "status", "error"), [pytest.param(*case[1:], id=case[0]) for case in CASES[:6]])
def test_a_valid_request_pipelined_after_a_bad_one_is_never_forwarded(
    proxy: ProxyProcess, upstream: RecordingUpstream, raw: bytes, status: int, error: str
) -> None:
    smuggled = build_request("GET", "/smuggled", [("X-Smuggled", "yes")])
    with Connection(proxy.port) as conn:
        conn.send(raw + smuggled)
        first = conn.read_response()
        assert first.status == status
        second = conn.read_response(timeout=2.0)
        assert second.status is None, f"answered a request after a framing error: {second.status}"
        assert conn.ending in (Ending.EOF, Ending.RESET)
    assert exchange(proxy.port, build_request("GET", "/still-serving")).status == 200
    assert [seen.target for seen in upstream.requests] == ["/still-serving"]


def test_valid_pipelined_requests_are_answered_and_forwarded_in_order(
    proxy: ProxyProcess, upstream: RecordingUpstream
) -> None:
    targets = [f"/pipelined/{index}" for index in range(5)]
    pipeline = b"".join(
        build_request("POST", target, [("Content-Type", "text/plain")], target.encode()) for target in targets
    )
    with Connection(proxy.port) as conn:
        conn.send(pipeline)
        answers = [conn.read_response(method="POST") for _ in targets]
    assert [answer.status for answer in answers] == [200] * len(targets)
    assert [answer.json()["target"] for answer in answers] == targets
    assert [seen.target for seen in upstream.requests] == targets
    assert [seen.body for seen in upstream.requests] == [target.encode() for target in targets]


def test_headers_within_the_default_limits_are_forwarded(proxy: ProxyProcess, upstream: RecordingUpstream) -> None:
    """MAX_HEADER_BYTES defaults to 64 KiB in total: a 16 KiB cookie and 90 headers are ordinary, not errors."""
    cookie = "pref=" + "c" * 16_000
    headers = [("Cookie", cookie)] + [(f"X-Many-{index}", "v") for index in range(90)]
    response = exchange(proxy.port, build_request("GET", "/big-but-fine", headers))
    assert response.status == 200, response.body[:200]
    (seen,) = upstream.requests
    assert seen.all("cookie") == [cookie]
    assert len([name for name, _ in seen.headers if name.lower().startswith("x-many-")]) == 90


def test_limits_follow_the_settings(running_proxy: ProxyFactory, upstream: RecordingUpstream) -> None:
    proxy = running_proxy(upstream.url, MAX_HEADER_BYTES=4096, MAX_HEADERS=10)
    ok = build_request("GET", "/small", [("X-Pad", "p" * 3000)] + [(f"X-{i}", "v") for i in range(8)])
    assert exchange(proxy.port, ok).status == 200
    too_big = build_request("GET", "/too-big", [("X-Pad", "p" * 5000)])
    assert_error_answer(exchange(proxy.port, too_big), 431, "request_header_fields_too_large")
    too_many = build_request("GET", "/too-many", [(f"X-{i}", "v") for i in range(11)])
    assert_error_answer(exchange(proxy.port, too_many), 431, "request_header_fields_too_large")
    assert [seen.target for seen in upstream.requests] == ["/small"]


def test_a_rejection_is_one_warning_with_its_reason_and_no_traceback(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url)
    few = [case for case in CASES if case[0] in LOGGED]  # fewer than the rate limit lets through in a second
    for _, raw, _, _ in few:
        with Connection(proxy.port) as conn:
            conn.send(raw)
            conn.read_response()
    lines = proxy.wait_for_lines(
        lambda lines: sum(1 for line in lines if line.get("event") == "bad_request") >= len(few),
        what="one bad_request line per rejection",
    )
    rejections = [line for line in lines if line.get("event") == "bad_request"]
    assert len(rejections) == len(few)
    for line in rejections:
        assert line["level"] == "warning", line
        assert isinstance(line.get("reason"), str) and line["reason"], line
    assert_no_traceback(proxy)
    assert proxy.metric_sum("rum_proxy_bad_requests_total") == len(few)
    assert not [line for line in proxy.events("request") if line.get("level") == "info"], "logged as a success"
    assert upstream.requests == []


def test_rejection_logs_are_bounded_and_every_one_is_counted(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    """A scanner's flood: the metric counts every probe, the log carries far fewer lines and a count of the rest."""
    proxy = running_proxy(upstream.url)
    probes = 500
    probe = b"POST /scan HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    for _ in range(probes):
        with Connection(proxy.port) as conn:
            conn.send(probe)
            assert conn.read_response().status == 400
    # After a quiet second the next rejection is written and carries how many were left out before it.
    time.sleep(1.5)  # input shape: a pause longer than the rate limiter's one-second window
    with Connection(proxy.port) as conn:
        conn.send(probe)
        assert conn.read_response().status == 400
    total = probes + 1
    proxy.wait_for_lines(
        lambda lines: logged_or_suppressed(lines) == total, what="every rejection written or counted as suppressed"
    )
    lines = [line for line in proxy.lines() if line.get("event") == "bad_request"]
    assert 0 < len(lines) < probes, f"{len(lines)} bad_request lines for {total} probes"
    assert proxy.metric_sum("rum_proxy_bad_requests_total") == total
    assert_no_traceback(proxy)
    assert upstream.requests == []
    assert exchange(proxy.port, build_request("GET", "/after-the-flood"), timeout=GUARD).status == 200


def logged_or_suppressed(lines: list[dict[str, object]]) -> int:
    """bad_request lines written plus the `suppressed` counts they carry."""
    rejections = [line for line in lines if line.get("event") == "bad_request"]
    return len(rejections) + sum(int(str(line.get("suppressed", 0))) for line in rejections)
