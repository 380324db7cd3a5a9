"""Bridge a WebSocket between the client and the upstream: text, binary, ping/pong and close codes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import (
    ClientError,
    ClientSession,
    ClientWebSocketResponse,
    ClientWSTimeout,
    WSMsgType,
    WSServerHandshakeError,
    web,
)
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import UpstreamFailure, error_response
from proxy.metrics import Metrics

logger = structlog.get_logger()

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
NORMAL = 1000
# RFC 6455 §7.4.1: 1005, 1006 and 1015 describe a close, they can never be sent in a close frame.
_UNSENDABLE = {1005: NORMAL, 1006: INTERNAL_ERROR, 1015: INTERNAL_ERROR}

AnyWebSocket = web.WebSocketResponse | ClientWebSocketResponse


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    upgrade = request.headers.get("Upgrade", "")
    return upgrade.lower() == "websocket" and "upgrade" in request.headers.get("Connection", "").lower()


def sendable_close_code(code: int | None) -> int:
    if code is None or code == 0:
        return NORMAL
    if code in _UNSENDABLE:
        return _UNSENDABLE[code]
    if 1000 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return INTERNAL_ERROR


class WebSocketBridge:
    """Bridges upgrade requests and tracks open bridges so shutdown can close them with 1001."""

    def __init__(self, session_getter: Callable[[], ClientSession], metrics: Metrics, max_message_bytes: int):
        self._session_getter = session_getter
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._open: set[tuple[web.WebSocketResponse, ClientWebSocketResponse]] = set()

    async def bridge(self, request: web.Request, url: URL, headers: CIMultiDict[str]) -> web.StreamResponse:
        protocols = tuple(
            p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", []) for p in value.split(",")
        )
        try:
            upstream = await self._session_getter().ws_connect(
                url,
                headers=headers,
                protocols=tuple(p for p in protocols if p),
                autoping=False,
                autoclose=False,
                max_msg_size=self._max_message_bytes,
                timeout=ClientWSTimeout(ws_receive=None, ws_close=10.0),
                compress=0,
            )
        except WSServerHandshakeError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 502
            return error_response(status, "websocket_refused", f"upstream refused the WebSocket: {exc.status}")
        except (ClientError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure(504, "upstream_timeout", "timeout", f"upstream timed out: {exc}") from None
            raise UpstreamFailure(
                502, "upstream_unavailable", "connect", f"cannot connect to upstream: {exc}"
            ) from None

        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False,
            autoclose=False,
            max_msg_size=self._max_message_bytes,
            compress=False,
        )
        pair = (client, upstream)
        try:
            await client.prepare(request)
            self._open.add(pair)
            self._metrics.open_websockets.inc()
            await self._relay(client, upstream)
        finally:
            if pair in self._open:
                self._open.discard(pair)
                self._metrics.open_websockets.dec()
            if not upstream.closed:
                await upstream.close(code=GOING_AWAY)
            if not client.closed:
                await client.close(code=GOING_AWAY)
        return client

    async def _relay(self, client: web.WebSocketResponse, upstream: ClientWebSocketResponse) -> None:
        to_upstream = asyncio.create_task(_pump(client, upstream))
        to_client = asyncio.create_task(_pump(upstream, client))
        try:
            done, _ = await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            to_upstream.cancel()
            to_client.cancel()
            raise
        first = to_upstream if to_upstream in done else to_client
        other = to_client if first is to_upstream else to_upstream
        other.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await other
        try:
            code, reason = first.result()
        except Exception as exc:  # a failed send on one leg closes both with an error code
            logger.info("websocket_relay_error", detail=repr(exc))
            code, reason = INTERNAL_ERROR, b""
        closed_by, peer = (client, upstream) if first is to_upstream else (upstream, client)
        await _close(peer, code, reason)
        await _close(closed_by, code, reason)

    async def close_all(self) -> None:
        """On shutdown: tell both ends of every bridge the proxy is going away (1001)."""
        for client, upstream in list(self._open):
            await _close(client, GOING_AWAY, b"proxy shutting down")
            await _close(upstream, GOING_AWAY, b"proxy shutting down")


async def _pump(source: AnyWebSocket, sink: AnyWebSocket) -> tuple[int, bytes]:
    """Relay messages until `source` closes; return its close code and reason."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif kind is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif kind is WSMsgType.PING:
            await sink.ping(message.data)
        elif kind is WSMsgType.PONG:
            await sink.pong(message.data)
        elif kind is WSMsgType.CLOSE:
            return sendable_close_code(message.data), (message.extra or "").encode()
        else:  # CLOSING, CLOSED, ERROR: the peer vanished without a close frame
            return sendable_close_code(source.close_code or 1006), b""


async def _close(ws: Any, code: int, reason: bytes) -> None:
    if ws.closed:
        return
    with contextlib.suppress(Exception):
        await ws.close(code=sendable_close_code(code), message=reason[:123])
