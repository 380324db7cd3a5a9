"""`examples/demo/run.py` end to end: start it, chat in Chromium, see the same session in both columns, Ctrl-C.

Also what a visitor reads per chat request (where the proxy found the session ID), how earlier sessions are
shown, and that a demo run leaves the working tree and the temp directory as it found them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO, VENV_PYTHON, free_port

from .cdp import Page, connect
from .conftest import ensure_browser_tools

pytestmark = pytest.mark.integration

DOCS_SCREENSHOT = REPO / "docs" / "demo.png"
# `make screenshot` sets it to docs/demo.png; otherwise the screenshot goes to a temp file only.
REFRESH_SCREENSHOT = os.environ.get("DEMO_SCREENSHOT")
READY = re.compile(r"demo is running: open\s+(http://\S+)")
STARTED = re.compile(r"demo: started (\S+) \(pid (\d+)\), log (\S+)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


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
    env["DEMO_CHUNK_DELAY"] = "0.02"  # still streamed in pieces, four chats in a few seconds
    for name in ("DD_API_KEY", "DEMO_LLM", "DEMO_KEEP_LOGS"):
        env.pop(name, None)
    # Started with SIGINT ignored, as a non-interactive shell starts what it backgrounds (`make demo &`, CI):
    # Python then installs no KeyboardInterrupt handler, and the demo must still stop on Ctrl-C.
    demo = shlex.join([str(VENV_PYTHON), str(REPO / "examples" / "demo" / "run.py")])
    with log.open("wb") as out:
        popen = subprocess.Popen(
            ["sh", "-c", f"trap '' INT; exec {demo}"],
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
        for _, pid, _ in STARTED.findall(log.read_text(errors="replace")):
            if alive(int(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)


async def chat(page: Page, message: str, send: str | None = None) -> dict[str, Any]:
    """Send one message with the page's own controls; return the page's record once the proxy's line is matched."""
    before = await page.evaluate("window.demo.chats.length")
    select = f"{{ const s = document.querySelector('#send-mode'); s.value = {send!r};"
    select += "s.dispatchEvent(new Event('change')); }"
    await page.evaluate(
        (select if send else "")
        + f"document.querySelector('#message').value = {message!r}; document.querySelector('#send').click(); true"
    )
    await page.wait_for(f"window.demo.chats.length > {before} && window.demo.chats.at(-1).done")
    await page.wait_for("window.demo.chats.at(-1).proxy", within=20)
    return dict(
        await page.evaluate(
            "(() => { const c = window.demo.chats.at(-1); return {proxy: c.proxy, status: c.status, "
            "sessionId: c.sessionId, meta: c.view.meta.textContent, source: c.view.meta.dataset.sessionSource}; })()"
        )
    )


def assert_proxy_took(record: dict[str, Any], source: str, carrier: str) -> None:
    assert record["status"] == 200
    assert record["proxy"]["session_source"] == source
    assert record["proxy"]["session_id"] == record["sessionId"]
    assert record["source"] == source
    assert f"proxy took it from {carrier}" in record["meta"]


# Every text the page's RUM session ID cell takes, from the first paint on (installed before the page's scripts).
SESSION_CELL_HISTORY = """window.__sessionShown = [];
document.addEventListener('DOMContentLoaded', () => {
  const cell = document.querySelector('#rum-session-id');
  window.__sessionShown.push(cell.textContent);
  new MutationObserver(() => window.__sessionShown.push(cell.textContent))
    .observe(cell, {childList: true, characterData: true, subtree: true});
});"""
# Left edges of the page's three columns: the chat, the browser's RUM session, the agent's spans.
COLUMN_LEFTS = """['#chat', '#browser-column', '#agent-column'].map(
    s => document.querySelector(s).getBoundingClientRect().left)"""

SESSION_CELLS = """[...document.querySelectorAll('%s td.session')].map(cell => ({
    text: cell.textContent, label: cell.className,
    before: getComputedStyle(cell, '::before').content, after: getComputedStyle(cell, '::after').content}))"""


