"""Issue 17, memory: one hostile client (or a crowd of slow ones) must not grow the proxy without bound.

Each test measures the proxy process (RSS from /proc) while a client does what a user's browser never would:
never read, send an endless header, hold many half-sent JSON bodies. The bounds asserted are far above what a
correct proxy uses (socket buffers, one high-water mark per connection) and far below what the core before
issue 17 (22bc614) grew to; every test here failed on it for the reason its docstring gives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from tests.hardening.conftest import GUARD, SESSION_ID, ProxyFactory, ProxyProcess
from tests.hardening.proxyproc import loopback_queues_empty
from tests.hardening.rawhttp import Connection, build_request, exchange, send_until_blocked, small_window_connection
from tests.hardening.upstreams import LoopThread, RecordingUpstream, ScriptedUpstream, read_request_head

MIB = 1 << 20


class RssWatch:
    """The proxy's RSS at the start and the highest seen by bounded polls of /proc (VmHWM is the kernel's own
    peak, taken too, so a spike between two polls is not missed)."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.start = proxy.rss_bytes()
        self.start_peak = proxy.peak_rss_bytes()
        self.highest = self.start

    def sample(self) -> int:
        rss = self.proxy.rss_bytes()
        self.highest = max(self.highest, rss)
        return rss

    @property
    def growth(self) -> int:
        """How far RSS rose above where it started (the kernel's peak included, once it passed the peak the
        process had before: start-up may have been higher than the RSS the watch started from)."""
        peak = self.proxy.peak_rss_bytes()
        return max(self.highest, peak if peak > self.start_peak else 0) - self.start

    def poll(self, until: Callable[[], bool], *, timeout: float, limit: int) -> None:
        """Sample every 20 ms until `until()` holds, the growth passes `limit` (no need to watch further: the
        assertion that follows fails), or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until():
            self.sample()
            if self.growth > limit:
                return
            time.sleep(0.02)  # interval of a bounded poll of an external process's /proc

    def describe(self) -> str:
        return f"RSS {self.start / MIB:.0f} MiB -> peak {(self.start + self.growth) / MIB:.0f} MiB"


@pytest.fixture
def flood_upstream(upstream: RecordingUpstream) -> RecordingUpstream:
    return upstream


# ---- item 1: a keep-alive client that never reads --------------------------------------------------------------

NEVER_READ_LIMIT = 64 * MIB  # the README promises a stall after ~9 MiB of socket buffers


def flood_over(upstream: RecordingUpstream, size: int) -> Callable[[], bool]:
    """For RssWatch.poll: the upstream's flood of `size` bytes went out whole, or made no progress for 0.5 s (it is
    stalled, or was never asked for: queued behind a stalled response)."""
    progress = [0, time.monotonic()]  # bytes sent, and when they last grew

    def over() -> bool:
        now, sent = time.monotonic(), upstream.flood_sent
        if sent != progress[0]:
            progress[:] = [sent, now]
        return sent >= size or now - progress[1] > 0.5

    return over


LARGE_ATTEMPTS = 6
FIRST_DONE = 1.0  # seconds: a 4.4 MB response not stalled is done in ~30 ms on loopback


def test_a_client_that_never_reads_stalls_a_second_large_response(
    running_proxy: ProxyFactory, flood_upstream: RecordingUpstream
) -> None:
    """A 4.4 MB response, then a 300 MB one on the same keep-alive connection, the client reading nothing: the
    proxy must stop reading the upstream after a few MiB, as it does for the 300 MB alone on a fresh connection.
    Whether uvloop's one pause_writing lands after the first exchange ended (and is lost) is a matter of timing:
    up to six fresh connections, each sending the second request once the first is over (a proxy that stalls
    the first, as a bounded one may, is not asked the second). On 22bc614 RSS went 55 -> 347 MiB and the upstream sent
    all 300 MB, on plain Python and compiled alike."""
    proxy = running_proxy(flood_upstream.url)
    first, second = 4_400_000, 300_000_000
    watch = RssWatch(proxy)
    connections: list[Connection] = []
    sent = 0
    try:
        for attempt in range(LARGE_ATTEMPTS):
            conn = small_window_connection(proxy.port)
            connections.append(conn)
            done = len(proxy.request_lines(f"/flood/{first}"))
            flood_upstream.flood_sent = 0
            conn.send(build_request("GET", f"/flood/{first}"))

            # Odd attempts wait for the first exchange's log line (it is over), even ones only for the upstream to
            # have sent it all: the compiled core loses the pause more often after the first wait, plain Python
            # after the second. Bounded polls of the proxy's log and of the upstream's progress.
            def over(by_log: bool = bool(attempt % 2), done: int = done) -> bool:
                if by_log:
                    return len(proxy.request_lines(f"/flood/{first}")) > done
                return flood_upstream.flood_sent >= first

            deadline = time.monotonic() + FIRST_DONE
            while not over() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not over():
                continue  # the first response stalled: this connection is paused, as it should be
            flood_upstream.flood_sent = 0
            conn.send(build_request("GET", f"/flood/{second}"))
            watch.poll(flood_over(flood_upstream, second), timeout=4.0, limit=NEVER_READ_LIMIT)
            sent = max(sent, flood_upstream.flood_sent)
            if watch.growth > NEVER_READ_LIMIT:
                break
    finally:
        for conn in connections:
            conn.close()
    assert watch.growth < NEVER_READ_LIMIT, f"{watch.describe()}; the upstream sent {sent / MIB:.0f} MiB unread"
    assert sent < 64 * MIB, f"the upstream sent {sent / MIB:.0f} MiB to a client that reads nothing"


def test_a_client_that_never_reads_stalls_a_large_response_on_a_fresh_connection(
    running_proxy: ProxyFactory, flood_upstream: RecordingUpstream
) -> None:
    """The control for the test above: the same 300 MB alone stalls after a few MiB (passed on 22bc614 too)."""
    proxy = running_proxy(flood_upstream.url)
    size = 300_000_000
    watch = RssWatch(proxy)
    with small_window_connection(proxy.port) as conn:
        conn.send(build_request("GET", f"/flood/{size}"))
        watch.poll(flood_over(flood_upstream, size), timeout=4.0, limit=NEVER_READ_LIMIT)
        sent = flood_upstream.flood_sent
    assert watch.growth < NEVER_READ_LIMIT, f"{watch.describe()}; the upstream sent {sent / MIB:.0f} MiB unread"
    assert sent < 64 * MIB, f"upstream sent {sent / MIB:.0f} MiB"


SMALL_RESPONSE = 20_000
SMALL_REQUESTS = 5_000  # 100 MB of responses if the proxy never stops reading the upstream
SMALL_LIMIT = 48 * MIB  # a stalled download alone leaves RSS ~16 MiB up on 22bc614 (allocator), so room for a few
SMALL_ATTEMPTS = 4
PACE = 0.002  # seconds between two requests: the client's shape (sent one by one, not pipelined in one write)


async def answer_20kb_each(
    upstream: ScriptedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Every request answered with 20 kB in one write (head and body together, as an agent's JSON answer is)."""
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % SMALL_RESPONSE
    response += b"x" * SMALL_RESPONSE
    while await read_request_head(reader) is not None:
        writer.write(response)
        await writer.drain()
        upstream.record("answered")


