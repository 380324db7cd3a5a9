"""The image as it ships, built by podman and run as a pod (`make image-test`; tests/image/run.sh builds first).

Not collected by the default suite (the file name does not match `test_*.py`): it needs root, podman and the
images run.sh builds, named by RUM_IMAGE (the proxy image) and RUM_TOOLS_IMAGE (tools.Containerfile: the example
agent's packages, the fake LLM's and Datadog's test agent, on the same base). Run with `--noconftest`: the host's
proxy build is not what is tested here.

The pod is the Kubernetes sidecar's shape (deploy/README.md), by hand, because `podman kube play` refuses init
containers with probes: the image's hook copier, run with the command deploy/README.md § 1 documents, fills a
volume; the example agent (examples/agents/fastapi under ddtrace-run, listening on the pod's 127.0.0.1 only) has
that volume on its PYTHONPATH; the proxy image is the pod's entry (its ports published on the host's loopback)
with the hardened run options; Datadog's test agent and the fake LLM run in the pod too. The last test runs
deploy/compose/compose.yaml with podman-compose, by the commands its header gives.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.sessions import WORKFLOW_TOOL_LLM, assert_every_span_has_session, chat, new_session_id, wait_for_session
from tests.support.processes import free_port, http_status
from tests.support.testagent import TestAgent, session_id_of

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("RUM_IMAGE", "localhost/rum-llmobs-proxy:image-test")
TOOLS_IMAGE = os.environ.get("RUM_TOOLS_IMAGE", "localhost/rum-llmobs-image-test-tools:dev")
# The documented hook-copy command's placeholders (deploy/README.md § 1): the image (any tag) and the volume.
DOCUMENTED_IMAGE = re.compile(r"registry\.example\.com/rum-llmobs-proxy:[\w.-]+")
DOCUMENTED_VOLUME = "rum-llmobs-hook"
LLM_PORT = 8002  # the fake LLM, on the pod's loopback
AGENT_PORT = 8000  # the example agent, on the pod's loopback: only the proxy reaches it

# What `rum-llmobs-proxy inject` is given in the inject test: one agent Deployment that opts in.
MINIMAL_APP = (Path(__file__).parent.parent / "deploy" / "fixtures" / "minimal-app.yaml").read_text()


def podman(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:  # noqa: A002
    result = subprocess.run(
        ["podman", *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {shlex.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def documented_hook_copy_command() -> list[str]:
    """The hook-copy command of deploy/README.md § 1, continuation lines joined, as argv."""
    lines = (REPO / "deploy" / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("docker run --rm --entrypoint cp"))
    command = ""
    for line in lines[start:]:
        command += line.strip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(command)


@dataclass
class Pod:
    name: str
    volume: str
    proxy_port: int
    admin_port: int
    test_agent: TestAgent

    def container(self, role: str) -> str:
        return f"{self.name}-{role}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        roles = ("proxy", "agent", "llm", "testagent")
        return "\n".join(
            f"--- {role}:\n{podman('logs', self.container(role), check=False).stdout[-3000:]}" for role in roles
        )

    def running(self, role: str) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.container(role), check=False)
        return state.stdout.strip() == "true"

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 90.0) -> None:
        """Bounded poll until ``ready()``; fail early with every container's log when one of them exited."""
        deadline = time.monotonic() + timeout
        while not ready():
            stopped = [role for role in ("proxy", "agent", "llm", "testagent") if not self.running(role)]
            if stopped or time.monotonic() > deadline:
                raise AssertionError(f"{what}: not ready (stopped: {stopped})\n{self.logs()}")
            time.sleep(0.2)  # poll interval of a bounded readiness loop, not a synchronisation sleep

    def release_gate(self, name: str) -> None:
        """The gated fake LLM sends the rest of a `[gate:<name>]` answer (from inside the pod: it listens on the
        pod's loopback)."""
        url = f"http://127.0.0.1:{LLM_PORT}/release/{name}"
        code = f"import urllib.request; urllib.request.urlopen(urllib.request.Request({url!r}, method='POST'))"
        podman("exec", self.container("llm"), "python", "-c", code)


