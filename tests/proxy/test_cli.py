"""The command line: configuration errors, --print-config, JSON logs, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from aiohttp import ClientConnectorError, ClientSession, WSMsgType

from tests.proxy.conftest import SESSION_ID, Upstream
from tests.support.processes import Process, free_port, running
from tests.support.testagent import TestAgent

HANG_GUARD = 20


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_configuration_exits_2_with_one_line_per_problem() -> None:
    result = run_cli(
        env={"RUM_PROXY_UPSTREAM": "http://agent", "RUM_PROXY_PORT": "eighty", "RUM_PROXY_SOURCES": "body,smoke"}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "rum-llmobs-proxy: configuration error: RUM_PROXY_UPSTREAM_URL: is required "
        "(RUM_PROXY_UPSTREAM is set: a typo for RUM_PROXY_UPSTREAM_URL?)",
        "rum-llmobs-proxy: configuration error: RUM_PROXY_PORT: Input should be a valid integer, "
        "unable to parse string as an integer",
        "rum-llmobs-proxy: configuration error: RUM_PROXY_SOURCES: 'smoke' is not a source "
        "(valid: body, query, header, baggage, cookie)",
        "rum-llmobs-proxy: configuration warning: RUM_PROXY_UPSTREAM: not a setting of rum-llmobs-proxy, ignored "
        "(did you mean RUM_PROXY_UPSTREAM_URL?)",
    ]


def test_print_config_shows_effective_settings() -> None:
    result = run_cli(
        "--print-config", env={"RUM_PROXY_UPSTREAM_URL": "http://agent:8000", "RUM_PROXY_SOURCES": "cookie"}
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["upstream_url"] == "http://agent:8000/"
    assert config["sources"] == ["cookie"]
    assert config["port"] == 8080 and config["admin_port"] == 8081


def test_help_lists_every_setting() -> None:
    from config.loader import env_name
    from config.settings import Settings

    result = run_cli("--help", env={})
    assert result.returncode == 0
    for field in Settings.model_fields:
        assert env_name(field) in result.stdout


def stop_and_read_json_logs(process: Process) -> list[dict[str, Any]]:
    """SIGTERM the proxy, require a clean exit (0), and return its JSON log lines."""
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=HANG_GUARD) == 0
    return [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]


@contextlib.contextmanager
def proxy_process(upstream: Upstream, **extra: str) -> Iterator[tuple[Process, int, int]]:
    """The real proxy (`python -m proxy`) in front of `upstream`; yields it with its proxy and admin ports."""
    port, admin_port = free_port(), free_port()
    env = {
        "RUM_PROXY_UPSTREAM_URL": upstream.url,
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_PORT": str(port),
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_PORT": str(admin_port),
        "DD_TRACE_ENABLED": "false",
        **extra,
    }
    argv = [sys.executable, "-m", "proxy"]
    with running("proxy", argv, env=env, ready_url=f"http://127.0.0.1:{admin_port}/readyz") as process:
        yield process, port, admin_port


async def test_json_log_line_per_request(upstream: Upstream) -> None:
    with proxy_process(upstream) as (process, port, _):
        async with ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{port}/chat?secret=1", json={"session_id": SESSION_ID}) as r:
                assert r.status == 200
        lines = stop_and_read_json_logs(process)
    request_lines = [line for line in lines if line["event"] == "request"]
    assert len(request_lines) == 1
    line = request_lines[0]
    assert line["method"] == "POST"
    assert line["path"] == "/chat"  # never the query string, never the body
    assert line["status"] == 200
    assert line["session_source"] == "body"
    assert line["session_id"] == SESSION_ID
    assert line["level"] == "info"
    assert isinstance(line["duration_ms"], float)
    assert [line["event"] for line in lines if line["event"] in {"listening", "draining", "stopped"}] == [
        "listening",
        "draining",
        "stopped",
    ]


async def test_sigterm_drains_in_flight_work_then_exits_0(upstream: Upstream) -> None:
    with proxy_process(upstream, RUM_PROXY_SHUTDOWN_GRACE_SECONDS="15") as (process, port, admin_port):
        async with asyncio.timeout(HANG_GUARD), ClientSession() as client:
            in_flight = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/hold"))
            await upstream.entered.wait()
            ws = await client.ws_connect(f"http://127.0.0.1:{port}/ws")

            process.popen.send_signal(signal.SIGTERM)

            closing = await ws.receive()
            assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
            async with client.get(f"http://127.0.0.1:{admin_port}/readyz") as ready:
                assert ready.status == 503
            try:
                async with ClientSession() as fresh:
                    await fresh.get(f"http://127.0.0.1:{port}/plain")
                refused = False
            except ClientConnectorError:
                refused = True
            assert refused, "a draining proxy must not accept new connections"

            upstream.release.set()
            response = await in_flight
            assert response.status == 200
            assert await response.text() == "released"
        assert process.popen.wait(timeout=HANG_GUARD) == 0


async def test_grace_period_ends_stuck_requests(upstream: Upstream) -> None:
    with proxy_process(upstream, RUM_PROXY_SHUTDOWN_GRACE_SECONDS="0.5") as (process, port, admin_port):
        async with asyncio.timeout(HANG_GUARD), ClientSession() as client:
            in_flight = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/hold"))
            await upstream.entered.wait()
            process.popen.send_signal(signal.SIGTERM)
            await upstream.cancelled.wait()  # the abandoned upstream call is stopped, not left running
            try:
                await in_flight
            except Exception as exc:  # noqa: BLE001 - any client-side failure is the expected outcome
                outcome: Any = exc
            else:
                outcome = None
            assert outcome is not None
        assert process.popen.wait(timeout=HANG_GUARD) == 0


async def request_line_and_forwarded_headers(upstream: Upstream, **env: str) -> tuple[dict[str, Any], dict[str, str]]:
    """One request with a session through a proxy process: its `request` log line, and what the upstream got."""
    with proxy_process(upstream, **env) as (process, port, _):
        async with ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{port}/chat", params={"session_id": SESSION_ID}) as response:
                assert response.status == 200
        lines = stop_and_read_json_logs(process)
    line = next(line for line in lines if line.get("event") == "request")
    return line, {name.lower(): value for name, value in upstream.last["headers"]}


async def test_log_line_carries_the_forwarded_trace_id(upstream: Upstream) -> None:
    """By default the proxy starts no span: its request line names the trace it forwarded, so logs link to it."""
    line, forwarded = await request_line_and_forwarded_headers(upstream)
    # 128-bit trace ids are logged in hex, as ddtrace does; x-datadog-trace-id carries the low 64 bits in decimal.
    assert int(line["dd.trace_id"], 16) & (2**64 - 1) == int(forwarded["x-datadog-trace-id"])
    assert forwarded["x-datadog-parent-id"] == "0"  # no proxy span: the agent's first span is the root
    assert "dd.span_id" not in line


async def test_log_line_carries_the_proxy_span_ids_with_the_apm_span(upstream: Upstream, test_agent: TestAgent) -> None:
    """With RUM_PROXY_APM_SPAN the request line has dd.trace_id/dd.span_id of the proxy span that went upstream."""
    env = {"DD_TRACE_ENABLED": "true", "DD_TRACE_AGENT_URL": test_agent.url, "RUM_PROXY_APM_SPAN": "true"}
    line, forwarded = await request_line_and_forwarded_headers(upstream, **env)
    assert int(line["dd.trace_id"], 16) & (2**64 - 1) == int(forwarded["x-datadog-trace-id"])
    assert int(line["dd.span_id"]) == int(forwarded["x-datadog-parent-id"])
    assert "_dd.p.llmobs_sid=" + SESSION_ID in forwarded["x-datadog-tags"]