def test_a_client_that_never_reads_a_run_of_small_responses_is_stalled(
    running_proxy: ProxyFactory, upstream_loop: LoopThread
) -> None:
    """Thousands of sequential 20 kB GETs from a client that reads nothing: after a few MiB the proxy must stop
    answering (the requests wait unread), not buffer every response in memory. On 22bc614 (pure Python) RSS grew by
    ~1 MiB per 50 requests: 54 -> 103 MiB after 2,600 requests, 441 MiB after 5,000 on each of four connections."""
    upstream = ScriptedUpstream(upstream_loop, lambda r, w: answer_20kb_each(upstream, r, w)).start()
    connections: list[Connection] = []
    sent = 0
    try:
        proxy = running_proxy(upstream.url)
        watch = RssWatch(proxy)
        request = build_request("GET", "/small")
        # Whether the one pause_writing uvloop sends lands inside an exchange is a matter of timing: a few fresh
        # connections, each until the proxy stops answering it (stalled: correct) or RSS passes the bound.
        for _ in range(SMALL_ATTEMPTS):
            conn = small_window_connection(proxy.port)
            connections.append(conn)
            answered_before = -1
            for number in range(1, SMALL_REQUESTS + 1):
                if send_until_blocked(conn.sock, request, wait=0.2) < len(request):
                    break  # the proxy stopped reading this client: what a bounded proxy does
                sent += 1
                if number % 200 == 0:
                    watch.sample()
                    answered = upstream.state.get("answered", 0)
                    if watch.growth > SMALL_LIMIT or answered == answered_before:
                        break  # grown past the bound, or stalled
                    answered_before = answered
                time.sleep(PACE)
            if watch.growth > SMALL_LIMIT:
                break
        watch.sample()
        answered = upstream.state.get("answered", 0)
    finally:
        for conn in connections:
            conn.close()
        upstream.close()
    assert watch.growth < SMALL_LIMIT, f"{watch.describe()} after {answered} of {sent} requests were answered upstream"


