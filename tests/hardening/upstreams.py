"""Real upstreams for the battery, served from an event loop in a background thread so tests may block freely.

`RecordingUpstream` is an aiohttp server (handler cancellation on, no request decompression) that records what it
received: method, raw target, the exact header list, a sha256 of the body, and the connection it came on.
`RawUpstream` is a raw asyncio server answering scripted bytes, for broken responses and connection counting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import WSMsgType, web

T = TypeVar("T")
GUARD = 10.0
FLOOD_BLOCK = bytes(range(256)) * 256  # 64 KiB, the unit a flood response is made of


class LoopThread:
    """One asyncio loop in a daemon thread; `run` executes a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="upstreams", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = GUARD) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(GUARD)
        self.loop.close()


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_length: int
    body: bytes | None  # kept only when small
    connection: int  # the proxy's source port: one per upstream connection

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def spelled_like(self, name: str) -> list[tuple[str, str]]:
        """Headers whose name equals `name` ignoring case and `_` versus `-`."""
        target = name.lower().replace("_", "-")
        return [(key, value) for key, value in self.headers if key.lower().replace("_", "-") == target]


class Notifier:
    """State changed in the loop thread; tests wait on a predicate with a bound, never on a sleep."""

    def __init__(self) -> None:
        self.condition = threading.Condition()

    def changed(self) -> None:
        with self.condition:
            self.condition.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = GUARD, what: str = "condition") -> None:
        with self.condition:
            if not self.condition.wait_for(predicate, timeout):
                raise AssertionError(f"upstream: {what} not reached within {timeout}s")


