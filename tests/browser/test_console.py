"""The demo console's /api/proxy-requests: the proxy's `request` lines as the page reads them, while being written."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.processes import REPO

SESSION_ID = "9f3c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6"


def load_console() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_console", REPO / "examples" / "demo" / "console.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def request_line(**fields: Any) -> bytes:
    line = {"event": "request", "method": "POST", "path": "/chat", "status": 200, "duration_ms": 12.5, **fields}
    return json.dumps({**line, "level": "info", "timestamp": "2026-12-01T18:36:52.987936Z"}).encode() + b"\n"


async def test_request_lines_are_served_once_complete(tmp_path: Path, aiohttp_client: Any) -> None:
    log = tmp_path / "proxy.log"
    listening = b'{"event": "listening", "level": "info"}\n'
    first = request_line(session_source="cookie", session_id=SESSION_ID)
    second = request_line(session_source="none", session_id=None, path="/static/app.js", method="GET")
    log.write_bytes(listening + b"Traceback: raw text from a crash\n" + first + second[:20])
    client: TestClient[Any, Any] = await aiohttp_client(load_console().create_app("", log))

    async with client.get("/api/proxy-requests") as response:
        body = await response.json()
    assert body["available"] is True
    [seen] = body["requests"]  # not the other events, not the half-written line
    assert (seen["session_source"], seen["session_id"], seen["status"]) == ("cookie", SESSION_ID, 200)
    assert seen["time_ms"] == datetime(2026, 12, 1, 18, 36, 52, 987936, tzinfo=UTC).timestamp() * 1000

    with log.open("ab") as out:
        out.write(second[20:])
    async with client.get("/api/proxy-requests") as response:
        body = await response.json()
    assert [(r["method"], r["path"], r["session_source"]) for r in body["requests"]] == [
        ("POST", "/chat", "cookie"),
        ("GET", "/static/app.js", "none"),
    ]


async def test_without_a_proxy_log_the_page_is_told(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(load_console().create_app(""))
    async with client.get("/api/proxy-requests") as response:
        assert await response.json() == {"available": False, "requests": []}
