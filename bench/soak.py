"""Soak: minutes of mixed traffic through one proxy process while its RSS and open file descriptors are sampled.

Traffic (client threads, all on loopback): small JSON POSTs carrying a session ID on keep-alive connections,
1 MiB uploads and 4 MiB downloads, SSE streams read to the end, WebSockets (a few messages, then a close),
clients that abort a stream after its first event, and upstream errors (500s, and bodies the upstream cuts).
RSS and FDs are sampled every --interval seconds; "flat" compares the mean of the first and last quartile of
samples. Writes bench/RESULTS-soak.md with --write.

    .venv/bin/python bench/soak.py --duration 180 --write      # make soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hardening.proxyproc import ProxyProcess, start_proxy  # noqa: E402
from tests.hardening.rawhttp import Connection, build_request, websocket_connect, ws_receive, ws_send  # noqa: E402
from tests.hardening.upstreams import LoopThread  # noqa: E402

SESSION_ID = "9f3c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
MIB = 1024 * 1024
BLOCK = bytes(range(256)) * 256


async def echo(request: web.Request) -> web.Response:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.json_response({"received": size})


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["size"])
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    for start in range(0, size, len(BLOCK)):
        await response.write(BLOCK[: size - start])
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index in range(5):
        await response.write(f"data: event {index}\n\n".encode())
        await asyncio.sleep(0.02)  # the shape of a token stream
    await response.write_eof()
    return response


async def error(_: web.Request) -> web.Response:
    return web.Response(status=500, text="agent failed")


async def cut(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 100_000
    await response.prepare(request)
    await response.write(b"x" * 1000)
    assert request.transport is not None
    request.transport.abort()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
    return ws


def start_upstream(loop: LoopThread) -> int:
    async def start() -> int:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_post("/echo", echo)
        app.router.add_get("/download/{size:\\d+}", download)
        app.router.add_get("/sse", sse)
        app.router.add_get("/error", error)
        app.router.add_get("/cut", cut)
        app.router.add_get("/ws", websocket)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    return loop.run(start())


class Load:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.outcomes[what] += 1

    def loop(self, name: str, action: Callable[[], str]) -> None:
        while not self.stop.is_set():
            try:
                self.count(f"{name}:{action()}")
            except OSError as exc:
                self.count(f"{name}:error:{type(exc).__name__}")

    def small(self) -> str:
        body = json.dumps({"session_id": SESSION_ID, "message": "x" * 200}).encode()
        with Connection(self.port) as conn:
            for _ in range(20):
                conn.send(build_request("POST", "/echo", [("Content-Type", "application/json")], body))
                if conn.read_response(method="POST").status != 200:
                    return "bad"
        return "ok"

    def large(self) -> str:
        with Connection(self.port) as conn:
            conn.send(build_request("POST", "/echo", [("Content-Type", "application/octet-stream")], BLOCK * 16))
            up = conn.read_response(method="POST")
            conn.send(build_request("GET", f"/download/{4 * MIB}"))
            down = conn.read_response(sink=lambda _: None)
        return "ok" if up.status == 200 and down.status == 200 and down.body_length == 4 * MIB else "bad"

    def stream(self) -> str:
        with Connection(self.port) as conn:
            conn.send(build_request("GET", "/sse"))
            response = conn.read_response()
        return "ok" if response.complete and response.body.count(b"data:") == 5 else "bad"

    def abort(self) -> str:
        conn = Connection(self.port)
        conn.send(build_request("GET", "/sse"))
        conn.read_head()
        conn.abort()
        return "ok"

    def errors(self) -> str:
        with Connection(self.port) as conn:
            conn.send(build_request("GET", "/error"))
            failed = conn.read_response()
        with Connection(self.port) as conn:
            conn.send(build_request("GET", "/cut"))
            cut = conn.read_response()
        return "ok" if failed.status == 500 and not cut.complete else "bad"

    def websocket(self) -> str:
        conn, head = websocket_connect(self.port, "/ws")
        try:
            if head.status != 101:
                return "bad"
            for index in range(5):
                ws_send(conn, f"m{index}".encode())
                if ws_receive(conn) != (0x1, f"echo:m{index}".encode()):
                    return "bad"
            ws_send(conn, (1000).to_bytes(2, "big"), opcode=0x8)
            closing = ws_receive(conn)
            return "ok" if closing is not None and closing[0] == 0x8 else "bad"
        finally:
            conn.close()


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def quartiles(values: list[int]) -> tuple[float, float]:
    quarter = max(1, len(values) // 4)
    return statistics.mean(values[:quarter]), statistics.mean(values[-quarter:])


def soak(proxy: ProxyProcess, duration: float, interval: float) -> tuple[list[tuple[float, int, int]], Counter[str]]:
    load = Load(proxy.port)
    actions = {
        "small": (load.small, 2),
        "large": (load.large, 1),
        "sse": (load.stream, 2),
        "abort": (load.abort, 1),
        "errors": (load.errors, 1),
        "websocket": (load.websocket, 1),
    }
    threads = [
        threading.Thread(target=load.loop, args=(name, action), daemon=True)
        for name, (action, copies) in actions.items()
        for _ in range(copies)
    ]
    for thread in threads:
        thread.start()
    samples = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < duration:
            samples.append((elapsed, proxy.rss_bytes(), proxy.fd_count()))
            print(f"{elapsed:6.0f}s  rss {samples[-1][1] / MIB:6.1f} MiB  fds {samples[-1][2]:4d}", flush=True)
            time.sleep(interval)  # the sampling interval
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)
    return samples, load.outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS-soak.md")
    args = parser.parse_args()
    loop = LoopThread()
    upstream_port = start_upstream(loop)
    proxy = start_proxy(f"http://127.0.0.1:{upstream_port}", LOG_LEVEL="warning")
    try:
        samples, outcomes = soak(proxy, args.duration, args.interval)
    finally:
        exit_code = proxy.stop()
        loop.stop()
    rss_first, rss_last = quartiles([rss for _, rss, _ in samples])
    fd_first, fd_last = quartiles([fds for _, _, fds in samples])
    requests = sum(outcomes.values())
    report = "\n".join(
        [
            "# Soak results",
            "",
            f"`bench/soak.py --duration {args.duration:.0f}` at commit {commit()}: one proxy process"
            " (log level warning, tracing off),",
            f"{len(samples)} samples every {args.interval:.0f} s; mean of the first vs the last quartile of samples.",
            "",
            "| | first quartile | last quartile | change |",
            "|---|---:|---:|---:|",
            f"| RSS | {rss_first / MIB:.1f} MiB | {rss_last / MIB:.1f} MiB | {(rss_last - rss_first) / MIB:+.1f} MiB |",
            f"| open FDs | {fd_first:.1f} | {fd_last:.1f} | {fd_last - fd_first:+.1f} |",
            "",
            f"Highest sampled RSS {max(rss for _, rss, _ in samples) / MIB:.1f} MiB, most FDs"
            f" {max(fds for _, _, fds in samples)}; exit code after SIGTERM {exit_code}.",
            "",
            f"Client actions completed ({requests}; each is several requests):",
            "",
            "| action | outcome | count |",
            "|---|---|---:|",
            *[
                f"| {key.split(':', 1)[0]} | {key.split(':', 1)[1]} | {count} |"
                for key, count in sorted(outcomes.items())
            ],
            "",
        ]
    )
    print(report)
    if args.write:
        (ROOT / "bench" / "RESULTS-soak.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
