"""Slow and idle clients are bounded by the configured timeouts; honest slow streams are not cut."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.hardening.conftest import GUARD, SESSION_ID, ProxyProcess, assert_error_answer, start_proxy
from tests.hardening.rawhttp import Connection, Ending, build_request
from tests.hardening.upstreams import RecordingUpstream

TRICKLE = 0.2  # seconds between the bytes of a trickled request: the input's shape, not a synchronisation


@pytest.fixture(scope="module")
def proxy(module_upstream: RecordingUpstream) -> Iterator[ProxyProcess]:
    process = start_proxy(
        module_upstream.url,
        HEADER_READ_TIMEOUT_SECONDS=1,
        BODY_READ_TIMEOUT_SECONDS=1,
        KEEPALIVE_TIMEOUT_SECONDS=0.5,
    )
    yield process
    process.stop()


def trickle(conn: Connection, data: bytes, *, until: float) -> bool:
    """Send `data` a byte every TRICKLE seconds; stop early (returning True) once the proxy answered or closed."""
    for byte in data:
        if conn.readable():
            return True
        if time.monotonic() > until:
            return False
        try:
            conn.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(TRICKLE)
    return conn.readable()


def test_slowloris_headers_are_cut_off(proxy: ProxyProcess, upstream: RecordingUpstream) -> None:
    endless = b"GET /slowloris HTTP/1.1\r\nHost: proxy.test\r\n" + b"X-Slow: " + b"a" * 10_000
    with Connection(proxy.port) as conn:
        stopped = trickle(conn, endless, until=time.monotonic() + GUARD)
        assert stopped, f"the proxy still accepted trickled headers after {GUARD}s"
        response = conn.read_response()
        if response.status is not None:
            assert_error_answer(response, 408, "request_timeout")
        assert conn.wait_closed() in (Ending.EOF, Ending.RESET)
    assert upstream.requests == []


def test_a_connection_that_sends_nothing_is_closed_silently(proxy: ProxyProcess) -> None:
    with Connection(proxy.port) as conn:
        assert conn.wait_closed(GUARD) in (Ending.EOF, Ending.RESET)
        assert conn.buffer == b"", "nothing was asked, so nothing is answered"


def test_an_idle_keep_alive_connection_is_reaped(proxy: ProxyProcess, upstream: RecordingUpstream) -> None:
    with Connection(proxy.port) as conn:
        conn.send(build_request("GET", "/keep-alive/1"))
        assert conn.read_response().status == 200
        conn.send(build_request("GET", "/keep-alive/2"))  # reused at once: keep-alive works
        second = conn.read_response()
        assert second.status == 200 and second.complete
        assert conn.wait_closed(GUARD) in (Ending.EOF, Ending.RESET)
        assert conn.buffer == b""
    assert [seen.target for seen in upstream.requests] == ["/keep-alive/1", "/keep-alive/2"]


def test_a_trickled_inspected_body_is_408(proxy: ProxyProcess, upstream: RecordingUpstream) -> None:
    """The whole inspected (JSON) body must arrive within BODY_READ_TIMEOUT_SECONDS, progress or not."""
    body = json.dumps({"session_id": SESSION_ID, "pad": "p" * 200}).encode()
    head = build_request("POST", "/trickled-json", [("Content-Type", "application/json")], body)[: -len(body)]
    with Connection(proxy.port) as conn:
        conn.send(head)
        assert trickle(conn, body, until=time.monotonic() + GUARD), "the trickled body was never cut off"
        assert_error_answer(conn.read_response(method="POST"), 408, "request_timeout")
        assert conn.wait_closed() in (Ending.EOF, Ending.RESET)
    assert upstream.by_target("/trickled-json") == []
    line = proxy.wait_for_request_line("/trickled-json")
    assert (line["status"], line["error"], line["level"]) == (408, "request_timeout", "warning")


def test_a_stalled_streamed_body_is_408(proxy: ProxyProcess) -> None:
    head = build_request("PUT", "/stalled-upload", [("Content-Type", "application/octet-stream")], b"x" * 1000)
    with Connection(proxy.port) as conn:
        conn.send(head[:-990])  # 10 of the 1000 body bytes, then silence
        response = conn.read_response(method="PUT")
        assert_error_answer(response, 408, "request_timeout")
        assert conn.wait_closed() in (Ending.EOF, Ending.RESET)


def test_a_slow_but_steady_streamed_body_is_not_cut(proxy: ProxyProcess, upstream: RecordingUpstream) -> None:
    """Streamed bodies are bounded between chunks, not in total: 2.4 s of chunks 0.2 s apart pass a 1 s timeout."""
    chunks = [f"chunk {index}\n".encode() for index in range(12)]
    head = build_request("PUT", "/steady-upload", [("Content-Type", "text/plain")], b"", chunked=True)[
        : -len(b"0\r\n\r\n")
    ]
    with Connection(proxy.port) as conn:
        conn.send(head)
        for chunk in chunks:
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            time.sleep(TRICKLE)
        conn.send(b"0\r\n\r\n")
        response = conn.read_response(method="PUT")
    assert response.status == 200, response.body[:200]
    (seen,) = upstream.by_target("/steady-upload")
    assert seen.body == b"".join(chunks)
