"""`make demo`: a chat page with the real Datadog RUM SDK, the proxy, an unchanged AI agent, all on this machine.

Processes (each in its own process group, logs in a temp directory, all stopped on Ctrl-C or SIGTERM, then
the temp directory is removed unless DEMO_KEEP_LOGS=1):

    browser ──► proxy :8080 ──► agent :8001 (examples/agents/fastapi under ddtrace-run + hook; also serves the page)
                                  └─► fake LLM :8000 (or a real OpenAI-compatible API, opt-in)
    ddtrace (proxy + agent) ──► Datadog's test agent :8126 (or the real Datadog Agent / agentless)
    page ──► console :8082 (local RUM intake + the LLMObs spans the test agent received + the proxy's request
                            lines, read from its stdout log: where it found each request's session ID)

Ports (on DEMO_HOST, default 127.0.0.1; each variable overrides one; a port already in use stops the demo with
one line naming its variable):

    8080 DEMO_PORT             the proxy: the page and /chat
    8081 DEMO_ADMIN_PORT       the proxy's admin port (/healthz, /readyz, /metrics)
    8082 DEMO_CONSOLE_PORT     the console: local RUM intake, spans and proxy lines for the page
    8001 DEMO_AGENT_PORT       the example agent
    8000 DEMO_LLM_PORT         the fake LLM (not started with DEMO_LLM=openai)
    8126 DEMO_TEST_AGENT_PORT  Datadog's test agent (not started with DD_API_KEY; its OTLP ports are any free ones)

DEMO_CHUNK_DELAY (0.08 s) paces the fake LLM; see examples/demo/README.md for DD_API_KEY and DEMO_LLM=openai.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WEB = HERE / "web"
BIN = Path(sys.executable).parent
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
FAKE_OPENAI_KEY = "sk-fake-demo-key"
PROXY = "proxy"

QUIET_DDTRACE = {
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_DYNAMIC_INSTRUMENTATION_ENABLED": "false",
    "DD_CRASHTRACKING_ENABLED": "false",
    # Flush often so spans appear in the page within a second.
    "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.5",
    "_DD_LLMOBS_WRITER_INTERVAL": "0.5",
}


class DemoError(Exception):
    pass


# Each port variable: its default and what listens there (the module docstring lists the same).
PORT_VARIABLES = {
    "DEMO_PORT": (8080, "the proxy: the page and /chat"),
    "DEMO_ADMIN_PORT": (8081, "the proxy's admin port"),
    "DEMO_CONSOLE_PORT": (8082, "the console"),
    "DEMO_AGENT_PORT": (8001, "the example agent"),
    "DEMO_LLM_PORT": (8000, "the fake LLM"),
    "DEMO_TEST_AGENT_PORT": (8126, "Datadog's test agent"),
}


@dataclass(frozen=True)
class Ports:
    host: str
    proxy: int
    admin: int
    console: int
    agent: int
    llm: int
    test_agent: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Ports:
        def port(name: str) -> int:
            value = env.get(name, str(PORT_VARIABLES[name][0]))
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise DemoError(f"{name}={value!r} is not a port number (1-65535)")
            return int(value)

        return cls(
            host=env.get("DEMO_HOST", "127.0.0.1"),
            proxy=port("DEMO_PORT"),
            admin=port("DEMO_ADMIN_PORT"),
            console=port("DEMO_CONSOLE_PORT"),
            agent=port("DEMO_AGENT_PORT"),
            llm=port("DEMO_LLM_PORT"),
            test_agent=port("DEMO_TEST_AGENT_PORT"),
        )

    def used(self, env: Mapping[str, str]) -> dict[str, int]:
        """The ports this run listens on, by the variable that sets each (the optional processes only when started)."""
        ports = {
            "DEMO_PORT": self.proxy,
            "DEMO_ADMIN_PORT": self.admin,
            "DEMO_CONSOLE_PORT": self.console,
            "DEMO_AGENT_PORT": self.agent,
        }
        if env.get("DEMO_LLM") != "openai":
            ports["DEMO_LLM_PORT"] = self.llm
        if not env.get("DD_API_KEY"):
            ports["DEMO_TEST_AGENT_PORT"] = self.test_agent
        return ports

    def check_free(self, env: Mapping[str, str]) -> None:
        """Refuse, in one line naming the variable, a port given twice or one something already listens on."""
        seen: dict[int, str] = {}
        for name, port in self.used(env).items():
            if port in seen:
                raise DemoError(f"{name} and {seen[port]} are both {port}: set one of them to another port")
            seen[port] = name
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                # As the servers bind: SO_REUSEADDR, so a closed connection's TIME_WAIT is no conflict, a listener is.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError as exc:
                    what = PORT_VARIABLES[name][1]
                    reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
                    raise DemoError(
                        f"port {port} on {self.host} ({what}) {reason}: set {name} to a free port, "
                        f"e.g. {name}={port + 10000 if port < 55536 else port - 1000} make demo"
                    ) from None

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Supervisor:
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path = ROOT) -> Child:
        log = self.log_path(name)
        with log.open("wb") as out:
            popen = subprocess.Popen(  # noqa: S603 - argv built here from fixed paths
                argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                # Own process group: the terminal's Ctrl-C reaches only this script, which stops them in order.
                start_new_session=True,
            )  # fmt: skip
        child = Child(name, popen, log)
        self.children.append(child)
        print(f"demo: started {name} (pid {popen.pid}), log {log}", flush=True)
        return child

    def wait_ready(self, child: Child, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if child.popen.poll() is not None:
                raise DemoError(f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - a loopback URL built here
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)  # readiness poll interval
        raise DemoError(f"{child.name} not ready at {url} after {READY_TIMEOUT:.0f}s:\n{child.tail()}")

    def watch(self) -> None:
        """Block until a child exits on its own (an error) or the user interrupts."""
        while True:
            for child in self.children:
                if child.popen.poll() is not None:
                    raise DemoError(f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}")
            time.sleep(0.5)  # liveness poll interval

    def stop_all(self) -> None:
        """SIGTERM every process group, newest first (proxy before agent); SIGKILL what outlives the grace."""
        running = [c for c in reversed(self.children) if c.popen.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in running:
            try:
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"demo: {child.name} (pid {child.popen.pid}) still running after SIGTERM: killed", flush=True)
                print(child.tail(), flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                child.popen.wait()
        for child in self.children:
            print(f"demo: stopped {child.name} (pid {child.popen.pid}, exit {child.popen.returncode})", flush=True)


_GIVEN_PORTS: set[int] = set()


def unused_port() -> int:
    """A free loopback port, never one given before (the kernel may offer a port again once its probe closed)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def ensure_rum_sdk() -> None:
    if (WEB / "node_modules" / "rum7" / "bundle" / "datadog-rum.js").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise DemoError(f"npm is needed once to fetch @datadog/browser-rum: install Node.js, or run npm ci in {WEB}")
    print("demo: npm ci (fetching @datadog/browser-rum)", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)  # noqa: S603


