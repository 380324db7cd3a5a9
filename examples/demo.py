"""`make demo`: an example upstream with the proxy in front; prints a curl command that shows the forwarded ID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_PORT = int(os.environ.get("DEMO_UPSTREAM_PORT", "8000"))
PROXY_PORT = int(os.environ.get("DEMO_PROXY_PORT", "8080"))
ADMIN_PORT = int(os.environ.get("DEMO_ADMIN_PORT", "8081"))
SESSION_ID = "3f8a2c1e-9b4d-4e6f-a1b2-c3d4e5f60718"


def wait_ready(url: str, process: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"demo: {process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL we built
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"demo: {url} did not become ready")


def main() -> int:
    env = {
        **os.environ,
        "RUM_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{UPSTREAM_PORT}",
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_PORT": str(PROXY_PORT),
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_PORT": str(ADMIN_PORT),
        "RUM_PROXY_LOG_FORMAT": os.environ.get("RUM_PROXY_LOG_FORMAT", "console"),
        "DD_TRACE_ENABLED": os.environ.get("DD_TRACE_ENABLED", "false"),
    }
    upstream = subprocess.Popen(  # noqa: S603
        [sys.executable, str(ROOT / "examples" / "echo_upstream.py"), "--port", str(UPSTREAM_PORT)]
    )
    proxy = subprocess.Popen([sys.executable, "-m", "proxy"], env=env, cwd=ROOT)  # noqa: S603
    try:
        wait_ready(f"http://127.0.0.1:{UPSTREAM_PORT}/", upstream)
        wait_ready(f"http://127.0.0.1:{ADMIN_PORT}/readyz", proxy)
        print(
            f"""
rum-llmobs-proxy demo
  upstream (echoes what it receives): http://127.0.0.1:{UPSTREAM_PORT}
  proxy:                              http://127.0.0.1:{PROXY_PORT}
  admin:                              http://127.0.0.1:{ADMIN_PORT}/readyz  /metrics

Send a session ID the way the Datadog guide's frontend does, and see what the agent receives:

  curl -s http://127.0.0.1:{PROXY_PORT}/chat -H 'Content-Type: application/json' \\
       -d '{{"session_id": "{SESSION_ID}", "message": "hello"}}'

or only the RUM SDK's cookie (no frontend change):

  curl -s http://127.0.0.1:{PROXY_PORT}/chat \\
       -b "_dd_s=rum=1&id={SESSION_ID}&created=$(date +%s000)&expire=$(( $(date +%s) + 900 ))000"

Look for "received_session_id" and the baggage header. Ctrl-C stops everything.
""",
            flush=True,
        )
        proxy.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        for process in (proxy, upstream):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (proxy, upstream):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
