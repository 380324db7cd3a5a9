"""Every install command the READMEs show, typed the way a user types it, in a fresh virtual environment.

The commands are read from the Markdown itself (fenced blocks, and code spans in the text), so a README that shows
a new install command fails `test_every_install_command_shown_is_run_or_explained` until this module runs it, or
says why it cannot. Each one runs in its own `python -m venv` (as if activated: its `bin` first on PATH) over a copy
of the tree as git sees it (tracked files and new ones not ignored: on a clean clone, HEAD; never the ignored
build products such as proxy/*.so); the installs run side by side, from PyPI. Then what the user would try next: the
proxy's `--version` (compiled or plain Python, and the version in the wheel's metadata), and one request through
the installed proxy to a real aiohttp upstream on loopback; the hook's `install()`; the OpenTelemetry twin putting
the baggage's session on a span.

A machine without a C compiler is one where `CC` names none: `pip install -v .` must still install, as plain Python,
and print the one line saying so. Beyond the READMEs, `pip install git+<URL>` (issue 18), from a git repository of
the same copy by file URL, and the sdist `python -m build --sdist` writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout, web
from aiohttp.test_utils import TestServer

from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]
# Where install commands are shown (CHANGELOG.md, which tells history, is not).
# (git pathspecs: `*` crosses directories)
DOCS = ("README.md", "docs/*.md", "deploy/*.md", "hook/*.md", "examples/*.md")
INSTALL = re.compile(
    r"\b(?:pip3?|python3? -m pip) (?:install|wheel) +\S"  # with an argument: not "`pip install` installs only ..."
    r"|\bpython3? -m build\b|\bnpm (?:ci|install)\b|\bpython3? -m tests\.support\.\w+_venv\b"
)
FENCE = re.compile(r"^\s*(```|~~~)")
SPAN = re.compile(r"`([^`]+)`")
# A whole install from PyPI with the compiled build takes about two minutes here; ten is a hung one.
INSTALL_TIMEOUT = 600.0
PROCESS_TIMEOUT = 60.0
SESSION_ID = str(uuid.uuid4())
PLAIN_PYTHON_LINE = "building the request path as plain Python"


@dataclass(frozen=True)
class InstallPath:
    """One install command, run in its own venv, and what the installed result must then do."""

    name: str
    command: str  # exactly as shown; {tree} is the copy's path
    kind: str  # "proxy", "hook" or "otel"
    compiled: bool = False
    env: dict[str, str] = field(default_factory=dict)  # the machine this path stands for
    prints: str | None = None  # a line the install must print


README_PATHS = (
    InstallPath("compiled", "pip install .", "proxy", compiled=True),
    InstallPath("pure", "RUM_LLMOBS_PROXY_PURE_PYTHON=1 pip install .", "proxy"),
    # A machine without a C compiler (CC names none): it installs, as plain Python, and pip's -v shows the one line
    # saying so (setup.py).
    InstallPath("no-compiler", "pip install -v .", "proxy", env={"CC": "/nonexistent/cc"}, prints=PLAIN_PYTHON_LINE),
    InstallPath("hook", "pip install ./hook", "hook"),
    InstallPath("otel", "pip install ./hook/otel", "otel"),
)
# Not shown as such (issue 18): `pip install git+<URL>`, from a git repository of the copy; and the sdist `python -m
# build` makes (as `make dist` does), installed: it holds everything the build needs. Plain Python, for time: the
# compiled build is the same code path as `pip install .` above.
EXTRA_PATHS = (
    InstallPath("git-url", "RUM_LLMOBS_PROXY_PURE_PYTHON=1 pip install git+file://{tree}", "proxy"),
    InstallPath(
        "sdist",
        "pip install build && python -m build --sdist && RUM_LLMOBS_PROXY_PURE_PYTHON=1 pip install dist/*.tar.gz",
        "proxy",
    ),
)
# Shown, and not run here, because something else runs them or they cannot run here.
NOT_RUN = {
    "pip install --no-deps --require-hashes -r requirements.lock": "the image's build stage: "
    "tests/deploy/test_dockerfile.py runs its pip commands in a fresh venv, make image-test builds the image",
    "pip install --no-deps --no-build-isolation .": "the image's build stage, as above",
    ".venv/bin/pip install pip-tools==7.6.2 && PYTHON=.venv/bin/python deploy/lock.sh": "regenerates the tracked "
    "locks (a maintainer's step); tests/deploy/test_dockerfile.py checks the locks against pyproject.toml",
    "npm ci": "make test installs the Node.js agent's and the demo page's packages with it (node-agent-deps, "
    "browser-deps) and the Node.js and browser tests use them",
    "python -m tests.support.otel_venv": "make otel-agent-deps runs it before make test; the OpenTelemetry "
    "end-to-end tests use its venvs",
    "pip install datadog-api-client": "a PyPI package for deploy/datadog/apply.py, which needs Datadog API keys and "
    "Datadog's API; tests/deploy/test_datadog.py runs the script against a local stand-in with the same package "
    "from the test extra",
    "pip install matplotlib": "a PyPI package for redrawing docs/datadog-dashboard.png (a maintainer's step)",
}


def docs() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *DOCS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO / name for name in listed if "node_modules" not in name and (REPO / name).is_file()]


def shown_commands(markdown: str) -> Iterator[str]:
    """Install commands in fenced blocks (prompt and comment dropped) and in code spans (lines joined first)."""
    fenced = False
    paragraph: list[str] = []
    continued = ""
    for line in [*markdown.splitlines(), ""]:
        if FENCE.match(line) or not (fenced or line.strip()):
            yield from (" ".join(s.split()) for s in SPAN.findall(" ".join(paragraph)) if INSTALL.search(s))
            paragraph, continued = [], ""
            fenced ^= bool(FENCE.match(line))
        elif not fenced:
            paragraph.append(line.strip())
        elif (line := continued + line.strip().removeprefix("$ ")).endswith("\\"):
            continued = line[:-1]
        else:
            continued = ""
            command = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            if INSTALL.search(command):
                yield " ".join(command.split())


def where_shown() -> dict[str, list[str]]:
    shown: dict[str, list[str]] = {}
    for path in docs():
        for command in shown_commands(path.read_text()):
            shown.setdefault(command, []).append(str(path.relative_to(REPO)))
    return shown


def test_the_extraction_finds_commands_in_blocks_and_spans_only() -> None:
    markdown = (
        "Run `pip install ./hook`, then\n`RUM_LLMOBS_PROXY_PURE_PYTHON=1 pip\ninstall .` works; `pip install` alone "
        "is prose.\n\n```console\n$ pip install .     # compiles\npip install \\\n  ./hook/otel\nmake demo\n```\n"
    )
    assert list(shown_commands(markdown)) == [
        "pip install ./hook",
        "RUM_LLMOBS_PROXY_PURE_PYTHON=1 pip install .",
        "pip install .",
        "pip install ./hook/otel",
    ]


def test_every_install_command_shown_is_run_or_explained() -> None:
    shown = where_shown()
    covered = {path.command for path in README_PATHS} | NOT_RUN.keys()
    unknown = {command: places for command, places in shown.items() if command not in covered}
    assert not unknown, f"install commands shown but neither run by {__name__} nor listed in NOT_RUN: {unknown}"
    missing = [path.command for path in README_PATHS if path.command not in shown]
    assert not missing, f"no README shows these any more; drop them from README_PATHS: {missing}"


def copy_of_the_tree(destination: Path) -> Path:
    """The files git sees (tracked, and new ones not ignored), as a clone would have them; then a git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = REPO / name
        if source.is_file() and "node_modules" not in source.parts:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run([*git, *args], cwd=destination, capture_output=True, check=True)
    return destination


