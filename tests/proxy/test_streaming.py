"""Responses stream through as they arrive; abandoned requests stop upstream work."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientSession

from tests.proxy.conftest import Upstream

# Guards against a hang, not a speed requirement: a proxy that buffers would never deliver chunk 0 until the
# upstream finishes, and the upstream only finishes after the test received chunk 0.
HANG_GUARD = 10


async def test_sse_chunks_arrive_one_by_one(proxy: Any, upstream: Upstream) -> None:
    async with asyncio.timeout(HANG_GUARD):
        resp = await proxy.get("/sse", headers={"Accept": "text/event-stream"})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        received = []
        for index in range(3):
            line = await resp.content.readuntil(b"\n\n")
            received.append(line)
            assert line == f"data: chunk {index}\n\n".encode()
            upstream.sse_next.put_nowait(None)  # only now may the upstream send the next event
        assert await resp.content.read() == b""
    assert received == [f"data: chunk {i}\n\n".encode() for i in range(3)]


async def test_client_disconnect_cancels_the_upstream_request(proxy: Any, upstream: Upstream) -> None:
    async with asyncio.timeout(HANG_GUARD):
        async with ClientSession() as raw:
            request = asyncio.ensure_future(raw.get(proxy.make_url("/hold")))
            await upstream.entered.wait()
            request.cancel()  # the browser tab closed
        await upstream.cancelled.wait()
    assert upstream.cancelled.is_set()


async def test_upstream_connections_are_pooled(proxy: Any, upstream: Upstream) -> None:
    for _ in range(5):
        resp = await proxy.get("/plain")
        await resp.read()
    assert len({request["peer"] for request in upstream.requests}) == 1
