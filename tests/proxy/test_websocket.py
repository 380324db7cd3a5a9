"""WebSocket upgrades are bridged both ways."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import WSMsgType

from proxy.websocket import FrameTracker, close_frame
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


async def test_refused_upgrade_returns_the_upstream_answer(proxy: Any, upstream: Upstream) -> None:
    resp = await proxy.get(
        "/not-a-ws",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    # The echo route answers 200, not 101: the client gets that answer (its WebSocket then fails), as from nginx.
    assert resp.status == 200
    assert resp.headers.get("Upgrade") is None
    assert upstream.last["raw_path"] == "/not-a-ws"


def frames(*parts: bytes) -> bytes:
    return b"".join(parts)


def text_frame(payload: bytes, *, masked: bool) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if masked else payload
    if len(payload) < 126:
        header = bytes((0x81, (0x80 if masked else 0) | len(payload)))
    elif len(payload) < 65536:
        header = bytes((0x81, (0x80 if masked else 0) | 126)) + len(payload).to_bytes(2, "big")
    else:
        header = bytes((0x81, (0x80 if masked else 0) | 127)) + len(payload).to_bytes(8, "big")
    return header + (key if masked else b"") + body


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 70000])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("split", [1, 2, 3, 7, 1000])
def test_frame_tracker_finds_boundaries_however_the_bytes_are_split(size: int, masked: bool, split: int) -> None:
    stream = frames(text_frame(b"x" * size, masked=masked), close_frame(1000, masked=masked))
    tracker = FrameTracker(limit=1 << 20)
    for index in range(0, len(stream), split):
        assert tracker.feed(stream[index : index + split]) == len(stream[index : index + split])
        if index + split < len(stream):
            assert not tracker.close_seen or index + split >= len(stream) - 4
    assert tracker.at_boundary
    assert tracker.close_seen


def test_frame_tracker_stops_before_a_frame_over_the_limit() -> None:
    small, big = text_frame(b"ok", masked=True), text_frame(b"x" * 2000, masked=True)
    tracker = FrameTracker(limit=1024)
    assert tracker.feed(small + big) == len(small)  # the big frame is never forwarded
    assert tracker.too_large


def test_close_frames_carry_the_code_and_are_masked_only_from_the_client_side() -> None:
    unmasked = close_frame(1001, b"bye", masked=False)
    assert unmasked[:2] == bytes((0x88, 5)) and unmasked[2:4] == (1001).to_bytes(2, "big") and unmasked[4:] == b"bye"
    masked = close_frame(1001, b"bye", masked=True)
    key, payload = masked[2:6], masked[6:]
    assert masked[1] == 0x80 | 5
    assert bytes(b ^ key[i % 4] for i, b in enumerate(payload)) == (1001).to_bytes(2, "big") + b"bye"