def datadog_env(service: str) -> list[str]:
    env = {
        "DD_TRACE_AGENT_URL": "http://127.0.0.1:8126",  # the test agent, in the pod
        "DD_SERVICE": service,
        "DD_ENV": "image-test",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.2",
    }
    return [f"--env={key}={value}" for key, value in env.items()]


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    suffix = uuid.uuid4().hex[:8]
    pod = Pod(f"rum-image-test-{suffix}", f"rum-llmobs-hook-{suffix}", free_port(), free_port(), TestAgent(""))
    test_agent_port = free_port()
    pod.test_agent.url = f"http://127.0.0.1:{test_agent_port}"
    try:
        # The init container's step: exactly the documented command, with podman, this image and a fresh volume.
        argv = documented_hook_copy_command()
        assert argv[0] == "docker" and any(DOCUMENTED_IMAGE.fullmatch(word) for word in argv), argv
        argv = [IMAGE if DOCUMENTED_IMAGE.fullmatch(word) else word for word in argv[1:]]
        argv = [word.replace(f"{DOCUMENTED_VOLUME}:", f"{pod.volume}:", 1) for word in argv]
        podman(*argv)

        podman(
            "pod", "create", f"--name={pod.name}",
            f"--publish=127.0.0.1:{pod.proxy_port}:8080",
            f"--publish=127.0.0.1:{pod.admin_port}:8081",
            f"--publish=127.0.0.1:{test_agent_port}:8126",
        )  # fmt: skip
        # Datadog's test agent (the image's default command), standing in for the Datadog Agent.
        podman("run", "--detach", f"--pod={pod.name}", f"--name={pod.container('testagent')}", TOOLS_IMAGE)
        # The fake LLM, gated: a `[gate:<name>]` stream stops after its first word until released.
        podman(
            "run", "--detach", f"--pod={pod.name}", f"--name={pod.container('llm')}", f"--volume={REPO}:/repo:ro",
            TOOLS_IMAGE, "python", "/repo/tests/browser/gated_llm.py", f"--port={LLM_PORT}",
        )  # fmt: skip
        # The example agent, unmodified, under ddtrace-run; the copier's volume on its PYTHONPATH.
        podman(
            "run", "--detach", f"--pod={pod.name}", f"--name={pod.container('agent')}",
            f"--volume={REPO / 'examples' / 'agents' / 'fastapi'}:/app:ro",
            f"--volume={pod.volume}:/rum-llmobs-hook:ro",
            "--env=PYTHONPATH=/rum-llmobs-hook",
            *datadog_env("image-test-agent"),
            "--env=DD_LLMOBS_ENABLED=1", "--env=DD_LLMOBS_ML_APP=image-test-agent",
            "--env=_DD_LLMOBS_WRITER_INTERVAL=0.2",
            f"--env=OPENAI_BASE_URL=http://127.0.0.1:{LLM_PORT}/v1", "--env=OPENAI_API_KEY=sk-test-not-a-secret",
            "--env=HOST=127.0.0.1", f"--env=PORT={AGENT_PORT}",
            TOOLS_IMAGE, "ddtrace-run", "python", "/app/app.py",
        )  # fmt: skip
        # The proxy: the image's entrypoint, hardened as the Kubernetes sidecar is. Trace propagation off, so the
        # session on the agent's spans can only come from the hook the copier put on PYTHONPATH. This machine has
        # no systemd to time the HEALTHCHECK; `podman healthcheck run` runs it on demand.
        podman(
            "run", "--detach", f"--pod={pod.name}", f"--name={pod.container('proxy')}",
            "--user=10001:10001", "--read-only", "--tmpfs=/tmp", "--cap-drop=ALL",
            "--security-opt=no-new-privileges", "--health-interval=disable",
            f"--env=RUM_PROXY_UPSTREAM_URL=http://127.0.0.1:{AGENT_PORT}",
            "--env=RUM_PROXY_PROPAGATE_TRACE=false",
            "--env=RUM_PROXY_LOG_FORMAT=json",
            "--env=RUM_PROXY_SHUTDOWN_GRACE_SECONDS=25",
            *datadog_env("rum-llmobs-proxy"),
            IMAGE,
        )  # fmt: skip
        pod.wait_for("proxy", lambda: http_status(pod.admin_url + "/readyz") == 200)
        pod.wait_for("test agent", lambda: http_status(pod.test_agent.url + "/test/session/requests") == 200)
        pod.wait_for("agent, through the proxy", lambda: http_status(pod.proxy_url + "/healthz") == 200)
        yield pod
    finally:
        podman("pod", "rm", "--force", "--time=0", pod.name, check=False)
        podman("volume", "rm", "--force", pod.volume, check=False)


