"""Every line the proxy writes is in the configured format, ddtrace's own lines included; no Agent is one warning."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.proxy.conftest import Upstream
from tests.proxy.test_cli import HANG_GUARD, proxy_process
from tests.support.processes import Process, free_port

FORCED_SPAN = Path(__file__).parent / "forced_span"


def wait_for_line(process: Process, event: str, level: str | None = None) -> None:
    """Bounded poll of the proxy's output until a JSON line with this event (prefix) and level appears."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        lines = [json.loads(line) for line in process.complete_lines() if line.startswith("{")]
        if any(str(line["event"]).startswith(event) and level in (None, line["level"]) for line in lines):
            return
        assert process.popen.poll() is None, process.output()
        assert time.monotonic() < deadline, f"no {event!r} line after {HANG_GUARD}s:\n{process.output()}"
        time.sleep(0.05)  # poll interval of a bounded wait on another process's output


def parse_every_line(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == [], "lines outside the JSON renderer (stdout and stderr)"
    return [json.loads(line) for line in lines]


def test_without_an_agent_ddtrace_says_so_once_and_every_line_is_json(upstream: Upstream) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    env = {
        "DD_TRACE_ENABLED": "true",
        "DD_TRACE_AGENT_URL": nothing_listens,
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.1",
        "DD_TRACE_LOGGING_RATE": "0",  # ddtrace's own once-a-minute limit off: every failed send is logged
        "PYTHONPATH": str(FORCED_SPAN),  # spans from ddtrace's API, whether or not requests make any
        "RUM_PROXY_LOG_LEVEL": "debug",
        "RUM_PROXY_LOG_FORMAT": "json",
        "RUM_PROXY_SOURCE": "cookie",  # a typo: a JSON warning too
    }
    with proxy_process(upstream, **env) as (process, _, _):
        wait_for_line(process, "datadog_agent_unreachable")
        wait_for_line(process, "failed to send, dropping", level="debug")  # later failures come, quietly
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=HANG_GUARD) == 0, process.output()[-6000:]
        lines = parse_every_line(process.output())

    unreachable = [line for line in lines if line["event"] == "datadog_agent_unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["level"] == "warning"
    assert unreachable[0]["url"] == nothing_listens
    assert "DD_TRACE_AGENT_URL" in unreachable[0]["hint"] and "RUM_PROXY_APM_SPAN=false" in unreachable[0]["hint"]
    failed_sends = [line for line in lines if str(line["event"]).startswith("failed to send, dropping")]
    assert failed_sends, "ddtrace kept failing after the warning"
    assert {line["level"] for line in failed_sends} == {"debug"}
    assert {line["logger"] for line in failed_sends} == {"ddtrace.internal.writer.writer"}
    assert any(str(line["event"]).startswith("Waiting 5 seconds for tracer to finish") for line in lines)
    assert [line for line in lines if line["level"] == "error"] == []
    [typo] = [line for line in lines if line["event"] == "unknown_variable"]
    assert (typo["variable"], typo["did_you_mean"], typo["level"]) == (
        "RUM_PROXY_SOURCE",
        "RUM_PROXY_SOURCES",
        "warning",
    )


def test_at_info_level_only_the_one_warning_shows(upstream: Upstream) -> None:
    env = {
        "DD_TRACE_ENABLED": "true",
        "DD_TRACE_AGENT_URL": f"http://127.0.0.1:{free_port()}",
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.1",
        "DD_TRACE_LOGGING_RATE": "0",
        "PYTHONPATH": str(FORCED_SPAN),
        "RUM_PROXY_LOG_FORMAT": "json",
    }
    with proxy_process(upstream, **env) as (process, _, _):
        wait_for_line(process, "datadog_agent_unreachable")
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=HANG_GUARD) == 0  # the exit flush fails again, silently
        lines = parse_every_line(process.output())
    assert [line["event"] for line in lines if line["level"] != "info"] == ["datadog_agent_unreachable"]
