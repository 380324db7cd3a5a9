"""Instructions per request, counted by valgrind's callgrind: a figure the machine's load does not move.

The proxy (the source tree given, compiled or not) runs under `valgrind --tool=callgrind --instr-atstart=no` in front
of nginx answering `return 200`; after it is ready and has served a warm-up, instrumentation is switched on for
`--requests` keep-alive 300 B JSON POSTs with the session ID in the body (bench/run.py's json300, one connection,
one request at a time), then off. Instructions counted ÷ requests is the proxy's cost of a request, user space
only (the kernel's share of a loopback write is not counted). Two trees in one run give an A/B:

    .venv/bin/python bench/instructions.py --tree /tmp/before --tree . [--requests 2000] [--keep DIR]

`--keep DIR` leaves each run's callgrind output in DIR, for `callgrind_annotate --inclusive=yes --tree=calling`.

Needs valgrind and nginx (Debian: valgrind nginx-light). Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BODY = json.dumps({"message": "x" * 250, "session_id": "9f3c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6"}).encode()
REQUEST = b"POST /chat HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
NGINX = """worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {dir}/body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send(port: int, count: int) -> None:
    """`count` requests on one keep-alive connection, each answered (`ok`, Content-Length 2) before the next."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buffer = b""
        for _ in range(count):
            sock.sendall(REQUEST)
            while (end := buffer.find(b"\r\n\r\n")) < 0 or len(buffer) < end + 6:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the proxy closed the connection")
                buffer += chunk
            head = buffer[:end].lower()
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:80]!r}")
            buffer = buffer[end + 6 :]


def wait_ready(admin_port: int, process: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)  # interval of a bounded poll of a process starting under valgrind
    raise RuntimeError("the proxy was not ready in time")


def measure(tree: Path, upstream: int, requests: int, work: Path) -> tuple[int, str, Path]:
    port, admin = free_port(), free_port()
    out = work / f"callgrind.{port}.out"
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("RUM_PROXY_")},
        "RUM_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{upstream}",
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_PORT": str(port),
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_PORT": str(admin),
        "RUM_PROXY_LOG_FORMAT": "json",
        "DD_TRACE_ENABLED": "false",
    }
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    with (work / f"proxy.{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, sys.executable, "-m", "proxy"], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(admin, process)
        send(port, 200)  # warm-up: the pool, the caches, the first log lines
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
        send(port, requests)
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True)
    finally:
        process.terminate()
        process.wait(timeout=120)
    totals = subprocess.run(["callgrind_annotate", str(out)], check=True, capture_output=True, text=True).stdout
    match = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", totals)
    if match is None:
        raise RuntimeError("callgrind_annotate printed no total")
    version = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], cwd=tree, env=env, capture_output=True, text=True
    ).stdout.strip()
    return int(match.group(1).replace(",", "")), version, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", type=Path, help="source tree to run (repeat for an A/B)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--keep", type=Path, help="keep the callgrind output files in this directory")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "nginx"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (Debian: valgrind nginx-light)")
    trees = args.tree or [Path(__file__).resolve().parent.parent]
    with tempfile.TemporaryDirectory(prefix="rum-proxy-instructions-") as directory:
        work = Path(directory)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        upstream = free_port()
        (work / "nginx.conf").write_text(NGINX.format(dir=work, port=upstream))
        nginx = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf")], stderr=subprocess.DEVNULL)
        try:
            for tree in trees:
                total, version, out = measure(tree.resolve(), upstream, args.requests, work)
                print(f"{total / args.requests:10,.0f} instructions/request  {tree}  ({version})")
                if args.keep is not None:
                    print(f"{'':10}  callgrind output: {out}")
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
