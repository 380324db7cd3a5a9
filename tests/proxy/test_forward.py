"""Forwarding through a real proxy to a real upstream server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
import structlog.testing
from aiohttp import ClientSession, DummyCookieJar

from tests.proxy.conftest import OTHER_ID, SESSION_ID, Upstream, metric


def seen_headers(data: dict[str, Any]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for name, value in data["headers"]:
        result.setdefault(name.lower(), []).append(value)
    return result


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_any_method_path_and_query_reach_the_upstream(proxy: Any, upstream: Upstream, method: str) -> None:
    resp = await proxy.request(method, "/v1/a%2Fb/c?q=%20x&q=2&empty=", data=b"payload" if method != "GET" else None)
    assert resp.status == 200
    assert resp.headers["X-Upstream"] == "yes"
    assert upstream.last["method"] == method
    assert upstream.last["raw_path"] == "/v1/a%2Fb/c?q=%20x&q=2&empty="


async def test_head_keeps_content_length_without_a_body(proxy: Any, upstream: Upstream) -> None:
    resp = await proxy.head("/thing")
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) > 0
    assert await resp.read() == b""


async def test_upstream_base_path_is_prefixed(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(upstream_url=f"{upstream.url}/agent/")
    await client.get("/chat?x=1")
    assert upstream.last["raw_path"] == "/agent/chat?x=1"


async def test_json_body_is_forwarded_byte_for_byte(proxy: Any, upstream: Upstream) -> None:
    body = b'{ "session_id" : "' + SESSION_ID.upper().encode() + b'",\n "prompt": "h\\u00e9llo", "n": 1.50 }'
    resp = await proxy.post("/chat", data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    data = await resp.json()
    assert base64.b64decode(data["body_b64"]) == body
    assert seen_headers(data)["x-rum-session-id"] == [SESSION_ID]
    assert seen_headers(data)["content-length"] == [str(len(body))]


async def test_form_body_carries_the_id(proxy: Any, upstream: Upstream) -> None:
    resp = await proxy.post("/chat", data={"session_id": SESSION_ID, "q": "hi there"})
    data = await resp.json()
    assert seen_headers(data)["x-rum-session-id"] == [SESSION_ID]
    assert base64.b64decode(data["body_b64"]) == f"session_id={SESSION_ID}&q=hi+there".encode()


async def test_body_over_the_inspect_limit_streams_through_uninspected(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(max_inspect_bytes=1024)
    body = json.dumps({"session_id": SESSION_ID, "pad": "x" * 4096}).encode()
    resp = await client.post("/chat", data=body, headers={"Content-Type": "application/json"})
    data = await resp.json()
    assert base64.b64decode(data["body_b64"]) == body
    assert "x-rum-session-id" not in seen_headers(data)
    assert seen_headers(data)["content-length"] == [str(len(body))]  # framing kept: no switch to chunked


async def test_chunked_body_over_the_limit_is_forwarded_whole(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(max_inspect_bytes=100)
    parts = [b'{"session_id": "%s", "pad": "' % SESSION_ID.encode(), b"y" * 300, b'"}']

    async def chunks() -> Any:
        for part in parts:
            yield part

    resp = await client.post("/chat", data=chunks(), headers={"Content-Type": "application/json"})
    data = await resp.json()
    assert base64.b64decode(data["body_b64"]) == b"".join(parts)
    assert "x-rum-session-id" not in seen_headers(data)


async def test_small_chunked_json_body_is_inspected(proxy: Any, upstream: Upstream) -> None:
    async def chunks() -> Any:
        yield b'{"session_id": '
        yield b'"%s"}' % SESSION_ID.encode()

    resp = await proxy.post("/chat", data=chunks(), headers={"Content-Type": "application/json"})
    data = await resp.json()
    assert seen_headers(data)["x-rum-session-id"] == [SESSION_ID]


async def test_binary_body_streams_with_its_content_type(proxy: Any, upstream: Upstream) -> None:
    body = bytes(range(256)) * 1000
    resp = await proxy.put("/upload", data=body, headers={"Content-Type": "application/octet-stream"})
    data = await resp.json()
    assert base64.b64decode(data["body_b64"]) == body
    assert seen_headers(data)["content-type"] == ["application/octet-stream"]


async def test_no_headers_are_invented_for_the_upstream(proxy: Any, upstream: Upstream) -> None:
    async with ClientSession(skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding")) as raw:
        async with raw.get(proxy.make_url("/plain")) as resp:
            data = await resp.json()
    headers = seen_headers(data)
    assert "accept-encoding" not in headers
    assert "user-agent" not in headers
    assert "accept" not in headers
    assert "content-type" not in headers


async def test_compressed_response_passes_as_bytes(proxy: Any, upstream: Upstream) -> None:
    import gzip

    async with ClientSession(auto_decompress=False) as raw:
        async with raw.get(proxy.make_url("/gzip"), headers={"Accept-Encoding": "gzip"}) as resp:
            body = await resp.read()
            assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"compressed payload"
    assert seen_headers({"headers": upstream.last["headers"]})["accept-encoding"] == ["gzip"]


async def test_redirects_are_returned_not_followed(proxy: Any, upstream: Upstream) -> None:
    resp = await proxy.get("/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/elsewhere"
    assert len(upstream.requests) == 1


async def test_response_headers_keep_repeats_and_lose_hop_by_hop(proxy: Any, upstream: Upstream) -> None:
    resp = await proxy.get("/cookies")
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert "X-Secret" not in resp.headers


async def test_cookies_are_not_kept_by_the_proxy(proxy: Any, upstream: Upstream) -> None:
    async with ClientSession(cookie_jar=DummyCookieJar()) as raw:  # the test client itself keeps no cookies
        await (await raw.get(proxy.make_url("/cookies"))).read()
        await (await raw.get(proxy.make_url("/plain"), headers={"Cookie": "mine=1"})).read()
    assert seen_headers({"headers": upstream.last["headers"]})["cookie"] == ["mine=1"]


async def test_x_forwarded_headers(proxy: Any, upstream: Upstream) -> None:
    await proxy.get("/plain", headers={"X-Forwarded-For": "203.0.113.9"})
    headers = seen_headers({"headers": upstream.last["headers"]})
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == headers["host"]


async def test_header_named_in_connection_does_not_reach_the_upstream(proxy: Any, upstream: Upstream) -> None:
    await proxy.get("/plain", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5"})
    headers = seen_headers({"headers": upstream.last["headers"]})
    assert "x-hop" not in headers
    assert "keep-alive" not in headers


# --- where the session ID comes from -------------------------------------------------------------------------


NOW_MS = int(time.time() * 1000)


@pytest.mark.parametrize(
    ("request_kwargs", "source"),
    [
        ({"json": {"session_id": SESSION_ID}}, "body"),
        ({"params": {"session_id": SESSION_ID}}, "query"),
        ({"headers": {"X-Rum-Session-Id": SESSION_ID.upper()}}, "header"),
        ({"headers": {"baggage": f"session.id={SESSION_ID},user.id=u1"}}, "baggage"),
        (
            {
                "headers": {
                    "Cookie": f"_dd_s_v2=aid={OTHER_ID}&id={SESSION_ID}&created={NOW_MS}&expire={NOW_MS + 900_000}"
                }
            },
            "cookie",
        ),
    ],
)
async def test_id_from_each_source_is_forwarded_three_ways(
    proxy: Any, upstream: Upstream, request_kwargs: dict[str, Any], source: str
) -> None:
    resp = await proxy.post("/chat", **request_kwargs)
    assert resp.status == 200
    headers = seen_headers(await resp.json())
    assert headers["x-rum-session-id"] == [SESSION_ID]
    assert f"session.id={SESSION_ID}" in headers["baggage"][0]
    assert await metric(proxy, f'rum_proxy_requests_total{{session_source="{source}",status="200"}}') == 1.0


@pytest.mark.parametrize(
    "bad",
    ["", "abc", f"{SESSION_ID}x", "1' OR '1'='1", SESSION_ID.replace("-", ""), "é" * 36],
)
async def test_invalid_id_is_never_forwarded_but_the_request_is(proxy: Any, upstream: Upstream, bad: str) -> None:
    resp = await proxy.post("/chat", json={"session_id": bad, "q": 1}, headers={"x_rum_session_id": "forged"})
    assert resp.status == 200
    headers = seen_headers(await resp.json())
    assert not [name for name in headers if "rum" in name]
    assert "baggage" not in headers


async def test_wrong_json_type_is_counted_as_invalid(proxy: Any, upstream: Upstream) -> None:
    await proxy.post("/chat", json={"session_id": 12345})
    assert await metric(proxy, 'rum_proxy_invalid_session_ids_total{session_source="body"}') == 1.0


async def test_sources_can_be_switched_off_and_reordered(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(sources="cookie,header")
    resp = await client.post(
        "/chat?session_id=" + OTHER_ID,
        json={"session_id": OTHER_ID},
        headers={"x-rum-session-id": SESSION_ID},
    )
    assert seen_headers(await resp.json())["x-rum-session-id"] == [SESSION_ID]


async def test_custom_forward_header(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(session_header="X-Browser-Session")
    resp = await client.get("/chat", params={"session_id": SESSION_ID}, headers={"X-Browser-Session": "forged"})
    headers = seen_headers(await resp.json())
    assert headers["x-browser-session"] == [SESSION_ID]


@pytest.mark.parametrize("code", [204, 304, 404, 500, 503])
async def test_status_codes_pass_through(proxy: Any, upstream: Upstream, code: int) -> None:
    resp = await proxy.get(f"/status/{code}")
    assert resp.status == code
    assert resp.headers["X-Status"] == str(code)
    assert resp.headers["ETag"] == '"v1"'
    assert await resp.read() == b""


async def test_http_1_0_client_gets_a_complete_response(proxy: Any, upstream: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /sse HTTP/1.0\r\nHost: x\r\n\r\n")
    for _ in range(2):
        upstream.sse_next.put_nowait(None)  # let the upstream stream all three events
    async with asyncio.timeout(10):
        answer = await reader.read()  # HTTP/1.0 without Content-Length: the end of the body is the close
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")  # RFC 9110 §2.5: a server answers with its own version
    assert b"chunked" not in head.lower()
    assert body == b"data: chunk 0\n\ndata: chunk 1\n\ndata: chunk 2\n\n"


async def test_expect_100_continue(proxy: Any, upstream: Upstream) -> None:
    body = b'{"session_id": "' + SESSION_ID.encode() + b'"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    async with asyncio.timeout(10):
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert base64.b64decode(json.loads(answer.partition(b"\r\n\r\n")[2])["body_b64"]) == body
    assert "expect" not in {name.lower() for name, _ in upstream.last["headers"]}


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"Content-Type": "text/plain"}, b"hello", "content_type"),
        ({"Content-Type": "application/json", "Content-Encoding": "x-custom"}, b"{}", "content_encoding"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip at all", "undecodable"),
    ],
)
async def test_why_a_body_was_not_inspected_is_logged_at_debug(
    proxy: Any, upstream: Upstream, headers: dict[str, str], body: bytes, reason: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        await proxy.post("/chat", data=body, headers=headers)  # byte identity: tests/hardening/test_bodies.py
    (line,) = [entry for entry in logs if entry["event"] == "body_not_inspected"]
    assert (line["log_level"], line["reason"], line["path"]) == ("debug", reason, "/chat")


async def test_a_body_over_the_inspection_limit_is_logged_too_large(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(max_inspect_bytes=16)
    with structlog.testing.capture_logs() as logs:
        await client.post("/chat", json={"session_id": SESSION_ID, "pad": "x" * 64})
    assert [entry["reason"] for entry in logs if entry["event"] == "body_not_inspected"] == ["too_large"]


async def test_the_request_line_carries_a_well_formed_request_id(proxy: Any, upstream: Upstream) -> None:
    with structlog.testing.capture_logs() as logs:
        await proxy.get("/a", headers={"X-Request-ID": "req-42.abc"})
        await proxy.get("/b", headers={"X-Request-ID": "bad id\twith spaces"})
    lines = {entry["path"]: entry for entry in logs if entry["event"] == "request"}
    assert lines["/a"]["request_id"] == "req-42.abc"
    assert "request_id" not in lines["/b"]
