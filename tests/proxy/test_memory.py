"""Nothing a request allocates outlives it: the per-request core and the whole request path, run many times.

The request path runs compiled by mypyc, whose runtime has leaked a reference per `str()` of an int beyond 62 bits
(trace ids are 64 and 128 bits): a leak like that costs nothing per request and everything after a week. Counted
in allocated blocks (`sys.getallocatedblocks`), not in time or RSS, after a warm-up that fills the caches.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from collections.abc import Callable

from config.settings import SessionSource
from proxy.headers import (
    ForwardRules,
    downstream_response_head,
    response_framing,
    scan_request_head,
    upstream_request_head,
)
from proxy.http1 import BODY_PASS, ResponsePlan
from proxy.session import RequestParts, SessionExtractor
from proxy.trace_context import propagate
from tests.proxy.conftest import make_settings, start_proxy

SESSION = "3f8a2c1e-9b4d-4e6f-a1b2-c3d4e5f60718"
LEAK_PER_CALL = 0.05  # a leak of one object every 20 calls fails; a real leak here is one or more per call

KEEP_PASS = ResponsePlan(BODY_PASS, True, None)


def growth(run: Callable[[], object], calls: int) -> float:
    """Blocks still allocated per call after `calls` more calls, the first calls (caches, interning) excluded."""
    for _ in range(200):
        run()
    gc.collect()
    before = sys.getallocatedblocks()
    for _ in range(calls):
        run()
    gc.collect()
    return (sys.getallocatedblocks() - before) / calls


def trace_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Trace headers as the RUM SDK sends them: ids drawn over the whole 64- and 128-bit ranges."""
    return [
        (b"x-datadog-trace-id", b"%d" % rng.getrandbits(64)),
        (b"x-datadog-parent-id", b"%d" % rng.getrandbits(64)),
        (b"x-datadog-tags", b"_dd.p.tid=%016x" % rng.getrandbits(64)),
        (b"traceparent", b"00-%032x-%016x-01" % (rng.getrandbits(128), rng.getrandbits(64))),
    ]


def test_the_per_request_core_keeps_nothing() -> None:
    rng = random.Random(7)  # noqa: S311 (test data)
    rules = ForwardRules(b"x-rum-session-id", True, True, b"agent:8000", True)
    extractor = SessionExtractor(
        list(SessionSource), body_fields=["session_id"], query_params=["session_id"], header_names=["x-rum-session-id"]
    )
    body = b'{"message": "hi", "session_id": "%s"}' % SESSION.encode()
    response = [(b"content-type", b"application/json"), (b"content-length", b"2")]

    def one_request() -> None:
        traced = rng.random() < 0.5
        raw = [(b"Host", b"agent"), (b"Content-Type", b"application/json"), *(trace_headers(rng) if traced else [])]
        head = scan_request_head(b"POST", b"/chat?x=1", b"1.1", raw)
        extraction = extractor.extract(RequestParts(head, {}, body, "json", 1_700_000_000_000))
        propagation = propagate(head.index, extraction.session_id)
        upstream_request_head(
            head,
            rules,
            target=b"/chat?x=1",
            session_id=extraction.session_id,
            remote="127.0.0.1",
            scheme=b"http",
            trace_headers=propagation.headers,
            body_framing=b"content-length: %d" % len(body),
        )
        framing = response_framing(200, b"POST", response)
        downstream_response_head(200, b"OK", response, framing=framing, plan=KEEP_PASS)

    assert growth(one_request, 20_000) < LEAK_PER_CALL


class FixedUpstream(asyncio.Protocol):
    """An upstream that answers every request on a keep-alive connection with the same small response."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while b"\r\n\r\n" in self.pending:
            head, _, rest = self.pending.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            if len(rest) < length:
                return
            self.pending = rest[length:]
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")  # type: ignore[attr-defined]


async def test_requests_through_the_proxy_leave_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(FixedUpstream, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    client = await start_proxy(make_settings(f"http://127.0.0.1:{port}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    rng = random.Random(11)  # noqa: S311 (test data)
    body = b'{"message": "hi", "session_id": "%s"}' % SESSION.encode()

    async def one_request() -> None:
        traced = b"".join(b"%s: %s\r\n" % pair for pair in trace_headers(rng)) if rng.random() < 0.5 else b""
        writer.write(
            b"POST /chat HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s"
            % (traced, len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(2) == b"{}"

    try:
        for _ in range(300):
            await one_request()
        gc.collect()
        before = sys.getallocatedblocks()
        calls = 5_000
        for _ in range(calls):
            await one_request()
        gc.collect()
        assert (sys.getallocatedblocks() - before) / calls < LEAK_PER_CALL
    finally:
        writer.close()
        await client.close()
        upstream.close()
        await upstream.wait_closed()