def test_the_image_is_the_compiled_build() -> None:
    assert podman("run", "--rm", IMAGE, "--version").stdout.strip().endswith("(compiled)")


def test_the_image_says_its_version_and_ships_the_licence() -> None:
    labels = podman("image", "inspect", "--format", "{{json .Labels}}", IMAGE).stdout
    version = podman("run", "--rm", IMAGE, "--version").stdout.split()[1]
    assert f'"org.opencontainers.image.version":"{version}"' in labels.replace(" ", ""), labels
    licence = podman("run", "--rm", "--entrypoint=cat", IMAGE, "/usr/share/doc/rum-llmobs-proxy/LICENSE").stdout
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_the_build_machines_ca_bundle_is_not_baked_into_the_image() -> None:
    """run.sh mounts this machine's CA bundle for the build's pip; the image keeps its base's own bundle."""
    base = os.environ.get("RUM_IMAGE_BASE", "localhost/rum-llmobs-proxy-base:bookworm-py3")
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    digests = {
        image: podman("run", "--rm", "--entrypoint=sha256sum", image, bundle).stdout.split()[0]
        for image in (IMAGE, base)
    }
    assert digests[IMAGE] == digests[base], digests


def test_a_base_without_python_headers_fails_the_build_first_and_says_why() -> None:
    """The build stage checks for Python.h before installing anything (mypyc would fail minutes later)."""
    base = os.environ.get("RUM_IMAGE_BASE", "localhost/rum-llmobs-proxy-base:bookworm-py3")
    name = f"rum-image-test-no-headers-{uuid.uuid4().hex[:8]}"
    podman("run", f"--name={name}", base, "sh", "-c", "rm /usr/include/python3*/Python.h")
    try:
        podman("commit", "--quiet", name, f"localhost/{name}")
        result = podman(
            "build", "--format=docker", "--target=build", f"--build-arg=PYTHON_IMAGE=localhost/{name}", str(REPO),
            check=False,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "Python.h is missing" in output, output[-3000:]
        assert "PYTHON_IMAGE must ship the Python headers" in output
        assert "deb.debian.org" not in output, "apt-get ran before the check"
        assert "Collecting" not in output, "pip ran before the check"
    finally:
        podman("rm", "--force", name, check=False)
        podman("rmi", "--force", f"localhost/{name}", check=False)


def test_inject_runs_from_the_image() -> None:
    """`podman run --rm -i <image> inject`, as deploy/README.md § 1 says, without a local install."""
    result = podman("run", "--rm", "-i", IMAGE, "inject", f"--image={IMAGE}", input=MINIMAL_APP)
    (deployment,) = yaml.safe_load_all(result.stdout)
    spec = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "rum-llmobs-proxy")
    assert sidecar["image"] == IMAGE and sidecar["restartPolicy"] == "Always"
    assert {"name": "RUM_PROXY_UPSTREAM_URL", "value": "http://127.0.0.1:8000"} in sidecar["env"]