def datadog_env(env: Mapping[str, str], ports: Ports) -> tuple[dict[str, str], dict[str, str], bool]:
    """ddtrace settings for the agent and for the proxy, and whether to start the local test agent."""
    if not env.get("DD_API_KEY"):
        local = {"DD_TRACE_AGENT_URL": ports.url(ports.test_agent)}
        return local, local, True
    if env.get("DD_TRACE_AGENT_URL") or env.get("DD_AGENT_HOST"):
        return {}, {}, False  # a real Datadog Agent: ddtrace reads its address from the environment
    # Agentless: LLMObs events go straight to Datadog (DD_SITE). There is no Agent for APM traces, so the agent
    # keeps only LLMObs and the proxy does not trace (the hook then sets the session from x-rum-session-id).
    return {"DD_LLMOBS_AGENTLESS_ENABLED": "1", "DD_APM_TRACING_ENABLED": "false"}, {"DD_TRACE_ENABLED": "false"}, False


def llm_env(env: Mapping[str, str], ports: Ports) -> tuple[dict[str, str], bool]:
    """The agent's OpenAI client settings, and whether to start the fake LLM."""
    if env.get("DEMO_LLM") == "openai":
        if not env.get("OPENAI_API_KEY"):
            raise DemoError("DEMO_LLM=openai needs OPENAI_API_KEY (and OPENAI_BASE_URL for other providers)")
        return {"AGENT_MODEL": env.get("DEMO_MODEL", "gpt-4o-mini")}, False
    return {"OPENAI_BASE_URL": ports.url(ports.llm) + "/v1", "OPENAI_API_KEY": FAKE_OPENAI_KEY}, True


