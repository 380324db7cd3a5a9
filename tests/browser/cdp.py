"""A small Chrome DevTools Protocol client (aiohttp WebSocket) for driving Debian's Chromium from pytest.

Each `Page` lives in its own browser context (fresh cookies and storage) and records the headers Chromium
actually sent for every request (`Network.requestWillBeSentExtraInfo` includes cookies).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class CDPError(RuntimeError):
    pass


@dataclass
class SentRequest:
    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names

    def merge(self, headers: dict[str, str]) -> None:
        self.headers.update({k.lower(): v for k, v in headers.items()})


class Connection:
    """One WebSocket to the browser endpoint; commands and events multiplexed by flat session ids."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, timeout=60)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif (page := self._pages.get(message.get("sessionId", ""))) is not None:
                page.on_event(message["method"], message.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("browser connection closed"))

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    @contextlib.asynccontextmanager
    async def new_page(self, width: int = 1280, height: int = 760) -> AsyncIterator[Page]:
        context = (await self.send("Target.createBrowserContext"))["browserContextId"]
        try:
            target = await self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})
            attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
            page = Page(self, attached["sessionId"])
            self._pages[page.session] = page
            for domain in ("Page", "Runtime", "Network"):
                await page.send(f"{domain}.enable")
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            yield page
        finally:
            await self.send("Target.disposeBrowserContext", {"browserContextId": context})


class Page:
    def __init__(self, connection: Connection, session: str) -> None:
        self._connection = connection
        self.session = session
        self.requests: dict[str, SentRequest] = {}
        self.console: list[str] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self._connection.send(method, params, session=self.session)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            request = params["request"]
            sent = self.requests.setdefault(params["requestId"], SentRequest(request["url"], request["method"]))
            sent.url, sent.method = request["url"], request["method"]
            sent.merge(request.get("headers", {}))
        elif method == "Network.requestWillBeSentExtraInfo":
            self.requests.setdefault(params["requestId"], SentRequest("", "")).merge(params.get("headers", {}))
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
        elif method == "Runtime.exceptionThrown":
            self.console.append(str(params["exceptionDetails"]))

    async def goto(self, url: str) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JS (promises awaited) and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float = 30.0) -> Any:
        """Bounded poll until the expression is truthy; return its value."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(CDPError):  # e.g. while the page is navigating
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {within}s; console: {self.console[-10:]}")
            await asyncio.sleep(0.05)  # poll interval of a bounded wait on page state

    def sent(self, path: str, method: str = "POST") -> list[SentRequest]:
        return [r for r in self.requests.values() if r.method == method and path in r.url]

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))


@contextlib.asynccontextmanager
async def connect(browser_ws_url: str) -> AsyncIterator[Connection]:
    async with aiohttp.ClientSession() as http, http.ws_connect(browser_ws_url, max_msg_size=0) as ws:
        connection = Connection(ws)
        try:
            yield connection
        finally:
            await connection.close()


def wait_for_devtools_url(user_data_dir: Path, timeout: float = 30.0) -> str:
    """Chromium writes `<port>\\n<path>` to DevToolsActivePort once it listens (with --remote-debugging-port=0)."""
    active = user_data_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = active.read_text().split("\n") if active.exists() else []
        if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
            return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        time.sleep(0.05)  # poll interval while Chromium starts
    raise TimeoutError(f"Chromium wrote no {active} within {timeout}s")
