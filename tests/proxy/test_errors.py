"""Failures are answered with the right status and a JSON body, and nothing leaks or hangs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog.testing
from aiohttp import ClientPayloadError

from tests.proxy.conftest import SESSION_ID, Upstream, metric

HANG_GUARD = 10


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """An upstream that answers every request with fixed raw bytes, then closes: for broken responses."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_unreachable_upstream_is_502_with_json(make_proxy: Any) -> None:
    client = await make_proxy(upstream_url=f"http://127.0.0.1:{closed_port()}")
    resp = await client.get("/chat")
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "upstream_unavailable"
    assert body["status"] == 502
    assert await metric(client, 'rum_proxy_upstream_errors_total{kind="connect"}') == 1.0


async def test_silent_upstream_is_504(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(idle_timeout_seconds=0.2)
    async with asyncio.timeout(HANG_GUARD):
        resp = await client.get("/hold")
    assert resp.status == 504
    assert (await resp.json())["error"] == "upstream_timeout"
    assert await metric(client, 'rum_proxy_upstream_errors_total{kind="timeout"}') == 1.0


async def test_malformed_upstream_response_is_502(make_proxy: Any, raw_upstream: Any) -> None:
    url = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    client = await make_proxy(upstream_url=url)
    resp = await client.get("/")
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_protocol_error"


async def test_upstream_body_cut_short_is_never_a_clean_end(make_proxy: Any, raw_upstream: Any) -> None:
    url = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly 19 bytes here.")
    client = await make_proxy(upstream_url=url)
    resp = await client.get("/")
    assert resp.status == 200
    with pytest.raises(ClientPayloadError):
        await resp.read()


async def test_chunked_upstream_body_cut_short_is_never_a_clean_end(make_proxy: Any, raw_upstream: Any) -> None:
    url = await raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    client = await make_proxy(upstream_url=url)
    resp = await client.get("/")
    with pytest.raises(ClientPayloadError):
        await resp.read()


async def test_transfer_coding_other_than_chunked_is_501(proxy: Any, upstream: Upstream) -> None:
    request = b"POST /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    async with asyncio.timeout(HANG_GUARD):
        answer = await raw_exchange(proxy.port, request)
    assert answer.startswith(b"HTTP/1.1 501")
    assert upstream.requests == []


async def test_request_smuggling_shapes_are_refused(proxy: Any, upstream: Upstream) -> None:
    request = b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    async with asyncio.timeout(HANG_GUARD):
        answer = await raw_exchange(proxy.port, request)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert upstream.requests == []


async def test_slow_inspected_body_is_408(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(body_read_timeout_seconds=0.2)
    request = b'POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"se'
    async with asyncio.timeout(HANG_GUARD):
        answer = await raw_exchange(client.port, request)
    assert answer.startswith(b"HTTP/1.1 408")
    assert upstream.requests == []


async def test_slow_streamed_body_is_408_and_upstream_request_is_abandoned(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(body_read_timeout_seconds=0.2)
    request = (
        b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 50\r\n\r\nab"
    )
    async with asyncio.timeout(HANG_GUARD):
        answer = await raw_exchange(client.port, request)
    assert answer.startswith(b"HTTP/1.1 408")


async def test_requests_over_the_limit_are_shed_with_503(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(max_connections=1)
    async with asyncio.timeout(HANG_GUARD):
        held = asyncio.ensure_future(client.get("/hold"))
        await upstream.entered.wait()
        resp = await client.get("/plain")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "overloaded"
        upstream.release.set()
        first = await held
        assert first.status == 200
        assert (await client.get("/plain")).status == 200


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="not-http"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", id="space-in-header-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", id="nul-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", id="huge-header"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk-size"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", id="two-lengths"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nx-rum-session-id: 1\rx\r\n\r\n", id="bare-cr"),
    ],
)
async def test_malformed_requests_get_400_and_the_proxy_keeps_serving(
    proxy: Any, upstream: Upstream, raw: bytes
) -> None:
    async with asyncio.timeout(HANG_GUARD):
        answer = await raw_exchange(proxy.port, raw)
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.split(b" ")[1] in {b"400", b"413", b"431"}, status_line
        assert upstream.requests == []
        ok = await proxy.get("/still-alive")
        assert ok.status == 200


async def test_request_line_reports_the_session_and_the_error(make_proxy: Any) -> None:
    client = await make_proxy(upstream_url=f"http://127.0.0.1:{closed_port()}")
    with structlog.testing.capture_logs() as logs:
        resp = await client.post("/chat", json={"session_id": SESSION_ID})
    assert resp.status == 502
    line = next(entry for entry in logs if entry["event"] == "request")
    assert (line["status"], line["session_source"], line["session_id"], line["error"]) == (
        502, "body", SESSION_ID, "upstream_unavailable",
    )  # fmt: skip


async def test_request_line_reports_a_cut_stream(make_proxy: Any, raw_upstream: Any) -> None:
    url = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly 19 bytes here.")
    client = await make_proxy(upstream_url=url)
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/", params={"session_id": SESSION_ID})
        with pytest.raises(ClientPayloadError):
            await resp.read()
    line = next(entry for entry in logs if entry["event"] == "request")
    assert (line["status"], line["session_source"], line["error"]) == (200, "query", "upstream_body_truncated")