def test_the_hook_copier_filled_the_agents_pythonpath(pod: Pod) -> None:
    """The volume holds the hook's two files, and the agent's interpreter imports the hook from it."""
    code = "import os, rum_llmobs_hook; print(rum_llmobs_hook.__file__, *sorted(os.listdir('/rum-llmobs-hook')))"
    found = podman("exec", pod.container("agent"), "python", "-c", code).stdout.split()
    assert found == ["/rum-llmobs-hook/rum_llmobs_hook.py", "rum_llmobs_hook.py", "sitecustomize.py"]


def test_a_session_id_through_the_pod_reaches_the_agents_llmobs_spans(pod: Pod) -> None:
    session_id = new_session_id()
    chat(pod.proxy_url, "/chat", session_id, "body")
    spans = wait_for_session(pod.test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)


def test_the_proxy_runs_non_root_on_a_read_only_root_without_capabilities(pod: Pod) -> None:
    proxy = pod.container("proxy")
    status = podman("exec", proxy, "cat", "/proc/1/status").stdout  # PID 1 is the proxy (exec-form entrypoint)
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.MULTILINE))
    assert fields["Uid"].split() == ["10001"] * 4 and fields["Gid"].split() == ["10001"] * 4
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    cmdline = podman("exec", proxy, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1].endswith("/rum-llmobs-proxy"), cmdline
    write_root = podman("exec", proxy, "touch", "/opt/venv/written", check=False)
    assert write_root.returncode != 0 and "Read-only file system" in write_root.stderr
    podman("exec", proxy, "touch", "/tmp/written")  # the tmpfs


