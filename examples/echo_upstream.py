"""A tiny upstream that answers every request with what it received: shows what the proxy forwards."""

from __future__ import annotations

import argparse

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    forwarded = {name: value for name, value in request.headers.items() if name.lower() != "cookie"}
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "received_session_id": request.headers.get("x-rum-session-id"),
            "headers": forwarded,
            "body": body.decode(errors="replace"),
        }
    )


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None)
