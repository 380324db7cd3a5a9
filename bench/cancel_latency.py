"""How soon the upstream call is cancelled after the client goes away: client close -> upstream CancelledError.

A real aiohttp upstream (handler cancellation on) serves a stream that never ends, or holds the request before
answering; a raw client starts the request, closes its socket, and the upstream handler records when its
CancelledError arrived. Both clocks are this process's monotonic clock. Prints median / p90 / max over N tries.

    .venv/bin/python bench/cancel_latency.py --tries 50
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hardening.proxyproc import start_proxy  # noqa: E402
from tests.hardening.rawhttp import Connection, build_request  # noqa: E402
from tests.hardening.upstreams import LoopThread  # noqa: E402


class Upstream:
    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.started = threading.Event()
        self.cancelled_at: list[float] = []
        self.cancelled = threading.Event()
        self.port = 0

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        return await self._wait(response)

    async def _hold(self, request: web.Request) -> web.StreamResponse:
        return await self._wait(web.Response(text="never"))

    async def _wait(self, response: web.StreamResponse) -> web.StreamResponse:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_at.append(time.monotonic())
            self.cancelled.set()
            raise
        return response

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/hold", self._hold)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]

    def start(self) -> Upstream:
        self.loop.run(self._start())
        return self


def measure(port: int, upstream: Upstream, target: str, tries: int) -> list[float]:
    latencies = []
    for _ in range(tries):
        upstream.started.clear()
        upstream.cancelled.clear()
        conn = Connection(port)
        conn.send(build_request("GET", target))
        if not upstream.started.wait(10):
            raise RuntimeError("the request never reached the upstream")
        if target == "/stream":
            conn.read_head()
        closed_at = time.monotonic()
        conn.close()
        if not upstream.cancelled.wait(30):
            raise RuntimeError("the upstream handler was never cancelled")
        latencies.append((upstream.cancelled_at[-1] - closed_at) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=50)
    args = parser.parse_args()
    loop = LoopThread()
    upstream = Upstream(loop).start()
    proxy = start_proxy(f"http://127.0.0.1:{upstream.port}")
    try:
        print(f"client close -> upstream handler cancelled, {args.tries} tries each (ms)")
        print("| when the client leaves | median | p90 | max |\n|---|---:|---:|---:|")
        for label, target in (("mid-stream (response started)", "/stream"), ("before the response", "/hold")):
            values = sorted(measure(proxy.port, upstream, target, args.tries))
            p90 = values[int(len(values) * 0.9) - 1]
            print(f"| {label} | {statistics.median(values):.2f} | {p90:.2f} | {values[-1]:.2f} |")
    finally:
        proxy.stop()
        loop.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
