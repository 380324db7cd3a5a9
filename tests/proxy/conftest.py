"""A recording upstream (a real aiohttp server) and a factory for proxies in front of it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, DummyCookieJar, WSMsgType, web
from aiohttp.test_utils import TestServer
from yarl import URL

from config.settings import Settings
from proxy.app import Proxy
from proxy.server import ClientConnection

SESSION_ID = "9f3c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
OTHER_ID = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"


@dataclass
class Upstream:
    """What the upstream saw, plus knobs tests use to synchronise with it."""

    server: TestServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    sse_next: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    ws_closed_with: asyncio.Future[int | None] | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("/")).rstrip("/")

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def _record(upstream: Upstream, request: web.Request, body: bytes) -> dict[str, Any]:
    seen = {
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": list(request.headers.items()),
        "body": body,
        "chunked": request.headers.get("Transfer-Encoding") == "chunked",
        "peer": request.transport.get_extra_info("peername") if request.transport else None,
    }
    upstream.requests.append(seen)
    return seen


def build_upstream_app(upstream: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen = _record(upstream, request, body)
        return web.json_response(
            {
                "method": seen["method"],
                "raw_path": seen["raw_path"],
                "headers": seen["headers"],
                "body_b64": base64.b64encode(body).decode(),
            },
            headers={"X-Upstream": "yes"},
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        _record(upstream, request, b"")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for index in range(3):
            await response.write(f"data: chunk {index}\n\n".encode())
            if index < 2:
                await upstream.sse_next.get()  # the test asks for the next chunk once it has this one
        await response.write_eof()
        return response

    async def hold(request: web.Request) -> web.Response:
        _record(upstream, request, b"")
        upstream.entered.set()
        try:
            await upstream.release.wait()
        except asyncio.CancelledError:
            upstream.cancelled.set()
            raise
        return web.Response(text="released")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        _record(upstream, request, b"")
        socket = web.WebSocketResponse(protocols=("chat.v1",), autoping=False)
        await socket.prepare(request)
        async for message in socket:
            if message.type is WSMsgType.TEXT:
                if message.data == "close-me":
                    await socket.close(code=4002, message=b"upstream says bye")
                    break
                await socket.send_str(f"echo:{message.data}")
            elif message.type is WSMsgType.BINARY:
                await socket.send_bytes(message.data[::-1])
            elif message.type is WSMsgType.PING:
                await socket.pong(message.data)
        if upstream.ws_closed_with is not None and not upstream.ws_closed_with.done():
            upstream.ws_closed_with.set_result(socket.close_code)
        return socket

    async def redirect(request: web.Request) -> web.Response:
        _record(upstream, request, b"")
        raise web.HTTPFound("/elsewhere", headers={"Set-Cookie": "a=1"})

    async def cookies(request: web.Request) -> web.Response:
        _record(upstream, request, b"")
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers["Connection"] = "X-Secret"
        response.headers["X-Secret"] = "hop-by-hop, must not reach the client"
        return response

    async def gzipped(request: web.Request) -> web.Response:
        import gzip

        _record(upstream, request, b"")
        return web.Response(
            body=gzip.compress(b"compressed payload"),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def status(request: web.Request) -> web.Response:
        _record(upstream, request, await request.read())
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"ETag": '"v1"', "X-Status": str(code)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/status/{code:\\d+}", status)
    app.router.add_route("*", "/sse", sse)
    app.router.add_route("*", "/hold", hold)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_route("*", "/cookies", cookies)
    app.router.add_route("*", "/gzip", gzipped)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream() -> Any:
    state = Upstream(server=None)  # type: ignore[arg-type]
    server = TestServer(build_upstream_app(state), handler_cancellation=True)
    state.server = server
    await server.start_server()
    yield state
    await server.close()


class ProxyClient:
    """A real proxy (the same Proxy and protocol the CLI serves) on a loopback port, and an HTTP client for it."""

    def __init__(self, proxy: Proxy, server: asyncio.Server, session: ClientSession) -> None:
        self.proxy = proxy
        self.server = server
        self.session = session
        self.port: int = server.sockets[0].getsockname()[1]
        self.host = "127.0.0.1"

    def make_url(self, path: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")

    def __getattr__(self, name: str) -> Any:  # get, post, request, ws_connect, … relative to the proxy's URL
        return getattr(self.session, name)

    async def close(self) -> None:
        await self.session.close()
        self.proxy.drain()
        self.server.close()
        await self.proxy.wait_closed(1.0)
        await self.server.wait_closed()


ProxyFactory = Callable[..., Awaitable[ProxyClient]]


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"upstream_url": upstream_url, "port": 0, "admin_port": 0}
    values.update(overrides)
    return Settings.model_validate(values)


async def start_proxy(settings: Settings, *, tracing: bool = False) -> ProxyClient:
    proxy = Proxy(settings, tracing_enabled=tracing)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientConnection(proxy), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    session = ClientSession(base_url=f"http://127.0.0.1:{port}", cookie_jar=DummyCookieJar(), auto_decompress=False)
    return ProxyClient(proxy, server, session)


@pytest.fixture
async def make_proxy(upstream: Upstream) -> AsyncIterator[ProxyFactory]:
    clients: list[ProxyClient] = []

    async def factory(tracing: bool = False, upstream_url: str | None = None, **overrides: Any) -> ProxyClient:
        if tracing:
            overrides.setdefault("apm_span", True)
        client = await start_proxy(make_settings(upstream_url or upstream.url, **overrides), tracing=tracing)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> ProxyClient:
    return await make_proxy()


async def metric(client: ProxyClient, sample: str) -> float | None:
    """The value of one sample line of the proxy's /metrics output, e.g. `name{label="x"}`."""
    body, _ = client.proxy.metrics.render(None)
    for line in body.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
