"""`examples/demo/run.py` end to end: start it, chat in Chromium, see the same session in both columns, Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import REPO, VENV_PYTHON, free_port

from .cdp import connect
from .conftest import ensure_browser_tools

pytestmark = pytest.mark.integration

SCREENSHOT = REPO / "docs" / "demo.png"
READY = re.compile(r"demo is running: open\s+(http://\S+)")
STARTED = re.compile(r"demo: started (\S+) \(pid (\d+)\)")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_for_output(log: Path, popen: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if match := pattern.search(output):
            return match.group(1)
        if popen.poll() is not None:
            pytest.fail(f"demo exited with {popen.returncode}:\n{output}")
        time.sleep(0.1)  # poll interval while the demo starts its processes
    pytest.fail(f"demo not ready after {timeout}s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def demo_running(log: Path) -> Iterator[subprocess.Popen[bytes]]:
    ports = ("DEMO_PORT", "DEMO_ADMIN_PORT", "DEMO_CONSOLE_PORT", "DEMO_AGENT_PORT", "DEMO_LLM_PORT")
    env = {**os.environ, **{name: str(free_port()) for name in (*ports, "DEMO_TEST_AGENT_PORT")}}
    env.pop("DD_API_KEY", None)
    env.pop("DEMO_LLM", None)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [str(VENV_PYTHON), str(REPO / "examples" / "demo" / "run.py")],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield popen
    finally:
        if popen.poll() is None:  # the test failed before its own SIGINT: clean up the demo and its children
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        for _, pid in STARTED.findall(log.read_text(errors="replace")):
            if alive(int(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)


async def test_demo_shows_the_rum_session_on_the_llmobs_spans_and_stops_on_ctrl_c(browser_ws_url: str) -> None:
    ensure_browser_tools()
    with tempfile.TemporaryDirectory(prefix="demo-test-") as tmp:
        log = Path(tmp) / "demo.log"
        with demo_running(log) as demo:
            url = wait_for_output(log, demo, READY, timeout=120)
            async with connect(browser_ws_url) as browser, browser.new_page(width=1200, height=440) as page:
                await page.goto(url)
                await page.wait_for("window.demo && window.demo.ready")
                session_id = await page.wait_for("DD_RUM.getInternalContext()?.session_id")
                await page.evaluate(
                    "document.querySelector('#message').value = 'How long does shipping take?';"
                    "document.querySelector('#send').click(); true"
                )
                await page.wait_for("window.demo.chats.length && window.demo.chats.at(-1).done")
                await page.wait_for("!!document.querySelector('#spans-summary.ok')", within=60)
                # Hide the tab for an instant, as a user switching tabs would: the SDK flushes its RUM batch.
                await page.evaluate(
                    "Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
                    "document.dispatchEvent(new Event('visibilitychange'));"
                    "delete document.visibilityState; true"
                )
                await page.wait_for(
                    f"document.querySelector('#rum-events').textContent.includes({session_id!r})", within=30
                )
                shown = await page.evaluate("document.querySelector('#rum-session-id').textContent")
                span_sessions = await page.evaluate(
                    "[...document.querySelectorAll('#spans td.session')].map(cell => cell.textContent)"
                )
                SCREENSHOT.parent.mkdir(exist_ok=True)
                await page.screenshot(SCREENSHOT)

            assert shown == session_id
            assert len(span_sessions) >= 3 and set(span_sessions) == {session_id}

            demo.send_signal(signal.SIGINT)
            assert demo.wait(timeout=60) == 0
        output = log.read_text(errors="replace")

    children = {name: int(pid) for name, pid in STARTED.findall(output)}
    assert set(children) == {"test-agent", "fake-llm", "console", "agent", "proxy"}
    assert [name for name, pid in children.items() if alive(pid)] == []
    for name in children:
        assert f"demo: stopped {name} " in output
