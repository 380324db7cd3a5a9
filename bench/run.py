"""Throughput of rum-llmobs-proxy against baselines measured in the same run: direct and nginx as proxy.

All traffic stays on loopback; every run is bounded by --duration. Needs nginx and wrk (Debian packages).
Writes a Markdown table to stdout and, with --write, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SESSION_ID = "3f8a2c1e-9b4d-4e6f-a1b2-c3d4e5f60718"
# A 300-byte JSON chat request carrying the session ID, as the Datadog guide's frontend sends it.
BODY = f'{{"session_id": "{SESSION_ID}", "message": "{"x" * 240}"}}'.encode()

WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body   = [[{BODY.decode()}]]
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    popen = subprocess.Popen(  # noqa: S603
        argv,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield popen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{upstream};
    location / {{ default_type application/json; return 200 '{{"answer": "ok"}}'; }}
  }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off;
    }}
  }}
}}
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    rss_mb: float | None = None


def wrk(url: str, duration: int, connections: int, script: Path) -> tuple[float, float, float]:
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def latency(pct: str) -> float:
        value, unit = re.search(rf"{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed responses\n{out}")
    return rps, latency("50"), latency("99")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (apt-get install -y nginx-light wrk)")

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp)
        script = prefix / "post.lua"
        script.write_text(WRK_SCRIPT)
        upstream, nginx_proxy = free_port(), free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, upstream=upstream, proxy=nginx_proxy))
        with process(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]):
            wait_http(f"http://127.0.0.1:{upstream}/")
            wait_http(f"http://127.0.0.1:{nginx_proxy}/")
            for name, url in (("direct", upstream), ("nginx proxy", nginx_proxy)):
                results.append(
                    Result(name, *wrk(f"http://127.0.0.1:{url}/chat", args.duration, args.connections, script))
                )
            variants = {
                "rum-llmobs-proxy (tracing off, logs on)": {"DD_TRACE_ENABLED": "false"},
                "rum-llmobs-proxy (tracing off, log level warning)": {
                    "DD_TRACE_ENABLED": "false",
                    "RUM_PROXY_LOG_LEVEL": "warning",
                },
            }
            for name, extra in variants.items():
                port, admin = free_port(), free_port()
                env = {
                    "RUM_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{upstream}",
                    "RUM_PROXY_HOST": "127.0.0.1",
                    "RUM_PROXY_PORT": str(port),
                    "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
                    "RUM_PROXY_ADMIN_PORT": str(admin),
                    "RUM_PROXY_LOG_FORMAT": "json",
                    **extra,
                }
                with process([sys.executable, "-m", "proxy"], env=env) as proxy:
                    wait_http(f"http://127.0.0.1:{admin}/readyz")
                    measured = wrk(f"http://127.0.0.1:{port}/chat", args.duration, args.connections, script)
                    results.append(Result(name, *measured, rss_mb=rss_mb(proxy.pid)))

    nginx_rps = next(r.rps for r in results if r.name == "nginx proxy")
    lines = [
        f"wrk -t1 -c{args.connections} -d{args.duration}s, {len(BODY)} B JSON POST carrying session_id, "
        f"nginx `return 200` upstream, one process each, {os.cpu_count()} cores.",
        "",
        "| target | req/s | × nginx proxy | p50 ms | p99 ms | RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "–"
        lines.append(f"| {r.name} | {r.rps:,.0f} | {r.rps / nginx_rps:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {rss} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        (ROOT / "bench" / "RESULTS.md").write_text(
            "# Proxy throughput\n\nRerun: `make bench` (or `.venv/bin/python bench/run.py --write`).\n\n"
            f"Measured {time.strftime('%Y-%m-%d')}:\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
