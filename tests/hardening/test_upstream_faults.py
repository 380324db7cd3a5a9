"""Upstream failures become the documented answers; a broken upstream connection is never reused; a client that
leaves cancels the upstream call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hardening.conftest import ProxyFactory, ProxyProcess, assert_error_answer, start_proxy
from tests.hardening.rawhttp import Connection, Ending, build_request, exchange
from tests.hardening.upstreams import LoopThread, RawAnswer, RawUpstream, RecordingUpstream, closed_port

OK = RawAnswer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
BROKEN = {
    "/bad/duplicate-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "/bad/content-length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "/bad/garbage-status-line": b"HTTP/1.1 two hundred\r\nContent-Length: 2\r\n\r\nok",
    "/bad/not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "/bad/invalid-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    "/bad/nul-in-header": b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "/bad/ctl-in-header": b"HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 2\r\n\r\nok",
    "/bad/bare-cr-in-header": b"HTTP/1.1 200 OK\r\nX-Evil: a\rb\r\nContent-Length: 2\r\n\r\nok",
}
BAD_CHUNK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
CUT = {
    "/cut/reset-content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100, "reset"),
    "/cut/reset-chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "reset"),
    "/cut/close-content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100, "close"),
    "/cut/close-chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "close"),
}


def script(target: str) -> RawAnswer:
    if target == "/silent":
        return RawAnswer(b"", then="hang")
    if target in BROKEN:
        return RawAnswer(BROKEN[target], then="keep")
    if target == "/bad/chunk-size":
        return RawAnswer(BAD_CHUNK, then="keep")  # kept open: a proxy that reused it would be fooled
    if target in CUT:
        data, then = CUT[target]
        return RawAnswer(data, then=then, delay=0.2)  # input shape: headers out first, then the cut
    return OK


@pytest.fixture(scope="module")
def raw_upstream(upstream_loop: LoopThread) -> Iterator[RawUpstream]:
    upstream = RawUpstream(upstream_loop, script).start()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def proxy(raw_upstream: RawUpstream) -> Iterator[ProxyProcess]:
    process = start_proxy(raw_upstream.url, IDLE_TIMEOUT_SECONDS=0.5)
    yield process
    process.stop()


def test_refused_upstream_is_502_in_plain_words(running_proxy: ProxyFactory) -> None:
    port = closed_port()
    proxy = running_proxy(f"http://127.0.0.1:{port}")
    response = exchange(proxy.port, build_request("GET", "/refused"))
    assert_error_answer(response, 502, "upstream_unavailable")
    message = response.json()["message"]
    assert f"cannot connect to upstream 127.0.0.1:{port}" in message, message
    assert "refused" in message.lower(), message
    for wording in ("ssl:default", "ClientConnectorError", "Errno", "OSError"):
        assert wording not in message, message
    line = proxy.wait_for_request_line("/refused")
    assert (line["status"], line["error"], line["level"]) == (502, "upstream_unavailable", "warning")
    assert proxy.metric_sum("rum_proxy_upstream_errors_total", kind="connect") == 1


def test_silent_upstream_is_504_after_the_idle_timeout(proxy: ProxyProcess) -> None:
    response = exchange(proxy.port, build_request("GET", "/silent"))
    assert_error_answer(response, 504, "upstream_timeout")
    line = proxy.wait_for_request_line("/silent")
    assert (line["status"], line["error"], line["level"]) == (504, "upstream_timeout", "warning")


@pytest.mark.parametrize("target", list(BROKEN))
def test_broken_response_framing_is_502_and_the_connection_is_discarded(
    proxy: ProxyProcess, raw_upstream: RawUpstream, target: str
) -> None:
    assert_error_answer(exchange(proxy.port, build_request("GET", target)), 502, "upstream_protocol_error")
    after = f"/after{target}"
    response = exchange(proxy.port, build_request("GET", after))
    assert (response.status, response.body) == (200, b"ok")
    bad = raw_upstream.connection_of(target)
    assert raw_upstream.connections[bad].targets[-1] == target, "a connection that answered badly was reused"
    assert raw_upstream.connection_of(after) != bad
    line = proxy.wait_for_request_line(target)
    assert (line["status"], line["error"], line["level"]) == (502, "upstream_protocol_error", "warning")


def test_a_bad_chunk_in_the_upstream_body_is_502_or_an_aborted_response(
    proxy: ProxyProcess, raw_upstream: RawUpstream
) -> None:
    """Head and bad chunk arrive together: while nothing went to the client yet it can still get a 502;
    once the head went out the response is aborted. A close with no answer at all helps no one."""
    with Connection(proxy.port) as conn:
        conn.send(build_request("GET", "/bad/chunk-size"))
        response = conn.read_response()
    assert response.status is not None, f"closed without any answer ({response.ending})"
    if response.status == 502:
        assert response.json()["error"] == "upstream_protocol_error"
    else:
        assert response.status == 200 and not response.complete, (response.status, response.ending)
    assert raw_upstream.connections[raw_upstream.connection_of("/bad/chunk-size")].targets[-1] == "/bad/chunk-size"
    assert exchange(proxy.port, build_request("GET", "/after-bad-chunk")).status == 200


@pytest.mark.parametrize("target", list(CUT))
def test_an_upstream_cut_mid_body_is_never_a_clean_end(proxy: ProxyProcess, target: str) -> None:
    with Connection(proxy.port) as conn:
        conn.send(build_request("GET", target))
        response = conn.read_response()
    assert response.status == 200, "the headers had gone out before the cut"
    assert response.ending in (Ending.EOF, Ending.RESET), f"a cut upstream body ended cleanly: {response.ending}"
    if "content-length" in target and response.header("content-length"):
        assert response.body_length < 1000
    assert exchange(proxy.port, build_request("GET", "/after-cut")).status == 200


@pytest.mark.parametrize("leave", ["close", "abort"])
@pytest.mark.parametrize("target", ["/forever", "/hold"], ids=["mid-stream", "before-headers"])
def test_a_client_that_leaves_cancels_the_upstream_call(
    running_proxy: ProxyFactory, upstream: RecordingUpstream, target: str, leave: str
) -> None:
    proxy = running_proxy(upstream.url)
    conn = Connection(proxy.port)
    conn.send(build_request("GET", target))
    if target == "/forever":
        upstream.wait_for(lambda: upstream.sse_open == 1, what="the stream started")
        assert conn.read_head().status == 200  # the response has started
    else:
        upstream.wait_for(lambda: upstream.held == 1, what="the request reached the upstream")
    if leave == "close":
        conn.close()
    else:
        conn.abort()
    upstream.wait_for(lambda: upstream.cancelled == 1, what="the upstream handler cancelled")
    line = proxy.wait_for_request_line(target)
    # Before any response byte the line says 499 (nginx's "client closed request"); once a 200 went out, either.
    assert line["status"] == 499 if target == "/hold" else line["status"] in (200, 499), line
