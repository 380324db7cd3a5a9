"""The demo's console: a local RUM intake, the LLMObs spans Datadog's test agent received, the proxy's request lines.

It lets the chat page show, side by side, the RUM session the browser SDK reports and the session_id of the
agent's LLM Observability spans, with no Datadog account: the RUM SDK's `proxy` option points at
`/rum-intake`, `/api/spans` decodes what ddtrace sent to the test agent, and `/api/proxy-requests` reads the
proxy's JSON `request` log lines (its stdout, which run.py writes to a file) so the page can show, per chat
request, where the proxy found the session ID (`session_source`).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import ClientSession, ClientTimeout, web

LLMOBS_STRUCT_KEY = "_llmobs"
MAX_SPANS = 100
MAX_PROXY_REQUESTS = 500
# What the page needs from a proxy `request` line; never headers or bodies (the proxy does not log them anyway).
PROXY_FIELDS = ("method", "path", "status", "session_source", "session_id", "duration_ms", "error", "request_id")


@dataclass
class ProxyLog:
    """The proxy's log file, read incrementally: only complete lines, only `request` events, the newest kept."""

    path: Path | None
    offset: int = 0
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_PROXY_REQUESTS))

    def read_new(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return list(self.requests)
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            if entry := proxy_request_from_line(line):
                self.requests.append(entry)
        return list(self.requests)


def proxy_request_from_line(line: bytes) -> dict[str, Any] | None:
    """One proxy log line to what the page shows, or None when it is no `request` line (or no JSON)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") != "request":
        return None
    entry = {name: event[name] for name in PROXY_FIELDS if name in event}
    try:  # the proxy writes the line when the response ends; the page matches on that instant
        entry["time_ms"] = datetime.fromisoformat(str(event["timestamp"])).timestamp() * 1000
    except (KeyError, ValueError):
        entry["time_ms"] = None
    return entry


RUM_EVENTS = web.AppKey("rum_events", list[dict[str, Any]])
TEST_AGENT_URL = web.AppKey("test_agent_url", str)
PROXY_LOG = web.AppKey("proxy_log", ProxyLog)
HTTP = web.AppKey("http", ClientSession)

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
}


def _decompress(raw: bytes, encoding: str) -> bytes:
    if encoding == "gzip" or raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


def rum_events_from_batch(body: bytes) -> list[dict[str, Any]]:
    """One intake batch (newline-delimited JSON) to the fields the page shows."""
    events = []
    for line in body.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        events.append(
            {
                "type": event.get("type"),
                "session_id": (event.get("session") or {}).get("id"),
                "url": (event.get("resource") or {}).get("url") or (event.get("view") or {}).get("url"),
                "trace_id": (event.get("_dd") or {}).get("trace_id"),
            }
        )
    return events


def llmobs_events_from_request(request: dict[str, Any]) -> list[dict[str, Any]]:
    """LLMObs span events in one request the test agent recorded: APM traces' meta_struct, or the EVP proxy."""
    url = str(request.get("url", ""))
    headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
    body = _decompress(base64.b64decode(request.get("body") or ""), headers.get("content-encoding", ""))
    if "/v0.4/traces" in url:
        events = []
        for trace in msgpack.unpackb(body, raw=False, strict_map_key=False) or []:
            for span in trace:
                struct = (span.get("meta_struct") or {}).get(LLMOBS_STRUCT_KEY)
                if struct is None:
                    continue
                event = msgpack.unpackb(struct, raw=False) if isinstance(struct, bytes) else dict(struct)
                # The event inside an APM span leaves its ids and timing to the span itself.
                event.setdefault("span_id", span.get("span_id"))
                event.setdefault("start_ns", span.get("start"))
                events.append(event)
        return events
    if "/evp_proxy/" in url and url.rstrip("/").endswith("llmobs"):
        payload = json.loads(body)
        return [span for batch in (payload if isinstance(payload, list) else [payload]) for span in batch["spans"]]
    return []


def span_summary(event: dict[str, Any]) -> dict[str, Any]:
    tags = dict(t.split(":", 1) for t in event.get("tags") or [] if isinstance(t, str) and ":" in t)
    session_id = event.get("session_id") or tags.get("session_id")
    return {
        "name": event.get("name"),
        "kind": (event.get("meta") or {}).get("span", {}).get("kind"),
        "session_id": session_id,
        "trace_id": event.get("trace_id"),
        "span_id": str(event.get("span_id")),
        "start_ns": event.get("start_ns", 0),
        "ml_app": tags.get("ml_app"),
    }


async def rum_intake(request: web.Request) -> web.Response:
    # The SDK posts to `<proxy>?ddforward=<path>`; only RUM batches are kept (not logs or telemetry).
    if request.query.get("ddforward", "").startswith("/api/v2/rum"):
        body = _decompress(await request.read(), request.headers.get("Content-Encoding", ""))
        request.app[RUM_EVENTS].extend(rum_events_from_batch(body))
    return web.Response(status=202, headers=CORS)


async def rum_summary(request: web.Request) -> web.Response:
    """Every RUM event received; with `?session_id=`, also that session's own counts, apart from earlier ones."""
    events = request.app[RUM_EVENTS]
    session_ids = list(dict.fromkeys(e["session_id"] for e in events if e["session_id"]))
    by_type = Counter(str(e["type"]) for e in events)
    chat_resources = [e for e in events if e["type"] == "resource" and "/chat" in str(e["url"])]
    summary: dict[str, Any] = {
        "events": len(events),
        "session_ids": session_ids,
        "by_type": by_type,
        "chat_resources": chat_resources,
    }
    if current := request.query.get("session_id"):
        mine = [e for e in events if e["session_id"] == current]
        summary["current"] = {
            "session_id": current,
            "events": len(mine),
            "by_type": Counter(str(e["type"]) for e in mine),
        }
        summary["earlier"] = {
            "sessions": len([s for s in session_ids if s != current]),
            "events": len(events) - len(mine),
        }
    return web.json_response(summary, headers=CORS)


async def proxy_requests(request: web.Request) -> web.Response:
    log = request.app[PROXY_LOG]
    if log.path is None:
        return web.json_response({"available": False, "requests": []}, headers=CORS)
    return web.json_response({"available": True, "requests": log.read_new()}, headers=CORS)


async def spans(request: web.Request) -> web.Response:
    base = request.app[TEST_AGENT_URL]
    if not base:
        note = "LLMObs spans go to Datadog: open LLM Observability and filter by session_id."
        return web.json_response({"source": "datadog", "spans": [], "note": note}, headers=CORS)
    async with request.app[HTTP].get(base + "/test/session/requests") as response:
        recorded = await response.json(content_type=None)
    seen: dict[str, dict[str, Any]] = {}
    for item in recorded or []:
        for event in llmobs_events_from_request(item):
            summary = span_summary(event)
            seen.setdefault(summary["span_id"], summary)
    newest = sorted(seen.values(), key=lambda s: s["start_ns"], reverse=True)[:MAX_SPANS]
    return web.json_response({"source": "test-agent", "spans": newest}, headers=CORS)


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def http_session(app: web.Application) -> AsyncIterator[None]:
    async with ClientSession(timeout=ClientTimeout(total=10)) as session:
        app[HTTP] = session
        yield


def create_app(test_agent_url: str, proxy_log: Path | None = None) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[RUM_EVENTS] = []
    app[TEST_AGENT_URL] = test_agent_url.rstrip("/")
    app[PROXY_LOG] = ProxyLog(proxy_log)
    app.cleanup_ctx.append(http_session)
    app.router.add_post("/rum-intake", rum_intake)
    app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
    app.router.add_get("/api/rum", rum_summary)
    app.router.add_get("/api/spans", spans)
    app.router.add_get("/api/proxy-requests", proxy_requests)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--test-agent-url", default="", help="empty: spans went to Datadog, nothing to read back")
    parser.add_argument("--proxy-log", type=Path, default=None, help="the proxy's stdout (JSON lines), as a file")
    args = parser.parse_args()
    app = create_app(args.test_agent_url, args.proxy_log)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
