"""An aiohttp server-sent-events upstream for bench/run.py: every stream gets one event per --interval seconds.

GET /healthz answers 200 at once (readiness); any other GET is an endless event stream until the client leaves.

Run: python bench/sse_upstream.py --port 8091 [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

INTERVAL = web.AppKey("interval", float)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    count = 0
    while True:
        # A token-sized event, like an LLM stream's.
        await response.write(b'data: {"delta": "tok", "n": %d}\n\n' % count)
        count += 1
        await asyncio.sleep(request.app[INTERVAL])  # the stream's shape: one event per interval


def create_app(interval: float) -> web.Application:
    app = web.Application()
    app[INTERVAL] = interval
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", events)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between events of one stream")
    args = parser.parse_args()
    web.run_app(create_app(args.interval), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
