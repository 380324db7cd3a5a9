"""setup.py's choice between the compiled and the plain-Python build, on this machine's real C compiler.

What a user meets: with no compiler or no Python headers the build goes plain Python and says why in one line;
RUM_LLMOBS_PROXY_PURE_PYTHON=0 refuses instead; =1 never probes. A wheel that will be compiled asks the isolated
build environment for the runtime dependencies mypyc checks against (tests/deploy/test_install.py runs the real
installs).
"""

from __future__ import annotations

import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import setup

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_build_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(setup.PURE_ENV, raising=False)


def without_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda *args, **kwargs: {**paths, "include": "/nonexistent/include"})


def test_this_machine_can_compile() -> None:
    assert setup.c_extension_blocker() is None  # gcc and Python.h: make compile installs them when missing


@pytest.mark.parametrize(
    ("compiler", "headers", "blocker"),
    [
        ("/nonexistent/cc", True, "no C compiler was found (/nonexistent/cc)"),
        (None, False, "the Python headers are missing (no Python.h in /nonexistent/include)"),
        ("false", True, "false cannot compile a C extension (exit status 1)"),
    ],
)
def test_what_stops_a_compiled_build_is_named(
    monkeypatch: pytest.MonkeyPatch, compiler: str | None, headers: bool, blocker: str
) -> None:
    if compiler:
        monkeypatch.setenv("CC", compiler)
    if not headers:
        without_headers(monkeypatch)
    assert setup.c_extension_blocker() == blocker


def test_without_a_compiler_the_build_is_plain_python_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert setup.wants_compiled() is False
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("rum-llmobs-proxy: no C compiler was found (/nonexistent/cc): building the request path")
    assert "install a C compiler and the Python headers (Debian: apt-get install gcc python3-dev)" in line
    assert setup.mypyc_requirements() == []  # nothing extra for the build environment to install


def test_compiled_or_fail_refuses_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(setup.PURE_ENV, "0")
    without_headers(monkeypatch)
    with pytest.raises(SystemExit) as refused:
        setup.wants_compiled()
    assert str(refused.value) == (
        "rum-llmobs-proxy: RUM_LLMOBS_PROXY_PURE_PYTHON=0 asks for the compiled build, but the Python headers are "
        "missing (no Python.h in /nonexistent/include)"
    )


def test_plain_python_on_request_probes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(setup.PURE_ENV, "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert setup.wants_compiled() is False
    assert setup.mypyc_requirements() == []
    assert capsys.readouterr().err == ""


def test_a_compiled_wheel_requires_the_runtime_dependencies() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert setup.wants_compiled() is True
    assert setup.mypyc_requirements() == dependencies


def test_metadata_and_the_sdist_never_compile_nor_probe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")  # a probe would print the plain-Python line
    for command in ("egg_info", "dist_info", "sdist"):
        monkeypatch.setattr("sys.argv", ["setup.py", command, "--output-dir", "/tmp/anywhere"])
        assert setup.ext_modules() == []
    assert capsys.readouterr().err == ""


def test_a_build_without_mypy_is_plain_python_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mypyc.build", None)  # `import mypyc.build` raises ImportError
    monkeypatch.setattr("sys.argv", ["setup.py", "bdist_wheel", "--dist-dir", "/tmp/anywhere"])
    assert setup.ext_modules() == []
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("rum-llmobs-proxy: mypy (mypyc) is not installed: building the request path as plain")
    assert "install the build requirements of pyproject.toml and reinstall" in line
