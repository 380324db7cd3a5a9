"""The hardening battery's fixtures: the real proxy as a subprocess, real upstreams, and what to read from them.

The battery is black-box: it talks to `python -m proxy` only through RUM_PROXY_* variables, sockets, its JSON log
lines on stdout and its admin server, so it guards whichever forwarding core serves requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.hardening.proxyproc import GUARD, ProxyProcess, proxy_env, start_proxy
from tests.hardening.rawhttp import Response
from tests.hardening.upstreams import LoopThread, RecordingUpstream

__all__ = ["GUARD", "ProxyProcess", "proxy_env", "start_proxy"]

SESSION_ID = "9f3c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
OTHER_ID = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"

# Property and fuzz tests run this many examples; `make fuzz` raises it (the default suite stays fast).
FUZZ_EXAMPLES = int(os.environ.get("RUM_HARDENING_FUZZ_EXAMPLES", "50"))
# The default suite draws the same examples every run (stable CI); `make fuzz` draws new ones each time.
FUZZ_DERANDOMIZE = "RUM_HARDENING_FUZZ_EXAMPLES" not in os.environ


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def running_proxy() -> Iterator[ProxyFactory]:
    """Factory: running_proxy(upstream_url, MAX_CONNECTIONS=2, extra_env={...}) starts a proxy and waits for /readyz;
    every proxy started is SIGTERMed (then killed if it hangs) at the end of the test."""
    started: list[ProxyProcess] = []

    def factory(upstream_url: str, **kwargs: Any) -> ProxyProcess:
        process = start_proxy(upstream_url, **kwargs)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def upstream_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def module_upstream(upstream_loop: LoopThread) -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream(upstream_loop).start()
    yield upstream
    upstream.close()


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> RecordingUpstream:
    """The module's recording upstream, emptied for this test."""
    module_upstream.reset()
    return module_upstream


def assert_error_answer(response: Response, status: int, error: str) -> None:
    """The proxy's own error answer: JSON {error, message, status}, and the connection closed after it."""
    assert response.status == status, (response.status, response.body[:300])
    assert (response.header("content-type") or "").startswith("application/json"), response.headers
    body = response.json()
    assert body["error"] == error, body
    assert body["status"] == status, body
    assert isinstance(body["message"], str) and body["message"], body
    assert (response.header("connection") or "").lower() == "close", response.headers


def assert_no_traceback(proxy: ProxyProcess) -> None:
    output = proxy.output()
    assert "Traceback" not in output, output[-4000:]
    for line in proxy.lines():
        assert "exception" not in line, line
        assert line.get("level") not in ("error", "critical"), line
