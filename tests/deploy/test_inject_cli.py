"""The real `rum-llmobs-proxy inject` command: stdin to stdout, files, exit status, and the Helm post-renderer
contract (Helm itself is not installable here: the plugin's own command is run the way Helm runs it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from checks import ALL_CHECKS, Doc, injected, ref
from conftest import REPO_ROOT

from proxy.inject import InjectOptions, inject_documents
from proxy.inject_cli import load_manifests

FIXTURES = Path(__file__).parent / "fixtures"
PLUGIN = REPO_ROOT / "deploy" / "helm" / "rum-llmobs-proxy-inject" / "plugin.yaml"
BIN = Path(sys.executable).parent
# No RUM_PROXY_UPSTREAM_URL or any other proxy setting: inject must not need them.
ENV = {"PATH": f"{BIN}:/usr/bin:/bin"}


def run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, env=ENV, capture_output=True, text=True, timeout=60, check=False)


def inject_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "rum-llmobs-proxy"), "inject", *args], stdin)


def documents(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def helm_post_renderer_argv() -> list[str]:
    """What Helm 4 executes for the plugin: its platformCommand, looked up on PATH, with its args."""
    plugin = yaml.safe_load(PLUGIN.read_text())
    assert plugin["type"] == "postrenderer/v1" and plugin["runtime"] == "subprocess"
    (command,) = plugin["runtimeConfig"]["platformCommand"]
    return [str(BIN / command["command"]), *command.get("args", [])]


def test_plugin_runs_this_projects_console_script() -> None:
    scripts = __import__("tomllib").loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    argv = helm_post_renderer_argv()
    assert Path(argv[0]).name in scripts and argv[1:] == ["inject"]


def test_helm_post_renderer_contract_on_a_rendered_chart() -> None:
    rendered = (FIXTURES / "chart.yaml").read_text()
    result = run(helm_post_renderer_argv(), rendered)
    assert result.returncode == 0, result.stderr
    before = load_manifests(rendered)
    after = documents(result.stdout)
    assert after == inject_documents(before, InjectOptions()), "stdout is the injected stream, nothing else"
    for check in ALL_CHECKS:
        check(before, after)
    assert "rum-llmobs-proxy inject: injected Deployment/-/support-bot" in result.stderr
    assert "changed Service/-/support-bot: port http now targets rum-proxy" in result.stderr
    assert "changed NetworkPolicy/-/support-bot: ingress allowed to the agent's port now also to rum-proxy" in (
        result.stderr
    )


def test_helm_post_renderer_refusal_fails_the_release_and_writes_nothing() -> None:
    rendered = re.sub(r"\n *rum-llmobs-proxy/agent-container: app", "", (FIXTURES / "chart.yaml").read_text())
    result = run(helm_post_renderer_argv(), rendered)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "rum-llmobs-proxy inject: Deployment/-/support-bot: 2 containers (app, log-shipper): say which one is "
        "the agent with the annotation rum-llmobs-proxy/agent-container",
        "rum-llmobs-proxy inject: nothing was written",
    ]


def test_stream_with_nothing_opted_in_passes_through() -> None:
    text = (FIXTURES / "passthrough.yaml").read_text()
    result = inject_cli(stdin=text)
    assert result.returncode == 0, result.stderr
    assert documents(result.stdout) == load_manifests(text)
    assert "nothing opted in" in result.stderr
    # kubectl's own YAML 1.1 reading of the output gives back the same values (quoted where needed).
    assert "base60: '20:30'" in result.stdout


def test_files_and_stdin_are_read_in_order() -> None:
    result = inject_cli(str(FIXTURES / "statefulset.yaml"), "-", stdin=(FIXTURES / "list.yaml").read_text())
    assert result.returncode == 0, result.stderr
    after = documents(result.stdout)
    assert [d["kind"] for d in after] == ["StatefulSet", "Service", "Service", "Service", "List"]
    assert [ref(o) for o in injected(after)] == ["StatefulSet/research/memory-agent", "Deployment/agents/faq-agent"]


def test_output_fed_back_is_unchanged() -> None:
    first = inject_cli("--image", "registry.example.com/rum-llmobs-proxy:0.1.0", str(FIXTURES / "chart.yaml"))
    second = inject_cli("--image", "registry.example.com/rum-llmobs-proxy:0.1.0", "-", stdin=first.stdout)
    assert first.returncode == second.returncode == 0
    assert second.stdout == first.stdout


def test_all_flag_and_quiet() -> None:
    result = inject_cli("--all", "--quiet", str(FIXTURES / "passthrough.yaml"))
    assert result.returncode == 0 and result.stderr == ""
    assert [ref(o) for o in injected(documents(result.stdout))] == ["Deployment/agents/embedder"]


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("kind: [unclosed\n", [], 'stdin: not valid YAML: while parsing a flow sequence in "<stdin>", line 1'),
        ("a: 1\na: 2\n", [], "found duplicate key"),
        ("", ["/nonexistent/app.yaml"], "cannot read /nonexistent/app.yaml"),
        ("", ["--no-such-flag"], "unrecognized arguments"),
    ],
    ids=["bad-yaml", "duplicate-key", "missing-file", "bad-flag"],
)
def test_unreadable_input_exits_2(stdin: str, args: list[str], message: str) -> None:
    result = inject_cli(*args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_help_documents_the_annotations() -> None:
    result = inject_cli("--help")
    assert result.returncode == 0
    for word in ("--all", "--image", "agent-container", "agent-port", "sources", "env", "Exit status"):
        assert word in result.stdout
    assert "inject" in run([str(BIN / "rum-llmobs-proxy"), "--help"]).stdout
