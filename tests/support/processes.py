"""Start a subprocess on loopback, wait for an HTTP readiness URL with a bounded poll, always clean up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = Path(sys.executable)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process was given before: the kernel may offer the same
    ephemeral port again as soon as the probe socket closes, and a proxy given one port twice refuses to start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def complete_lines(self) -> list[str]:
        """The output's finished lines: a running process may be half-way through writing the last one."""
        output = self.output()
        return output[: output.rfind("\n") + 1].splitlines()


class ProcessFailed(RuntimeError):
    pass


def wait_until_ready(process: Process, url: str, timeout: float = 30.0, expect: int = 200) -> None:
    """Bounded poll of ``url`` until it answers ``expect``; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise ProcessFailed(f"{process.name} exited with {process.popen.returncode}:\n{process.output()}")
        if http_status(url, timeout=1.0) == expect:
            return
        time.sleep(0.05)  # poll interval of a bounded readiness loop, not a synchronisation sleep
    raise ProcessFailed(f"{process.name} not ready at {url} after {timeout}s:\n{process.output()}")


def stop(process: Process, timeout: float = 10.0) -> None:
    if process.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=timeout)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    *,
    ready_url: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
    inherit_env: bool = True,
) -> Iterator[Process]:
    """Run ``argv`` in its own process group with output in a temp file; kill the group on exit."""
    full_env = {**(os.environ if inherit_env else {}), **(env or {})}
    with tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False) as log_file:
        log_path = Path(log_file.name)
        popen = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=str(cwd or REPO),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = Process(name, popen, log_path)
    try:
        if ready_url is not None:
            wait_until_ready(process, ready_url, timeout=timeout)
        yield process
    finally:
        stop(process)
        log_path.unlink(missing_ok=True)