# ---- item 2: an endless header, from the client or from the upstream ---------------------------------------------

ENDLESS = 32 * MIB  # the issue fed 64 MiB; past 16 MiB the test has failed already
HEADER_LIMIT = 32 * MIB


ENDLESS_PARTS = {
    "header-value": b"GET /endless HTTP/1.1\r\nHost: proxy.test\r\nX-Endless: ",
    "header-name": b"GET /endless HTTP/1.1\r\nHost: proxy.test\r\nX-Endless-",
    "target": b"GET /endless?q=",
}


@pytest.mark.parametrize(
    "part",
    [
        "header-value",
        "header-name",
        "target",  # passed on 22bc614 too: llhttp hands the target over piece by piece, and each piece is counted
    ],
)
def test_an_endless_request_head_field_is_refused_early(
    running_proxy: ProxyFactory, upstream: RecordingUpstream, part: str
) -> None:
    """One header value (or name, or the request target) fed in 256 KiB pieces, up to 32 MiB: 431 once the head
    passes MAX_HEADER_BYTES (64 KiB), memory bounded, and another client served meanwhile. On 22bc614 the proxy took
    56 MiB of one header value without answering (httptools buffers the unfinished field: RSS +130 MiB)."""
    proxy = running_proxy(upstream.url)
    watch = RssWatch(proxy)
    piece = b"a" * (256 * 1024)
    sent = 0
    with Connection(proxy.port) as conn:
        conn.send(ENDLESS_PARTS[part])
        other = None
        while sent < ENDLESS and not conn.readable():
            took = send_until_blocked(conn.sock, piece, wait=0.5)
            sent += took
            if took < len(piece):
                break  # the proxy stopped reading or closed: fine, the answer is read below
            if other is None and sent >= 4 * MIB:
                other = exchange(proxy.port, build_request("GET", "/meanwhile"))  # another client, meanwhile
            watch.sample()
        watch.sample()
        assert sent < 16 * MIB, f"the proxy took {sent / MIB:.0f} MiB of one {part} without answering"
        response = conn.read_response()
    assert watch.growth < HEADER_LIMIT, watch.describe()
    assert response.status == 431, (response.status, response.ending)
    assert other is None or other.status == 200
    assert exchange(proxy.port, build_request("GET", "/after")).status == 200
    assert upstream.by_target("/endless") == []


LONG_HEAD_SHAPES = {
    # (what comes before the filler, the filler's unit, what ends the head)
    "header-line": (b"HTTP/1.1 200 OK\r\nX-Long: ", b"u", b"\r\n"),
    "reason-phrase": (b"HTTP/1.1 200 ", b"u", b"\r\n"),
    "many-headers": (b"HTTP/1.1 200 OK\r\n", b"X-M: v\r\n", b""),
}