async def test_demo_shows_the_rum_session_on_the_llmobs_spans_and_stops_on_ctrl_c(browser_ws_url: str) -> None:
    ensure_browser_tools()
    tree_before, png_before = git_status(), sha256(DOCS_SCREENSHOT)
    with tempfile.TemporaryDirectory(prefix="demo-test-") as tmp:
        log = Path(tmp) / "demo.log"
        screenshot = Path(REFRESH_SCREENSHOT) if REFRESH_SCREENSHOT else Path(tmp) / "demo.png"
        with demo_running(log) as demo:
            url = wait_for_output(log, demo, READY, timeout=120)
            async with connect(browser_ws_url) as browser:
                async with browser.new_page(width=1200, height=440) as page:
                    await page.send("Page.addScriptToEvaluateOnNewDocument", {"source": SESSION_CELL_HISTORY})
                    await page.goto(url)
                    await page.wait_for("window.demo && window.demo.ready")
                    session_id = await page.wait_for("DD_RUM.getInternalContext()?.session_id")
                    await page.wait_for(f"window.__sessionShown.includes({session_id!r})")
                    session_cell_history = await page.evaluate("window.__sessionShown")
                    column_lefts = await page.evaluate(COLUMN_LEFTS)
                    # SDK v7 with tracing (the page's default) sends baggage; the cookie rides along but comes last.
                    first = await chat(page, "How long does shipping take?")
                    assert_proxy_took(first, "baggage", "the W3C baggage header")
                    await page.wait_for("!!document.querySelector('#spans-summary.ok')", within=60)
                    await page.evaluate("document.querySelector('#flush-rum').click(); true")
                    await page.wait_for(
                        f"document.querySelector('#rum-events').textContent.includes({session_id!r})", within=30
                    )
                    shown = await page.evaluate("document.querySelector('#rum-session-id').textContent")
                    current_cells = await page.evaluate(SESSION_CELLS % "#spans")
                    screenshot.parent.mkdir(exist_ok=True)
                    await page.screenshot(screenshot)

                    by_body = await chat(page, "Do you ship abroad?", send="body")
                    assert_proxy_took(by_body, "body", "the JSON body")
                    by_query = await chat(page, "Can I return it?", send="query")
                    assert_proxy_took(by_query, "query", "the query")
                    by_header = await chat(page, "Is it in stock?", send="header")
                    assert_proxy_took(by_header, "header", "the x-rum-session-id header")

                # A new visitor (new browser context) on SDK v5: a new session, whose ID rides only the cookie.
                async with browser.new_page(width=1200, height=600) as later:
                    await later.goto(url + "?rum=5")
                    await later.wait_for("window.demo && window.demo.ready")
                    later_id = await later.wait_for("DD_RUM.getInternalContext()?.session_id")
                    # v5 sends its first batch 30 s after its first event, or when the page is hidden: the page
                    # says so while it waits, and its button hides the page for an instant.
                    await later.wait_for("document.querySelector('#rum-events').textContent.includes('every 30 s')")
                    by_cookie = await chat(later, "Hello again")
                    assert_proxy_took(by_cookie, "cookie", "the RUM SDK's session cookie")
                    await later.wait_for("!!document.querySelector('#spans-summary.ok')", within=60)
                    await later.wait_for(f"{SESSION_CELLS % '#earlier-spans'}.some(c => c.text === {session_id!r})")
                    later_cells = await later.evaluate(SESSION_CELLS % "#spans")
                    earlier_cells = await later.evaluate(SESSION_CELLS % "#earlier-spans")
                    await later.evaluate("document.querySelector('#flush-rum').click(); true")
                    later_rum = await later.wait_for(
                        f"document.querySelector('#rum-events').textContent.includes({later_id!r}) && "
                        "document.querySelector('#rum-earlier').textContent.includes('earlier session') && "
                        "document.querySelector('#rum-events').textContent",
                        within=10,
                    )

            assert shown == session_id
            # From load to the ID, the cell says the SDK is starting: never "(no session)" for a session that exists.
            assert "(no session)" not in session_cell_history, session_cell_history
            assert session_cell_history[-1] == session_id
            # The banner names the column the ID is in: the middle one of the page's three.
            chat_left, browser_left, agent_left = column_lefts
            assert chat_left < browser_left < agent_left
            assert "the middle column shows the browser's RUM session ID" in log.read_text(errors="replace")
            assert len(current_cells) >= 3 and {c["text"] for c in current_cells} == {session_id}
            assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
            # The later visitor sees its own spans first; the first visitor's are labelled earlier, never a ✗.
            assert later_id != session_id
            assert len(later_cells) >= 3 and {c["text"] for c in later_cells} == {later_id}
            earlier_of_first = [c for c in earlier_cells if c["text"] == session_id]
            assert len(earlier_of_first) >= 3
            assert {c["label"] for c in earlier_of_first} == {"session earlier"}
            assert all("earlier session" in c["after"] for c in earlier_of_first)
            assert not any("✗" in c["before"] + c["after"] + c["text"] for c in earlier_cells + later_cells)
            assert session_id not in later_rum  # RUM events are this session's only; earlier ones are counted apart

            demo.send_signal(signal.SIGINT)
            try:
                code = demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                output = log.read_text(errors="replace")[-6000:]
                raise AssertionError(f"the demo did not stop within 60 s of Ctrl-C; its output:\n{output}") from None
            assert code == 0
        output = log.read_text(errors="replace")

    started = STARTED.findall(output)
    children = {name: int(pid) for name, pid, _ in started}
    assert set(children) == {"test-agent", "fake-llm", "console", "agent", "proxy"}
    assert [name for name, pid in children.items() if alive(pid)] == []
    for name in children:
        assert f"demo: stopped {name} " in output
    # The run's temp directory (child logs, test agent state) is gone; the working tree is as it was.
    [log_dir] = {Path(child_log).parent for _, _, child_log in started}
    assert log_dir.name.startswith("rum-llmobs-demo-")
    assert f"demo: removed {log_dir}" in output
    assert not log_dir.exists()
    if not REFRESH_SCREENSHOT:
        assert sha256(DOCS_SCREENSHOT) == png_before, "make test must not rewrite docs/demo.png (make screenshot)"
        assert git_status() == tree_before