def test_the_healthcheck_reports_healthy(pod: Pod) -> None:
    """The image's HEALTHCHECK (kept by --format docker) polls /healthz."""
    healthcheck = podman("image", "inspect", "--format", "{{json .HealthCheck}}", IMAGE).stdout
    assert "/healthz" in healthcheck, f"the image has no HEALTHCHECK (built as OCI?): {healthcheck}"
    result = podman("healthcheck", "run", pod.container("proxy"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    state = podman("inspect", "--format", "{{.State.Health.Status}}", pod.container("proxy")).stdout.strip()
    assert state == "healthy"


def test_sigterm_lets_an_open_stream_finish_then_exits_0(pod: Pod) -> None:
    """Last: it stops the proxy. A stream is open (the fake LLM holds it after its first word) when SIGTERM comes;
    the proxy drains (readiness 503), the stream is released and arrives whole, the proxy exits 0."""
    message = "Stream this [gate:sigterm] to the end please"
    body = json.dumps({"message": message, "stream": True, "session_id": new_session_id()})
    connection = http.client.HTTPConnection("127.0.0.1", pod.proxy_port, timeout=30)
    try:
        connection.request("POST", "/chat", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        received = b""
        while b"You " not in received:  # the first word; the rest is held by the gate
            chunk = response.read1(65536)
            assert chunk, f"the stream ended early: {received!r}"
            received += chunk
        podman("kill", "--signal=TERM", pod.container("proxy"))
        pod.wait_for("draining", lambda: http_status(pod.admin_url + "/readyz") == 503)
        pod.release_gate("sigterm")
        received += response.read()
    finally:
        connection.close()
    assert received.decode().split() == f"You said: {message}".split()
    exit_code = podman("wait", pod.container("proxy"), timeout=60).stdout.strip()
    assert exit_code == "0", pod.logs()
    logs = podman("logs", pod.container("proxy")).stdout.splitlines()
    events = [json.loads(line).get("event") for line in logs if line.startswith("{")]
    # The stream's request is logged when it finished: after draining began, before the proxy stopped.
    assert "draining" in events and events[events.index("draining") :][-2:] == ["request", "stopped"], logs


COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"
COMPOSE_PROJECT = "rum-llmobs-proxy"


def compose_commands() -> dict[str, list[str]]:
    """The podman-compose commands compose.yaml's header gives (build, up, down), as argv."""
    commands: dict[str, list[str]] = {}
    for line in COMPOSE_FILE.read_text().splitlines():
        text = line.removeprefix("#").strip()
        if text.startswith("podman-compose "):
            argv = shlex.split(text)
            commands[argv[-1] if argv[-1] != "-d" else argv[-2]] = argv
    return commands


def compose(argv: list[str], env: dict[str, str], timeout: float = 900) -> None:
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    # podman-compose 1.0.3 prints each podman command's "exit code: N" and exits 0 whatever they returned.
    failed = [code for code in re.findall(r"^exit code: (\d+)$", result.stdout, re.MULTILINE) if code != "0"]
    assert result.returncode == 0 and not failed, (
        f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}"
    )


def test_compose_stack_runs_with_podman_compose() -> None:
    """deploy/compose/compose.yaml, built and started by the commands its header gives for podman (Debian's
    podman-compose), with the images built here: a session ID sent to the proxy's published port is on the
    example agent's LLMObs spans at the test agent; the proxy runs hardened and its HEALTHCHECK passes."""
    commands = compose_commands()
    assert {"build", "up", "down"} <= commands.keys(), commands
    for port in (8080, 8081, 8126):  # compose.yaml publishes fixed ports
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"127.0.0.1:{port} is in use: compose.yaml publishes 8080, 8081 and 8126")
    env = {
        **os.environ,
        "PYTHON_IMAGE": os.environ.get("RUM_IMAGE_BASE", "python:3.11.14-slim-bookworm"),
        "DD_TEST_AGENT_IMAGE": TOOLS_IMAGE,
    }
    build = commands["build"]
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():  # this machine's TLS setup, for pip inside the build (never baked in)
        option = next(i for i, word in enumerate(build) if word.startswith("--podman-build-args="))
        build[option] += f" --volume={ca}:{ca}:ro"
    compose(build, env)
    try:
        compose(commands["up"], env)
        test_agent = TestAgent("http://127.0.0.1:8126")
        for what, url in (
            ("proxy", "http://127.0.0.1:8081/readyz"),
            ("test agent", test_agent.url + "/test/session/requests"),
        ):
            deadline = time.monotonic() + 90
            while http_status(url) != 200:
                assert time.monotonic() < deadline, f"compose {what} not ready"
                time.sleep(0.2)  # poll interval of a bounded readiness loop
        session_id = new_session_id()
        request = urllib.request.Request(
            "http://127.0.0.1:8080/chat",
            data=json.dumps({"session_id": session_id, "message": "hi"}).encode(),
            headers={"content-type": "application/json"},
        )
        deadline = time.monotonic() + 90
        while http_status("http://127.0.0.1:8080/health") != 200:  # the agent, through the proxy
            assert time.monotonic() < deadline, "compose agent not ready"
            time.sleep(0.2)  # poll interval of a bounded readiness loop
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read()) == {"reply": "ih"}
        events = test_agent.wait_for_llmobs_spans(
            lambda found: sum(session_id_of(e) == session_id for e in found) >= 2, timeout=30
        )
        mine = [e for e in events if session_id_of(e) == session_id]
        assert sorted(e["name"] for e in mine) == ["chat", "echo"], events
        proxy = f"{COMPOSE_PROJECT}_proxy_1"
        status = podman("exec", proxy, "cat", "/proc/1/status").stdout
        fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.MULTILINE))
        assert fields["Uid"].split()[0] == "10001" and int(fields["CapEff"], 16) == 0
        assert podman("healthcheck", "run", proxy, check=False).returncode == 0
    finally:
        subprocess.run(commands["down"], cwd=REPO, env=env, capture_output=True, timeout=300, check=False)
        podman("network", "rm", "--force", f"{COMPOSE_PROJECT}_default", check=False)
