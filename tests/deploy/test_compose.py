"""Parses deploy/compose/compose.yaml (no Docker engine here) and checks it matches the proxy's contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"
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
    assert "ddtrace-run" in " ".join(agent["command"])
    mounts = {v.split(":")[1]: Path(COMPOSE.parent, v.split(":")[0]).resolve() for v in agent["volumes"]}
    assert env["PYTHONPATH"] in mounts and mounts[env["PYTHONPATH"]] == REPO_ROOT / "hook"
    assert mounts["/app/demo_agent.py"].is_file()


def test_no_secret_committed() -> None:
    for line in COMPOSE.read_text().splitlines():
        if "DD_API_KEY" in line and ":" in line and not line.lstrip().startswith("#"):
            raise AssertionError(f"DD_API_KEY must come from the environment: {line}")
    assert "${DD_API_KEY" in COMPOSE.read_text()