def test_sigterm_stops_the_demo_and_removes_its_temp_directory() -> None:
    with tempfile.TemporaryDirectory(prefix="demo-test-") as tmp:
        log = Path(tmp) / "demo.log"
        with demo_running(log) as demo:
            wait_for_output(log, demo, READY, timeout=120)
            demo.send_signal(signal.SIGTERM)
            assert demo.wait(timeout=60) == 0
        output = log.read_text(errors="replace")
    started = STARTED.findall(output)
    assert [name for name, pid, _ in started if alive(int(pid))] == []
    [log_dir] = {Path(child_log).parent for _, _, child_log in started}
    assert f"demo: removed {log_dir}" in output
    assert not log_dir.exists()


@pytest.mark.parametrize("variable", ["DEMO_LLM_PORT", "DEMO_PORT"])
def test_a_busy_port_stops_the_demo_with_one_line_naming_its_variable(variable: str) -> None:
    """Something already listens on one of the demo's ports: one line names the port and the variable, no traceback,
    nothing started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        names = ("DEMO_PORT", "DEMO_ADMIN_PORT", "DEMO_CONSOLE_PORT", "DEMO_AGENT_PORT", "DEMO_LLM_PORT")
        env = {**os.environ, **{name: str(free_port()) for name in (*names, "DEMO_TEST_AGENT_PORT")}}
        env[variable] = str(port)
        for name in ("DD_API_KEY", "DEMO_LLM"):
            env.pop(name, None)
        result = subprocess.run(
            [str(VENV_PYTHON), str(REPO / "examples" / "demo" / "run.py")],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"demo: port {port} on 127.0.0.1 (")
    assert f"is in use: set {variable} to a free port" in line


def test_help_lists_every_port_the_demo_uses_with_its_variable() -> None:
    result = subprocess.run(
        [str(VENV_PYTHON), str(REPO / "examples" / "demo" / "run.py"), "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    listed = dict(re.findall(r"^ +(\d+) (DEMO_\w*PORT) ", result.stdout, flags=re.MULTILINE))
    assert listed == {
        "8080": "DEMO_PORT",
        "8081": "DEMO_ADMIN_PORT",
        "8082": "DEMO_CONSOLE_PORT",
        "8001": "DEMO_AGENT_PORT",
        "8000": "DEMO_LLM_PORT",
        "8126": "DEMO_TEST_AGENT_PORT",
    }