def user_environment(venv: Path, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment as a user's shell with the venv activated: none of the suite's own settings."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RUM_", "DD_", "PYTEST", "VIRTUAL_ENV")) and key not in {"PYTHONPATH", "PYTHONHOME"}
    }
    return {**environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{environ['PATH']}", **extra}


async def run(argv: list[str], *, env: dict[str, str], cwd: Path, seconds: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return -1, f"timed out after {seconds:.0f} s\n{output.decode(errors='replace')}"
    return process.returncode or 0, output.decode(errors="replace")


@dataclass
class Installed:
    path: InstallPath
    venv: Path
    env: dict[str, str]
    output: str


async def install(path: InstallPath, tree: Path, venvs: Path) -> Installed:
    venv = venvs / path.name
    env = user_environment(venv, path.env)
    status, output = await run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=venvs, seconds=120)
    assert status == 0, output
    # Its own copy: pip builds in the source tree (build/, *.egg-info), and the installs run at the same time.
    tree = Path(shutil.copytree(tree, venvs / f"{path.name}-tree", symlinks=True))
    command = path.command.format(tree=tree)
    status, output = await run(["bash", "-c", command], env=env, cwd=tree, seconds=INSTALL_TIMEOUT)
    assert status == 0, f"`{command}` failed ({status}):\n{output[-4000:]}"
    return Installed(path, venv, env, output)


async def check_proxy(installed: Installed, version: str, upstream: str) -> None:
    """--version and the wheel's metadata, then one request through the installed proxy."""
    path, bin_dir = installed.path, installed.venv / "bin"
    build = "compiled" if path.compiled else "pure Python"
    status, output = await run_in(installed, str(bin_dir / "rum-llmobs-proxy"), "--version")
    assert (status, output.strip()) == (0, f"rum-llmobs-proxy {version} ({build})"), f"{path.name}: {output}"
    metadata = "import importlib.metadata as m; print(m.version('rum-llmobs-proxy'))"
    status, output = await run_in(installed, str(bin_dir / "python"), "-c", metadata)
    assert (status, output.strip()) == (0, version), f"{path.name}: the wheel's metadata says {output}"
    if path.prints is not None:
        lines = [line.strip() for line in installed.output.splitlines() if path.prints in line]
        assert len(lines) == 1, f"{path.name}: expected one line with {path.prints!r}:\n{installed.output[-4000:]}"
        assert "install a C compiler and the Python headers" in lines[0], lines[0]

    port, admin_port = free_port(), free_port()
    env = {
        **installed.env,
        "RUM_PROXY_UPSTREAM_URL": upstream,
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_PORT": str(port),
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_PORT": str(admin_port),
        "RUM_PROXY_LOG_FORMAT": "json",
        "DD_TRACE_ENABLED": "false",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    }
    proxy = await asyncio.create_subprocess_exec(
        str(bin_dir / "rum-llmobs-proxy"),
        env=env,
        cwd=installed.venv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proxy.stdout is not None
    try:
        listening = await asyncio.wait_for(event_line(proxy.stdout, "listening"), PROCESS_TIMEOUT)
        assert listening.get("compiled") is path.compiled, listening
        async with (
            ClientSession(timeout=ClientTimeout(total=PROCESS_TIMEOUT)) as client,
            client.post(f"http://127.0.0.1:{port}/chat", json={"session_id": SESSION_ID, "message": "hi"}) as answer,
        ):
            assert answer.status == 200, await answer.text()
            assert await answer.json() == {"session": SESSION_ID, "message": "hi"}, "the upstream saw no session"
    finally:
        if proxy.returncode is None:
            proxy.terminate()
        status = await asyncio.wait_for(proxy.wait(), PROCESS_TIMEOUT)
    assert status == 0, f"{path.name}: the proxy exited {status} on SIGTERM"


async def event_line(stream: asyncio.StreamReader, event: str) -> dict[str, object]:
    """The first JSON log line for `event`; everything read before it is in the error when the stream ends."""
    seen: list[str] = []
    while line := await stream.readline():
        seen.append(line.decode(errors="replace"))
        if line.startswith(b"{"):
            record: dict[str, object] = json.loads(line)
            if record.get("event") == event:
                return record
    raise AssertionError(f"the proxy exited before logging {event!r}:\n{''.join(seen)[-4000:]}")


async def run_in(installed: Installed, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """A command of the installed venv, with the user's environment."""
    return await run(list(argv), env=env or installed.env, cwd=installed.venv, seconds=PROCESS_TIMEOUT)


HOOK_CHECK = """
import pathlib, sysconfig
import ddtrace.auto
import rum_llmobs_hook
print(rum_llmobs_hook.install())
print(sorted(p.name for p in pathlib.Path(sysconfig.get_paths()["purelib"]).glob("sitecustomize*")))
"""

OTEL_CHECK = """
import importlib.metadata, sys
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import rum_otel_session

provider, exporter = TracerProvider(), InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
print(rum_otel_session.install(provider))
token = context.attach(baggage.set_baggage("session.id", sys.argv[1]))
with provider.get_tracer("check").start_as_current_span("chat"):
    pass
context.detach(token)
print(exporter.get_finished_spans()[0].attributes.get("session.id"))
print(sorted(e.name for e in importlib.metadata.entry_points(group="opentelemetry_instrumentor")))
"""


async def check_hook(installed: Installed) -> None:
    """hook/README: `pip install ./hook`, then install() after ddtrace: active; no sitecustomize.py installed."""
    env = {**installed.env, "DD_TRACE_ENABLED": "false", "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false"}
    status, output = await run_in(installed, str(installed.venv / "bin" / "python"), "-c", HOOK_CHECK, env=env)
    assert (status, output.strip().splitlines()[-2:]) == (0, ["True", "[]"]), output


async def check_otel(installed: Installed) -> None:
    """hook/otel/README: the instrumentor entry point is there, and install() puts the baggage's session on spans."""
    status, output = await run_in(installed, str(installed.venv / "bin" / "python"), "-c", OTEL_CHECK, SESSION_ID)
    assert status == 0, output
    assert output.strip().splitlines()[-3:] == ["True", SESSION_ID, "['rum_session']"], output


async def echo_session(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"session": request.headers.get("x-rum-session-id"), "message": body.get("message")})


@pytest.mark.integration
async def test_install_commands_work_in_fresh_venvs(
    tmp_path: Path, aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]
) -> None:
    app = web.Application()
    app.router.add_post("/chat", echo_session)
    upstream = await aiohttp_server(app)
    tree = copy_of_the_tree(tmp_path / "tree")
    version = re.search(r'__version__ = "([^"]+)"', (tree / "proxy" / "__init__.py").read_text())
    assert version, "proxy/__init__.py has no __version__"
    venvs = tmp_path / "venvs"
    venvs.mkdir()

    paths = (*README_PATHS, *EXTRA_PATHS)
    results = await asyncio.gather(*(install(path, tree, venvs) for path in paths), return_exceptions=True)
    failed = [
        f"{path.name}: {result}"
        for path, result in zip(paths, results, strict=True)
        if isinstance(result, BaseException)
    ]
    assert not failed, "\n\n".join(failed)

    for installed in results:
        assert isinstance(installed, Installed)
        if installed.path.kind == "proxy":
            await check_proxy(installed, version.group(1), f"http://127.0.0.1:{upstream.port}")
        elif installed.path.kind == "hook":
            await check_hook(installed)
        else:
            await check_otel(installed)
