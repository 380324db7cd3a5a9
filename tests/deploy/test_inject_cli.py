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

from proxy import __version__
from proxy.inject import InjectOptions, inject_documents
from proxy.inject_cli import load_manifests

FIXTURES = Path(__file__).parent / "fixtures"
PLUGIN = REPO_ROOT / "deploy" / "helm" / "rum-llmobs-proxy-inject" / "plugin.yaml"
BIN = Path(sys.executable).parent
IMAGE_ARG = "--image=registry.example.com/rum-llmobs-proxy:0.1.0"
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
    assert "changed Service/-/support-bot: port http now targets 8080 (rum-proxy)" in result.stderr
    assert "changed NetworkPolicy/-/support-bot: ingress allowed to the agent's port now also to 8080 (rum-proxy)" in (
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
    result = inject_cli(IMAGE_ARG, str(FIXTURES / "statefulset.yaml"), "-", stdin=(FIXTURES / "list.yaml").read_text())
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
    result = inject_cli("--all", "--quiet", IMAGE_ARG, str(FIXTURES / "passthrough.yaml"))
    assert result.returncode == 0
    assert [line.split(": ")[1] for line in result.stderr.splitlines()] == ["warning"], "only the PYTHONPATH warning"
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


def test_without_an_image_nothing_unpullable_is_written() -> None:
    """The default image is published nowhere: `inject app.yaml | kubectl apply -f -` must not apply it."""
    result = inject_cli(str(FIXTURES / "statefulset.yaml"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"rum-llmobs-proxy inject: StatefulSet/research/memory-agent: image rum-llmobs-proxy:{__version__} is the "
        "default, which no registry publishes: build and push the image, then pass --image or set the annotation "
        "rum-llmobs-proxy/image",
        "rum-llmobs-proxy inject: nothing was written",
    ]
    explicit = inject_cli(f"--image=rum-llmobs-proxy:{__version__}", str(FIXTURES / "statefulset.yaml"))
    assert explicit.returncode == 0, "named explicitly (a locally loaded image), it is accepted"


def test_a_file_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    manifest = tmp_path / "latin1.yaml"
    manifest.write_bytes((FIXTURES / "statefulset.yaml").read_bytes() + "# café\n".encode("latin-1"))
    result = inject_cli(IMAGE_ARG, str(manifest))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"rum-llmobs-proxy inject: {manifest}: not UTF-8 text (byte {manifest.stat().st_size - 2}): "
        "invalid continuation byte"
    ]


def test_a_replaced_image_pythonpath_is_warned_about_even_when_quiet() -> None:
    text = (FIXTURES / "library-injection.yaml").read_text()  # its agent sets no PYTHONPATH
    result = inject_cli(IMAGE_ARG, "--quiet", stdin=text)
    assert result.returncode == 0
    assert result.stderr.startswith(
        "rum-llmobs-proxy inject: warning: Deployment/agents/triage-agent: container triage sets no PYTHONPATH, so "
        "PYTHONPATH=/rum-llmobs-hook replaces any PYTHONPATH its image sets"
    )
    stated = text.replace(
        "python-lib.version: v4.16.0", "python-lib.version: v4.16.0\n        rum-llmobs-proxy/image-pythonpath: /srv"
    )
    quiet = inject_cli(IMAGE_ARG, "--quiet", stdin=stated)
    assert quiet.returncode == 0 and quiet.stderr == "", "the image's path stated: kept, nothing to warn about"
    assert "value: /rum-llmobs-hook:/srv" in quiet.stdout


def _readme_commands() -> list[str]:
    """Every `rum-llmobs-proxy inject` command in the shell examples of README.md and deploy/README.md."""
    commands = []
    for readme in (REPO_ROOT / "README.md", REPO_ROOT / "deploy" / "README.md"):
        for block in re.findall(r"```(?:sh|console)\n(.*?)```", readme.read_text(), flags=re.DOTALL):
            joined = block.replace("\\\n", " ")
            commands += [line for line in joined.splitlines() if "rum-llmobs-proxy inject" in line]
    return commands


def test_readme_examples_name_an_image() -> None:
    """Each example works as written: with --image (the plugin's and values' examples set the annotation)."""
    commands = _readme_commands()
    assert len(commands) >= 4
    for command in commands:
        assert "--image" in command, f"refused as written (no image): {command}"


HELM_PLUGIN_V1_FIELDS = {"apiVersion", "name", "type", "runtime", "version", "sourceURL", "config", "runtimeConfig"}
HELM_PLATFORM_COMMAND_FIELDS = {"os", "arch", "command", "args"}
# Masterminds/semver StrictNewVersion, which Helm 4 applies to a v1 plugin's version.
STRICT_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)


def helm4_plugin_problems(plugin: object) -> list[str]:
    """What Helm 4 (helm/helm internal/plugin: loadMetadataV1, MetadataV1.Validate, Metadata.Validate,
    unmarshalConfig, RuntimeConfigSubprocess) refuses in a postrenderer/v1 plugin.yaml, written from its source."""
    if not isinstance(plugin, dict):
        return ["not a mapping"]
    problems = [
        f"unknown field {key} (Helm decodes v1 with KnownFields)" for key in plugin.keys() - HELM_PLUGIN_V1_FIELDS
    ]
    if plugin.get("apiVersion") != "v1":
        problems.append("apiVersion must be v1")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(plugin.get("name", ""))):
        problems.append("name: only a-z, A-Z, 0-9, _ and -")
    if not STRICT_SEMVER.fullmatch(str(plugin.get("version", ""))):
        problems.append("version must be strict SemVer (MAJOR.MINOR.PATCH)")
    if plugin.get("type") != "postrenderer/v1":
        problems.append("type must be postrenderer/v1")
    if plugin.get("runtime") != "subprocess":
        problems.append("runtime must be subprocess")
    if plugin.get("config") not in (None, {}):
        problems.append("config: postrenderer/v1 has no config fields")
    runtime_config = plugin.get("runtimeConfig")
    commands = runtime_config.get("platformCommand") if isinstance(runtime_config, dict) else None
    if not isinstance(commands, list) or not commands:
        problems.append("runtimeConfig.platformCommand: a list of commands")
        return problems
    for command in commands:
        if not isinstance(command, dict) or not isinstance(command.get("command"), str) or not command["command"]:
            problems.append(f"platformCommand entry without a command: {command}")
            continue
        problems += [f"platformCommand: unknown field {key}" for key in command.keys() - HELM_PLATFORM_COMMAND_FIELDS]
        if not all(isinstance(arg, str) for arg in command.get("args", [])):
            problems.append("platformCommand args: strings")
    return problems


def test_plugin_yaml_is_a_valid_helm4_postrenderer() -> None:
    assert helm4_plugin_problems(yaml.safe_load(PLUGIN.read_text())) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"apiVersion": "legacy"}, "apiVersion must be v1"),
        ({"version": "v0.1.0"}, "version must be strict SemVer"),
        ({"version": "0.1"}, "version must be strict SemVer"),
        ({"type": "postrenderer"}, "type must be postrenderer/v1"),
        ({"name": "rum llmobs"}, "name: only"),
        ({"command": "rum-llmobs-proxy"}, "unknown field command"),
        ({"runtimeConfig": {"platformCommand": [{"cmd": "x"}]}}, "platformCommand entry without a command"),
    ],
)
def test_the_helm4_schema_check_refuses_what_helm_refuses(change: dict[str, object], problem: str) -> None:
    plugin = yaml.safe_load(PLUGIN.read_text()) | change
    assert any(problem in p for p in helm4_plugin_problems(plugin)), helm4_plugin_problems(plugin)
