"""Past its limits the proxy sheds load at once (503 + Retry-After) and memory stays bounded for slow readers."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable

from tests.hardening.conftest import GUARD, ProxyFactory, assert_error_answer
from tests.hardening.rawhttp import Connection, Ending, build_request, exchange, websocket_connect, ws_receive, ws_send
from tests.hardening.upstreams import RecordingUpstream, flood_sha256

MIB = 1024 * 1024


def test_requests_over_max_connections_get_503_at_once_and_the_held_ones_complete(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url, MAX_CONNECTIONS=2)
    held = [Connection(proxy.port) for _ in range(2)]
    try:
        for index, conn in enumerate(held):
            conn.send(build_request("GET", f"/hold/{index}"))
        upstream.wait_for(lambda: upstream.held == 2, what="two requests held at the upstream")

        shed = exchange(proxy.port, build_request("GET", "/over-the-limit"))
        assert_error_answer(shed, 503, "overloaded")
        assert shed.header("retry-after") == "1"
        assert upstream.by_target("/over-the-limit") == []

        upstream.release()
        for conn in held:
            answer = conn.read_response()
            assert (answer.status, answer.body) == (200, b"released")
    finally:
        for conn in held:
            conn.close()
    assert exchange(proxy.port, build_request("GET", "/after")).status == 200
    line = proxy.wait_for_request_line("/over-the-limit")
    assert (line["status"], line["error"], line["level"]) == (503, "overloaded", "warning")


def test_client_connections_over_the_cap_get_503_and_are_closed(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url, MAX_CLIENT_CONNECTIONS=3)
    open_ones = [Connection(proxy.port) for _ in range(3)]
    try:
        for index, conn in enumerate(open_ones):
            conn.send(build_request("GET", f"/kept/{index}"))
            assert conn.read_response().status == 200  # accepted, and kept alive
        with Connection(proxy.port) as fourth:
            refused = fourth.read_response()  # written at once, without waiting for a request
            assert_error_answer(refused, 503, "overloaded")
            assert refused.header("retry-after") == "1"
            assert fourth.wait_closed() in (Ending.EOF, Ending.RESET)

        open_ones.pop().close()  # one slot frees up: a new connection is served again
        deadline = time.monotonic() + GUARD
        while (status := exchange(proxy.port, build_request("GET", "/slot-freed")).status) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.05)  # bounded poll: the proxy notices the close asynchronously
        for index, conn in enumerate(open_ones):  # the ones within the cap were never disturbed
            conn.send(build_request("GET", f"/kept/again/{index}"))
            assert conn.read_response().status == 200
    finally:
        for conn in open_ones:
            conn.close()


def test_a_client_that_reads_nothing_stalls_the_upstream_and_memory_stays_bounded(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    size = 256 * MIB
    proxy = running_proxy(upstream.url)
    exchange(proxy.port, build_request("GET", "/warm-up"))
    before = proxy.rss_bytes()
    with Connection(proxy.port, timeout=60) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn.send(build_request("GET", f"/flood/{size}"))
        stalled_at = wait_until_flat(lambda: upstream.flood_sent)
        assert stalled_at < 64 * MIB, f"the upstream wrote {stalled_at / MIB:.0f} MiB to a client reading nothing"
        grown = proxy.rss_bytes() - before
        print(f"slow reader: upstream stalled after {stalled_at / MIB:.1f} MiB, proxy RSS +{grown / MIB:.1f} MiB")
        assert grown < 50 * MIB, f"proxy RSS grew by {grown / MIB:.0f} MiB while buffering for a slow reader"

        digest = hashlib.sha256()
        response = conn.read_response(sink=digest.update, timeout=120)
    assert response.status == 200 and response.complete, response.ending
    assert response.body_length == size
    assert digest.hexdigest() == flood_sha256(size)
    assert proxy.peak_rss_bytes() - before < 50 * MIB


def wait_until_flat(
    read: Callable[[], int], *, interval: float = 0.25, flat_for: int = 4, timeout: float = 30.0
) -> int:
    """Bounded poll of a growing counter until it stays unchanged `flat_for` samples in a row."""
    deadline = time.monotonic() + timeout
    last, same = read(), 0
    while same < flat_for:
        assert time.monotonic() < deadline, f"still growing after {timeout}s: {last}"
        time.sleep(interval)  # sampling interval of a bounded poll
        value = read()
        same = same + 1 if value == last else 0
        last = value
    return int(last)


def test_an_open_websocket_counts_against_max_connections(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url, MAX_CONNECTIONS=1)
    ws, handshake = websocket_connect(proxy.port, "/ws/held")
    try:
        assert handshake.status == 101
        ws_send(ws, b"ping")
        assert ws_receive(ws) == (0x1, b"echo:ping")
        shed = exchange(proxy.port, build_request("GET", "/while-ws-open"))
        assert_error_answer(shed, 503, "overloaded")
    finally:
        ws.close()
    upstream.wait_for(lambda: len(upstream.ws_close_codes) == 1, what="the upstream WebSocket closed")
    deadline = time.monotonic() + GUARD
    while (status := exchange(proxy.port, build_request("GET", "/after-ws")).status) != 200:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.05)  # bounded poll: the proxy releases the slot as the bridge winds down


def test_aborted_connections_leave_no_file_descriptors_behind(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url)
    exchange(proxy.port, build_request("GET", "/warm-up"))
    baseline = proxy.fd_count()
    for number in range(20):
        half_headers = Connection(proxy.port)
        half_headers.send(b"GET /half HTTP/1.1\r\nHost: proxy.test\r\nX-Partial: ")
        mid_stream = Connection(proxy.port)
        mid_stream.send(build_request("GET", f"/forever/{number}"))
        assert mid_stream.read_head().status == 200
        half_headers.abort()
        mid_stream.abort()
    upstream.wait_for(lambda: upstream.cancelled == 20, what="every abandoned stream cancelled upstream")
    deadline = time.monotonic() + GUARD
    while (count := proxy.fd_count()) > baseline + 2:
        assert time.monotonic() < deadline, f"{count} open FDs, {baseline} before 40 aborted connections"
        time.sleep(0.05)  # bounded poll of /proc: closing is asynchronous
