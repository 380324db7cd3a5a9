"""WebSocket upgrades are bridged both ways."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import WSMsgType

from proxy.websocket import sendable_close_code
from tests.proxy.conftest import OTHER_ID, SESSION_ID, Upstream, metric

HANG_GUARD = 10


async def test_echo_text_binary_ping_and_subprotocol(proxy: Any, upstream: Upstream) -> None:
    async with asyncio.timeout(HANG_GUARD):
        ws = await proxy.ws_connect("/ws", protocols=("chat.v1",), autoping=False)
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive()).data == b"\x02\x01\x00"
        await ws.ping(b"are-you-there")
        pong = await ws.receive()
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are-you-there")
        await ws.close()


async def test_open_websockets_are_counted(proxy: Any, upstream: Upstream) -> None:
    async with asyncio.timeout(HANG_GUARD):
        ws = await proxy.ws_connect("/ws")
        await ws.send_str("hi")
        await ws.receive()
        assert await metric(proxy, "rum_proxy_open_websockets") == 1.0
        await ws.close()
        for _ in range(1000):  # let the proxy's handler finish its cleanup: yields to the loop, no timed sleep
            if await metric(proxy, "rum_proxy_open_websockets") == 0.0:
                break
            await asyncio.sleep(0)
    assert await metric(proxy, "rum_proxy_open_websockets") == 0.0


async def test_client_close_code_reaches_the_upstream(proxy: Any, upstream: Upstream) -> None:
    upstream.ws_closed_with = asyncio.get_running_loop().create_future()
    async with asyncio.timeout(HANG_GUARD):
        ws = await proxy.ws_connect("/ws")
        await ws.send_str("hi")
        await ws.receive()
        await ws.close(code=4001, message=b"user left")
        assert await upstream.ws_closed_with == 4001


async def test_upstream_close_code_reaches_the_client(proxy: Any, upstream: Upstream) -> None:
    async with asyncio.timeout(HANG_GUARD):
        ws = await proxy.ws_connect("/ws", autoclose=False)
        await ws.send_str("close-me")
        message = await ws.receive()
        assert message.type is WSMsgType.CLOSE
        assert message.data == 4002
        assert message.extra == "upstream says bye"
        await ws.close()


async def test_session_id_from_the_upgrade_query_is_forwarded(proxy: Any, upstream: Upstream) -> None:
    async with asyncio.timeout(HANG_GUARD):
        ws = await proxy.ws_connect(f"/ws?session_id={SESSION_ID}")
        await ws.close()
    headers = {name.lower(): value for name, value in upstream.last["headers"]}
    assert headers["x-rum-session-id"] == SESSION_ID


async def test_session_id_from_the_rum_cookie_is_forwarded(proxy: Any, upstream: Upstream) -> None:
    now = int(time.time() * 1000)
    cookie = f"_dd_s=rum=1&id={OTHER_ID}&created={now}&expire={now + 900_000}"
    async with asyncio.timeout(HANG_GUARD):
        ws = await proxy.ws_connect("/ws", headers={"Cookie": cookie})
        await ws.close()
    headers = {name.lower(): value for name, value in upstream.last["headers"]}
    assert headers["x-rum-session-id"] == OTHER_ID


async def test_refused_upgrade_returns_the_upstream_status(proxy: Any, upstream: Upstream) -> None:
    resp = await proxy.get(
        "/not-a-ws",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert resp.status == 502  # the echo route answers 200, which is not a WebSocket handshake
    assert (await resp.json())["error"] == "websocket_refused"


@pytest.mark.parametrize(
    ("code", "sent"),
    [
        (1000, 1000),
        (1001, 1001),
        (4001, 4001),
        (1005, 1000),
        (1006, 1011),
        (1015, 1011),
        (0, 1000),
        (2000, 1011),
    ],
)
def test_close_codes_that_cannot_be_sent_are_mapped(code: int, sent: int) -> None:
    assert sendable_close_code(code) == sent
