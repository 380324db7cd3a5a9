"""A raw HTTP/1.1 client over a blocking socket: sends exact bytes, reads one full response, tells EOF from reset."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GUARD = 10.0  # no single read in the battery may wait longer than this


class Ending:
    """How a response (or the wait for one) ended."""

    COMPLETE = "complete"  # framed end: Content-Length reached, last chunk, or no body by the rules
    EOF = "eof"  # the peer closed (FIN) before the framed end
    RESET = "reset"  # the peer reset the connection (RST)
    TIMEOUT = "timeout"  # nothing more arrived within the guard


@dataclass
class Response:
    status: int | None  # None when not even a status line arrived
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    ending: str = Ending.COMPLETE
    chunked: bool = False
    body_length: int = 0  # bytes of body received (also counted when they went to a sink instead of `body`)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def complete(self) -> bool:
        return self.ending == Ending.COMPLETE

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class Connection:
    """One client connection to 127.0.0.1:port. `read_response` parses exactly one response off the stream."""

    def __init__(self, port: int, *, timeout: float = GUARD, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = bytearray()
        self.ending: str | None = None  # set once the stream ended (EOF, reset or timeout)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashed client or a killed browser tab would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False (and `ending` set) when the stream ended."""
        if self.ending is not None:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.ending = Ending.TIMEOUT
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            self.ending = Ending.TIMEOUT
            return False
        except ConnectionResetError:
            self.ending = Ending.RESET
            return False
        if not data:
            self.ending = Ending.EOF
            return False
        self.buffer += data
        return True

    def _take_line(self, deadline: float) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self._fill(deadline):
                return None
        index = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:index])
        del self.buffer[: index + 2]
        return line

    def _take(self, size: int, deadline: float) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill(deadline):
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _drain(self, size: int, deadline: float, sink: Callable[[bytes], None]) -> int:
        """Pass `size` bytes to `sink` as they arrive; return how many came before the stream ended."""
        got = 0
        while got < size:
            if not self.buffer and not self._fill(deadline):
                break
            piece = bytes(self.buffer[: size - got])
            del self.buffer[: len(piece)]
            sink(piece)
            got += len(piece)
        return got

    def _rest(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def read_response(
        self, *, method: str = "GET", timeout: float | None = None, sink: Callable[[bytes], None] | None = None
    ) -> Response:
        """Read one response. With `sink`, body bytes go to it as they arrive instead of into `body`."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            head = self._read_head(deadline)
            if head.status is None or not 100 <= head.status < 200 or head.status == 101:
                break  # interim 1xx answers (100 Continue) are skipped, as a client does
        return self.read_body(head, method=method, deadline=deadline, sink=sink)

    def read_body(
        self,
        head: Response,
        *,
        method: str = "GET",
        deadline: float | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> Response:
        """Read the body of a response whose head `read_head` returned; fills in and returns `head`."""
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout
        if head.status is None or head.status == 101:
            return head
        if method == "HEAD" or head.status in (204, 304):
            return head
        transfer = ",".join(head.all("transfer-encoding")).lower()
        if "chunked" in transfer:
            head.chunked = True
            return self._read_chunked(head, deadline, sink)
        collected = bytearray()
        out = sink or collected.extend
        length = head.header("content-length")
        if length is not None:
            head.body_length = self._drain(int(length), deadline, out)
            head.body = bytes(collected)
            if head.body_length < int(length):
                head.ending = self.ending or Ending.EOF
            return head
        while self.buffer or self._fill(deadline):  # close-delimited
            piece = self._rest()
            out(piece)
            head.body_length += len(piece)
        head.body = bytes(collected)
        head.ending = Ending.COMPLETE if self.ending == Ending.EOF else (self.ending or Ending.EOF)
        return head

    def read_head(self, timeout: float | None = None) -> Response:
        """Read only the status line and headers, leaving the body on the stream."""
        return self._read_head(time.monotonic() + (timeout if timeout is not None else self.timeout))

    def _read_head(self, deadline: float) -> Response:
        status_line = self._take_line(deadline)
        if status_line is None:
            return Response(status=None, ending=self.ending or Ending.EOF, body=bytes(self.buffer))
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP status line: {status_line!r}")
        response = Response(status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "")
        while True:
            line = self._take_line(deadline)
            if line is None:
                response.ending = self.ending or Ending.EOF
                return response
            if not line:
                return response
            name, _, value = line.decode("latin-1").partition(":")
            response.headers.append((name, value.strip(" \t")))

    def _read_chunked(self, response: Response, deadline: float, sink: Callable[[bytes], None] | None) -> Response:
        body = bytearray()
        out = sink or body.extend
        while True:
            size_line = self._take_line(deadline)
            if size_line is None:
                break
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := self._take_line(deadline)) is not None and trailer:
                    pass
                if trailer is None:
                    break
                response.body = bytes(body)
                return response
            data = self._take(size + 2, deadline)
            if data is None:
                piece = self._rest()
                out(piece)
                response.body_length += len(piece)
                break
            out(data[:-2])
            response.body_length += size
        response.body = bytes(body)
        response.ending = self.ending or Ending.EOF
        return response

    def wait_closed(self, timeout: float = GUARD) -> str:
        """Read until the stream ends; return how (EOF, reset, or timeout if the peer kept it open)."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        return self.ending or Ending.EOF

    def readable(self) -> bool:
        """True when bytes or an EOF/reset are waiting, without blocking."""
        if self.buffer or self.ending is not None:
            return True
        ready, _, _ = select.select([self.sock], [], [], 0)
        return bool(ready)


def exchange(port: int, request: bytes, *, method: str | None = None, timeout: float = GUARD) -> Response:
    """Send `request` on a fresh connection and read one response."""
    verb = method or request.split(b" ", 1)[0].decode("latin-1")
    with Connection(port, timeout=timeout) as conn:
        conn.send(request)
        return conn.read_response(method=verb)


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    *,
    chunked: bool = False,
    version: str = "HTTP/1.1",
    host: str | None = "proxy.test",
) -> bytes:
    """A well-formed request: Host first, then `headers` as given, framed by Content-Length or chunked."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            payload = chunk_encode(body)
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def chunk_encode(body: bytes, size: int = 4096) -> bytes:
    out = bytearray()
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def websocket_connect(port: int, target: str, *, timeout: float = GUARD) -> tuple[Connection, Response]:
    """Open a WebSocket with a raw handshake; the Connection then carries frames (see ws_send / ws_receive)."""
    conn = Connection(port, timeout=timeout)
    conn.send(
        build_request(
            "GET",
            target,
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", WS_KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    )
    return conn, conn.read_head()


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked, final frame as a client sends it (clients must mask, RFC 6455 §5.3); payloads under 64 KiB."""
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x80 | opcode]) + (
        bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_send(conn: Connection, payload: bytes, opcode: int = 0x1) -> None:
    conn.send(ws_frame(payload, opcode))


def ws_receive(conn: Connection, timeout: float = GUARD) -> tuple[int, bytes] | None:
    """The next frame as (opcode, payload), or None when the stream ended first."""
    deadline = time.monotonic() + timeout
    head = conn._take(2, deadline)
    if head is None:
        return None
    length = head[1] & 0x7F
    if length >= 126:
        extended = conn._take(2 if length == 126 else 8, deadline)
        if extended is None:
            return None
        length = int.from_bytes(extended, "big")
    payload = conn._take(length, deadline) if length else b""
    return None if payload is None else (head[0] & 0x0F, payload)


def small_window_connection(port: int, *, rcvbuf: int = 4096, timeout: float = GUARD) -> Connection:
    """A client connection whose receive buffer is set to `rcvbuf` before connecting, so a client that does not
    read closes its TCP window after a few KiB (a zero-window peer, as a stuck or hostile client is)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    conn = Connection.__new__(Connection)
    conn.sock = sock
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.timeout = timeout
    conn.buffer = bytearray()
    conn.ending = None
    return conn


def send_until_blocked(sock: socket.socket, data: bytes, *, wait: float = 0.5) -> int:
    """Send as much of `data` as the peer takes, waiting at most `wait` seconds for the socket to become writable
    again each time it is full; return how many bytes went out (less than len(data) when the peer stopped reading
    or closed)."""
    sent = 0
    view = memoryview(data)
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        while sent < len(data):
            try:
                sent += sock.send(view[sent : sent + (1 << 20)])
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], wait)
                if not writable:
                    break
            except (BrokenPipeError, ConnectionResetError):
                break
    finally:
        sock.settimeout(previous)
    return sent