def start_all(supervisor: Supervisor, env: Mapping[str, str], ports: Ports) -> None:
    python = sys.executable
    agent_dd_env, proxy_dd_env, local_test_agent = datadog_env(env, ports)
    openai_env, fake_llm = llm_env(env, ports)
    started: list[tuple[Child, str]] = []

    if local_test_agent:
        state = supervisor.log_dir / "test-agent"
        state.mkdir(exist_ok=True)
        argv = [
            str(BIN / "ddapm-test-agent"), "--host", ports.host, "--port", str(ports.test_agent),
            "--otlp-http-port", str(unused_port()), "--otlp-grpc-port", str(unused_port()),
            "--snapshot-dir", str(state), "--disable-llmobs-data-forwarding",
        ]  # fmt: skip
        child = supervisor.start("test-agent", argv, env, cwd=state)
        started.append((child, ports.url(ports.test_agent) + "/info"))
    if fake_llm:
        argv = [python, str(ROOT / "examples" / "fake_llm" / "server.py"), "--host", ports.host]
        # Paced like a real model so the answer visibly streams in; DEMO_CHUNK_DELAY=0 turns it off.
        argv += ["--chunk-delay", env.get("DEMO_CHUNK_DELAY", "0.08")]
        child = supervisor.start("fake-llm", [*argv, "--port", str(ports.llm)], env)
        started.append((child, ports.url(ports.llm) + "/healthz"))
    console_argv = [python, str(HERE / "console.py"), "--host", ports.host, "--port", str(ports.console)]
    # The proxy's stdout (JSON lines) goes to this file; its `request` lines say where each session ID came from.
    console_argv += ["--proxy-log", str(supervisor.log_path(PROXY))]
    if local_test_agent:
        console_argv += ["--test-agent-url", ports.url(ports.test_agent)]
    started.append((supervisor.start("console", console_argv, env), ports.url(ports.console) + "/healthz"))
    for child, url in started:  # the agent's ddtrace needs the test agent up to flush its first spans
        supervisor.wait_ready(child, url)

    rum_intake = "" if env.get("DEMO_RUM_CLIENT_TOKEN") else ports.url(ports.console) + "/rum-intake"
    agent_env = {
        **env,
        **QUIET_DDTRACE,
        **agent_dd_env,
        **openai_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "hook"), env.get("PYTHONPATH", "")])),
        "DD_LLMOBS_ENABLED": "1",
        "DD_LLMOBS_ML_APP": env.get("DD_LLMOBS_ML_APP", "rum-llmobs-demo"),
        "DD_SERVICE": "demo-agent",
        "HOST": ports.host,
        "PORT": str(ports.agent),
        "DEMO_CONSOLE_URL": ports.url(ports.console),
        "DEMO_RUM_INTAKE_URL": rum_intake,
    }
    agent = supervisor.start("agent", [str(BIN / "ddtrace-run"), python, str(HERE / "agent_with_page.py")], agent_env)
    supervisor.wait_ready(agent, ports.url(ports.agent) + "/healthz")

    proxy_env = {
        **env,
        **QUIET_DDTRACE,
        **proxy_dd_env,
        "RUM_PROXY_UPSTREAM_URL": ports.url(ports.agent),
        "RUM_PROXY_HOST": ports.host,
        "RUM_PROXY_PORT": str(ports.proxy),
        "RUM_PROXY_ADMIN_HOST": ports.host,
        "RUM_PROXY_ADMIN_PORT": str(ports.admin),
        "RUM_PROXY_LOG_FORMAT": "json",  # the console parses the request lines
        "DD_SERVICE": "rum-llmobs-proxy",
    }
    proxy = supervisor.start(PROXY, [python, "-m", "proxy"], proxy_env)
    supervisor.wait_ready(proxy, ports.url(ports.admin) + "/readyz")


def banner(ports: Ports, env: Mapping[str, str]) -> str:
    spans = "Datadog's test agent (local)" if not env.get("DD_API_KEY") else "Datadog (DD_API_KEY is set)"
    llm = "the fake LLM" if env.get("DEMO_LLM") != "openai" else f"{env.get('OPENAI_BASE_URL', 'OpenAI')}"
    return f"""
rum-llmobs-proxy demo is running: open  {ports.url(ports.proxy)}/

  page and /chat, through the proxy   {ports.url(ports.proxy)}   (admin {ports.url(ports.admin)}/metrics)
  agent (examples/agents/fastapi)     {ports.url(ports.agent)}   LLM: {llm}
  LLMObs spans go to                  {spans}
  console (RUM intake, spans JSON)    {ports.url(ports.console)}/api/spans

Chat in the page (left column): the middle column shows the browser's RUM session ID, the right one the
session_id of every LLM Observability span the agent produced. Ctrl-C stops everything.
"""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C, a supervisor's SIGTERM, or the terminal closing. SIGINT too: Python leaves it ignored when it was
    # ignored at start, as for anything a non-interactive shell runs in the background (`make demo &`, CI).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        return 0
    env = dict(os.environ)
    try:
        ports = Ports.from_env(env)
        ports.check_free(env)
    except DemoError as exc:  # before anything started: one line, nothing to stop
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return 1
    listed = ", ".join(f"{port} ({name})" for name, port in ports.used(env).items())
    print(f"demo: ports on {ports.host}: {listed}", flush=True)
    supervisor = Supervisor(Path(tempfile.mkdtemp(prefix="rum-llmobs-demo-")))
    status = 0
    try:
        ensure_rum_sdk()
        start_all(supervisor, env, ports)
        print(banner(ports, env), flush=True)
        supervisor.watch()
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
    except (DemoError, subprocess.CalledProcessError) as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # A second Ctrl-C must not leave children behind while they are being stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop_all()
        if env.get("DEMO_KEEP_LOGS") == "1":
            print(f"demo: logs kept in {supervisor.log_dir}", flush=True)
        else:
            shutil.rmtree(supervisor.log_dir, ignore_errors=True)
            print(f"demo: removed {supervisor.log_dir}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
