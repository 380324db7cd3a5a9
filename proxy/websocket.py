"""A WebSocket tunnel: after the upstream's 101, bytes flow both ways untouched (frames, extensions, pings).

The proxy only tracks frame boundaries (RFC 6455 §5.2), so that it can send a close frame of its own at a
boundary: 1001 to both ends on shutdown, 1011 to the end whose peer vanished without a close frame, and 1009 to
both when a frame exceeds RUM_PROXY_WS_MAX_MESSAGE_BYTES (that frame is never forwarded).
"""

from __future__ import annotations

import os
import struct
import time

import structlog

from proxy.app import Proxy
from proxy.flow import couple
from proxy.forward import Exchange
from proxy.ports import Downstream
from proxy.upstream import UpstreamConnection

logger = structlog.get_logger()

GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL_ERROR = 1011
OPCODE_CLOSE = 0x8


def close_frame(code: int, reason: bytes = b"", *, masked: bool) -> bytes:
    """A close frame; frames a client sends are masked (RFC 6455 §5.3), a server's are not."""
    payload = struct.pack("!H", code) + reason[:123]
    if not masked:
        return bytes((0x80 | OPCODE_CLOSE, len(payload))) + payload
    key = os.urandom(4)
    masked_payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes((0x80 | OPCODE_CLOSE, 0x80 | len(payload))) + key + masked_payload


class FrameTracker:
    """Follows frame boundaries in one direction of a WebSocket, reading only the frame headers."""

    __slots__ = ("_limit", "_header", "_remaining", "close_seen", "too_large")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._header = b""
        self._remaining = 0
        self.close_seen = False
        self.too_large = False

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> int:
        """Consume `data`; return how many of its bytes may be forwarded (all, unless a frame is too large)."""
        position, size = 0, len(data)
        while position < size:
            if self._remaining:
                step = min(self._remaining, size - position)
                self._remaining -= step
                position += step
                continue
            frame_start = position if not self._header else 0  # a header begun earlier was already forwarded
            header = self._header + data[position : position + 14 - len(self._header)]
            needed = _header_length(header)
            if needed is None or len(header) < needed:
                self._header = header
                return size
            position += needed - len(self._header)
            self._header = b""
            length = _payload_length(header)
            if header[0] & 0x0F == OPCODE_CLOSE:
                self.close_seen = True
            if length > self._limit:
                self.too_large = True
                return frame_start
            self._remaining = length
        return size


def _header_length(header: bytes) -> int | None:
    if len(header) < 2:
        return None
    length7 = header[1] & 0x7F
    extra = 2 if length7 == 126 else 8 if length7 == 127 else 0
    return 2 + extra + (4 if header[1] & 0x80 else 0)


def _payload_length(header: bytes) -> int:
    length7 = header[1] & 0x7F
    if length7 == 126:
        return int(struct.unpack("!H", header[2:4])[0])
    if length7 == 127:
        return int(struct.unpack("!Q", header[2:10])[0])
    return length7


class Tunnel:
    """Relays a WebSocket between the client connection and its own upstream connection (never pooled)."""

    def __init__(self, proxy: Proxy, exchange: Exchange, client: Downstream, upstream: UpstreamConnection):
        self.proxy = proxy
        self.exchange = exchange
        self.client = client
        self.upstream = upstream
        self.to_upstream = FrameTracker(proxy.limits.ws_max_frame)
        self.to_client = FrameTracker(proxy.limits.ws_max_frame)
        self.closed = False
        self._going_away = False
        upstream.listener = self  # the tunnel takes the upstream's events now
        couple(client.flow, upstream.flow)
        proxy.tunnels.add(self)
        proxy.metrics.open_websockets.inc()
        self.opened = time.monotonic()

    def from_client(self, data: bytes) -> None:
        allowed = self.to_upstream.feed(data)
        if allowed:
            self.upstream.write(data[:allowed] if allowed < len(data) else data)
        if self.to_upstream.too_large:
            self._too_large()

    def on_tunnel_data(self, data: bytes) -> None:
        self.from_upstream(data)

    def from_upstream(self, data: bytes) -> None:
        allowed = self.to_client.feed(data)
        if allowed:
            self.client.write(data[:allowed] if allowed < len(data) else data)
        if self.to_client.too_large:
            self._too_large()

    def _too_large(self) -> None:
        if self.closed:
            return
        reason = b"frame too large"
        self.client.write(close_frame(TOO_BIG, reason, masked=False))
        self.upstream.write(close_frame(TOO_BIG, reason, masked=True))
        self._end(INTERNAL_ERROR)

    def go_away(self) -> None:
        """Shutdown: a 1001 close frame to both ends (each at a frame boundary); the ends then close."""
        if self.closed or self._going_away:
            return
        self._going_away = True
        reason = b"proxy shutting down"
        if self.to_client.at_boundary and not self.to_client.close_seen:
            self.client.write(close_frame(GOING_AWAY, reason, masked=False))
        if self.to_upstream.at_boundary and not self.to_upstream.close_seen:
            self.upstream.write(close_frame(GOING_AWAY, reason, masked=True))

    def client_lost(self) -> None:
        if self.closed:
            return
        if not self.to_upstream.close_seen and self.to_upstream.at_boundary:
            self.upstream.write(close_frame(GOING_AWAY, b"client went away", masked=True))
        self._end(None)

    def on_upstream_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if not self.to_client.close_seen and self.to_client.at_boundary:
            # The upstream vanished without a close frame (1006, which cannot be sent): tell the client 1011.
            self.client.write(close_frame(INTERNAL_ERROR, b"upstream went away", masked=False))
        self._end(None)

    def client_writable(self, writable: bool) -> None:
        self.upstream.flow.peer_writable("client", writable)

    def upstream_writable(self, writable: bool) -> None:
        self.client.flow.peer_writable("upstream", writable)

    def client_stalled(self) -> None:
        """The client left the proxy's frames unread past the send timeout: the upstream is told 1001."""
        self.client_lost()

    def upstream_stalled(self) -> None:
        """The agent left the client's frames unread past the send timeout: the client is told 1011 and the
        upstream connection, whose buffer would never drain, is dropped."""
        if self.closed:
            return
        if not self.to_client.close_seen and self.to_client.at_boundary:
            self.client.write(close_frame(INTERNAL_ERROR, b"upstream stalled", masked=False))
        self.upstream.discard()
        self._end(None)

    # The rest of ResponseListener: a tunnel gets no HTTP events after the upgrade.
    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep: bool) -> None:
        pass

    def on_response_body(self, chunk: bytes) -> None:
        pass

    def on_response_complete(self) -> None:
        pass

    def on_upgraded(self, rest: bytes) -> None:
        pass

    def on_upstream_error(self, kind: str, detail: str) -> None:
        pass

    def _end(self, _code: int | None) -> None:
        self.closed = True
        self.proxy.tunnels.discard(self)
        self.proxy.metrics.open_websockets.dec()
        self.upstream.close()
        self.exchange.tunnel_finished()
        self.client.tunnel_closed()