class RecordingUpstream(Notifier):
    """An aiohttp upstream. Routes: /hold* (waits for `release`), /sse* (one event, waits for `release`, two more),
    /forever* (one event then waits until cancelled), /flood/<bytes> (as fast as the proxy takes it),
    /ws* (echo WebSocket), /status/<code>, anything else: a JSON echo of what arrived."""

    def __init__(self, loop: LoopThread) -> None:
        super().__init__()
        self.loop = loop
        self.requests: list[Seen] = []
        self.held = 0
        self.cancelled = 0
        self.sse_open = 0
        self.flood_sent = 0
        self.ws_close_codes: list[int | None] = []
        self._release: asyncio.Event | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/hold{tail:.*}", self._hold)
        app.router.add_route("*", "/sse{tail:.*}", self._sse)
        app.router.add_route("*", "/forever{tail:.*}", self._forever)
        app.router.add_route("*", "/flood/{size:\\d+}", self._flood)
        app.router.add_get("/ws{tail:.*}", self._ws)
        app.router.add_route("*", "/status/{code:\\d+}", self._status)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        # Header limits above the proxy's own (64 KiB), so the proxy's limits are the ones under test.
        self.runner = web.AppRunner(
            app,
            handler_cancellation=True,
            auto_decompress=False,
            access_log=None,
            max_line_size=1 << 17,
            max_field_size=1 << 17,
            max_headers=1000,
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def start(self) -> RecordingUpstream:
        self.loop.run(self._start())
        return self

    def close(self) -> None:
        if self.runner is not None:
            self.loop.run(self.runner.cleanup())

    def reset(self) -> None:
        async def fresh() -> None:
            if self._release is not None:
                self._release.set()  # let anything a previous test left waiting finish
            self._release = asyncio.Event()

        self.loop.run(fresh())
        self.requests.clear()
        self.held = self.cancelled = self.sse_open = self.flood_sent = 0
        self.ws_close_codes.clear()

    def release(self) -> None:
        event = self._release
        assert event is not None
        self.loop.call(event.set)

    def by_target(self, prefix: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.target.startswith(prefix)]

    async def _record(self, request: web.Request, *, read_body: bool = True) -> Seen:
        digest, length, kept = hashlib.sha256(), 0, bytearray()
        if read_body:
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                length += len(chunk)
                if length <= 1 << 20:
                    kept += chunk
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            method=request.method,
            target=request.raw_path,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body_sha256=digest.hexdigest(),
            body_length=length,
            body=bytes(kept) if length <= 1 << 20 else None,
            connection=peer[1] if peer else -1,
        )
        self.requests.append(seen)
        self.changed()
        return seen

    async def _wait_release(self) -> None:
        assert self._release is not None
        try:
            await self._release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.changed()
            raise

    async def _echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        return web.json_response(
            {"method": seen.method, "target": seen.target, "sha256": seen.body_sha256, "length": seen.body_length},
            headers={"X-Upstream": "yes"},
        )

    async def _status(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=int(request.match_info["code"]))

    async def _hold(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.held += 1
        self.changed()
        await self._wait_release()
        return web.Response(text="released")

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        self.sse_open += 1
        self.changed()
        await self._wait_release()
        await response.write(b"data: second\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _forever(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        self.sse_open += 1
        self.changed()
        try:
            await asyncio.Event().wait()  # only cancellation ends it
        except asyncio.CancelledError:
            self.cancelled += 1
            self.changed()
            raise
        return response

    async def _flood(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        sent = 0
        while sent < size:
            block = FLOOD_BLOCK[: size - sent]
            await response.write(block)  # returns once the transport's buffer drained below its high mark
            sent += len(block)
            self.flood_sent = sent
        await response.write_eof()
        return response

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        await self._record(request, read_body=False)
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type is WSMsgType.PING:
                await ws.pong(message.data)
        self.ws_close_codes.append(ws.close_code)
        self.changed()
        return ws


def flood_sha256(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(FLOOD_BLOCK))
    for _ in range(full):
        digest.update(FLOOD_BLOCK)
    digest.update(FLOOD_BLOCK[:rest])
    return digest.hexdigest()


@dataclass
class RawAnswer:
    """What a raw upstream does with one request: write `data`, then keep the connection, close it (FIN),
    reset it (RST), or hang (keep it open and never write again)."""

    data: bytes
    then: str = "keep"  # keep | close | reset | hang
    delay: float = 0.0  # seconds between writing `data` and doing `then`: the shape of the fault


@dataclass
class RawConnectionLog:
    index: int
    targets: list[str] = field(default_factory=list)


class AsyncioUpstream(Notifier):
    """A raw asyncio server on 127.0.0.1 in the test's LoopThread: its start, its close (every connection aborted,
    every handler cancelled) and the tracking of its connections. Subclasses handle a connection in `_serve`."""

    def __init__(self, loop: LoopThread) -> None:
        super().__init__()
        self.loop = loop
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
            self.port = self.server.sockets[0].getsockname()[1]

        self.loop.run(start())
        return self

    def close(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
                for writer in list(self._writers):
                    writer.transport.abort()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await self.server.wait_closed()

        self.loop.run(close())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


class RawUpstream(AsyncioUpstream):
    """A raw asyncio upstream: `script(target)` decides the answer; records every connection and its requests."""

    def __init__(self, loop: LoopThread, script: Callable[[str], RawAnswer]) -> None:
        super().__init__(loop)
        self.script = script
        self.connections: list[RawConnectionLog] = []
        self._count = itertools.count()

    def requests(self) -> list[str]:
        return [target for conn in self.connections for target in conn.targets]

    def connection_of(self, target: str) -> int:
        return next(conn.index for conn in self.connections if target in conn.targets)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log = RawConnectionLog(next(self._count))
        self.connections.append(log)
        self.changed()
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            length = next((int(v) for k, _, v in (x.partition(":") for x in lines) if k.lower() == "content-length"), 0)
            if length:
                await reader.readexactly(length)
            log.targets.append(target)
            self.changed()
            answer = self.script(target)
            writer.write(answer.data)
            await writer.drain()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.then == "close":
                writer.close()
                return
            if answer.then == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()
                return
            if answer.then == "hang":
                await asyncio.Event().wait()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def read_request_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]] | None:
    """One request head off `reader`: (target, lower-cased headers), or None when the connection ended first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ")[1], headers


class ScriptedUpstream(AsyncioUpstream):
    """A raw asyncio upstream whose every connection runs `handler(reader, writer)`: for faults a request/answer
    script cannot express (answering before reading the body, reading slowly, bytes after the response).
    `state` is free for handlers to record into; call `changed()` after, so tests can `wait_for` it."""

    def __init__(self, loop: LoopThread, handler: Handler) -> None:
        super().__init__(loop)
        self.handler = handler
        self.state: dict[str, Any] = {}

    def record(self, key: str, value: Any = 1) -> None:
        """Add `value` to the counter or list under `key` and wake waiters (call from a handler)."""
        current = self.state.get(key)
        if isinstance(value, int) and (current is None or isinstance(current, int)):
            self.state[key] = (current or 0) + value
        else:
            self.state.setdefault(key, []).append(value)
        self.changed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.handler(reader, writer)
