"""The real proxy (`python -m proxy`) as a subprocess on free loopback ports, and what can be read from it:
JSON log lines (stdout, unbuffered), the admin server (/readyz, /metrics), RSS and open FDs from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import REPO, free_port

# The checkout whose `proxy` package is started (default: this one); point it elsewhere to run the battery against
# another core, e.g. RUM_HARDENING_PROXY_ROOT=/tmp/old-core (its dependencies must be installed in this venv).
PROXY_ROOT = Path(os.environ.get("RUM_HARDENING_PROXY_ROOT", str(REPO)))
READY_TIMEOUT = 20.0
GUARD = 10.0


class ProxyProcess:
    """One `python -m proxy` process on free loopback ports, with its stdout (JSON lines) and stderr in files."""

    def __init__(self, upstream_url: str, env: dict[str, str], *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.admin_port = free_port()
        self.env = env
        base = {key: value for key, value in os.environ.items() if not key.startswith("RUM_PROXY_")}
        full_env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "DD_TRACE_ENABLED": "false",
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
            "DD_REMOTE_CONFIGURATION_ENABLED": "false",
            "RUM_PROXY_UPSTREAM_URL": upstream_url,
            "RUM_PROXY_HOST": "127.0.0.1",
            "RUM_PROXY_PORT": str(self.port),
            "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
            "RUM_PROXY_ADMIN_PORT": str(self.admin_port),
            "RUM_PROXY_LOG_FORMAT": "json",
            **env,
        }
        self.directory = Path(tempfile.mkdtemp(prefix="rum-proxy-hardening-"))
        self.stdout_path, self.stderr_path = self.directory / "stdout", self.directory / "stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "proxy"],
                env=full_env,
                cwd=str(PROXY_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = READY_TIMEOUT) -> ProxyProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"proxy exited with {self.popen.returncode}:\n{self.output()}")
            if self.readyz() == 200:
                return self
            time.sleep(0.02)  # interval of a bounded readiness poll of an external process
        raise AssertionError(f"proxy not ready after {timeout}s:\n{self.output()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM (SIGKILL if it hangs), then remove its output files; the exit code."""
        try:
            code = self.terminate(timeout=GUARD)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.popen.returncode
        shutil.rmtree(self.directory, ignore_errors=True)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=GUARD)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    # --- what it wrote -----------------------------------------------------------------------------------------
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (stdout is unbuffered)."""
        parsed = []
        for line in self.stdout().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    parsed.append(json.loads(line))
        return parsed

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    def request_lines(self, path: str) -> list[dict[str, Any]]:
        return [line for line in self.events("request") if line.get("path") == path]

    def wait_for_lines(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = GUARD, what: str = "log lines"
    ) -> list[dict[str, Any]]:
        """Bounded poll of the log: a line is written right after the response, not necessarily before it."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if predicate(lines) or time.monotonic() > deadline:
                if not predicate(lines):
                    raise AssertionError(f"{what} not written within {timeout}s:\n{self.stdout()[-4000:]}")
                return lines
            time.sleep(0.02)  # interval of a bounded poll of an external process's output

    def wait_for_request_line(self, path: str, timeout: float = GUARD) -> dict[str, Any]:
        self.wait_for_lines(lambda _: bool(self.request_lines(path)), timeout, f"request line for {path}")
        return self.request_lines(path)[0]

    # --- admin server ------------------------------------------------------------------------------------------
    def admin(self, path: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (OSError, ValueError):
            return None, b""

    def readyz(self) -> int | None:
        return self.admin("/readyz", timeout=1.0)[0]

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.admin("/metrics")
        assert status == 200, f"/metrics answered {status}"
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, got), value in self.metrics().items() if sample == name and wanted <= got)

    # --- resources ---------------------------------------------------------------------------------------------
    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def rss_bytes(self) -> int:
        return self._status_kib("VmRSS")

    def peak_rss_bytes(self) -> int:
        """The highest RSS the process has had (VmHWM)."""
        return self._status_kib("VmHWM")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def proxy_env(**settings_: object) -> dict[str, str]:
    """RUM_PROXY_<NAME> variables from keyword arguments: proxy_env(MAX_CONNECTIONS=2)."""
    return {
        f"RUM_PROXY_{name}": str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in settings_.items()
    }


def start_proxy(
    upstream_url: str, *, extra_env: dict[str, str] | None = None, port: int | None = None, **settings_: object
) -> ProxyProcess:
    return ProxyProcess(upstream_url, {**proxy_env(**settings_), **(extra_env or {})}, port=port).wait_ready()


def loopback_queues_empty(port: int) -> bool:
    """No byte waits in a loopback TCP queue towards `port`: every client's send queue is empty, and so is the
    receive queue of every connection accepted on it (/proc/net/tcp, tx_queue:rx_queue in hex). Polled, it tells
    when the proxy has read everything its clients sent (uvloop hands what it reads to the protocol at once)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        tx_queue, rx_queue = (int(value, 16) for value in fields[4].split(":"))
        if (local == port and rx_queue) or (remote == port and tx_queue):
            return False
    return True


def wait_read_everything(port: int, timeout: float = GUARD) -> None:
    """Bounded poll until the proxy listening on `port` has read every byte its clients sent."""
    deadline = time.monotonic() + timeout
    while not loopback_queues_empty(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy on port {port} left client bytes unread for {timeout}s")
        time.sleep(0.005)  # interval of a bounded poll of the kernel's socket queues