async def answer_with_a_long_head(
    shape: str, size: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A response head `size` bytes long in the given shape, written in 64 KiB pieces, then a 2-byte body."""
    if await read_request_head(reader) is None:
        return
    start, unit, end = LONG_HEAD_SHAPES[shape]
    writer.write(start)
    piece = unit * (65536 // len(unit))
    for _ in range(size // len(piece)):
        writer.write(piece)
        await writer.drain()
    writer.write(end + b"Content-Length: 2\r\n\r\nok")
    await writer.drain()
    await reader.read()  # until the proxy closes


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ("header-line", 1 * MIB),
        ("header-line", 8 * MIB),
        ("header-line", 16 * MIB),
        ("reason-phrase", 8 * MIB),
        ("many-headers", 2 * MIB),
    ],
    ids=["line-1MiB", "line-8MiB", "line-16MiB", "reason-8MiB", "many-headers-2MiB"],
)
def test_an_upstream_response_head_over_the_cap_is_502(
    running_proxy: ProxyFactory, upstream_loop: LoopThread, shape: str, size: int
) -> None:
    """A 1, 8 or 16 MiB response header line (or reason phrase, or 2 MiB of small headers) is the upstream's
    protocol error: 502, memory bounded. On 22bc614 each is relayed to the client whole (a 200 with a 16 MiB header;
    300,000 headers)."""
    upstream = ScriptedUpstream(upstream_loop, lambda r, w: answer_with_a_long_head(shape, size, r, w)).start()
    try:
        proxy = running_proxy(upstream.url)
        watch = RssWatch(proxy)
        response = exchange(proxy.port, build_request("GET", "/long-head"))
        watch.sample()
    finally:
        upstream.close()
    head_size = len(response.reason) + sum(len(name) + len(value) + 4 for name, value in response.headers)
    assert response.status == 502, f"{response.status} with a {head_size / MIB:.1f} MiB head"
    assert watch.growth < max(size // 2, 4 * MIB), watch.describe()


# ---- item 9: inspection memory as a whole ----------------------------------------------------------------------

INSPECT = 1 * MIB  # the default RUM_PROXY_MAX_INSPECT_BYTES
HOLDERS = 96  # slow connections, each holding an inspectable body one byte short of complete: 96 MiB in all
# The process-wide budget the fix adds (issue 17 item 9), made small so the test holds far more than it.
INSPECT_BUDGET_ENV = {"RUM_PROXY_INSPECT_BUDGET_BYTES": str(16 * MIB)}
INSPECT_LIMIT = 48 * MIB


def json_body(size: int, tag: int) -> bytes:
    """A JSON object of exactly `size` bytes whose session_id comes last, after the padding."""
    shell = json.dumps({"tag": tag, "pad": "", "session_id": SESSION_ID}).encode()
    return json.dumps({"tag": tag, "pad": "p" * (size - len(shell)), "session_id": SESSION_ID}).encode()


def test_many_slow_inspected_bodies_are_bounded_as_a_whole(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    """96 connections each send a 1 MiB JSON body (inspectable: at MAX_INSPECT_BYTES) but its last byte, and hold.
    The proxy must not buffer 96 MiB: past a process-wide budget bodies stream uninspected (fail-open), and every
    request still reaches the upstream whole. On 22bc614 RSS grows by all of it (54 -> 160+ MiB)."""
    proxy = running_proxy(upstream.url, extra_env=INSPECT_BUDGET_ENV)
    watch = RssWatch(proxy)
    bodies = [json_body(INSPECT, tag) for tag in range(HOLDERS)]
    connections = []
    try:
        for tag, body in enumerate(bodies):
            conn = Connection(proxy.port)
            connections.append(conn)
            request = build_request("POST", f"/inspect/{tag}", [("Content-Type", "application/json")], body)
            conn.send(request[:-1])
            if tag % 8 == 7:
                watch.sample()
        # Every body but its last byte is sent: wait until the proxy has read all of it off its sockets.
        watch.poll(lambda: loopback_queues_empty(proxy.port), timeout=GUARD, limit=INSPECT_LIMIT)
        held = watch.growth
        for conn, body in zip(connections, bodies, strict=True):
            conn.send(body[-1:])
        answers = [conn.read_response(method="POST") for conn in connections]
    finally:
        for conn in connections:
            conn.close()
    assert held < INSPECT_LIMIT, f"{HOLDERS} slow bodies of {INSPECT / MIB:.0f} MiB: {watch.describe()}"
    assert [answer.status for answer in answers] == [200] * HOLDERS
    assert sorted(seen.body_length for seen in upstream.by_target("/inspect/")) == [INSPECT] * HOLDERS
